"""Run a worker function on ``world`` spawned gloo processes, failing (never hanging)
when one dies or outlives the timeout: ``launch("sharded_worker", 3, tmp_path, job)``
calls ``sharded_worker.worker(rank, world, port, out_dir, job)`` on every rank."""
from __future__ import annotations

import importlib
import socket

import pytest
import torch.multiprocessing as mp

JOIN_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, world: int, out_dir, job: dict, timeout_s: float = JOIN_TIMEOUT_S,
           check: bool = True) -> list:
    """Returns the ranks' exit codes; with ``check`` any nonzero code fails the test."""
    target = importlib.import_module(module).worker
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, str(out_dir), job), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    if alive:
        pytest.fail(f"ranks {alive} of {world} still running after {timeout_s}s (hang in a collective?)")
    codes = [p.exitcode for p in procs]
    if check and any(c != 0 for c in codes):
        pytest.fail(f"rank exit codes {codes} ({module}, world {world}, job {job})")
    return codes

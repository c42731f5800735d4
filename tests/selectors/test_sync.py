"""ies_fast.selectors.sync under two gloo processes: identical states pass the check;
one sample perturbed on one rank (one bit of one loss, a count, a mask bit) is
caught on every rank, and the message names the state tensor."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ies_fast import IES, InfoBatch, RandomRemoval, make_selector
from ies_fast.selectors import sync
from ies_fast.selectors.base import Selector

from _support import sync_worker

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


def launch(tmp_path, job: dict) -> list:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=sync_worker.worker, args=(r, 2, port, str(tmp_path), job), daemon=True)
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.load(open(os.path.join(tmp_path, f"rank{r}.json")))["said"] for r in range(2)]


def test_one_perturbed_sample_is_caught_on_every_rank(tmp_path):
    said = launch(tmp_path, {"perturb": ("hist", 617)})
    for before, after in said:
        assert before == "in sync"
        assert after.startswith("selector state differs across ranks in hist"), after


@pytest.mark.parametrize("make", [
    lambda: IES(257, delta=0.1, order=1, window=2, backend="torch", min_kept=5, score_policy="backoff"),
    lambda: InfoBatch(257, num_epochs=4),
    lambda: RandomRemoval(257, 0.3),
    lambda: make_selector("ies", 257, delta=0.1, order=1, window=2, backend="torch", num_exits=2, exit_reduction="per_exit"),
])
def test_fingerprint_sees_every_state_tensor_and_copies_nothing(make):
    """A selector's own state_tensors() holds what the generic one (every tensor of
    state_dict()) holds, and changing any one element of any of them changes the
    fingerprint."""
    sel = make()
    for _ in range(3):
        loss = torch.rand(257, 2) if getattr(sel, "num_exits", 1) == 2 else torch.rand(257)
        sel.observe(loss, torch.arange(257))
        sel.step()
    live = sel.state_tensors()

    saved = Selector.state_tensors(sel)  # the generic one: every tensor of state_dict(), copied
    assert len(saved) == len(live)
    assert sorted(torch.cat([t.reshape(-1).view(torch.uint8) for t in saved.values()]).tolist()) == \
        sorted(torch.cat([t.reshape(-1).view(torch.uint8) for t in live.values()]).tolist())
    before = sync.selector_fingerprint(sel)
    for name, t in live.items():
        if t.numel() == 0 or name == "rng":
            continue
        flat_t = t.view(-1)
        old = flat_t[-1].clone()
        flat_t.view(torch.uint8)[-1] ^= 1  # one bit of the last element
        assert not torch.equal(before, sync.selector_fingerprint(sel)), name
        flat_t[-1] = old
        assert torch.equal(before, sync.selector_fingerprint(sel)), name

"""Shared by the multi-process integration tests (Lightning ``ddp``, ``IESTrainer`` under
torchrun): run a launcher command with a timeout (a hang in a collective fails the
test instead of the suite), and read the per-rank epoch logs the workers append."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]


def run(args: list, timeout_s: float, check: bool = True) -> int:
    """``python *args`` with one thread and ``tests/`` importable; its exit code."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, timeout=timeout_s, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.returncode


def torchrun(script: Path, world: int, *args, timeout_s: float, check: bool = True) -> int:
    """``script *args`` under ``torchrun --nproc_per_node world`` on a free local port."""
    from _support.spawn_ranks import free_port

    return run(["-m", "torch.distributed.run", "--nproc_per_node", world, "--master_addr", "127.0.0.1",
                "--master_port", free_port(), script, *args], timeout_s, check)


def rank_logs(out: Path, world: int) -> list[list[dict]]:
    """Each rank's ``log-rank<r>.jsonl`` lines."""
    return [[json.loads(line) for line in (out / f"log-rank{r}.jsonl").read_text().splitlines()] for r in range(world)]


def copy_log_lines(source: Path, dest: Path, rank: int, lines: int) -> None:
    """The first ``lines`` lines of ``source``'s ``log-rank<rank>.jsonl`` into ``dest``'s (a run
    resumed from ``source``'s checkpoint after that many epochs logs the rest)."""
    name = f"log-rank{rank}.jsonl"
    kept = (source / name).read_text().splitlines(keepends=True)[:lines]
    (dest / name).write_text("".join(kept))


def assert_resumed(full: Path, resumed: Path, world: int, done: int) -> None:
    """``resumed``: a run resumed on ``world`` processes from the checkpoint the 2-process
    run ``full`` wrote after ``done`` epochs (with rank 0's log lines up to it). Its ranks
    agree from there on, log ``world``, and train epoch ``done`` on the kept set decided on 2;
    on 2 processes it is the uninterrupted run, every log line and every weight."""
    whole = rank_logs(full, 2)[0]
    logs = rank_logs(resumed, world)
    tail = len(whole) - done
    assert all(r[-tail:] == logs[0][-tail:] for r in logs)  # the new ranks agree
    assert [e["world"] for e in logs[0]][done:] == [world] * tail
    assert logs[0][done]["kept"] == whole[done]["kept"]  # the decision taken on 2 processes holds
    if world == 2:
        assert_same_runs(full, resumed, world=1)  # rank 0: the log since the start, and the weights


def sharded_fixture(run, *args):
    """A module-scoped pytest fixture ``sharded``: the output folders ``(sharded, replicated)``
    of ``run(out, *args, flag)`` with ``--shard`` (the ShardedIES) and with ``--every`` (the
    replicated selector with its policy, ``score_policy="every"``)."""

    @pytest.fixture(scope="module")
    def sharded(tmp_path_factory) -> tuple[Path, Path]:
        out = tmp_path_factory.mktemp("sharded"), tmp_path_factory.mktemp("every")
        run(out[0], *args, "--shard")
        run(out[1], *args, "--every")
        return out

    return sharded


def assert_same_runs(a: Path, b: Path, world: int = 2) -> None:
    """Every rank's log lines (kept sets, steps) and the final weights are equal."""
    assert rank_logs(a, world) == rank_logs(b, world)
    wa, wb = torch.load(a / "final.pt"), torch.load(b / "final.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


#: ``IES_FAST_FULL_DDP=1`` runs every world-size change of the multi-process integration
#: tests; by default CI runs one change per integration (they cost 20-80 s each on 2 cores)
FULL_DDP = os.environ.get("IES_FAST_FULL_DDP", "0") not in ("", "0")


def world_sizes(default: int, *others: int) -> list:
    """pytest params: ``default`` always, ``others`` only with ``IES_FAST_FULL_DDP=1``."""
    skip = pytest.mark.skipif(not FULL_DDP, reason="set IES_FAST_FULL_DDP=1 for every world-size change")
    return [default, *(pytest.param(w, marks=skip) for w in others)]

"""CPU cost of ``ies_fast.cross_entropy`` with a selector against ``F.cross_entropy``.

    python benchmarks/bench_loss_cpu.py [--rounds 15] [--calls 200] [--threads 1]

For B=256 rows and C in (10, 1000) classes, times forward and forward+backward of
``F.cross_entropy`` (no selector: the floor), ``ies_fast.cross_entropy(..., selector)``
and the hand-written route (``F.cross_entropy(reduction="none")``, ``sel.observe``,
``.mean()``). The alternatives take turns call by call; each figure is the median
single-call time; ratios are against F.cross_entropy
from the same run. Prints a Markdown table (docs/results.md, "CPU loss").
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import ies_fast


def _cases(B: int, C: int, gen: torch.Generator):
    logits = torch.randn(B, C, generator=gen).requires_grad_()
    target = torch.randint(0, C, (B,), generator=gen)
    index = torch.randperm(50_000, generator=gen)[:B]
    sel = ies_fast.IES(50_000, backend="native" if ies_fast.backend_info()["native_cpu"] else "torch")

    def torch_loss():
        return F.cross_entropy(logits, target)

    def ies_loss():
        return ies_fast.cross_entropy(logits, target, index, sel)

    def by_hand():
        losses = F.cross_entropy(logits, target, reduction="none")
        sel.observe(losses.detach(), index)
        return losses.mean()

    return logits, {"F.cross_entropy": torch_loss, "ies_fast.cross_entropy": ies_loss, "by hand": by_hand}


def _time(fn, backward: bool, logits) -> float:
    """µs of one call (and its backward)."""
    start = time.perf_counter()
    out = fn()
    if backward:
        out.backward()
        logits.grad = None
    return (time.perf_counter() - start) * 1e6


def measure(B: int, C: int, rounds: int, calls: int) -> dict:
    """{(alternative, 'fwd'|'fwd+bwd'): median µs per call}. The alternatives take
    turns call by call, so a burst of load from other processes hits them alike;
    the median over ``rounds * calls`` single-call times discards the bursts."""
    logits, fns = _cases(B, C, torch.Generator().manual_seed(C))
    samples: dict = {}
    for backward in (False, True):
        for fn in fns.values():  # warm-up
            for _ in range(10):
                _time(fn, backward, logits)
        items = list(fns.items())
        for i in range(rounds * calls):
            for name, fn in items[i % 3:] + items[: i % 3]:  # each goes first, second, third in turn
                key = (name, "fwd+bwd" if backward else "fwd")
                samples.setdefault(key, []).append(_time(fn, backward, logits))
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"B={args.batch}, {args.threads} thread(s), median of {args.rounds * args.calls} calls each, interleaved, µs per call")
    print("| C | pass | F.cross_entropy | ies_fast.cross_entropy (ratio) | by hand (ratio) |")
    print("|---|---|---|---|---|")
    for C in (10, 1000):
        med = measure(args.batch, C, args.rounds, args.calls)
        for kind in ("fwd", "fwd+bwd"):
            base = med[("F.cross_entropy", kind)]
            cells = [f"{med[(n, kind)]:.0f} ({med[(n, kind)] / base:.2f}x)" for n in ("ies_fast.cross_entropy", "by hand")]
            print(f"| {C} | {kind} | {base:.0f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()

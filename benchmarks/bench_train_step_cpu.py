"""Training-step cost of ``ies-fast train --selector none`` against a hand-written loop.

    python benchmarks/bench_train_step_cpu.py [--epochs 5] [--threads 1] [--dataset mnist1d]

Builds the trainer of ``ies-fast train --dataset mnist1d --selector none`` (IES with
δ=0: every sample recorded, nothing removed) and, on the same model, optimizer and
the same batches, times its optimizer step (``Trainer._train_steps`` on one
batch: forward, ``ies_fast.cross_entropy`` with the selector, backward, step, LR
schedule, running loss/accuracy on device) against a hand-written step (forward,
``F.cross_entropy``, backward, step) and the hand-written step with
``ies_fast.cross_entropy(..., selector)`` (the loss's share of the gap). Prints
median step times and ratios. Evaluation, checkpoints, the epoch-end ``step()``
and data loading are outside every timing.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _hand_step(model, optimizer, batch, loss_fn) -> None:
    x, y, index = batch
    loss = loss_fn(model(x), y, index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(dataset: str, epochs: int) -> dict:
    """Median single-step seconds of each variant; the variants take turns step by
    step (rotating who goes first), so load from other processes hits them alike."""
    import ies_fast
    from ies_fast.app.train.config import TrainConfig
    from ies_fast.app.train.loop import Trainer

    with tempfile.TemporaryDirectory() as out:
        t = Trainer(TrainConfig(dataset=dataset, selector="none", device="cpu", out=out, epochs=epochs + 1,
                                progress=False, plot=False))
        sel, model, opt = t.selector, t.model, t.optimizer
        # _train_steps runs once per batch here: its per-epoch net.train() (~40 µs, a
        # module walk) would be charged to every step, so the model is put in train
        # mode once and that call made a no-op
        t.net.train()
        t.net.train = lambda mode=True: t.net
        variants = {
            "ies-fast train": lambda epoch, b: t._train_steps(epoch, [b], 1, _NoBar()),
            "hand-written + ies_fast.cross_entropy": lambda epoch, b: _hand_step(
                model, opt, b, lambda z, y, i: ies_fast.cross_entropy(z, y, i, sel)),
            "hand-written": lambda epoch, b: _hand_step(model, opt, b, lambda z, y, i: F.cross_entropy(z, y)),
        }
        items = list(variants.items())
        times: dict = {k: [] for k in variants}
        steps = 0
        for epoch in range(epochs + 1):  # epoch 0 warms up
            t.batches.set_epoch(epoch)
            batches = list(t.batches.train())
            steps = len(batches)
            for i, b in enumerate(batches):
                k = (epoch * steps + i) % len(items)
                for name, run in items[k:] + items[:k]:
                    start = time.perf_counter()
                    run(epoch, b)
                    if epoch:
                        times[name].append(time.perf_counter() - start)
            sel.step()
        return {k: statistics.median(v) for k, v in times.items()} | {"steps": steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset", default="mnist1d")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    med = measure(args.dataset, args.epochs)
    base = med["hand-written"]
    print(f"{args.dataset}, {med['steps']} steps per epoch, {args.threads} thread(s), "
          f"median single-step time over {args.epochs} epochs, interleaved")
    for name in ("hand-written", "hand-written + ies_fast.cross_entropy", "ies-fast train"):
        print(f"{name}: {med[name] * 1e3:.3f} ms/step ({med[name] / base:.3f}x)")


if __name__ == "__main__":
    main()

"""A user's own loop on Fashion-MNIST with IES added as the README shows: own CNN, own
IDX reader, OneCycleLR stepped per batch, ``IESDataset`` + ``sampler=`` +
``schedule()`` + ``update()``. Runs IES and the same loop without it (δ=0) with
the same seeds, one after the other, and prints test accuracy, backward passes
saved and CPU time (one thread), so the speed-up can be set beside
``ies-fast train --dataset fashion-mnist``'s (docs/benchmarks.md, issue 27).

    python examples/fashion_own_loop.py --subset 10000 --epochs 15 --seeds 0 1 --json own.json

Needs the IDX files of Fashion-MNIST (Debian: ``apt-get install dataset-fashion-mnist``
puts them in /usr/share/datasets/fashion-mnist; or ``--data-dir``).
"""
import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast


def read_idx(path: str) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor of its shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def fashion_mnist(data_dir: str, subset: int = 0):
    """(train set, (test x, test y)), images as float (x - mean) / std in [N, 1, 28, 28]."""
    def load(kind):
        name = lambda part: next(os.path.join(data_dir, f) for f in os.listdir(data_dir) if f.startswith(f"{kind}-{part}"))
        return read_idx(name("images")).float().div_(255).unsqueeze(1), read_idx(name("labels")).long()

    x, y = load("train")
    x_test, y_test = load("t10k")
    if subset:
        x, y = x[:subset], y[:subset]
    mean, std = x.mean(), x.std()
    return TensorDataset((x - mean) / std, y), ((x_test - mean) / std, y_test)


class SmallCNN(torch.nn.Module):
    """Two conv blocks and a linear head (about 27k parameters)."""

    def __init__(self):
        super().__init__()
        block = lambda cin, cout: torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                                      torch.nn.BatchNorm2d(cout), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.features = torch.nn.Sequential(block(1, 16), block(16, 32))
        self.head = torch.nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def run(data, *, delta: float, epochs: int, seed: int, batch_size: int = 128, score_policy: str = "backoff") -> dict:
    torch.manual_seed(seed)
    train_set, (x_test, y_test) = data
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    start = time.process_time()
    steps = epochs * len(DataLoader(train_set, batch_size=batch_size))                     # sized as without IES
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    train_set = ies_fast.IESDataset(train_set, model, delta=delta, score_policy=score_policy,      # 1. wrap
                                    seed=seed, score_batch_size=1024)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=train_set.sampler)        # 2. its sampler
    sched = train_set.schedule(sched, loader)                                               # (per-step schedule)
    model.train()
    for _ in range(epochs):
        for x, y, index in loader:
            loss = train_set.update(F.cross_entropy(model(x), y, reduction="none"), index)  # 3. record
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()                                                                    # by epoch progress
    train_set.end_epoch()  # close the last epoch so the statistics count it
    train_cpu = time.process_time() - start
    model.eval()
    with torch.inference_mode():
        acc = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x_test.split(1000), y_test.split(1000)))
    return {"delta": delta, "seed": seed, "test_acc": acc / len(y_test),
            "saved": train_set.selector.stats()["backward_saved_fraction"], "train_cpu_s": train_cpu,
            "cpu_s": time.process_time() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--subset", type=int, default=0, help="the first N training images (0: all 60,000)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--score-policy", choices=("every", "backoff"), default="backoff")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = fashion_mnist(args.data_dir, args.subset)
    rows = []
    for seed in args.seeds:
        for delta in (0.0, args.delta):  # interleaved: the baseline and IES share the machine's state
            row = run(data, delta=delta, epochs=args.epochs, seed=seed, score_policy=args.score_policy)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = [r for r in rows if r["delta"] == 0.0]
    ies = [r for r in rows if r["delta"] != 0.0]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    print(f"baseline {100 * mean(base, 'test_acc'):.2f}%, IES δ={args.delta:g} {100 * mean(ies, 'test_acc'):.2f}% "
          f"with {100 * mean(ies, 'saved'):.1f}% saved; CPU-time speed-up {mean(base, 'cpu_s') / mean(ies, 'cpu_s'):.2f}x "
          f"(training only {mean(base, 'train_cpu_s') / mean(ies, 'train_cpu_s'):.2f}x), {len(base)} seed(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

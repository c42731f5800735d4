"""IES in a plain PyTorch loop via ies_fast.IESDataset, on scikit-learn's digits,
with a per-step OneCycleLR schedule sized from the full data set and stepped by
epoch progress (``train_set.schedule``), so it ends where it would without IES.

    python examples/plain_loop.py            # IES and the same run without IES (delta=0)

Prints test accuracy, the fraction of backward passes saved and the wall time."""
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from _with_and_without import main


def digits():
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1500], perm[1500:]
    return TensorDataset(x[train], y[train]), (x[test], y[test])


def run(delta: float, epochs: int, seed: int) -> dict:
    torch.manual_seed(seed)
    train_set, (x_test, y_test) = digits()
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    steps = epochs * len(DataLoader(train_set, batch_size=32))                              # sized as without IES
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    train_set = ies_fast.IESDataset(train_set, model, delta=delta, seed=seed)              # 1. wrap
    loader = DataLoader(train_set, batch_size=32, sampler=train_set.sampler)                # 2. its sampler
    sched = train_set.schedule(sched, loader)                                               # (per-step schedule)
    for _ in range(epochs):
        for x, y, index in loader:
            loss = train_set.update(F.cross_entropy(model(x), y, reduction="none"), index)  # 3. record
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()                                                                    # by epoch progress
    train_set.end_epoch()  # close the last epoch so the statistics count it
    wall = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"test_acc": acc, "saved": train_set.selector.stats()["backward_saved_fraction"], "wall_s": wall}


if __name__ == "__main__":
    main(run, __doc__, delta=1e-3, epochs=40, metric="test_acc")

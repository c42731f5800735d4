"""A tiny deterministic CPU training run with IES that checkpoints every epoch via
ies_fast.io.checkpoint and resumes from the checkpoint if one exists.
Usage: python ckpt_train_script.py OUT_DIR EPOCHS. Prints "epoch N" after each save
and writes OUT_DIR/final.pt at the end (used by tests/test_checkpoint_io.py)."""
import os
import sys
import time

import torch

from ies_fast import IES
from ies_fast.io.checkpoint import load_checkpoint, save_checkpoint

out_dir, epochs = sys.argv[1], int(sys.argv[2])
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
torch.manual_seed(0)
N, D, C, B = 96, 8, 3, 16
g = torch.Generator().manual_seed(1)
x = torch.randn(N, D, generator=g)
y = torch.randint(0, C, (N,), generator=g)
model = torch.nn.Linear(D, C)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sel = IES(N, delta=3e-2, order=1, window=2, device="cpu", backend="torch")
ckpt = os.path.join(out_dir, "state.ckpt")
start = 0
if os.path.exists(ckpt):
    state = load_checkpoint(ckpt, fallback=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sel.load_state_dict(state["selector"])
    torch.set_rng_state(state["rng"])
    start = state["epoch"]
for epoch in range(start, epochs):
    order = torch.randperm(N, generator=torch.Generator().manual_seed(100 + epoch))
    for idx in order.split(B):
        # noise from the global RNG: its state is part of the checkpoint
        loss = torch.nn.functional.cross_entropy(model(x[idx] + 1e-3 * torch.randn(idx.numel(), D)), y[idx], reduction="none")
        sel.observe(loss.detach(), idx)
        keep = (~sel.removed_mask()[idx]).float()
        opt.zero_grad()
        ((loss * keep).sum() / B).backward()
        opt.step()
    sel.step()
    save_checkpoint(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "selector": sel.state_dict(),
         "rng": torch.get_rng_state(), "epoch": epoch + 1},
        ckpt,
    )
    print(f"epoch {epoch + 1}", flush=True)
    time.sleep(0.02)
torch.save({"model": model.state_dict(), "selector": sel.state_dict()}, os.path.join(out_dir, "final.pt"))
print("done", flush=True)

"""A DDP training loop built from ies_fast.io.distributed's helpers, for torchrun:
init from env, DDP model, KeptSampler sharded per rank, IES merged in step(),
rank-0 checkpoints. Each rank writes OUT_DIR/rankR.pt (selector state, params).
    torchrun --nproc_per_node=2 tests/_support/torchrun_script.py OUT_DIR EPOCHS"""
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from ies_fast import IES
from ies_fast.io import distributed as d
from ies_fast.io.checkpoint import save_checkpoint
from ies_fast.data import KeptSampler

out_dir, epochs = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
device = d.init_from_env(backend="gloo")
torch.manual_seed(0)  # same initial model on every rank (DDP also broadcasts it)
N, D, C = 120, 8, 3
with d.main_process_first():  # where rank 0 would build a cache the others then read
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g), torch.arange(N))
trained = torch.zeros(1, dtype=torch.int64)
model = d.wrap_model(torch.nn.Linear(D, C), device)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sel = IES(N, delta=3e-2, order=1, window=2, device=device, backend="torch")
sampler = KeptSampler(sel, seed=0)  # num_replicas/rank from the process group
for epoch in range(epochs):
    sampler.set_epoch(epoch)
    for x, y, idx in DataLoader(data, batch_size=8, sampler=sampler):
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
        sel.observe(loss.detach(), idx)
        trained += idx.numel()
        opt.zero_grad()
        loss.mean().backward()  # the loader only yields kept samples
        opt.step()
    if sel.needs_scoring():  # forward-only pass over this rank's share of the mastered samples
        removed = sel.scoring_mask().nonzero().flatten()[d.get_rank()::d.get_world_size()]
        with torch.no_grad():
            x, y, idx = data[removed]
            sel.observe(torch.nn.functional.cross_entropy(model(x), y, reduction="none"), idx, scoring=True)
    sel.step()  # merges the ranks' observations
    d.assert_selector_in_sync(sel)
    if d.is_main_process():
        save_checkpoint({"model": d.unwrap_model(model).state_dict(), "selector": sel.state_dict()},
                        os.path.join(out_dir, "ckpt.pt"))
    d.barrier()
torch.save({"selector": sel.state_dict(), "model": d.unwrap_model(model).state_dict(), "world": d.get_world_size(),
            "stats": sel.stats(),
            "trained": int(d.all_reduce_sum(trained)), "ranks": int(d.all_reduce_sum(torch.ones(1, dtype=torch.int64)))}, os.path.join(out_dir, f"rank{d.get_rank()}.pt"))
d.cleanup()

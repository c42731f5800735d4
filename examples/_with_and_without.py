"""The examples' command line: each runs its training with IES and with delta=0 (the
same run without IES) for every seed and prints one line per run."""
import argparse

import torch


def main(run, doc: str, *, delta: float, epochs: int, metric: str) -> None:
    """``run(delta, epochs, seed) -> {metric: float, "saved": fraction}``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--delta", type=float, default=delta)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = p.parse_args()
    torch.set_num_threads(1)
    for seed in a.seeds:
        for name, d in (("baseline (delta=0)", 0.0), (f"IES (delta={a.delta:g})", a.delta)):
            r = run(d, a.epochs, seed)
            extra = f"  wall {r['wall_s']:.2f} s" if "wall_s" in r else ""
            print(f"seed {seed}  {name:22s} {metric} {r[metric]:.4f}  backward saved {100 * r['saved']:.1f}%{extra}",
                  flush=True)

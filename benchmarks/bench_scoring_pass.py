"""The forward-only scoring pass on the Fashion-MNIST recipe's model (resnet8,
28x28 grey): ``torch.no_grad`` against ``torch.inference_mode``, at scoring batches 128, 256,
512 (the CLI's ``--eval-batch-size``) and 2048. CPU time (``time.process_time``),
one thread, the variants interleaved, repeated; prints the median seconds per
1,000 samples and the ratios to no_grad at 512 (issue 27, "cheaper scoring").

    OMP_NUM_THREADS=1 python benchmarks/bench_scoring_pass.py --samples 4096 --repeats 7
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ies_fast.app.train.models import build_model


def one_pass(model, x, y, batch: int, mode) -> float:
    start = time.process_time()
    with mode():
        for xb, yb in zip(x.split(batch), y.split(batch)):
            F.cross_entropy(model(xb), yb, reduction="none")
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("resnet8", 10, (1, 28, 28)).eval()
    x = torch.randn(args.samples, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.samples,))
    variants = {(name, batch): mode for name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode))
                for batch in (128, 256, 512, 2048)}
    one_pass(model, x[:512], y[:512], 512, torch.no_grad)  # warm-up
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for (name, batch), mode in variants.items():
            times[(name, batch)].append(one_pass(model, x, y, batch, mode))
    ref = statistics.median(times[("no_grad", 512)])
    for (name, batch), ts in times.items():
        med = statistics.median(ts)
        print(f"{name:15s} batch {batch:5d}: {1000 * med / args.samples:.3f} s per 1,000 samples "
              f"(median of {args.repeats}), {med / ref:.3f}x no_grad at 512")


if __name__ == "__main__":
    main()

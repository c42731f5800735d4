"""Image-folder loaders side by side, in one run, alternatives interleaved:

1. throughput (images/s decoded, RandomResizedCrop + flip, normalised, delivered as
   float batches) of the DALI CPU pipeline (``ies_fast.data.dali.imagenet_pipeline``,
   2 threads) against ``ImageFolder``-order Pillow transforms in a ``DataLoader``
   with 2 workers (``ies_fast.data.image_dataset``; torchvision's own ``ImageFolder``
   where it imports is not needed and is not used), at the folder's size and at 224 px;
2. the epoch time of a small model (ResNet-8, 64 px crops of the 224-px JPEGs, batch
   128) when the loader is the bottleneck, training on every sample against training
   on the kept fraction IES reaches at the recipe (``--kept``), with and without a
   scoring pass over the removed samples.

Times: wall clock (the loaders run in threads or worker processes) and CPU seconds of
the process and its (joined) workers; medians of ``--repeats`` epochs after a warm-up.

    python benchmarks/bench_folder_loaders.py --images 2000 --images-224 1000 --repeats 5 \\
        --json benchmarks/results/folder_loaders.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("make_image_folder", ROOT / "tools" / "make_image_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cpu_seconds() -> float:
    """CPU time of this process (DALI's threads included) and of its joined children
    (DataLoader workers, joined at each epoch's end: ``persistent_workers=False``)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def selector(n: int, kept: float, seed: int = 0):
    import ies_fast

    sel = ies_fast.IES(n, backend="torch")
    if kept < 1:
        mask = np.random.default_rng(seed).random(n) >= kept
        sel.mastered.copy_(torch.from_numpy(mask))
        sel._invalidate()
    return sel


def dali_loader(files, labels, sel, size, mode="train", batch_size=128):
    from ies_fast.data.dali import imagenet_loader

    return imagenet_loader(files, sel, batch_size, labels=labels, mode=mode, size=size, num_threads=2, io_threads=2)


def torch_loader(files, labels, sel, size, mode="train", batch_size=128):
    from ies_fast.data import KeptBatchSampler, ScoringSampler
    from ies_fast.data.image_dataset import EpochKeys, ImageFileDataset, collate_images

    mean, std = (124.0, 116.0, 104.0), (58.0, 57.0, 57.0)
    ds = ImageFileDataset(files, labels, size=size, train=mode == "train", augment="resized_crop",
                          resize=size * 8 // 7, mean=mean, std=std)
    kw = dict(num_workers=2, persistent_workers=False, collate_fn=collate_images)
    if mode == "train":
        bs = KeptBatchSampler(sel, batch_size)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=EpochKeys(bs), **kw)
        loader.set_epoch = bs.set_epoch
        return loader
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=ScoringSampler(sel), **kw)
    loader.set_epoch = lambda e: None
    return loader


def batches(loader):
    for batch in loader:
        yield batch[0], batch[1], batch[2]


def timed(fn):
    w0, c0 = time.perf_counter(), cpu_seconds()
    n = fn()
    return n, time.perf_counter() - w0, cpu_seconds() - c0


def throughput(folders: dict, repeats: int) -> list:
    """Images/s of each loader at each size, epochs interleaved (order alternating)."""
    rows = []
    for size, (files, labels) in folders.items():
        sel = selector(len(files), 1.0)
        loaders = {"DALI CPU pipeline (2 threads)": dali_loader(files, labels, sel, size),
                   "Pillow + DataLoader (2 workers)": torch_loader(files, labels, sel, size)}
        times = {k: [] for k in loaders}
        for r in range(repeats + 1):
            order = list(loaders) if r % 2 == 0 else list(loaders)[::-1]
            for name in order:
                loader = loaders[name]
                loader.set_epoch(r)
                n, wall, cpu = timed(lambda: sum(int(i.numel()) for _, _, i in batches(loader)))
                assert n == len(files)
                if r:  # the first epoch warms up
                    times[name].append((wall, cpu))
        for name, t in times.items():
            wall = statistics.median(w for w, _ in t)
            cpu = statistics.median(c for _, c in t)
            rows.append({"size": size, "loader": name, "images": len(files), "wall_s": wall, "cpu_s": cpu,
                         "images_per_s": len(files) / wall, "images_per_cpu_s": len(files) / cpu})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def model_epochs(files, labels, size: int, kept: float, repeats: int) -> list:
    """Epoch time of ResNet-8 on ``size`` crops: every sample, the kept fraction, and
    the kept fraction plus a scoring pass over the removed ones; per loader."""
    from ies_fast.app.train.models import resnet8

    torch.manual_seed(0)
    model = resnet8(10, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y_all = torch.as_tensor(labels)

    def train_epoch(loader) -> int:
        model.train()
        n = 0
        for x, y, index in batches(loader):
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += index.numel()
        return n

    def score_epoch(loader) -> int:
        model.eval()
        n = 0
        with torch.no_grad():
            for x, y, index in batches(loader):
                model(x.contiguous(memory_format=torch.channels_last))
                n += index.numel()
        return n

    cases = []
    for make in (dali_loader, torch_loader):
        for frac, scoring in ((1.0, False), (kept, False), (kept, True)):
            sel = selector(len(files), frac)
            tr, sc = make(files, labels, sel, size), make(files, labels, sel, size, mode="scoring", batch_size=256)
            cases.append(((make.__name__, frac, scoring), sel, tr, sc))
    times = {c[0]: [] for c in cases}
    for r in range(repeats + 1):
        for key, sel, tr, sc in (cases if r % 2 == 0 else cases[::-1]):
            tr.set_epoch(r)
            n, wall, cpu = timed(lambda: train_epoch(tr) + (score_epoch(sc) if key[2] else 0))
            assert n == (len(files) if key[2] or key[1] == 1.0 else int((~sel.mastered).sum()))
            if r:
                times[key].append((wall, cpu))
    rows = []
    for (loader, frac, scoring), t in times.items():
        rows.append({"loader": loader, "kept": frac, "scoring": scoring, "images": len(files), "size": size,
                     "wall_s": statistics.median(w for w, _ in t), "cpu_s": statistics.median(c for _, c in t)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=_tool().FASHION_MNIST_DIR, help="Fashion-MNIST IDX folder")
    p.add_argument("--images", type=int, default=2000, help="training images at the folder's size (28 px)")
    p.add_argument("--images-224", type=int, default=1000, help="training images at 224 px")
    p.add_argument("--model-size", type=int, default=64, help="crop side of the model epochs (224-px JPEGs)")
    p.add_argument("--kept", type=float, default=0.643,
                   help="kept fraction for the IES case (the Fashion-MNIST recipe's mean: 35.7%% saved)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from ies_fast.data.image_files import scan_image_folder

    tool = _tool()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for size, n in ((28, args.images), (224, args.images_224)):
            root = os.path.join(tmp, str(size))
            tool.make_image_folder(root, source=args.source, size=size, limit=n)
            files, labels, _ = scan_image_folder(os.path.join(root, "train"))
            folders[size] = (files, np.asarray(labels, dtype=np.int64))
        result = {"throughput": throughput(folders, args.repeats),
                  "model_epochs": model_epochs(*folders[224], args.model_size, args.kept, args.repeats)}
    import platform

    import nvidia.dali

    result["env"] = {"torch": torch.__version__, "dali": nvidia.dali.__version__, "python": platform.python_version(),
                     "cpu_count": os.cpu_count(), "torch_threads": 1, "args": vars(args)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write Fashion-MNIST's IDX files as a folder of real JPEGs in torchvision's
``ImageFolder`` / ImageNet layout, so the file-reading paths (``--dataset folder``,
``--dataset imagenet``, both loaders) can be trained and timed on real photographs
of clothes offline:

    DIR/train/<class>/<index>.JPEG     60,000 (or --limit) images
    DIR/val/<class>/<index>.JPEG       10,000 (or --limit) images

Class folders are named ``0-t-shirt`` ... ``9-ankle-boot``, so their sorted order
(ImageFolder's label order) is the IDX label order. Images are written as RGB
JPEGs (quality 90 by default), optionally upscaled (bilinear) to ``--size`` so that
decoding and resizing cost what they cost on real data (64 or 96 px for training,
224 px for the throughput table).

    python tools/make_image_folder.py DIR --size 64
    python tools/make_image_folder.py DIR --size 16 --limit 80     # 8 per class, for tests
    python tools/make_image_folder.py DIR --first 10000            # the --subset 10000 slice
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("0-t-shirt", "1-trouser", "2-pullover", "3-dress", "4-coat", "5-sandal", "6-shirt", "7-sneaker", "8-bag",
           "9-ankle-boot")


def balanced_first(labels: np.ndarray, limit: int | None, classes: int = len(CLASSES)) -> np.ndarray:
    """Indices of the first ``ceil(limit / classes)`` samples of each class (all when
    ``limit`` is None), ascending: a small slice where no class folder is empty."""
    if limit is None:
        return np.arange(len(labels))
    per_class = -(-limit // classes)
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(classes)])
    return np.sort(keep)


def write_split(out: str, images: np.ndarray, labels: np.ndarray, index: np.ndarray, *, size: int | None,
                quality: int) -> int:
    """Write ``images[index]`` (uint8 ``[N, H, W]`` grey) as RGB JPEGs under
    ``out/<class>/<index>.JPEG``; returns the bytes written."""
    from PIL import Image

    for name in CLASSES:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    total = 0
    for i in index.tolist():
        img = Image.fromarray(images[i], mode="L").convert("RGB")
        if size is not None and size != img.width:
            img = img.resize((size, size), Image.BILINEAR)
        path = os.path.join(out, CLASSES[int(labels[i])], f"{i:05d}.JPEG")
        img.save(path, format="JPEG", quality=quality)
        total += os.path.getsize(path)
    return total


def make_image_folder(out: str, *, source: str = FASHION_MNIST_DIR, size: int | None = None, quality: int = 90,
                      limit: int | None = None, first: int | None = None) -> dict:
    """Write ``out/train`` and ``out/val`` from the IDX files in ``source``; ``limit``
    keeps a balanced slice of each split, ``first`` the first images as stored (the
    slice ``ies-fast train --subset N`` trains on). Returns counts and bytes per split."""
    from ies_fast.app.train.idx import read_idx_split

    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
    for name, value in (("limit", limit), ("first", first)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if limit is not None and first is not None:
        raise ValueError("give limit or first, not both")
    report = {}
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels = read_idx_split(source, split)
        index = balanced_first(labels, limit) if first is None else np.arange(min(first, len(labels)))
        nbytes = write_split(os.path.join(out, folder), images, labels, index, size=size, quality=quality)
        report[folder] = {"images": int(index.size), "bytes": nbytes}
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="the folder to write (train/ and val/ go inside)")
    p.add_argument("--source", default=FASHION_MNIST_DIR, help="folder holding the four Fashion-MNIST IDX files")
    p.add_argument("--size", type=int, default=None, help="side in pixels (default: 28, as stored)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--limit", type=int, default=None,
                   help="images per split: the first ceil(LIMIT/10) of each class (default: all)")
    p.add_argument("--first", type=int, default=None,
                   help="images per split: the first FIRST as stored (the slice of `ies-fast train --subset FIRST`)")
    args = p.parse_args(argv)
    try:
        report = make_image_folder(args.out, source=args.source, size=args.size, quality=args.quality,
                                   limit=args.limit, first=args.first)
    except (OSError, ValueError) as e:
        print(f"make_image_folder: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for split, r in report.items():
        print(f"{split}: {r['images']} images, {r['bytes'] / 2**20:.1f} MiB in {os.path.join(args.out, split)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

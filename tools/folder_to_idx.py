"""Decode a JPEG folder written by ``tools/make_image_folder.py`` (at 28 px) back into
IDX files: the folder's own pixels, to train in memory (``ies-fast train --dataset
fashion-mnist --data-dir OUT``) as a control that tells the loaders from the JPEG
compression (docs/results.md, "Image folders").

    python tools/folder_to_idx.py DIR OUT      # DIR/train, DIR/val -> OUT/train-*, OUT/t10k-*

Images are decoded with Pillow as grey (``convert("L")``) and ordered by their file
name's index (``<index>.JPEG``, the IDX position they came from); a class folder's
position in sorted order is its label.
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import sys

import numpy as np

_NAME = re.compile(r"^([0-9]+)\.JPEG$")
SPLITS = (("train", "train"), ("val", "t10k"))


def read_split(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of ``folder/<class>/<index>.JPEG``,
    in index order."""
    from PIL import Image

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    entries = []
    for label, cls in enumerate(classes):
        for name in os.listdir(os.path.join(folder, cls)):
            match = _NAME.match(name)
            if match is None:
                raise ValueError(f"{os.path.join(folder, cls, name)}: not a <index>.JPEG file of make_image_folder.py")
            entries.append((int(match.group(1)), label, os.path.join(folder, cls, name)))
    entries.sort()
    images = np.empty((len(entries), 28, 28), np.uint8)
    for row, (_, _, path) in enumerate(entries):
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))
        if grey.shape != (28, 28):
            raise ValueError(f"{path}: {grey.shape[1]}x{grey.shape[0]} px; only 28-px folders decode to IDX")
        images[row] = grey
    return images, np.array([label for _, label, _ in entries], np.uint8)


def write_idx(path: str, array: np.ndarray) -> None:
    """One uncompressed IDX file (uint8, any rank)."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array).tobytes())


def folder_to_idx(folder: str, out: str) -> dict:
    """Write ``out/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; returns the counts per split."""
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split, prefix in SPLITS:
        images, labels = read_split(os.path.join(folder, split))
        write_idx(os.path.join(out, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(out, f"{prefix}-labels-idx1-ubyte"), labels)
        counts[split] = len(labels)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="the JPEG folder (with train/ and val/)")
    ap.add_argument("out", help="where to write the four IDX files")
    args = ap.parse_args(argv)
    try:
        print(folder_to_idx(args.folder, args.out))
    except (OSError, ValueError) as exc:
        print(f"folder_to_idx: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

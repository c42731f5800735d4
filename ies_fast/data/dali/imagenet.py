"""DALI pipeline over an ImageNet-style folder (``root/<class>/*.JPEG``) that reads
and decodes only the epoch's samples.

Why an external source of encoded bytes and not ``fn.readers.file`` over a
per-epoch file list: the reader takes its file list when the pipeline is built,
so following a kept list that changes every epoch would mean rebuilding the
pipeline every epoch — new worker threads, and on the GPU a fresh nvJPEG /
hardware-decoder set-up and memory pools (hundreds of ms to seconds) — while
both read exactly the kept files. The external source reads the files in a small
thread pool (file reads release the GIL) during DALI's prefetch, and the kept
list is simply taken at each epoch's start.

Bad files: a file that cannot be read, is empty, or does not start like a
JPEG/PNG/BMP/GIF/TIFF/WebP raises ``ValueError`` naming it — or, with
``on_error="skip"``, is left out of the batch and counted in
``source.skipped`` (paths in ``source.skipped_files``). A file that starts
right but fails to decode raises a ``RuntimeError`` naming the file(s) of the
failing batches that PIL cannot open (the pipeline cannot skip inside the decoder).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from .. import image_files
from ..image_files import CorruptImageFile, EpochDraws
from .arrays import _threads
from .iterator import DALIKeptIterator
from .source import KeptSource, make_sampler

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ON_ERROR = image_files.ON_ERROR
AUGMENTS = ("resized_crop", "pad_crop")


def scan_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``(files, labels, classes)`` of ``root/<class>/<image>``, ordered as
    torchvision's ``ImageFolder`` (classes sorted, files sorted within a class), so
    sample ``i`` is the same image in both."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    files, labels = [], []
    for c, name in enumerate(classes):
        names = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(EXTENSIONS))
        files += [os.path.join(root, name, f) for f in names]
        labels += [c] * len(names)
    if not files:
        raise ValueError(f"no images ({', '.join(EXTENSIONS)}) under {root}/<class>/")
    return files, np.asarray(labels, dtype=np.int64), classes


class ImageFolderSource(KeptSource):
    """Serves ``(encoded bytes, label, index)`` for the epoch's samples."""

    def __init__(self, files: Sequence[str], labels, batch_size: int, selector=None, sampler=None, *,
                 on_error: str = "raise", io_threads: int = 4):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(files),):
            raise ValueError(f"labels must have shape ({len(files)},), got {labels.shape}")
        super().__init__(len(files), batch_size, selector, sampler)
        self.files, self.labels, self.on_error = list(files), labels, on_error
        self.skipped, self.skipped_files = 0, []
        self.files_read = self.bytes_read = 0  # every file opened, and its bytes (see take_read_counts)
        self.pad_crop: Optional[tuple] = None  # (EpochDraws, padding): serve per-sample crop offsets and flips
        self._pool = ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="ies-read")

    def _read(self, i: int):
        try:
            data = image_files.read_image_bytes(self.files[i])
        except image_files.BadImageFile as e:
            return None, str(e)
        return np.frombuffer(data, dtype=np.uint8), None

    def take_read_counts(self) -> tuple:
        """``(files opened, bytes read)`` since the last call."""
        out = (self.files_read, self.bytes_read)
        self.files_read = self.bytes_read = 0
        return out

    def fetch(self, index):
        results = list(self._pool.map(self._read, index.tolist()))
        self.files_read += len(results)
        self.bytes_read += sum(d.size for d, _ in results if d is not None)
        ok = np.array([data is not None for data, _ in results], dtype=bool)
        if not ok.all():
            errors = [err for _, err in results if err is not None]
            if self.on_error == "raise":
                raise image_files.BadImageFile(errors[0] + (f" (and {len(errors) - 1} more in this batch)"
                                                            if len(errors) > 1 else ""))
            self.skipped += len(errors)
            self.skipped_files += [self.files[i] for i in index[~ok]]
            if not ok.any():
                return None
        index = index[ok]
        out = ([d for d, _ in results if d is not None], self.labels[index], index)
        if self.pad_crop is None:
            return out
        draws, padding = self.pad_crop
        offsets, flip = draws.pad_crop(self.sampler.epoch, index, padding)
        return (*out, (offsets - padding).astype(np.int32), flip.astype(np.int32))

    def explain(self, error: Exception) -> Exception:
        """A decode error with the names of the recently served files PIL cannot open."""
        recent = [self.files[i] for b in self.recent for i in b.tolist()]
        try:
            from PIL import Image

            def broken(path):
                try:
                    with Image.open(path) as im:
                        im.load()
                    return False
                except Exception:
                    return True

            bad = [p for p in recent if broken(p)]
        except ImportError:
            bad = []
        named = f"corrupt image file(s): {', '.join(bad)}" if bad else f"one of: {', '.join(recent[:16])}"
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
        return CorruptImageFile(f"decoding failed ({named}): {first[0] if first else type(error).__name__}")

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def imagenet_pipeline(root_or_files, selector, batch_size: int, *, labels=None, mode: str = "train", size: int = 224,
                      resize: Optional[int] = None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      channels_last: bool = False, shuffle: bool = True, seed: int = 0,
                      num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False,
                      on_error: str = "raise", device_id: Optional[int] = None, num_threads: Optional[int] = None,
                      io_threads: int = 4, prefetch_queue_depth: int = 2, augment: str = "resized_crop",
                      padding: int = 4, flip: bool = True):
    """Build (not run) the pipeline over a folder (``root/<class>/*``, see
    :func:`scan_folder`) or a ``files`` list with ``labels``. ``mode``: ``train``
    (kept samples, shuffled; RandomResizedCrop(``size``, ``scale``, ``ratio``) +
    flip), ``scoring`` (removed samples) or ``val`` (all samples; ``selector`` may
    be None) with resize of the shorter side to ``resize`` (default
    ``size * 8 // 7``, i.e. 256 for 224) and a centre crop. Decoding runs on
    ``mixed`` (GPU) when ``device_id`` is given, else on ``cpu``.

    ``augment="pad_crop"`` (small images, as CIFAR): every image is resized to
    ``size x size``; training then crops at an offset in ``[-padding, padding]``
    with zero fill and flips (if ``flip``), with the offsets and flips drawn per
    ``(seed, epoch, index)`` (:class:`~ies_fast.data.image_files.EpochDraws`, the
    same draws as the torch loader: a resumed run sees the same pixels)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if isinstance(root_or_files, (str, os.PathLike)):
        files, labels, _ = scan_folder(os.fspath(root_or_files))
    else:
        files = list(root_or_files)
        if labels is None:
            raise ValueError("labels are required with a list of files")
    sampler = make_sampler(selector, mode, len(files), shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                           rank=rank, drop_last=drop_last)
    source = ImageFolderSource(files, labels, batch_size, selector, sampler, on_error=on_error, io_threads=io_threads)
    resize = resize or size * 8 // 7
    train = mode == "train"
    decoder = "mixed" if device_id is not None else "cpu"
    square = augment == "pad_crop"
    if square and train:
        source.pad_crop = (EpochDraws(seed), padding)

    @pipeline_def(batch_size=batch_size, num_threads=_threads(num_threads), device_id=device_id,
                  prefetch_queue_depth=prefetch_queue_depth, seed=seed)
    def pipe():
        if square and train:
            data, y, index, anchor, flips = fn.external_source(
                source=source, batch=True, batch_info=True, num_outputs=5,
                dtype=[types.UINT8, types.INT64, types.INT64, types.INT32, types.INT32])
            img = fn.resize(fn.decoders.image(data, device=decoder, output_type=types.RGB), resize_x=size,
                            resize_y=size)
            img = fn.slice(img, start=anchor, shape=[size, size], axis_names="HW", out_of_bounds_policy="pad")
            img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC" if channels_last else "CHW",
                                           mirror=flips if flip else 0, mean=list(mean), std=list(std))
            return img, y, index
        data, y, index = fn.external_source(source=source, batch=True, batch_info=True, num_outputs=3,
                                            dtype=[types.UINT8, types.INT64, types.INT64])
        if square:
            img = fn.resize(fn.decoders.image(data, device=decoder, output_type=types.RGB), resize_x=size,
                            resize_y=size)
            mirror = 0
        elif train:
            img = fn.decoders.image_random_crop(data, device=decoder, output_type=types.RGB,
                                                random_area=list(scale), random_aspect_ratio=list(ratio))
            img = fn.resize(img, resize_x=size, resize_y=size)
            mirror = fn.random.coin_flip()
        else:
            img = fn.decoders.image(data, device=decoder, output_type=types.RGB)
            img = fn.resize(img, resize_shorter=resize)
            mirror = 0
        img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="HWC" if channels_last else "CHW",
                                       crop=(size, size), mirror=mirror, mean=list(mean), std=list(std))
        return img, y, index

    p = pipe()
    p.build()
    p.ies_source, p.ies_channels_last = source, channels_last
    return p


def imagenet_loader(root_or_files, selector, batch_size: int, **kwargs) -> DALIKeptIterator:
    """:func:`imagenet_pipeline` wrapped in a :class:`DALIKeptIterator`."""
    return DALIKeptIterator(imagenet_pipeline(root_or_files, selector, batch_size, **kwargs), selector)

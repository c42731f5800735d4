"""An image-file dataset for ``DataLoader`` workers that needs Pillow only (no
torchvision): decode, then torchvision's ``ImageFolder`` recipes — training
``RandomResizedCrop`` + flip, or (small images) resize + zero-padded random crop +
flip as on CIFAR; evaluation resize (+ centre crop) — then normalise to float CHW.

Each sample's crop and flip come from :class:`~.image_files.EpochDraws` (a function
of ``(seed, epoch, index)``), so the result is the same in any worker and after a
resume. Training keys are ``(epoch, index)`` pairs (:class:`EpochKeys` wraps the
batch sampler), evaluation keys plain indices.

Items carry the bytes read; :func:`collate_images` stacks the good ones and returns
``(x, y, index, counts, errors)`` where ``counts`` is ``[files opened, bytes read]``
and ``errors`` names the bad files — the main process raises or counts them, so a
bad file is one line naming it, never a worker traceback.
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import image_files
from .image_files import BadImageFile, CorruptImageFile, EpochDraws, resized_crop_box

AUGMENTS = ("pad_crop", "resized_crop")


class EpochKeys:
    """A batch sampler whose batches are ``[(epoch, index), ...]``: the epoch travels
    with each key into persistent workers. ``state_dict`` etc. stay on ``inner``."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        epoch = self.inner.sampler.epoch
        for batch in self.inner:
            yield [(epoch, i) for i in batch]


class ImageFileDataset(Dataset):
    """``files[i]`` decoded with Pillow and transformed to normalised float
    ``[3, size, size]``. ``train``: augmented with ``augment`` (``pad_crop`` with
    ``padding`` zero pixels, or ``resized_crop``) and flipped when ``flip``; else
    resized to ``resize`` on the shorter side and centre-cropped (``resize=None``:
    straight to ``size x size``). ``mean``/``std`` in 0..255 units."""

    def __init__(self, files: Sequence[str], labels, *, size: int, train: bool, augment: str = "resized_crop",
                 padding: int = 4, flip: bool = True, resize: Optional[int] = None, mean=(0, 0, 0), std=(1, 1, 1),
                 seed: int = 0):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.files, self.labels = list(files), np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"labels must have shape ({len(self.files)},), got {self.labels.shape}")
        self.size, self.train, self.augment, self.padding, self.flip = size, train, augment, padding, flip
        self.resize = resize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.draws = EpochDraws(seed)

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: str, data: bytes):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder failure means "this file is bad"
            raise CorruptImageFile(f"cannot decode image file {path}: {e}") from None

    def _transform(self, img, epoch: Optional[int], i: int) -> np.ndarray:
        from PIL import Image

        s = self.size
        if not self.train:
            if self.resize is None:
                img = img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
            else:
                w, h = img.size
                scale = self.resize / min(w, h)
                img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
                left, top = (img.width - s) // 2, (img.height - s) // 2
                img = img.crop((left, top, left + s, top + s))
            return np.asarray(img)
        if self.augment == "resized_crop":
            area, ratio, center, flip = self.draws.resized_crop(epoch, i)
            box = resized_crop_box(img.width, img.height, area, ratio, center)
            arr = np.asarray(img.resize((s, s), Image.BILINEAR, box=box))
        else:
            img = img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
            p = self.padding
            padded = np.zeros((s + 2 * p, s + 2 * p, 3), dtype=np.uint8)
            padded[p:p + s, p:p + s] = np.asarray(img)
            offsets, flips = self.draws.pad_crop(epoch, [i], p)
            (dy, dx), flip = offsets[0], bool(flips[0])
            arr = padded[dy:dy + s, dx:dx + s]
        if self.flip and flip:
            arr = arr[:, ::-1]
        return arr

    def __getitem__(self, key):
        """``(x, label, index, nbytes)``; a bad file gives ``(None, message, index, nbytes)``."""
        epoch, i = key if isinstance(key, tuple) else (None, key)
        if self.train and epoch is None:
            raise TypeError("training keys must be (epoch, index) pairs: wrap the batch sampler in EpochKeys")
        path, nbytes = self.files[i], 0
        try:
            data = image_files.read_image_bytes(path)
            nbytes = len(data)
            arr = self._transform(self._decode(path, data), epoch, i)
        except BadImageFile as e:
            return None, str(e), i, nbytes
        x = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float()  # a writable copy
        return (x - self.mean) / self.std, int(self.labels[i]), i, nbytes


def collate_images(items):
    """Stack the good items: ``(x, y, index, counts, errors)`` with ``counts`` int64
    ``[files opened, bytes read]`` and ``errors`` the bad files' messages."""
    good = [it for it in items if it[0] is not None]
    errors = [it[1] for it in items if it[0] is None]
    counts = torch.tensor([len(items), sum(it[3] for it in items)], dtype=torch.int64)
    if good:
        x = torch.stack([it[0] for it in good])
    else:
        x = torch.zeros(0)
    y = torch.tensor([it[1] for it in good], dtype=torch.int64)
    index = torch.tensor([it[2] for it in good], dtype=torch.int64)
    return x, y, index, counts, errors

"""Image files of an ``ImageFolder`` tree: the scan (torchvision's order), the one
function every loader reads a file through (so files opened and bytes read can be
counted, and a bad file is named), and the per-epoch augmentation draws that make a
sample's crop a function of ``(seed, epoch, index)`` alone, whichever worker or
loader handles it (a resumed run sees the same pixels)."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

#: extensions taken by :func:`scan_image_folder` (compared lower-cased, so .JPEG counts)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: the first bytes of JPEG, PNG, BMP, GIF, TIFF (both byte orders) and RIFF/WebP files
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8", b"II*\x00", b"MM\x00*", b"RIFF")
#: a larger file is refused (a planted huge file must not exhaust memory)
MAX_IMAGE_BYTES = 64 << 20
ON_ERROR = ("raise", "skip")


class BadImageFile(ValueError):
    """A training or test image that cannot be used; the message names the file."""


class CorruptImageFile(BadImageFile, RuntimeError):
    """A file with an image header whose body does not decode (e.g. a truncated JPEG)."""


def scan_image_folder(root: str):
    """``(files, labels, classes)`` of ``root/<class>/**/<image>`` in torchvision's
    ``ImageFolder`` order: class folders sorted by name, ``os.walk`` (following
    links) sorted, files sorted, keeping .jpg/.jpeg/.png in any case. An empty class
    folder raises ``FileNotFoundError`` naming it; a folder link that loops back to
    a folder above it raises ``BadImageFile`` naming the link."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {root}")
    files, labels = [], []
    for index, cls in enumerate(classes):
        before = len(files)
        for dirpath, _, names in sorted(_walk(os.path.join(root, cls))):  # torchvision's sorted(os.walk())
            files += [os.path.join(dirpath, f) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(files) == before:
            raise FileNotFoundError(f"empty class folder (no .jpg/.jpeg/.png image): {os.path.join(root, cls)}")
        labels += [index] * (len(files) - before)
    return files, labels, classes


def _walk(top: str):
    """``os.walk(top, followlinks=True)`` in sorted order that refuses a folder link
    back into its own ancestry (which ``os.walk`` would follow ~40 levels deep)."""
    def visit(path: str, parents: frozenset):
        real = os.path.realpath(path)
        if real in parents:
            raise BadImageFile(f"symlink loop: {path} leads back to {real}")
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            raise BadImageFile(f"cannot list image folder {path}: {e.strerror or e}") from None
        dirs = [e.name for e in entries if _is_dir(e)]
        yield path, dirs, [e.name for e in entries if not _is_dir(e)]
        for d in dirs:
            yield from visit(os.path.join(path, d), parents | {real})

    return visit(top, frozenset())


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a link loop: a file entry, reported when read
        return False


def read_image_bytes(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of image file ``path``. Raises :class:`BadImageFile` naming the file
    when it cannot be opened (missing, unreadable, a symlink loop), is empty, too
    large, or does not start like a JPEG/PNG/BMP/GIF/TIFF/WebP file."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise BadImageFile(f"cannot read image file {path}: {e.strerror or e}") from None
    if not data:
        raise BadImageFile(f"empty image file (0 bytes): {path}")
    if len(data) > max_bytes:
        raise BadImageFile(f"image file larger than {max_bytes} bytes: {path}")
    if not data.startswith(SIGNATURES):
        raise BadImageFile(f"not an image file (unknown header): {path}")
    return data


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class EpochDraws:
    """The random numbers of a sample's training augmentation as a function of
    ``(seed, epoch, index)`` alone (a counter-based SplitMix64 hash, vectorised over
    the indices; memory O(batch), nothing per data set), so any worker or loader,
    and a resumed run, draws the same crop for the same sample and epoch.
    Streams: 0-1 the padded crop's offsets, 2 the flip, 3.. RandomResizedCrop's tries."""

    def __init__(self, seed: int, tries: int = 10):
        self.seed, self.tries = int(seed), tries

    def uniforms(self, epoch: int, index, k: int) -> np.ndarray:
        """float64 ``[n, k]`` in ``[0, 1)``: streams ``0 .. k-1`` of samples ``index``."""
        with np.errstate(over="ignore"):
            key = _mix(_mix(np.uint64(self.seed & (2**64 - 1))) ^ np.uint64(int(epoch) & (2**64 - 1)))
            idx = np.asarray(index, dtype=np.int64).reshape(-1).astype(np.uint64)
            per_sample = _mix(key ^ idx)
            bits = _mix(per_sample[:, None] + np.arange(k, dtype=np.uint64)[None, :] * _GOLDEN)
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def pad_crop(self, epoch: int, index, padding: int):
        """``(offsets int [n, 2] in [0, 2*padding], flip bool [n])`` for samples ``index``."""
        u = self.uniforms(epoch, index, 3)
        offsets = np.minimum((u[:, :2] * (2 * padding + 1)).astype(np.int64), 2 * padding)
        return offsets, u[:, 2] < 0.5

    def resized_crop(self, epoch: int, i: int):
        """``(area [tries], ratio [tries], center [tries, 2], flip)`` uniforms of sample ``i``."""
        u = self.uniforms(epoch, [i], 3 + 4 * self.tries)[0]
        t = self.tries
        return u[3:3 + t], u[3 + t:3 + 2 * t], u[3 + 2 * t:].reshape(t, 2), bool(u[2] < 0.5)


def resized_crop_box(width: int, height: int, area_u, ratio_u, center_u, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params`` driven by given uniforms: the
    first of the tries whose box fits, else the centre crop of the clamped aspect
    ratio. Returns ``(left, top, right, bottom)`` in pixels."""
    area = width * height
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for a, r, (cx, cy) in zip(area_u, ratio_u, center_u):
        target = area * (scale[0] + a * (scale[1] - scale[0]))
        aspect = float(np.exp(log_lo + r * (log_hi - log_lo)))
        w = int(round((target * aspect) ** 0.5))
        h = int(round((target / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            left = min(int(cx * (width - w + 1)), width - w)
            top = min(int(cy * (height - h + 1)), height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h

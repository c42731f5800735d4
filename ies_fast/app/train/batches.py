"""What feeds the training loop: per epoch, batches ``(x, y, index)`` of the kept
samples (augmented), of the samples to score (not augmented), and of the test set.

* :class:`TensorBatches` — in-memory data (digits, mnist1d, CIFAR, synthetic)
  kept on the training device; the epoch's kept order comes from a
  :class:`~ies_fast.data.KeptSampler` (one host copy per epoch) and crop + flip
  run batched on the device. Augmentation draws from a generator seeded by
  ``(seed, epoch)``, so a resumed run sees the same pixels.
* :class:`DaliBatches` — the DALI pipelines of :mod:`ies_fast.data.dali`
  (arrays or an ImageNet folder) that decode and augment only kept samples.
* :class:`FileBatches` — an image folder (``imagenet``, ``folder``) through torch
  ``DataLoader`` workers with Pillow decoding (when DALI is not wanted).

File-reading sources count the files opened and bytes read per epoch
(``read_counts()``, the log's ``files_read`` / ``bytes_read``).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ...data import KeptSampler, ScoringSampler

CROP_PADDING = 4


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def crop_flip(x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip of a uint8 NHWC batch in one
    gather: sample ``b`` is cut at offset ``shift[b]`` (in ``[0, 2*padding]``) of
    the padded image and mirrored where ``flip[b]`` (torchvision's
    ``RandomCrop(padding=...)`` then ``RandomHorizontalFlip``)."""
    B, H, W, _ = x.shape
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))
    rows = shift[:, 0:1] + torch.arange(H, device=x.device)
    cols = shift[:, 1:2] + torch.arange(W, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(B, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


class TensorTestSet:
    """The test set of in-memory data on ``device``: batches ``(x, y)`` of this rank's
    shard (every ``num_replicas``-th sample from ``rank``; the loop sums over ranks),
    normalised like the training input."""

    def __init__(self, data, *, eval_batch_size: int, device: torch.device, num_replicas: int = 1, rank: int = 0):
        self.device = device
        self.image = data.kind == "image"
        if self.image:
            self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor(data.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.x, self.y = data.test_x.to(device), data.test_y.to(device)
        self.eval_batch_size = eval_batch_size
        self.num_replicas, self.rank = num_replicas, rank

    def to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> normalised float NCHW (channels-last memory); vectors as they are."""
        if not self.image:
            return x
        return (x.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def batches(self) -> Iterator:
        index = torch.arange(self.rank, self.y.numel(), self.num_replicas, device=self.device)
        for b in index.split(self.eval_batch_size):
            yield self.to_model_input(self.x[b]), self.y[b]


class TensorBatches:
    """In-memory data on ``device`` (see the module docstring)."""

    #: each rank evaluates a disjoint shard; the loop sums the counts over ranks
    test_sharded = True

    def __init__(self, data, selector, *, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
                 augment: bool = True, num_replicas: int = 1, rank: int = 0):
        self.device = device
        self.test_set = TensorTestSet(data, eval_batch_size=eval_batch_size, device=device,
                                      num_replicas=num_replicas, rank=rank)
        self.x, self.y = data.train_x.to(device), data.train_y.to(device)
        self.augment = augment and self.test_set.image
        self.hflip, self.padding = getattr(data, "hflip", True), getattr(data, "crop_padding", CROP_PADDING)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed = seed
        self.kept = KeptSampler(selector, shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank)
        self.scoring = ScoringSampler(selector, num_replicas=num_replicas, rank=rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.kept.set_epoch(epoch)

    @property
    def sampler(self):
        """The training sampler (its ``state_dict`` goes into checkpoints)."""
        return self.kept

    def __len__(self) -> int:
        """Training batches in the coming epoch."""
        return math.ceil(len(self.kept) / self.batch_size)

    def train(self) -> Iterator:
        index = self.kept.epoch_indices()
        n = index.numel()
        if self.augment:  # the whole epoch's draws at once, one copy to the device
            g = _epoch_generator(self.seed, self.epoch)
            shift = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g).to(self.device, non_blocking=True)
            flip = (torch.rand(n, generator=g) < (0.5 if self.hflip else 0.0)).to(self.device, non_blocking=True)
        index = index.to(self.device, non_blocking=True)
        for start in range(0, n, self.batch_size):
            b = index[start:start + self.batch_size]
            x = self.x[b]
            if self.augment:
                x = crop_flip(x, shift[start:start + self.batch_size], flip[start:start + self.batch_size], self.padding)
            yield self.test_set.to_model_input(x), self.y[b], b

    def score(self) -> Iterator:
        index = self.scoring.indices().to(self.device, non_blocking=True)
        for b in index.split(self.eval_batch_size):
            yield self.test_set.to_model_input(self.x[b]), self.y[b], b

    def test(self) -> Iterator:
        return self.test_set.batches()


class DaliBatches:
    """DALI pipelines over in-memory uint8 images or an ImageNet folder; the test set
    of in-memory data is a :class:`TensorTestSet`, an ImageNet
    ``val/`` folder through a DALI ``val`` pipeline (every rank the whole set)."""

    def __init__(self, data, selector, *, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
                 image_size: int, num_replicas: int = 1, rank: int = 0, workers: int = 4, on_error: str = "raise"):
        from ...data import dali

        self.device = device
        device_id = (device.index or 0) if device.type == "cuda" else None
        shard = dict(num_replicas=num_replicas, rank=rank, device_id=device_id)
        if data.kind == "image":
            images, labels = data.train_x.numpy(), data.train_y.numpy()
            common = dict(mean=data.mean, std=data.std, **shard)
            augment = dict(flip=getattr(data, "hflip", True), padding=getattr(data, "crop_padding", CROP_PADDING))
            self.train_it = dali.array_loader(images, labels, selector, batch_size, mode="train", seed=seed, **augment,
                                              **common)
            self.score_it = dali.array_loader(images, labels, selector, eval_batch_size, mode="scoring", **common)
            self._tensor_test = TensorTestSet(data, eval_batch_size=eval_batch_size, device=device,
                                              num_replicas=num_replicas, rank=rank)
            self.test_sharded = True
        elif data.kind == "files":
            labels = data.train_y.numpy()
            tf = file_transforms(data, image_size)
            files = dict(size=image_size, mean=data.mean, std=data.std, io_threads=max(1, workers), on_error=on_error,
                         augment=tf["augment"], padding=tf["padding"], flip=tf["flip"], resize=tf["resize"])
            common = dict(labels=labels, **files, **shard)
            self.train_it = dali.imagenet_loader(data.train_files, selector, batch_size, mode="train", seed=seed,
                                                 **common)
            self.score_it = dali.imagenet_loader(data.train_files, selector, eval_batch_size, mode="scoring", **common)
            self.val_it = dali.imagenet_loader(data.test_files, None, eval_batch_size, labels=data.test_y.numpy(),
                                               mode="val", device_id=device_id, **files)
            self._skipped = 0
            self._tensor_test = None
            self.test_sharded = False
        else:
            raise ValueError(f"--loader dali needs image data; {data.name} is {data.kind}")

    def set_epoch(self, epoch: int) -> None:
        self.train_it.set_epoch(epoch)

    def read_counts(self) -> Optional[dict]:
        """Files opened and bytes read by the training and scoring passes since the
        last call, and the bad files they skipped (``None`` for in-memory data)."""
        if self._tensor_test is not None:
            return None
        sources = (self.train_it.source, self.score_it.source)
        reads = [s.take_read_counts() for s in sources]
        skipped = sum(s.skipped for s in sources)
        first = next((s.skipped_files[0] for s in sources if s.skipped_files), None)
        out = {"files_read": sum(r[0] for r in reads), "bytes_read": sum(r[1] for r in reads),
               "files_skipped": skipped - self._skipped}
        if out["files_skipped"] and first:
            out["first_skipped"] = first
        self._skipped = skipped
        return out

    @property
    def sampler(self):
        return self.train_it.source.sampler

    def __len__(self) -> int:
        return len(self.train_it)

    def _moved(self, it) -> Iterator:
        for x, y, index in it:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))

    def train(self) -> Iterator:
        return self._moved(self.train_it)

    def score(self) -> Iterator:
        return self._moved(self.score_it)

    def test(self) -> Iterator:
        if self._tensor_test is not None:
            return self._tensor_test.batches()
        return ((x, y) for x, y, _ in self._moved(self.val_it))


class ReadCounts:
    """Files opened, bytes read and bad files skipped by a file-reading batch source
    since the last :meth:`take` (the training and scoring passes; not the test set)."""

    def __init__(self):
        self.files = self.bytes = self.skipped = 0
        self.first_skipped: Optional[str] = None

    def add(self, files: int, nbytes: int, skipped: int = 0, first: Optional[str] = None) -> None:
        self.files += files
        self.bytes += nbytes
        self.skipped += skipped
        self.first_skipped = self.first_skipped or first

    def take(self) -> dict:
        out = {"files_read": self.files, "bytes_read": self.bytes, "files_skipped": self.skipped}
        if self.first_skipped:
            out["first_skipped"] = self.first_skipped
        self.__init__()
        return out


def file_transforms(data, image_size: int) -> dict:
    """How an image folder's files are augmented: the data's ``file_augment``
    (``pad_crop`` for small folders, as CIFAR; ``resized_crop`` as ImageNet) and the
    evaluation resize (none for ``pad_crop``: straight to the size; else the
    shorter side to ``size * 8 / 7``, then a centre crop)."""
    augment = getattr(data, "file_augment", "resized_crop")
    return dict(augment=augment, padding=getattr(data, "crop_padding", CROP_PADDING),
                flip=getattr(data, "hflip", True), resize=None if augment == "pad_crop" else image_size * 8 // 7)


class FileBatches:
    """An image folder through ``DataLoader`` workers with Pillow decoding
    (:class:`~ies_fast.data.image_dataset.ImageFileDataset`; no torchvision needed):
    :func:`file_transforms`' recipe, crops drawn per ``(seed, epoch, index)`` so a
    resumed run sees the same pixels. Files read are counted (:attr:`reads`); a bad
    file raises :class:`~ies_fast.data.image_files.BadImageFile` naming it, or with
    ``on_error="skip"`` is left out and counted."""

    def __init__(self, data, selector, *, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
                 image_size: int, workers: int, num_replicas: int = 1, rank: int = 0, on_error: str = "raise"):
        from ...data import KeptBatchSampler
        from ...data.image_dataset import EpochKeys, ImageFileDataset, collate_images

        try:
            import PIL.Image  # noqa: F401 - decoded in the workers: say it is missing before they start
        except ImportError:
            raise ImportError("--loader torch on an image folder decodes with Pillow: pip install pillow "
                              "(or use --loader dali)") from None

        tf = file_transforms(data, image_size)
        common = dict(size=image_size, mean=data.mean, std=data.std, seed=seed, augment=tf["augment"],
                      padding=tf["padding"], flip=tf["flip"], resize=tf["resize"])
        labels = data.train_y.numpy()
        loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                         collate_fn=collate_images)
        DL = torch.utils.data.DataLoader
        self.device, self.on_error, self.reads = device, on_error, ReadCounts()
        self.kept = KeptBatchSampler(selector, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
        self.train_loader = DL(ImageFileDataset(data.train_files, labels, train=True, **common),
                               batch_sampler=EpochKeys(self.kept), **loader_kw)
        self.score_loader = DL(ImageFileDataset(data.train_files, labels, train=False, **common), batch_size=eval_batch_size,
                               sampler=ScoringSampler(selector, num_replicas=num_replicas, rank=rank), **loader_kw)
        test = ImageFileDataset(data.test_files, data.test_y.numpy(), train=False, **common)
        shard = list(range(rank, len(test), num_replicas))
        self.test_loader = DL(torch.utils.data.Subset(test, shard), batch_size=eval_batch_size, **loader_kw)
        self.test_sharded = True

    def set_epoch(self, epoch: int) -> None:
        self.kept.set_epoch(epoch)

    @property
    def sampler(self):
        return self.kept

    def __len__(self) -> int:
        return len(self.kept)

    def _moved(self, loader, count: bool) -> Iterator:
        from ...data.image_files import BadImageFile

        for x, y, index, counts, errors in loader:
            if errors and self.on_error == "raise":
                more = f" (and {len(errors) - 1} more in this batch)" if len(errors) > 1 else ""
                raise BadImageFile(errors[0] + more)
            if count:
                self.reads.add(int(counts[0]), int(counts[1]), len(errors), errors[0] if errors else None)
            if index.numel():
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), \
                    index.to(self.device, non_blocking=True)

    def read_counts(self) -> dict:
        """Files opened and bytes read by the training and scoring passes since the
        last call, and the bad files they skipped."""
        return self.reads.take()

    def train(self) -> Iterator:
        return self._moved(self.train_loader, True)

    def score(self) -> Iterator:
        return self._moved(self.score_loader, True)

    def test(self) -> Iterator:
        return ((x, y) for x, y, _ in self._moved(self.test_loader, False))


def make_batches(config, data, selector, device: torch.device, num_replicas: int, rank: int,
                 augment: Optional[bool] = None):
    """The batch source for ``config.loader`` and the data's kind."""
    common = dict(batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
                  device=device, num_replicas=num_replicas, rank=rank)
    if config.loader == "dali":
        return DaliBatches(data, selector, image_size=config.image_size, workers=config.workers,
                           on_error=getattr(config, "on_bad_image", "raise"), **common)
    if data.kind == "files":
        return FileBatches(data, selector, image_size=config.image_size, workers=config.workers,
                           on_error=getattr(config, "on_bad_image", "raise"), **common)
    return TensorBatches(data, selector, augment=True if augment is None else augment, **common)

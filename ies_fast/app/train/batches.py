"""What feeds the training loop: per epoch, batches ``(x, y, index)`` of the kept
samples (augmented), of the samples to score (not augmented), and of the test set.

* :class:`TensorBatches` — in-memory data (digits, mnist1d, CIFAR, synthetic)
  kept on the training device; the epoch's kept order comes from a
  :class:`~ies_fast.data.KeptSampler` (one host copy per epoch) and crop + flip
  run batched on the device. Augmentation draws from a generator seeded by
  ``(seed, epoch)``, so a resumed run sees the same pixels.
* :class:`DaliBatches` — the DALI pipelines of :mod:`ies_fast.data.dali`
  (arrays or an ImageNet folder) that decode and augment only kept samples.
* :class:`FileBatches` — an ImageNet folder through torch ``DataLoader`` workers
  and torchvision transforms (when DALI is not wanted).
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
                 image_size: int, num_replicas: int = 1, rank: int = 0, workers: int = 4):
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
            common = dict(labels=labels, size=image_size, mean=data.mean, std=data.std, io_threads=max(1, workers),
                          **shard)
            self.train_it = dali.imagenet_loader(data.train_files, selector, batch_size, mode="train", seed=seed,
                                                 **common)
            self.score_it = dali.imagenet_loader(data.train_files, selector, eval_batch_size, mode="scoring", **common)
            self.val_it = dali.imagenet_loader(data.test_files, None, eval_batch_size, labels=data.test_y.numpy(),
                                               mode="val", size=image_size, mean=data.mean, std=data.std,
                                               io_threads=max(1, workers), device_id=device_id)
            self._tensor_test = None
            self.test_sharded = False
        else:
            raise ValueError(f"--loader dali needs image data; {data.name} is {data.kind}")

    def set_epoch(self, epoch: int) -> None:
        self.train_it.set_epoch(epoch)

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


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


class FileBatches:
    """An ImageNet folder through ``DataLoader`` workers: RandomResizedCrop + flip for
    training, resize + centre crop for scoring and test (torchvision's reference
    recipe). Needs torchvision and Pillow."""

    def __init__(self, data, selector, *, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
                 image_size: int, workers: int, num_replicas: int = 1, rank: int = 0):
        from .models import import_torchvision

        torchvision, why = import_torchvision()
        if torchvision is None:
            raise ImportError(f"--loader torch on an image folder needs torchvision (pip install torchvision{why}), "
                              "or use --loader dali")
        T = torchvision.transforms
        from ...data import kept_loader, scoring_loader

        mean = [m / 255 for m in data.mean]
        std = [s / 255 for s in data.std]
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *norm])
        eval_tf = T.Compose([T.Resize(image_size * 8 // 7), T.CenterCrop(image_size), *norm])
        labels = data.train_y.tolist()
        loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device
        self.train_loader = kept_loader(_FileDataset(data.train_files, labels, train_tf), selector, batch_size,
                                        seed=seed, num_replicas=num_replicas, rank=rank, **loader_kw)
        self.score_loader = scoring_loader(_FileDataset(data.train_files, labels, eval_tf), selector, eval_batch_size,
                                           num_replicas=num_replicas, rank=rank, **loader_kw)
        test = _FileDataset(data.test_files, data.test_y.tolist(), eval_tf)
        shard = list(range(rank, len(test), num_replicas))
        self.test_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test, shard), batch_size=eval_batch_size,
                                                       **loader_kw)
        self.test_sharded = True

    def set_epoch(self, epoch: int) -> None:
        self.train_loader.batch_sampler.set_epoch(epoch)

    @property
    def sampler(self):
        return self.train_loader.batch_sampler

    def __len__(self) -> int:
        return len(self.train_loader)

    def _moved(self, loader) -> Iterator:
        for batch in loader:
            yield tuple(t.to(self.device, non_blocking=True) for t in batch)

    def train(self) -> Iterator:
        return self._moved(self.train_loader)

    def score(self) -> Iterator:
        return self._moved(self.score_loader)

    def test(self) -> Iterator:
        return self._moved(self.test_loader)


def make_batches(config, data, selector, device: torch.device, num_replicas: int, rank: int,
                 augment: Optional[bool] = None):
    """The batch source for ``config.loader`` and the data's kind."""
    common = dict(batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
                  device=device, num_replicas=num_replicas, rank=rank)
    if config.loader == "dali":
        return DaliBatches(data, selector, image_size=config.image_size, workers=config.workers, **common)
    if data.kind == "files":
        return FileBatches(data, selector, image_size=config.image_size, workers=config.workers, **common)
    return TensorBatches(data, selector, augment=True if augment is None else augment, **common)

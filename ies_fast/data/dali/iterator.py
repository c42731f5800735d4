"""A thin PyTorch iterator over a pipeline built by this package: each epoch
follows the sampler's current index list (its length changes with the kept
set), the last batch is partial, nothing is dropped or repeated."""
from __future__ import annotations


import torch
from nvidia.dali.backend import TensorListGPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type


def _to_torch(tl, device: torch.device, stream) -> torch.Tensor:
    t = tl.as_tensor()
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
    return feed_ndarray(t, out, cuda_stream=stream)


class DALIKeptIterator:
    """Yields ``(x, y, index)`` torch tensors for one epoch per ``iter()``.

    ``x`` is float ``[B, C, H, W]`` (a channels-last view when the pipeline was
    built with ``channels_last=True``), ``y`` and ``index`` are int64 ``[B]``; on
    the GPU when the pipeline runs there. Pass ``selector`` to check that the
    pipeline was built for it. An empty index list ends the epoch at once
    (the pipeline is not run). ``set_epoch`` is forwarded to the sampler."""

    def __init__(self, pipeline, selector=None):
        source = getattr(pipeline, "ies_source", None)
        if source is None:
            raise TypeError("pipeline must be built by ies_fast.data.dali (array_pipeline / imagenet_pipeline)")
        if selector is not None and source.selector is not selector:
            raise ValueError("this pipeline was built for another selector: build one with this selector")
        self.pipeline = pipeline
        self.source = source
        self.channels_last = bool(getattr(pipeline, "ies_channels_last", False))
        gpu = pipeline.device_id is not None and pipeline.device_id >= 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", pipeline.device_id) if gpu else torch.device("cpu")
        self._dirty = False  # the pipeline ran since its last reset
        self._finished = True  # the last epoch ran to its end
        self._len = None

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source.sampler, "set_epoch"):
            self.source.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches in the coming epoch (no skipped files counted)."""
        n = len(self.source.sampler) if self.source.sampler is not None else self.source.num_samples
        return -(-n // self.source.batch_size)

    def _drain(self) -> None:
        """Finish an epoch left early: feed nothing more and discard the batches
        DALI already prefetched, so the next epoch starts clean."""
        self.source.cursor = self.source.order.size
        try:
            while True:
                self.pipeline.run()
        except StopIteration:
            pass

    def __iter__(self):
        if self._dirty:
            if not self._finished:
                self._drain()
            self.pipeline.reset()
            self._dirty = False
        if self.source.start_epoch() == 0:
            return
        self._dirty, self._finished = True, False
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        while True:
            try:
                outs = self.pipeline.run()
            except StopIteration:
                self._finished = True
                return
            except RuntimeError as e:
                raise self.source.explain(e) if hasattr(self.source, "explain") else e
            x, y, index = (_to_torch(o, self.device if isinstance(o, TensorListGPU) else torch.device("cpu"), stream)
                           for o in outs)
            if self.channels_last:
                x = x.permute(0, 3, 1, 2)  # NHWC memory, NCHW shape: torch's channels_last
            if self.device.type == "cuda":
                y, index = y.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
            yield x, y.long(), index.long()

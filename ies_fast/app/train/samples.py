"""What a run learns about each training sample: :class:`SampleRecord` keeps, on the
training device, per-sample counters updated once per epoch from tensors the
selector already gives (its removed mask, the losses it recorded this epoch), and
writes them as ``samples.parquet`` (``samples.csv`` when pyarrow is missing): one
row per training sample, at the end of a run (the counters themselves travel in
every checkpoint, so a resumed run's table is whole). It also gives the kept
fraction per class each epoch.

Columns (``docs/real_data.md`` uses them to find noisy labels):

- ``index``, ``label`` (as trained), ``true_label`` (before ``--label-noise``), ``flipped``;
- ``first_mastered_epoch``: the epoch (from 1) at whose end the sample was first
  left out of the next epoch's backward pass; -1 if never;
- ``epochs_removed``: epochs it skipped backprop; ``times_came_back``: how often it
  was trained again after being left out (while removal was on);
- ``removed_at_end``: left out of the epoch after the last one;
- ``last_score``: the selector's ``sample_scores()`` at the last epoch it gave one for
  the sample: IES's mean |Δ^N loss| over the last ``window`` epochs, at the last
  epoch the sample's loss was recorded (InfoBatch: its loss score; NaN where the
  selector has none or the history is too short);
- ``mean_loss`` / ``last_loss``: over the epochs its loss was recorded (trained or scored).

No Python loop over samples and no host read inside a training step: the updates
are two in-place passes per epoch (``ring.fold_removed`` and ``ring.fold_epoch_report``:
native CPU ops where built, the same whole-tensor torch operations elsewhere).
"""
from __future__ import annotations

import io
import math
import os
from typing import Optional

import numpy as np
import torch

from ...backend import resolve_backend
from ...checks import memory_bytes
from ...io import run_folder
from ...ops import ring as ring_ops
from ...selectors.ies import IES

COLUMNS = ("index", "label", "true_label", "flipped", "first_mastered_epoch", "epochs_removed", "times_came_back",
           "removed_at_end", "last_score", "mean_loss", "last_loss")

_STATE = ("first_mastered", "epochs_removed", "came_back", "prev_removed", "loss_sum", "loss_count", "last_loss",
          "last_score")


class SampleRecord:
    """Per-sample counters of one run (see the module docstring). ``labels`` are the
    training labels, ``true_labels`` the clean ones (``None``: no noise). Reads the
    selector only through its public interface (``removed_mask``, ``removal_enabled``,
    ``epoch_losses``, ``sample_scores``; for an IES, its ring from ``state_tensors()``
    with ``order`` and ``window`` instead of the last two)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, device: torch.device,
                 true_labels: Optional[torch.Tensor] = None):
        n = labels.numel()
        self.device = device
        self.backend = resolve_backend("auto", device)  # "native": the counters' one-pass CPU ops
        self.labels = labels.to(device)
        self.true_labels = self.labels if true_labels is None else true_labels.to(device)
        self.num_classes = num_classes
        self.class_count = torch.bincount(self.labels, minlength=num_classes)
        # 2 * label in the narrowest integer type: + removed (bool) gives one bincount key per (class, removed)
        narrow = torch.uint8 if num_classes <= 128 else torch.int16 if num_classes <= 16384 else torch.int64
        self._class_key = self.labels.to(narrow) * 2
        self.first_mastered = torch.full((n,), -1, dtype=torch.int32, device=device)
        self.epochs_removed = torch.zeros(n, dtype=torch.int32, device=device)
        self.came_back = torch.zeros(n, dtype=torch.int32, device=device)
        self.prev_removed = torch.zeros(n, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.loss_count = torch.zeros(n, dtype=torch.int32, device=device)
        self.last_loss = torch.full((n,), math.nan, dtype=torch.float32, device=device)
        self.last_score = torch.full((n,), math.nan, dtype=torch.float32, device=device)

    def start_epoch(self, epoch: int, selector) -> torch.Tensor:
        """Count the epoch's removed samples (``epoch`` from 0); returns the kept
        fraction per class (float64 ``[C]`` on the device; the caller reads it once)."""
        removed = selector.removed_mask()
        ring_ops.fold_removed(self.backend, removed, self.prev_removed, self.epochs_removed, self.came_back,
                              self.first_mastered, epoch, selector.removal_enabled)
        by_class = torch.bincount(self._class_key + removed, minlength=2 * self.num_classes)  # no sync
        return by_class[0::2].double() / self.class_count.clamp_min(1).double()  # kept / class size

    def observe_epoch(self, selector) -> None:
        """Fold in the losses ``selector`` recorded this epoch (before its ``step()``):
        ``fold_report(epoch_losses(), sample_scores())``; for an :class:`~ies_fast.IES`
        the same from one pass over its ring (:func:`_ring_of`), bit for bit."""
        counters = (self.loss_sum, self.loss_count, self.last_loss, self.last_score)
        ring = _ring_of(selector, self.labels.numel())
        if ring is not None:
            ring_ops.fold_epoch_report(*ring, *counters)
        else:
            ring_ops.fold_report(selector.epoch_losses(), selector.sample_scores(), *counters)

    def columns(self, selector) -> dict:
        """The table as numpy columns (one host copy of each)."""
        removed_next = selector.removed_mask()
        mean = torch.where(self.loss_count > 0, self.loss_sum / self.loss_count.clamp_min(1).double(),
                           torch.full_like(self.loss_sum, math.nan))
        cols = {
            "index": torch.arange(self.labels.numel()),
            "label": self.labels, "true_label": self.true_labels, "flipped": self.labels != self.true_labels,
            "first_mastered_epoch": self.first_mastered, "epochs_removed": self.epochs_removed,
            "times_came_back": self.came_back, "removed_at_end": removed_next,
            "last_score": self.last_score,
            "mean_loss": mean.float(), "last_loss": self.last_loss,
        }
        return {k: cols[k].cpu().numpy() for k in COLUMNS}

    def state_dict(self) -> dict:
        return {k: getattr(self, k).cpu() for k in _STATE}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters saved by :meth:`state_dict` (checked whole before any is applied)."""
        for k in _STATE:
            mine, theirs = getattr(self, k), state.get(k)
            if not isinstance(theirs, torch.Tensor) or theirs.shape != mine.shape or theirs.dtype != mine.dtype:
                raise ValueError(f"the checkpoint's per-sample record has a bad {k!r}")
        for k in _STATE:
            getattr(self, k).copy_(state[k])


def _ring_of(selector, n: int) -> Optional[tuple]:
    """``(backend, hist, count, order, window)`` where ``selector`` is an :class:`~ies_fast.IES`
    whose ``epoch_losses()`` and ``sample_scores()`` are IES's own (both are
    ``ring.epoch_report`` of these) and whose ring holds all ``n`` samples; else ``None``."""
    if not (isinstance(selector, IES) and type(selector).epoch_losses is IES.epoch_losses
            and type(selector).sample_scores is IES.sample_scores):
        return None
    state = selector.state_tensors()
    if state["hist"].shape[0] != n:
        return None
    return selector.kernel_backend, state["hist"], state["count"], selector.order, selector.window


def write_samples(columns: dict, out: str) -> str:
    """Write the table to ``out/samples.parquet`` (pyarrow) or ``out/samples.csv``
    (built in memory, then written atomically and never through a link: a reader
    never sees half of one); returns the path."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pa = None
    path = os.path.join(out, "samples.parquet" if pa is not None else "samples.csv")
    buf = io.BytesIO()
    if pa is not None:
        pq.write_table(pa.table({k: np.asarray(v) for k, v in columns.items()}), buf)
    else:
        names = list(columns)
        table = np.column_stack([np.asarray(columns[k], dtype=np.float64) for k in names])
        fmt = ["%.9g" if np.asarray(columns[k]).dtype.kind == "f" else "%d" for k in names]
        np.savetxt(buf, table, delimiter=",", header=",".join(names), comments="", fmt=fmt)
    return run_folder.write_bytes(path, buf.getvalue())


#: the most rows a samples table may have when read back (ImageNet-21k: 14M samples; 88 bytes a row)
MAX_SAMPLE_ROWS = 2**25
#: the largest samples file read back (a parquet file of MAX_SAMPLE_ROWS rows is ~1 GiB)
MAX_SAMPLES_BYTES = 2 * 2**30
_BOOL_COLUMNS = ("flipped", "removed_at_end")
_FLOAT_COLUMNS = ("last_score", "mean_loss", "last_loss")


class SamplesFileError(ValueError):
    """A samples table that is not one this package wrote (message names the file)."""


def read_samples(path: str, max_rows: Optional[int] = None) -> dict:
    """The columns of a ``samples.parquet`` or ``samples.csv`` as numpy arrays, read
    like a run folder's files (regular files only, never through a link, at most
    :data:`MAX_SAMPLES_BYTES`; a parquet file's row count checked from its footer
    before any column is read). Every column of :data:`COLUMNS` must be there,
    numeric, of one length and without nulls (NaN only in the float ones);
    :class:`SamplesFileError` otherwise."""
    path = os.fspath(path)
    max_rows = MAX_SAMPLE_ROWS if max_rows is None else max_rows
    data = run_folder.read_bytes(path, min(MAX_SAMPLES_BYTES, memory_bytes() // 4))
    try:
        cols = _parse_parquet(data, max_rows) if path.endswith(".parquet") else _parse_csv(data, max_rows)
    except SamplesFileError as exc:
        raise SamplesFileError(f"{path}: {exc}") from None
    except Exception as exc:  # pyarrow's and numpy's parse errors are of many types
        raise SamplesFileError(f"{path} is not a samples table ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return _checked_columns(cols, path)


def _parse_parquet(data: bytes, max_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(pa.BufferReader(data))
    if f.metadata.num_rows > max_rows:
        raise SamplesFileError(f"{f.metadata.num_rows} rows, more than the {max_rows} allowed: refused unread")
    names = [n for n in f.schema_arrow.names if n in COLUMNS]
    table = f.read(columns=names)
    nulls = [n for n in names if table.column(n).null_count]
    if nulls:
        raise SamplesFileError(f"column {nulls[0]!r} has {table.column(nulls[0]).null_count} nulls")
    return {name: table.column(name).to_numpy() for name in names}


def _parse_csv(data: bytes, max_rows: int) -> dict:
    text = data.decode("ascii")
    head, _, body = text.partition("\n")
    names = head.strip().split(",")
    if body.count("\n") > max_rows:
        raise SamplesFileError(f"more than the {max_rows} rows allowed: refused")
    table = np.loadtxt(io.StringIO(body), delimiter=",", ndmin=2, dtype=np.float64)
    if table.size and table.shape[1] != len(names):
        raise SamplesFileError(f"{table.shape[1]} values a row under {len(names)} column names")
    table = table.reshape(-1, len(names))
    cols = {name: table[:, i] for i, name in enumerate(names) if name in COLUMNS}
    for name, col in cols.items():
        if name not in _FLOAT_COLUMNS:
            if not np.all(np.isfinite(col)) or np.any(col != np.round(col)):
                raise SamplesFileError(f"column {name!r} holds values that are not integers")
            cols[name] = col.astype(bool) if name in _BOOL_COLUMNS else col.astype(np.int64)
    return cols


def _checked_columns(cols: dict, path: str) -> dict:
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise SamplesFileError(f"{path} has no column {missing[0]!r} (a samples table has {', '.join(COLUMNS)})")
    n = len(cols["index"])
    for name in COLUMNS:
        col = cols[name]
        if col.ndim != 1 or len(col) != n or col.dtype.kind not in "biuf":
            raise SamplesFileError(f"{path}: column {name!r} is {col.dtype} of shape {list(col.shape)}, not numbers "
                                   f"for each of the {n} samples")
        if name not in _FLOAT_COLUMNS and col.dtype.kind == "f":
            raise SamplesFileError(f"{path}: column {name!r} holds floats or nulls where integers belong")
    return cols

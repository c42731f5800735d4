"""What a run learns about each training sample: :class:`SampleRecord` keeps, on the
training device, per-sample counters updated once per epoch from tensors the
selector already holds (its removed mask, the losses it recorded), and writes them
as ``samples.parquet`` (``samples.csv`` when pyarrow is missing): one row per
training sample. It also gives the kept fraction per class each epoch.

Columns (``docs/real_data.md`` uses them to find noisy labels):

- ``index``, ``label`` (as trained), ``true_label`` (before ``--label-noise``), ``flipped``;
- ``first_mastered_epoch``: the epoch (from 1) at whose end the sample was first
  left out of the next epoch's backward pass; -1 if never;
- ``epochs_removed``: epochs it skipped backprop; ``times_came_back``: how often it
  was trained again after being left out (while removal was on);
- ``removed_at_end``: left out of the epoch after the last one;
- ``last_score``: IES's mean |Δ^N loss| over the last ``window`` epochs, at the last
  epoch the sample's loss was recorded (InfoBatch: its loss score; NaN where the
  selector has none or the history is too short);
- ``mean_loss`` / ``last_loss``: over the epochs its loss was recorded (trained or scored).

No Python loop over samples and no host read inside a training step: the updates
are a few whole-tensor operations per epoch.
"""
from __future__ import annotations

import io
import math
import os
from typing import Optional

import numpy as np
import torch

from ...checks import memory_bytes
from ...io import run_folder

COLUMNS = ("index", "label", "true_label", "flipped", "first_mastered_epoch", "epochs_removed", "times_came_back",
           "removed_at_end", "last_score", "mean_loss", "last_loss")

_STATE = ("first_mastered", "epochs_removed", "came_back", "prev_removed", "loss_sum", "loss_count", "last_loss",
          "last_score")


def epoch_losses(selector) -> Optional[tuple]:
    """``(loss [N] float32, seen [N] bool)``: the losses ``selector`` recorded in the
    epoch it has not closed yet (call before ``selector.step()``), or ``None`` for a
    selector that keeps none (random removal)."""
    if hasattr(selector, "hist") and hasattr(selector, "count"):  # IES: the ring's current slot
        slot = (selector.count.long() % selector.hist.shape[1]).unsqueeze(1)
        loss = selector.hist.gather(1, slot).squeeze(1)
    elif hasattr(selector, "_fresh"):  # InfoBatch: the epoch's fresh losses (+ a sentinel slot)
        loss = selector._fresh[: selector.num_samples]
    else:
        return None
    return loss, torch.isfinite(loss)


def epoch_scores(selector) -> Optional[torch.Tensor]:
    """float32 ``[N]``: IES's score of each sample with this epoch's loss included
    (mean |Δ^N| over the last ``window`` losses; call before ``selector.step()``),
    NaN where the history is short or not all finite; ``None`` for other selectors."""
    if not (hasattr(selector, "hist") and hasattr(selector, "count")):
        return None
    from ...ops.ring.reference import chronological, difference_score

    span = selector.order + selector.window
    count = selector.count.long() + 1  # the current slot counted: it ends the chronological view
    history = chronological(selector.hist, count)[:, -span:]
    valid = (count >= span) & torch.isfinite(history).all(1)
    score = difference_score(torch.where(valid.unsqueeze(1), history, torch.zeros_like(history)), selector.order)
    return torch.where(valid, score, torch.full_like(score, math.nan))


class SampleRecord:
    """Per-sample counters of one run (see the module docstring). ``labels`` are the
    training labels, ``true_labels`` the clean ones (``None``: no noise)."""

    def __init__(self, labels: torch.Tensor, num_classes: int, device: torch.device,
                 true_labels: Optional[torch.Tensor] = None):
        n = labels.numel()
        self.device = device
        self.labels = labels.to(device)
        self.true_labels = self.labels if true_labels is None else true_labels.to(device)
        self.num_classes = num_classes
        self.class_count = torch.bincount(self.labels, minlength=num_classes)
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
        self.epochs_removed += removed.int()
        if selector.removal_enabled:
            self.came_back += (self.prev_removed & ~removed).int()
        new = removed & (self.first_mastered < 0)
        self.first_mastered.copy_(torch.where(new, torch.full_like(self.first_mastered, epoch),
                                              self.first_mastered))
        self.prev_removed.copy_(removed)
        kept = torch.bincount(self.labels, weights=(~removed).double(), minlength=self.num_classes)  # no sync
        return kept / self.class_count.clamp_min(1).double()

    def observe_epoch(self, selector) -> None:
        """Fold in the losses ``selector`` recorded this epoch (before its ``step()``)."""
        found, scores = epoch_losses(selector), epoch_scores(selector)
        if scores is not None:
            self.last_score.copy_(torch.where(torch.isnan(scores), self.last_score, scores))
        if found is None:
            return
        loss, seen = found
        self.loss_sum += torch.where(seen, loss.double(), torch.zeros_like(self.loss_sum))
        self.loss_count += seen.int()
        self.last_loss.copy_(torch.where(seen, loss.float(), self.last_loss))

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
            "last_score": self._last_score(selector), "mean_loss": mean.float(), "last_loss": self.last_loss,
        }
        return {k: cols[k].cpu().numpy() for k in COLUMNS}

    def _last_score(self, selector) -> torch.Tensor:
        if hasattr(selector, "hist"):
            return self.last_score
        if hasattr(selector, "scores"):  # InfoBatch: its loss score
            return selector.scores[: selector.num_samples].float()
        return self.last_score  # NaN: random removal scores nothing

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

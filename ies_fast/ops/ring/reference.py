"""Ring-buffer record and end-of-epoch Δ^N test, in plain torch.

State layout (shared by every backend):

* ``hist``  float32 ``[S, L]``, ``L`` = :func:`ies_fast.selectors.rule.history_length`
  (``order + window + k - 1``, +1 for ``eligibility="official"``): the last ``L`` epoch losses
  of each sample; slot ``count % L`` holds the current epoch's value, which is
  ``-inf`` until the sample is observed (``NOT_SEEN``) and ``+inf`` once a
  non-finite loss was observed (``NONFINITE``).
* ``count`` uint8 ``[S]``: recorded epochs, kept in ``[0, 2L)`` (``L`` is
  subtracted on reaching ``2L``), so ``count % L`` is the write slot and
  ``count >= L`` means eligible.
* ``mastered`` bool ``[S]``.
"""
from __future__ import annotations

import torch

NOT_SEEN = float("-inf")
NONFINITE = float("inf")

#: order of the statistics vector returned by :func:`close_epoch_torch`
EPOCH_STATS = ("observed", "nonfinite", "mastered", "reincluded", "newly_mastered", "eligible")


def record_torch(hist: torch.Tensor, count: torch.Tensor, loss: torch.Tensor, index: torch.Tensor) -> None:
    """Max-reduce ``loss`` into the current-epoch slot of each ``index`` (no host sync).

    ``index`` is int64; rows with ``index < 0`` are skipped. A non-finite loss is
    recorded as ``NONFINITE``.
    """
    L = hist.shape[1]
    skip = index < 0
    safe = torch.where(skip, torch.zeros_like(index), index)
    slot = count.index_select(0, safe).long() % L
    value = loss.detach().float()
    value = torch.where(torch.isfinite(value), value, torch.full_like(value, NONFINITE))
    value = torch.where(skip, torch.full_like(value, NOT_SEEN), value)
    hist.view(-1).scatter_reduce_(0, safe * L + slot, value, "amax", include_self=True)


def current_slot(hist: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot, value)``: the write slot ``count % L`` of each sample (int64 ``[S, 1]``, for
    ``gather``/``scatter_``) and the value it holds (fp32 ``[S]``): the epoch's loss so
    far, ``NOT_SEEN`` or ``NONFINITE``. The one place that reads the current slot."""
    slot = (count.long() % hist.shape[1]).unsqueeze(1)
    return slot, hist.gather(1, slot).squeeze(1)


def chronological(hist: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[S, L]`` view of the ring, oldest first, ending with slot ``(count - 1) % L``."""
    L = hist.shape[1]
    offsets = torch.arange(L, device=hist.device)
    order = (count.long().unsqueeze(1) - L + offsets) % L
    return hist.gather(1, order)


def window_total(window_losses: torch.Tensor, order: int, window: int, k: int) -> torch.Tensor:
    """``T`` of the decision arithmetic (:mod:`ies_fast.selectors.rule`) for each row of
    chronologically ordered fp32 losses ``[S, order + window + k - 1]``: iterated
    fp32 differences, each window's ``|Δ^order|`` added left to right, the ``k``
    window sums added oldest first. Column loops, so the order of additions is fixed."""
    d = window_losses
    for _ in range(order):
        d = d[:, 1:] - d[:, :-1]
    a = d.abs()
    total = None
    for j in range(k):
        s = a[:, j]
        for i in range(1, window):
            s = s + a[:, j + i]
        total = s if total is None else total + s
    return total


def difference_score(window_losses: torch.Tensor, order: int) -> torch.Tensor:
    """Mean ``|Δ^order|`` of each row (one window, k = 1): :func:`window_total` over
    the window length. For benchmarks and inspection; decisions compare the total."""
    window = window_losses.shape[1] - order
    return window_total(window_losses, order, window, 1) / window


def epoch_report_torch(hist: torch.Tensor, count: torch.Tensor, order: int, window: int,
                       with_score: bool = True) -> tuple:
    """``(loss, score)``, fp32 ``[S]`` each, for the epoch not yet closed (read before
    :func:`close_epoch_torch`): the current slot's loss (NaN unless finite) and
    :func:`difference_score` of the ``order + window`` losses ending with it, bit for
    bit (NaN where fewer were recorded, or the score is not finite: a non-finite
    loss among them). ``with_score=False``: the score is an empty tensor."""
    loss = current_slot(hist, count)[1]
    loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("nan")))
    if not with_score:
        return loss, loss[:0]
    return loss, current_window_score(hist, count, order, window)


def fold_report(loss, score, loss_sum, loss_count, last_loss, last_score) -> None:
    """Fold one epoch's report into running per-sample counters, in place: where
    ``loss`` (fp32 ``[S]``, NaN where none) is not NaN, ``loss_sum`` (float64) gains it,
    ``loss_count`` (int32) one and ``last_loss`` (fp32) takes it (elsewhere ``loss_sum``
    gains 0.0); where ``score`` (fp32 ``[S]``) is not NaN, ``last_score`` (fp32) takes it.
    ``loss`` or ``score`` ``None``: that part is skipped."""
    if score is not None:
        torch.where(torch.isnan(score), last_score, score.float(), out=last_score)
    if loss is None:
        return
    seen = ~torch.isnan(loss)
    loss_sum.add_(loss.nan_to_num(0.0))
    loss_count.add_(seen)
    torch.where(seen, loss, last_loss, out=last_loss)


def fold_epoch_report_torch(hist, count, order: int, window: int, loss_sum, loss_count, last_loss,
                            last_score) -> None:
    """:func:`fold_report` of :func:`epoch_report_torch`: the semantics of the native
    ``fold_epoch_report``, which does both in one pass over the ring."""
    fold_report(*epoch_report_torch(hist, count, order, window), loss_sum, loss_count, last_loss, last_score)


def fold_removed_torch(removed, prev_removed, epochs_removed, came_back, first_mastered, epoch: int,
                       count_came_back: bool) -> None:
    """The removal half of per-sample counters, in place: ``epochs_removed`` (int32)
    gains ``removed`` (bool ``[S]``); ``came_back`` (int32) gains ``prev_removed &
    ~removed`` if ``count_came_back``; ``first_mastered`` (int32) takes ``epoch`` where
    removed and still negative; ``prev_removed`` (bool) takes ``removed``."""
    epochs_removed.add_(removed)
    if count_came_back:
        came_back.add_(prev_removed > removed)  # removed last epoch, trained now
    first_mastered.masked_fill_(removed & (first_mastered < 0), epoch)
    prev_removed.copy_(removed)


def current_window_score(hist: torch.Tensor, count: torch.Tensor, order: int, window: int) -> torch.Tensor:
    """The score of :func:`epoch_report_torch`, from the ring's columns: the
    ``order``-th differences around the ring (the same fp32 operations as on the
    chronological rows), then one window sum per possible first slot."""
    L, span = hist.shape[1], order + window
    cols = list(hist.t().contiguous().unbind(0))  # one copy: contiguous columns are faster to work on
    for _ in range(order):  # cyclic differences: the same fp32 operations as on the chronological rows
        cols = [cols[(j + 1) % L] - cols[j] for j in range(L)]
    mags = [c.abs() for c in cols]
    count = count.to(torch.int32)
    start = (count + (1 + L - span)) % L  # slot of the window's oldest loss
    score = torch.full_like(cols[0], float("nan"))
    for j in range(L):
        total = mags[j]
        for i in range(1, window):
            total = total + mags[(j + i) % L]
        score = torch.where(start == j, total, score)
    score = score / window
    valid = (count + 1 >= span) & torch.isfinite(score)
    return torch.where(valid, score, torch.full_like(score, float("nan")))


def close_epoch_torch(
    hist: torch.Tensor,
    count: torch.Tensor,
    mastered: torch.Tensor,
    order: int,
    window: int,
    k: int,
    threshold: float,
) -> torch.Tensor:
    """Fold the epoch's observations into the ring and recompute ``mastered`` in place:
    an eligible sample (``count >= L``) is mastered iff :func:`window_total` of its
    last ``order + window + k - 1`` losses is below the fp32 ``threshold``
    (:func:`ies_fast.selectors.rule.decision_threshold`).

    Returns an int64 tensor of :data:`EPOCH_STATS` on the state's device.
    """
    L = hist.shape[1]
    span = order + window + k - 1
    current = current_slot(hist, count)[1]
    observed = current > NOT_SEEN
    nonfinite = current == NONFINITE
    finite = observed & ~nonfinite

    new_count = count.long() + finite.long()
    new_count = torch.where(new_count >= 2 * L, new_count - L, new_count)
    new_count = torch.where(nonfinite, torch.zeros_like(new_count), new_count)

    eligible = new_count >= L
    losses = chronological(hist, new_count)[:, L - span:]
    safe = torch.where(eligible.unsqueeze(1), losses, torch.zeros_like(losses))
    passed = eligible & (window_total(safe, order, window, k) < threshold)  # threshold is an fp32 value

    was_mastered = mastered.clone()
    now = torch.where(finite, passed, torch.where(nonfinite, torch.zeros_like(passed), mastered))

    count.copy_(new_count.to(count.dtype))
    mastered.copy_(now)
    hist.scatter_(1, (new_count % L).unsqueeze(1), NOT_SEEN)

    return torch.stack(
        [
            observed.count_nonzero(),
            nonfinite.count_nonzero(),
            now.count_nonzero(),
            (was_mastered & ~now).count_nonzero(),
            (~was_mastered & now).count_nonzero(),
            eligible.count_nonzero(),
        ]
    )

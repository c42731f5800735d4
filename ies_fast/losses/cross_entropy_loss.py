"""``ies_fast.cross_entropy``: a drop-in for ``F.cross_entropy`` that also records
each sample's loss in a selector, and :func:`causal_lm_cross_entropy` for
language-model logits ``[B, T, V]``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import backend as _backend
from ..checks import check_float
from ..ops import ring as ring_ops
from ..ops.cross_entropy.reference import (
    PositionLosses,
    divisors,
    position_losses_torch,
    reduce_positions,
    sample_losses,
    sample_losses_from_sums,
)

#: F.cross_entropy's reductions, plus "sample": one loss per sample ``[B]`` (docs/semantics.md)
REDUCTIONS = ("mean", "sum", "none", "sample")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_own_args(input, target, reduction, sample_weight, lse_square_scale, softcap):
    """The arguments F.cross_entropy does not have, and that ``input`` and ``target``
    are tensors at all (everything else about them F checks itself)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor of logits, got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction (one of {', '.join(REDUCTIONS)})")
    if sample_weight is not None:
        B = input.shape[0] if input.dim() > 1 else 1
        if not isinstance(sample_weight, torch.Tensor) or tuple(sample_weight.shape) != (B,):
            raise ValueError(f"sample_weight must be a tensor of shape ({B},), one weight per sample")
    check_float("lse_square_scale", lse_square_scale, min=0)
    if softcap is not None:
        check_float("softcap", softcap, min=0, min_open=True)


#: F's message for a class-index target of another integer type, by dtype
_TORCH_TYPE_NAMES = {torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.bool: "Bool"}


def _check_index_and_target(index, target) -> None:
    """``index``, our third positional, is not F's ``weight`` (a float tensor there
    would be silently taken for indices) and holds data; class-index targets are
    int64 or uint8, as F requires (it raises the same RuntimeError)."""
    if isinstance(index, torch.Tensor):
        if index.is_floating_point() or index.is_complex():
            raise TypeError(f"index must hold the samples' integer dataset indices, got a {index.dtype} tensor: "
                            f"ies_fast.cross_entropy's third positional argument is index, where F.cross_entropy's "
                            f"is weight (pass class weights as weight=...)")
        if index.device.type == "meta":
            raise ValueError("index is on the meta device (no data): it must hold the samples' dataset indices")
    if not target.is_floating_point() and target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got "
                           f"{_TORCH_TYPE_NAMES.get(target.dtype, str(target.dtype))}")


def _check_like_torch(input, target, weight, ignore_index, label_smoothing):
    """Raise what F.cross_entropy raises for these shapes/dtypes/options, without
    touching data (it runs on meta tensors): the kernel path's argument checks."""
    if weight is not None:
        C = input.shape[1] if input.dim() > 1 else input.shape[0]
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != C:
            raise RuntimeError(
                f"weight tensor should be defined either for all {C} classes or no classes but got weight "
                f"tensor of shape: {list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
            )
    meta = lambda t: None if t is None else torch.empty(t.shape, dtype=t.dtype, device="meta")  # noqa: E731
    F.cross_entropy(
        meta(input), meta(target), weight=meta(weight), ignore_index=ignore_index,
        reduction="none", label_smoothing=label_smoothing,
    )


def _target_in_range(target, num_classes, ignore_index, selector) -> torch.Tensor:
    """Targets out of ``[0, C)`` (not ``ignore_index``), where F.cross_entropy cannot
    be left to catch them (a kernel must not read out of bounds; a CUDA device assert
    kills the process): on CPU, or on CUDA without a selector, raise F's IndexError;
    on CUDA with a selector count the bad rows for the selector's next ``step()`` and
    treat them as ignored (no host sync)."""
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if target.device.type == "cpu" or selector is None:
        if bool(bad.any()):
            raise IndexError(f"Target {int(target[bad][0])} is out of bounds.")
        return target
    selector.defer_bad_targets(bad.sum())
    return torch.where(bad, torch.full_like(target, ignore_index), target)


def _kernel_takes(kernel, x, target) -> bool:
    """The Triton kernel takes class-index targets in fp32/bf16/fp16 (every option);
    fp64 logits and probability targets go to the torch path."""
    return kernel == "triton" and x.dtype != torch.float64 and not target.is_floating_point()


def _kernel_positions(x, target, weight, ignore_index, eps, z_scale, softcap, selector, recorded):
    """Position losses from the fused Triton kernel, reading the logits in place
    (any layout); the selector's per-sample loss is formed in the same pass: a direct
    ring write when each sample has one position, else the per-sample sums.
    Returns (losses, ring_written)."""
    from ..ops.cross_entropy.triton import KernelOptions, position_losses

    B, C = x.shape[0], x.shape[1]
    x = x if x.dim() <= 3 else x.flatten(2)
    t = _target_in_range(target.reshape(-1).to(torch.int64), C, ignore_index, selector)
    if weight is not None:
        weight = weight.float().contiguous()
    opt = KernelOptions(ignore_index, eps, weight, z_scale, softcap)
    ring = segments = None
    if selector is not None and B:
        own = selector.ring() if x.dim() == 2 else None
        if own is not None and own.hist.device == x.device:
            ring = (own.hist, own.count, recorded)
        else:
            segments = torch.zeros(4, B, dtype=torch.float32, device=x.device)
    ce, z = position_losses(x, t, opt, ring, segments)
    if segments is not None:
        loss, ok = sample_losses_from_sums(segments[0], segments[1], segments[2] if z_scale else None, segments[3])
        selector.record(loss, torch.where(ok.to(recorded.device), recorded, -1))
    den, valid = divisors(t.view(B, -1), weight, ignore_index, ce.dtype)
    pos = PositionLosses(ce.view(B, -1), z.view(B, -1) if z is not None else None, den, valid)
    return pos, selector is not None


def _plain_cpu_case(kernel, x, target, weight, reduction, eps, sample_weight, lse_square_scale, softcap) -> bool:
    """The common CPU call (2-D logits, class indices, no extras): :func:`_plain_cpu`."""
    return (
        kernel != "triton"
        and x.device.type == "cpu"
        and x.dim() == 2
        and target.dtype == torch.int64
        and weight is None
        and not eps
        and sample_weight is None
        and not lse_square_scale
        and softcap is None
        and reduction != "sample"
    )


def _record_nll_ring(selector, index, target, B: int):
    """The selector's ring when the plain CPU call can record with the native
    ``record_nll`` (one op, which also does the selector's index range check): a
    selector whose :meth:`~ies_fast.selectors.base.Selector.ring` is on the CPU and
    records natively in a process whose ``_C`` has ``record_nll``, a non-empty batch,
    an int64 CPU ``index`` [B] and a ``target`` [B]; else ``None``, and the call goes
    through ``selector.check_index`` and the torch ops (same values and errors)."""
    if not (B > 0 and type(index) is torch.Tensor and index.dtype == torch.int64
            and index.shape == target.shape == (B,) and index.device.type == "cpu"):
        return None
    ring = selector.ring()
    if ring is None or ring.backend != "native" or ring.hist.device.type != "cpu" or not ring_ops.has_record_nll():
        return None
    return ring


def _plain_cpu_record_nll(x, target, ignore_index: int, reduction, index, ring):
    """:func:`_plain_cpu` with the selector's record as one native op called between
    F's two: it checks ``index`` (the selector's ValueError) and the targets (F's
    IndexError) before writing anything, then max-writes ``-logp[b, target[b]]`` of
    each non-ignored row into the ring, the value ``F.nll_loss(reduction="none")``
    gives (bit for bit; ``tests/ops/test_native_record_nll.py``)."""
    logp = F.log_softmax(x, dim=1)
    ring_ops.record_nll(ring.hist, ring.count, logp.detach(), target, index, ignore_index, validate=True)
    return F.nll_loss(logp, target, ignore_index=ignore_index, reduction=reduction)


def _plain_cpu(x, target, ignore_index, reduction, recorded, selector):
    """F.cross_entropy's own two ops (log_softmax, nll_loss: same values, gradients
    and errors, two autograd nodes) and, with a selector, each row's loss read from
    the detached log-probabilities and written into the ring. Every extra op costs
    ~5 µs at B=256 on one core, so ignored rows are masked out of the record only
    when a cheap read of the smallest target says there can be some."""
    logp = F.log_softmax(x, dim=1)
    out = F.nll_loss(logp, target, ignore_index=ignore_index, reduction=reduction)  # raises on a bad target
    if selector is not None and target.numel():
        rows = F.nll_loss(logp.detach(), target, ignore_index=ignore_index, reduction="none")
        if ignore_index >= 0 or int(target.min()) == ignore_index:
            recorded = recorded.masked_fill(target == ignore_index, -1)
        selector.record(rows, recorded)
    return out


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    index: Optional[torch.Tensor] = None,
    selector=None,
    *,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    sample_weight: Optional[torch.Tensor] = None,
    lse_square_scale: float = 0.0,
    softcap: Optional[float] = None,
    scoring: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.cross_entropy(input, target, weight=..., ignore_index=..., reduction=...,
    label_smoothing=...)`` with the same values, gradients and errors, for every
    input F accepts: ``[B, C]`` or ``[C]`` logits, K-dimensional ``[B, C, d1, ...]``
    with targets ``[B, d1, ...]``, class indices or class probabilities (soft labels
    shaped like ``input``); fp32/fp64 computed as given, bf16/fp16 in fp32 and
    returned in the input's dtype.

    With a ``selector`` and the samples' dataset ``index`` ``[B]``, each sample's
    loss is recorded for the epoch: the mean over its valid positions, weighted as
    F's ``mean`` is (``docs/semantics.md``); samples with no valid position are not
    recorded. Extras, all off by default: ``reduction="sample"`` returns those
    per-sample losses ``[B]`` (differentiable); ``sample_weight`` ``[B]`` multiplies
    each sample's terms before the reduction (InfoBatch's rescaling; the ``mean``
    divisor is unchanged); ``lse_square_scale`` adds the z-loss
    ``scale * logsumexp^2`` and ``softcap`` caps logits as ``softcap * tanh(x /
    softcap)`` (Liger's meanings); ``scoring=True`` marks a forward-only scoring pass.
    ``backend``: ``auto`` (Triton kernel on CUDA, torch on CPU), ``torch``, ``native``
    (torch math; the ring write is the selector's own op), ``triton``.
    """
    _check_own_args(input, target, reduction, sample_weight, lse_square_scale, softcap)
    _check_index_and_target(index, target)
    if selector is not None and index is None:
        raise ValueError("index is required when a selector is given (the samples' dataset indices)")
    if selector is not None and getattr(selector, "num_exits", 1) > 1:
        raise ValueError(
            "selector has num_exits > 1: feed its [B, H] per-exit losses through selector.observe "
            "(see ies_fast.per_exit_cross_entropy), not cross_entropy"
        )
    unbatched = input.dim() == 1
    if unbatched:  # F's [C] logits with a 0-D index target or [C] probabilities
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    if not target.is_floating_point() and target.dtype != torch.int64:
        target = target.long()  # uint8 (F takes it) would index weight as a mask

    if backend in ("auto", "torch") and input.device.type == "cpu":
        kernel = "torch"  # the CPU loss is torch math on every non-Triton backend (saves a resolve per call)
    else:
        kernel = _backend.resolve_backend(backend, input.device)
    x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
    eps = float(label_smoothing)
    plain = _plain_cpu_case(kernel, x, target, weight, reduction, eps, sample_weight, lse_square_scale, softcap)
    ring = _record_nll_ring(selector, index, target, x.shape[0]) if plain and selector is not None else None
    if ring is not None:
        out = _plain_cpu_record_nll(x, target, int(ignore_index), reduction, index, ring)
    elif plain:
        recorded = selector.check_index(index, input.shape[0]) if selector is not None else None
        out = _plain_cpu(x, target, ignore_index, reduction, recorded, selector)
    else:
        recorded = selector.check_index(index, input.shape[0]) if selector is not None else None
        out = _general(kernel, input, x, target, weight, ignore_index, reduction, eps, sample_weight,
                       float(lse_square_scale), softcap, selector, recorded)
    if scoring and selector is not None:
        selector.count_scored(input.shape[0])
    if out.dtype != input.dtype:
        out = out.to(input.dtype)
    return out.squeeze(0) if unbatched and reduction in ("none", "sample") else out


def _general(kernel, input, x, target, weight, ignore_index, reduction, eps, sample_weight, z_scale, softcap,
             selector, recorded):
    """Every other case: position losses from the Triton kernel or torch, the
    per-sample rule for the selector, then the reduction."""
    ring_written = False
    if _kernel_takes(kernel, input, target):
        _check_like_torch(input, target, weight, ignore_index, eps)
        pos, ring_written = _kernel_positions(
            input, target, weight, int(ignore_index), eps, z_scale, softcap, selector, recorded
        )
    else:
        if isinstance(weight, torch.Tensor) and weight.dtype == input.dtype:  # F's dtype rule, then fp32 math
            weight = weight.to(x.dtype)
        if selector is not None and x.device.type == "cuda" and not target.is_floating_point():
            target = _target_in_range(target, x.shape[1], ignore_index, selector)  # no device assert, no sync
        pos = position_losses_torch(x, target, weight, ignore_index, eps, z_scale, softcap)
    if selector is not None and not ring_written and input.shape[0]:
        with torch.no_grad():
            detached = PositionLosses(*(t.detach() if t is not None else None for t in pos))
            loss, ok = sample_losses(detached)
        selector.record(loss, torch.where(ok.to(recorded.device), recorded, -1))
    out_shape = target.shape if not target.is_floating_point() else (input.shape[0],) + tuple(input.shape[2:])
    return reduce_positions(pos, reduction, sample_weight, out_shape)


def causal_lm_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    index: Optional[torch.Tensor] = None,
    selector=None,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    **kwargs,
) -> torch.Tensor:
    """Cross-entropy of language-model logits ``[B, T, V]`` against ``labels``
    ``[B, T]``, as Hugging Face's causal-LM loss: with ``shift=True`` position ``t``
    predicts ``labels[:, t + 1]``; ``ignore_index=-100`` marks padding/prompt tokens.

    ``reduction="mean"`` is the mean over all valid tokens of the batch, ``"sum"``
    their sum, ``"none"`` the token losses ``[B, T - 1]`` (``[B, T]`` unshifted),
    ``"sample"`` each sequence's mean token loss ``[B]`` (what a selector records).
    Other keywords (``selector`` / ``index``, ``label_smoothing``, ``sample_weight``,
    ``lse_square_scale``, ``softcap``, ``weight``, ``scoring``, ``backend``) are
    :func:`cross_entropy`'s."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(
            "logits must be a 3-D tensor [batch, tokens, vocab], got "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"labels must be a tensor of shape {tuple(logits.shape[:2])} (batch, tokens), got "
            f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}"
        )
    if labels.is_floating_point():
        raise TypeError(f"labels must hold token ids (int64), got {labels.dtype}")
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return cross_entropy(
        logits.transpose(1, 2), labels, index, selector, ignore_index=ignore_index, reduction=reduction, **kwargs
    )

"""Kernel throughput: per-sample cross-entropy + ring write (+ Δ^N test).

Variants, on the same inputs in the same run:

* ``fused_triton``: ``ies_fast.cross_entropy(..., selector=sel, backend="triton")``
  (CUDA, or CPU under ``TRITON_INTERPRET=1`` only: interpreted Triton is far too
  slow to time meaningfully). The kernel computes the loss (and gradient) and
  max-writes it into the sample's ring slot; the Δ^N test runs once per epoch in
  ``IES.step()`` (see ``docs/kernels.md``);
* ``torch_eager``: the same work as separate torch ops: ``F.cross_entropy(
  reduction="none")``, then the ring write ``ies_fast.ops.ring.reference.record_torch``;
* ``torch_compile``: that function under ``torch.compile``;
* ``torch_eager_test``: ``torch_eager`` plus the Δ^N test of the batch's rows
  (gather, chronological order, difference score), the per-step test as the
  issue words it: more work than the others do;
* ``native_record``: ``F.cross_entropy`` + the native ring write (``ies_fast._C``),
  where it is built;
* ``liger``: Liger-Kernel's fused cross-entropy + the torch ring write, where
  ``liger_kernel`` is installed.

Bytes moved (the same count for every variant: the minimum the loss and ring
write must move): logits read (+ gradient write for forward+backward), targets
and indices (int64), and per row the count byte and a read-modify-write of one
fp32 ring slot.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import benchutil
from ies_fast import IES, backend
from ies_fast.ops.ring.reference import chronological, difference_score, record_torch

VARIANTS = ("fused_triton", "torch_eager", "torch_compile", "torch_eager_test", "native_record", "liger")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = {
    "smoke": {"N": (256,), "C": (10,)},
    "small": {"N": (4096,), "C": (10, 1000)},
    "gpu": {"N": (4096, 65536), "C": (10, 100, 1000, 32768, 131072)},
}
DELTA = 1e-3


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    size = metafunc.config.getoption("size")
    params = []
    for n in SHAPES[size]["N"]:
        for c in SHAPES[size]["C"]:
            for dtype in DTYPES:
                for direction in ("fwd", "fwdbwd"):
                    for variant in VARIANTS:
                        params.append(
                            pytest.param(
                                (variant, n, c, dtype, direction),
                                id=f"{variant}-N{n}-C{c}-{dtype}-{direction}",
                                marks=benchutil.size_marks(size),
                            )
                        )
    metafunc.parametrize("case", params)


def bytes_moved(n: int, c: int, elem: int, direction: str) -> int:
    logits = n * c * elem * (2 if direction == "fwdbwd" else 1)
    return logits + n * 8 * 2 + n * (1 + 4 + 4)


def batch_test(index, hist, count, order: int):
    """The Δ^N test of the batch's rows, as torch ops (after their ring write)."""
    rows = hist.index_select(0, index)
    seen = count.index_select(0, index).long() + 1  # counting the slot just written
    score = difference_score(chronological(rows, seen), order)
    return (seen >= hist.shape[1]) & (score < DELTA)


def eager_loss(logits, target, index, hist, count, order: int):
    losses = F.cross_entropy(logits.float(), target, reduction="none")
    record_torch(hist, count, losses.detach(), index)
    return losses, None


def eager_loss_and_test(logits, target, index, hist, count, order: int):
    losses = F.cross_entropy(logits.float(), target, reduction="none")
    record_torch(hist, count, losses.detach(), index)
    return losses, batch_test(index, hist, count, order)


def native_loss(logits, target, index, hist, count, order: int):
    losses = F.cross_entropy(logits.float(), target, reduction="none")
    torch.ops.ies_fast.record(hist, count, losses.detach(), index)
    return losses, None


def liger_loss_fn():
    from liger_kernel.transformers.functional import liger_cross_entropy

    def liger_loss(logits, target, index, hist, count, order: int):
        losses = liger_cross_entropy(logits, target, reduction="none").float()
        record_torch(hist, count, losses.detach(), index)
        return losses, None

    return liger_loss


def unavailable(variant: str, dev: torch.device):
    """Why ``variant`` cannot run here, or ``None``."""
    if variant == "fused_triton":
        if importlib.util.find_spec("ies_fast.ops.cross_entropy.triton") is None:
            return "ies_fast.ops.cross_entropy.triton not present yet"
        if not backend.triton_usable(dev):
            return "Triton needs CUDA here (on CPU only under TRITON_INTERPRET=1, too slow to time)"
    if variant == "native_record" and not backend.native_usable(dev):
        return f"native extension not built for {dev.type}"
    if variant == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel not installed"
    if variant == "liger" and dev.type != "cuda":
        return "Liger kernels need CUDA"
    return None


def peak_bytes(variant: str, n: int, c: int, elem: int, direction: str) -> int:
    if variant == "fused_triton":
        return n * c * elem * (2 if direction == "fwdbwd" else 1)
    per = elem + 4 + (4 if elem != 4 else 0)  # logits, fp32 log-softmax, fp32 copy
    if direction == "fwdbwd":
        per += 4 + elem  # fp32 gradient and the gradient in the logits' dtype
    return n * c * per


def make_op(variant, direction, logits, target, index, sel):
    """One operation of ``variant``: a zero-argument callable."""
    hist, count, order = sel.hist, sel.count, sel.order
    if variant == "fused_triton":
        import ies_fast

        reduction = "mean" if direction == "fwdbwd" else "none"

        def fused():
            return ies_fast.cross_entropy(logits, target, index, selector=sel, backend="triton", reduction=reduction)

        fn = fused
    else:
        base = {"torch_eager": eager_loss, "torch_eager_test": eager_loss_and_test,
                "native_record": native_loss}.get(variant)
        if variant == "torch_compile":
            torch._dynamo.reset()  # fresh cache per case: no recompile limit, no dynamic shapes
            base = torch.compile(eager_loss)
        elif variant == "liger":
            base = liger_loss_fn()

        def fn():
            losses, _ = base(logits, target, index, hist, count, order)
            return losses.mean() if direction == "fwdbwd" else losses

    if direction == "fwd":
        def op():
            with torch.no_grad():
                return fn()
    else:
        def op():
            logits.grad = None
            fn().backward()
    return op


def test_kernel_throughput(benchmark, case, dev, copy_gbps):
    variant, n, c, dtype_name, direction = case
    why = unavailable(variant, dev)
    if why:
        pytest.skip(why)
    dtype = DTYPES[dtype_name]
    elem = torch.finfo(dtype).bits // 8
    benchutil.skip_unless_fits(dev, peak_bytes(variant, n, c, elem, direction))

    gen = torch.Generator(device=dev).manual_seed(n + c)
    sel = IES(2 * n, delta=DELTA, device=dev)
    sel.hist.uniform_(0.1, 2.0, generator=gen)  # every row eligible, real arithmetic in the test
    sel.count.fill_(sel.history_length)
    logits = torch.randn(n, c, device=dev, dtype=dtype, generator=gen).mul_(2)  # no fp32 staging copy
    logits.requires_grad_(direction == "fwdbwd")
    target = torch.randint(0, c, (n,), device=dev, generator=gen)
    index = torch.randperm(2 * n, device=dev, generator=gen)[:n]

    moved = bytes_moved(n, c, elem, direction)
    reps = benchutil.reps_for(dev, moved / (copy_gbps * 1e9))
    op = make_op(variant, direction, logits, target, index, sel)
    try:
        op()  # warm-up: compiles / autotunes outside the timing
        benchutil.sync(dev)

        def run():
            for _ in range(reps):
                op()
            benchutil.sync(dev)

        benchmark(run)
    except torch.cuda.OutOfMemoryError:
        pytest.skip("out of device memory")

    times = benchutil.timing(benchmark, reps)
    fields = dict(
        bench="kernel", variant=variant, N=n, C=c, dtype=dtype_name, direction=direction, reps=reps,
        bytes_moved=moved, copy_gbps=copy_gbps, device=benchutil.env_info()["device"], **times,
    )
    if times:
        gbps = moved / times["time_s"] / 1e9
        fields.update(gbps=gbps, copy_fraction=gbps / copy_gbps)
    benchutil.attach(benchmark, **fields)

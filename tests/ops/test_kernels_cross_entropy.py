"""Fused Triton cross-entropy (+ ring write) against F.cross_entropy and record_torch.

CPU runs use TRITON_INTERPRET=1 (set in conftest) with tiny shapes and small
column blocks so the online softmax crosses several blocks."""
import math
import os

import pytest
import torch
from _support.triton_compile import compile_for_sm90
import torch.nn.functional as F

import ies_fast
from ies_fast import IES, ReferenceCriterion
from ies_fast.ops.cross_entropy.triton import fused_cross_entropy
from ies_fast.ops.ring.reference import record_torch

TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def reference(logits, target, *, ignore_index=-100, label_smoothing=0.0, reduction="mean", sample_weight=None):
    """F.cross_entropy in fp32, then the sample weights and reduction of ies_fast.cross_entropy."""
    losses = F.cross_entropy(
        logits.float(), target, reduction="none", ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    if sample_weight is not None:
        losses = losses * sample_weight
    if reduction == "none":
        return losses.to(logits.dtype)
    if reduction == "sum":
        return losses.sum().to(logits.dtype)
    return (losses.sum() / (target != ignore_index).sum()).to(logits.dtype)


def random_problem(B, C, dtype, gen, *, ignore_index=-100, scale=4.0):
    """Random non-zero logits (one row with large magnitudes), targets with ignored rows."""
    logits = torch.randn(B, C, generator=gen) * scale + torch.randn(B, 1, generator=gen)
    logits[0] *= 40.0  # large magnitudes, still finite in fp16
    target = torch.randint(0, C, (B,), generator=gen)
    target[torch.rand(B, generator=gen) < 0.25] = ignore_index
    target[1] = ignore_index
    return logits.to(dtype), target


def loss_and_grad(fn, logits, weights, **kw):
    x = logits.detach().clone().requires_grad_()
    out = fn(x, **kw)
    (grad,) = torch.autograd.grad((out.float() * weights).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C,block_c", [(2, None), (3, None), (17, 4), (1000, 64)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_and_grad_match_torch(dtype, C, block_c, label_smoothing):
    gen = torch.Generator().manual_seed(C * 7 + int(label_smoothing * 10))
    B = 9
    logits, target = random_problem(B, C, dtype, gen)
    weights = torch.randn(B, generator=gen)  # a different upstream gradient per row
    kw = dict(target=target, label_smoothing=label_smoothing, reduction="none")
    got, got_grad = loss_and_grad(fused_cross_entropy, logits, weights, block_c=block_c, **kw)
    want, want_grad = loss_and_grad(reference, logits, weights, **kw)
    assert got.dtype == dtype and got_grad.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(got_grad, want_grad, **TOL[dtype])
    ignored = target == -100
    assert torch.all(got[ignored] == 0) and torch.all(got_grad[ignored] == 0)
    assert torch.all(got[~ignored] >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_class_count_default_blocks(dtype):
    """256k + 3 classes: the default column block loops many times per row. Compared
    with an fp64 reference: at |logits| ~ 800, torch's own fp32 softmax gradient is
    off by ~1e-4 (exp(x - lse) with lse rounded), the kernel's by ~1e-7."""
    gen = torch.Generator().manual_seed(13)
    logits, target = random_problem(3, 2**18 + 3, dtype, gen)
    target[1] = 2**18 + 2  # the last column
    weights = torch.randn(3, generator=gen)
    kw = dict(target=target, label_smoothing=0.1, reduction="none")
    got, got_grad = loss_and_grad(fused_cross_entropy, logits, weights, **kw)
    want, want_grad = loss_and_grad(F.cross_entropy, logits.double(), weights.double(), **kw)
    torch.testing.assert_close(got, want.to(dtype), **TOL[dtype])
    torch.testing.assert_close(got_grad, want_grad.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reductions_and_sample_weight(reduction, weighted, dtype):
    gen = torch.Generator().manual_seed(11)
    B, C = 10, 17
    logits, target = random_problem(B, C, dtype, gen, ignore_index=3)
    sw = torch.rand(B, generator=gen) + 0.5 if weighted else None
    weights = torch.randn(B if reduction == "none" else (), generator=gen)
    kw = dict(target=target, ignore_index=3, label_smoothing=0.05, reduction=reduction, sample_weight=sw)
    got, got_grad = loss_and_grad(fused_cross_entropy, logits, weights, block_c=8, block_b=2, **kw)
    want, want_grad = loss_and_grad(reference, logits, weights, **kw)
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(got_grad, want_grad, **TOL[dtype])


def test_sample_weight_gets_gradient():
    gen = torch.Generator().manual_seed(2)
    logits, target = random_problem(6, 5, torch.float32, gen)
    sw1 = (torch.rand(6, generator=gen) + 0.5).requires_grad_()
    sw2 = sw1.detach().clone().requires_grad_()
    fused_cross_entropy(logits, target, sample_weight=sw1).backward()
    reference(logits, target, sample_weight=sw2).backward()
    torch.testing.assert_close(sw1.grad, sw2.grad)


def test_logits_are_left_untouched():
    """A drop-in for F.cross_entropy must not overwrite the logits with gradients."""
    gen = torch.Generator().manual_seed(12)
    logits, target = random_problem(5, 9, torch.bfloat16, gen)
    x = logits.clone().requires_grad_()
    fused_cross_entropy(x, target, label_smoothing=0.1, block_c=4).backward()
    assert torch.equal(x.detach(), logits)


def test_all_rows_ignored_and_empty_batch():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, generator=gen, requires_grad=True)
    target = torch.full((4,), -100)
    mean = fused_cross_entropy(logits, target)
    assert torch.isnan(mean)  # 0 / 0, as F.cross_entropy
    loss = fused_cross_entropy(logits, target, reduction="sum")
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)
    empty = torch.zeros(0, 6, requires_grad=True)
    out = fused_cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction="none")
    assert out.shape == (0,)
    assert fused_cross_entropy(empty, torch.zeros(0, dtype=torch.long), reduction="sum").item() == 0


def test_non_contiguous_logits():
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(7, 40, generator=gen)
    target = torch.randint(0, 13, (7,), generator=gen)
    for logits in (big[:, 5:18], big[:, ::3][:, :13], big.t().contiguous().t()[:, :13]):
        got, got_grad = loss_and_grad(fused_cross_entropy, logits, torch.ones(()), target=target, block_c=4)
        want, want_grad = loss_and_grad(reference, logits, torch.ones(()), target=target)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_grad, want_grad)


def test_nonfinite_logits_give_nonfinite_loss():
    logits = torch.tensor([[1.0, math.nan, 0.0], [1.0, 2.0, math.inf], [0.5, -0.5, 2.0]])
    target = torch.tensor([0, 1, 2])
    got = fused_cross_entropy(logits, target, reduction="none")
    want = reference(logits, target, reduction="none")
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    torch.testing.assert_close(got[2], want[2])


def test_no_grad_path_saves_nothing_and_matches():
    gen = torch.Generator().manual_seed(5)
    logits, target = random_problem(8, 17, torch.bfloat16, gen)
    logits.requires_grad_()
    with torch.no_grad():
        out = fused_cross_entropy(logits, target, reduction="none", block_c=8)
    assert out.grad_fn is None
    torch.testing.assert_close(out, reference(logits.detach(), target, reduction="none"), **TOL[torch.bfloat16])
    out = fused_cross_entropy(logits.detach(), target, reduction="sum")
    assert out.grad_fn is None


def test_bad_arguments_name_themselves():
    x = torch.randn(3, 4)
    t = torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match="logits"):
        fused_cross_entropy(x.double(), t)
    with pytest.raises(ValueError, match="reduction"):
        fused_cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        fused_cross_entropy(x, t[:2])
    with pytest.raises(ValueError, match="ring"):
        fused_cross_entropy(x, t, ring=(torch.zeros(5, 3), torch.zeros(5, dtype=torch.uint8), t[:2]))
    with pytest.raises(ValueError, match="block_c"):
        fused_cross_entropy(x, t, block_c=3)


# ---- the ring write in the same pass -------------------------------------------------


def random_ring(S, L, gen):
    hist = torch.randn(S, L, generator=gen)
    count = torch.randint(0, 2 * L, (S,), generator=gen).to(torch.uint8)
    cur = count.long() % L
    rows = torch.arange(S)
    r = torch.rand(S, generator=gen)
    hist[rows, cur] = torch.where(r < 0.6, torch.tensor(-math.inf), torch.rand(S, generator=gen) * 3)
    hist[rows[r > 0.9], cur[r > 0.9]] = math.inf
    return hist, count


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("grad", [True, False])
def test_ring_write_matches_record_torch(dtype, label_smoothing, grad):
    gen = torch.Generator().manual_seed(6)
    S, L, B, C = 12, 5, 30, 11
    hist, count = random_ring(S, L, gen)
    logits, target = random_problem(B, C, dtype, gen)
    logits[4, 3] = math.nan  # non-finite loss -> +inf
    logits[5, 0] = math.inf
    index = torch.randint(0, S, (B,), generator=gen)  # duplicates
    index[torch.rand(B, generator=gen) < 0.2] = -1
    index[target == -100] = -1  # what ies_fast.cross_entropy does for ignored rows
    got_hist, want_hist = hist.clone(), hist.clone()
    x = logits.clone().requires_grad_(grad)
    out = fused_cross_entropy(
        x, target, label_smoothing=label_smoothing, reduction="none", ring=(got_hist, count, index), block_c=4
    )
    losses = F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=label_smoothing)
    record_torch(want_hist, count, losses, index)
    assert torch.equal(torch.isinf(got_hist), torch.isinf(want_hist))
    assert torch.equal(got_hist == math.inf, want_hist == math.inf)
    assert torch.any(got_hist == math.inf)
    torch.testing.assert_close(got_hist, want_hist, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got_hist, hist), "the kernel should have written something"
    if grad:
        out.float().nan_to_num().sum().backward()
        assert x.grad is not None


def settled_logits(losses: torch.Tensor, C: int) -> torch.Tensor:
    """Logits [n, C] whose cross-entropy against class 0 is ``losses``:
    log(1 + (C-1) e^-a) = l  <=>  a = -log((e^l - 1) / (C-1))."""
    a = -torch.log(torch.expm1(losses.double()) / (C - 1))
    logits = torch.zeros(losses.numel(), C, dtype=torch.float64)
    logits[:, 0] = a
    return logits.float()


def test_selector_through_cross_entropy_matches_torch_and_reference():
    """A few epochs of ies_fast.cross_entropy(..., backend='triton') with an
    IES(backend='triton'): the masks equal the torch backend's and the reference's."""
    S, C, batch, epochs = 40, 5, 8, 9
    gen = torch.Generator().manual_seed(7)
    plateau = torch.rand(S, generator=gen) < 0.5
    fast = IES(S, delta=0.05, backend="triton")
    slow = IES(S, delta=0.05, backend="torch")
    ref = ReferenceCriterion(S, 0.05)
    mastered_any = False
    for epoch in range(epochs):
        base = torch.rand(S, generator=gen) * 2 + 0.1
        settled = 1.0 / (1 + epoch) ** 2 + 0.05 + torch.rand(S, generator=gen) * 1e-4
        losses = torch.where(plateau, settled, base)
        logits = settled_logits(losses, C)
        target = torch.zeros(S, dtype=torch.long)
        for chunk in torch.randperm(S, generator=gen).split(batch):
            x = logits[chunk].requires_grad_()
            out = ies_fast.cross_entropy(x, target[chunk], chunk, fast, backend="triton")
            out.backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()
            ies_fast.cross_entropy(logits[chunk], target[chunk], chunk, slow, backend="torch")
            ref.observe(F.cross_entropy(logits[chunk], target[chunk], reduction="none").tolist(), chunk.tolist())
        torch.testing.assert_close(fast.hist, slow.hist, atol=1e-5, rtol=1e-5)
        fast.step()
        slow.step()
        want = torch.tensor(ref.step())
        assert torch.equal(fast.mastered_mask(), slow.mastered_mask()), f"epoch {epoch}"
        assert torch.equal(fast.mastered_mask(), want), f"epoch {epoch}"
        assert torch.equal(fast.count, slow.count)
        mastered_any |= bool(want.any())
    assert mastered_any, "the test should master some samples"
    assert torch.equal(fast.kept_indices(), slow.kept_indices())


# ---- compiled mode, without a GPU -----------------------------------------------------


def test_kernels_compile_for_sm90(tmp_path):
    compile_for_sm90(tmp_path, """
from ies_fast.ops.cross_entropy.triton import _ce_forward_kernel, _ce_backward_kernel
LAYOUT = dict(stride_b="i64", stride_p="i64", stride_c="i64", P="i32")
SCALARS = dict(B="i32", C="i32", ignore_index="i32", eps="fp32", z_scale="fp32", softcap="fp32")
for dt in ("fp32", "bf16", "fp16"):
    for ring, smooth, extras in ((True, True, False), (False, False, False), (False, True, True), (True, False, True)):
        build(_ce_forward_kernel,
              dict(logits_ptr="*" + dt, **LAYOUT, target_ptr="*i64", weight_ptr="*fp32", wsum_ptr="*fp32",
                   loss_ptr="*fp32", z_ptr="*fp32", max_ptr="*fp32", logsum_ptr="*fp32", seg_ptr="*fp32",
                   hist_ptr="*fp32", count_ptr="*u8", index_ptr="*i64", **SCALARS),
              dict(L=5, HAS_RING=ring, HAS_SMOOTHING=smooth, SAVE_STATS=ring, HAS_WEIGHT=extras, HAS_Z=extras,
                   HAS_SOFTCAP=extras, HAS_SEGMENT=not ring, BLOCK_B=4, BLOCK_C=512))
    for extras in (False, True):
        build(_ce_backward_kernel,
              dict(logits_ptr="*" + dt, **LAYOUT, grad_ptr="*" + dt, target_ptr="*i64", weight_ptr="*fp32",
                   wsum_ptr="*fp32", max_ptr="*fp32", logsum_ptr="*fp32", gout_ptr="*fp32", gz_ptr="*fp32", **SCALARS),
              dict(HAS_WEIGHT=extras, HAS_Z=extras, HAS_SOFTCAP=extras, BLOCK_B=1, BLOCK_C=8192), warps=8)
""")


# ---- realistic sizes on CUDA ---------------------------------------------------------


#: the CUDA tests need compiled kernels: run them as ``TRITON_INTERPRET=0 pytest -m gpu``
compiled = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted Triton; run TRITON_INTERPRET=0 pytest -m gpu"
)


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,C", [(4096, 10), (2048, 1000), (512, 32000), (16, 262144)])
def test_cuda_matches_torch(dtype, B, C):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(B, C, generator=gen, device="cuda") * 4).to(dtype)
    target = torch.randint(0, C, (B,), generator=gen, device="cuda")
    target[::17] = -100
    weights = torch.randn(B, generator=gen, device="cuda")
    for eps in (0.0, 0.1):
        kw = dict(target=target, label_smoothing=eps, reduction="none")
        got, got_grad = loss_and_grad(fused_cross_entropy, logits, weights, **kw)
        want, want_grad = loss_and_grad(reference, logits, weights, **kw)
        torch.testing.assert_close(got, want, **TOL[dtype])
        torch.testing.assert_close(got_grad, want_grad, **TOL[dtype])


@pytest.mark.gpu
@compiled
def test_cuda_ring_write():
    gen = torch.Generator(device="cuda").manual_seed(1)
    S, L, B, C = 100_000, 5, 8192, 100
    hist = torch.full((S, L), -math.inf, device="cuda")
    count = torch.randint(0, 2 * L, (S,), generator=gen, device="cuda").to(torch.uint8)
    logits = torch.randn(B, C, generator=gen, device="cuda").bfloat16()
    target = torch.randint(0, C, (B,), generator=gen, device="cuda")
    index = torch.randint(-1, S // 10, (B,), generator=gen, device="cuda")
    got = hist.clone()
    fused_cross_entropy(logits, target, reduction="none", ring=(got, count, index))
    record_torch(hist, count, F.cross_entropy(logits.float(), target, reduction="none"), index)
    assert torch.equal(torch.isinf(got), torch.isinf(hist))
    torch.testing.assert_close(got, hist, atol=1e-5, rtol=1e-5)


# ---- strided [B, C, P] rows, class weights, z-loss, soft-cap, per-sample sums -------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("extras", [False, True])
def test_strided_positions_with_options_match_torch(dtype, extras):
    """Logits [B, C, P] read in place through a transposed slice (as causal-LM logits
    [B, T, V] are), several column blocks per row; the per-sample sums of the same
    pass against torch."""
    from ies_fast.ops.cross_entropy.triton import KernelOptions, position_losses
    from ies_fast.ops.cross_entropy.reference import position_losses_torch

    gen = torch.Generator().manual_seed(41 + extras)
    B, T, C = 3, 6, 19
    big = (torch.randn(B, T, C, generator=gen) * 3).to(dtype)
    x = big[:, :-1].transpose(1, 2)  # [B, C, P=T-1], class stride 1, position stride C
    target = torch.randint(0, C, (B, T - 1), generator=gen)
    target[torch.rand(B, T - 1, generator=gen) < 0.3] = -100
    weight = torch.rand(C, generator=gen) + 0.3 if extras else None
    opt = KernelOptions(-100, 0.1, weight, 2e-3 if extras else 0.0, 4.0 if extras else None, block_c=8, block_b=2)
    segments = torch.zeros(4, B)
    xa = x.detach().clone().requires_grad_()
    ce, z = position_losses(xa, target.reshape(-1), opt, segments=segments)
    xb = x.detach().clone().requires_grad_()
    want = position_losses_torch(xb.float(), target, weight, -100, 0.1, opt.z_scale, opt.softcap)
    tol = TOL[dtype] if dtype != torch.bfloat16 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(ce, want.ce.reshape(-1), **TOL[torch.float32])
    up = torch.randn(ce.shape, generator=gen)
    total = (ce * up).sum() + ((z * up.flip(0)).sum() if extras else 0)
    want_total = (want.ce.reshape(-1) * up).sum() + ((want.z.reshape(-1) * up.flip(0)).sum() if extras else 0)
    (ga,) = torch.autograd.grad(total, xa)
    (gb,) = torch.autograd.grad(want_total, xb)
    assert ga.shape == x.shape
    torch.testing.assert_close(ga, gb, **tol)
    torch.testing.assert_close(segments[0], want.ce.sum(1), **TOL[torch.float32])
    torch.testing.assert_close(segments[1], want.den.sum(1), **TOL[torch.float32])
    if extras:
        torch.testing.assert_close(z, want.z.reshape(-1), **TOL[torch.float32])
        torch.testing.assert_close(segments[2], want.z.sum(1), **TOL[torch.float32])
        torch.testing.assert_close(segments[3], want.valid.sum(1))

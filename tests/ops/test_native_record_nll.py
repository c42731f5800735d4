"""``torch.ops.ies_fast.record_nll`` (the CPU cross-entropy's one-op ring write)
against the torch path it replaces: ``F.nll_loss(logp, target, reduction="none")``,
ignored rows' index set to -1, then ``record``. Ring and count must match bit for bit."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ies_fast
from ies_fast.ops import ring as dispatch
from ies_fast.ops import ring as ring_ops
from ies_fast.ops.ring.reference import record_torch

pytest.importorskip("ies_fast._C", reason="native extension ies_fast._C not built")
if not dispatch.has_record_nll():
    pytest.skip("ies_fast._C built without record_nll", allow_module_level=True)

SHAPES = [(1, 1), (1, 7), (5, 3), (64, 10), (256, 10), (33, 1000)]


def _use_record_nll(monkeypatch, value) -> None:
    """Force the CPU loss onto (True) or off (False) the record_nll path (None: detect)."""
    monkeypatch.setattr(ring_ops, "_HAS_RECORD_NLL", value)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def _state(S: int, L: int, gen: torch.Generator):
    """A ring with unobserved (-inf), non-finite (+inf) and finite current values."""
    hist = torch.randn(S, L, generator=gen) * 3
    r = torch.rand(S, L, generator=gen)
    hist[r < 0.3] = float("-inf")
    hist[r > 0.95] = float("inf")
    count = torch.randint(0, 2 * L, (S,), generator=gen, dtype=torch.int64).to(torch.uint8)
    return hist, count


def _inputs(B: int, C: int, S: int, ignore_index: int, dtype, gen: torch.Generator, negative_index=True):
    x = (torch.randn(B, C, generator=gen) * 4).to(dtype)
    r = torch.rand(B, generator=gen)
    x[r < 0.1, 0] = float("nan")
    x[(r >= 0.1) & (r < 0.2), -1] = float("inf")
    x[(r >= 0.2) & (r < 0.25), 0] = float("-inf")
    x[(r >= 0.25) & (r < 0.3)] *= 1e4  # large logits: very negative logp
    target = torch.randint(0, C, (B,), generator=gen)
    target[torch.rand(B, generator=gen) < 0.2] = ignore_index
    index = torch.randint(0, S, (B,), generator=gen)  # duplicates within the batch
    if negative_index:  # the selector rejects them; record (and record_nll) skip them
        index[torch.rand(B, generator=gen) < 0.15] = -1
    return x, target, index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_index", [-100, 0, 2])
@pytest.mark.parametrize("B,C", SHAPES)
def test_record_nll_matches_torch_record(B, C, ignore_index, dtype):
    gen = torch.Generator().manual_seed(B * 1000 + C + ignore_index)
    S, L = max(4, B // 3), 5
    for _ in range(3):
        hist, count = _state(S, L, gen)
        x, target, index = _inputs(B, C, S, ignore_index, dtype, gen)
        logp = F.log_softmax(x, dim=1)
        ref_hist, ref_count = hist.clone(), count.clone()
        rows = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="none")
        record_torch(ref_hist, ref_count, rows.float(), index.masked_fill(target == ignore_index, -1))
        torch.ops.ies_fast.record_nll(hist, count, logp, target, index, ignore_index)
        assert torch.equal(_bits(hist), _bits(ref_hist))
        assert torch.equal(count, ref_count)


def test_record_nll_strided_logp():
    gen = torch.Generator().manual_seed(7)
    S, L = 20, 4
    hist, count = _state(S, L, gen)
    x = torch.randn(12, 30, generator=gen)
    logp = F.log_softmax(x, dim=1)[:, ::3]  # non-contiguous columns
    target = torch.randint(0, 10, (24,), generator=gen)[::2]
    index = torch.randint(0, S, (24,), generator=gen)[::2]
    ref_hist, ref_count = hist.clone(), count.clone()
    record_torch(ref_hist, ref_count, F.nll_loss(logp, target, reduction="none"), index)
    torch.ops.ies_fast.record_nll(hist, count, logp, target, index, -100)
    assert torch.equal(_bits(hist), _bits(ref_hist))


def test_record_nll_errors():
    hist, count = torch.full((4, 3), float("-inf")), torch.zeros(4, dtype=torch.uint8)
    logp = torch.zeros(2, 5)
    with pytest.raises(IndexError):
        torch.ops.ies_fast.record_nll(hist, count, logp, torch.tensor([0, 1]), torch.tensor([0, 4]), -100)
    with pytest.raises(IndexError):
        torch.ops.ies_fast.record_nll(hist, count, logp, torch.tensor([0, 5]), torch.tensor([0, 1]), -100)
    with pytest.raises(ValueError):
        torch.ops.ies_fast.record_nll(hist, count, logp.half(), torch.tensor([0, 1]), torch.tensor([0, 1]), -100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ignore_index", [-100, 1])
@pytest.mark.parametrize("B,C", [(1, 3), (64, 10), (256, 10), (40, 1000)])
def test_cross_entropy_native_ring_matches_old_path(B, C, ignore_index, dtype, monkeypatch):
    """ies_fast.cross_entropy with a native IES: the record_nll path leaves the same
    ring, count and loss/gradient as the path without it (and as a torch-backend IES)."""
    gen = torch.Generator().manual_seed(B + C)
    S = max(8, B // 2)
    fast = ies_fast.IES(S, backend="native")
    slow = ies_fast.IES(S, backend="native")
    plain = ies_fast.IES(S, backend="torch")
    for epoch in range(3):
        x, target, index = _inputs(B, C, S, ignore_index, torch.float32, gen, negative_index=False)
        x = x.to(dtype)
        outs = []
        for sel, use_new in ((fast, True), (slow, False), (plain, False)):
            _use_record_nll(monkeypatch, use_new)
            xi = x.clone().requires_grad_()
            out = ies_fast.cross_entropy(xi, target, index, sel, ignore_index=ignore_index)
            out.backward()
            outs.append((out.detach(), xi.grad))
        for o, g in outs[1:]:
            assert torch.equal(o, outs[0][0]) or (o.isnan().all() and outs[0][0].isnan().all())
            assert torch.equal(g.isnan(), outs[0][1].isnan())
        for other in (slow, plain):
            assert torch.equal(_bits(fast.hist), _bits(other.hist))
            assert torch.equal(fast.count, other.count)
        if epoch < 2:
            for sel in (fast, slow, plain):
                sel.step()
    _use_record_nll(monkeypatch, None)


def test_cross_entropy_uses_record_nll(monkeypatch):
    """The plain CPU call with a native IES goes through record_nll (one op, no record)."""
    calls = []
    real = dispatch.record_nll
    monkeypatch.setattr(dispatch, "record_nll", lambda *a, **k: calls.append(a) or real(*a, **k))
    sel = ies_fast.IES(100, backend="native")
    x = torch.randn(8, 10, requires_grad=True)
    ies_fast.cross_entropy(x, torch.randint(0, 10, (8,)), torch.arange(8), sel).backward()
    assert len(calls) == 1
    # other selectors and options keep the existing path
    ies_fast.cross_entropy(x, torch.randint(0, 10, (8,)), torch.arange(8), ies_fast.IES(100, backend="torch"))
    ies_fast.cross_entropy(x, torch.randint(0, 10, (8,)), torch.arange(8), sel, label_smoothing=0.1)
    ies_fast.cross_entropy(x, torch.randint(0, 10, (8,)), torch.arange(8), ies_fast.InfoBatch(100, num_epochs=3))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "target,index",
    [([0, 1, 2, 3], [0, 1, 12, -3]), ([0, 9, 2, 3], [0, 1, 2, 3]), ([0, 9, 2, 3], [0, 1, -2, 3]),
     ([0, -100, 2, 3], [0, 1, 2, 3]), ([0, 1, 2, 3], [3, 3, 3, 3])],
)
def test_cross_entropy_errors_match_old_path(target, index, monkeypatch):
    """Bad index or target: the same exception and message with and without
    record_nll (index first, as the selector checks it first), and nothing recorded."""
    x = torch.randn(4, 5)
    results = []
    for use_new in (True, False):
        _use_record_nll(monkeypatch, use_new)
        sel = ies_fast.IES(10, backend="native")
        try:
            out = ies_fast.cross_entropy(x, torch.tensor(target), torch.tensor(index), sel)
            results.append(("ok", out.item(), _bits(sel.hist).clone()))
        except (ValueError, IndexError) as e:
            results.append((type(e).__name__, str(e).splitlines()[0], _bits(sel.hist).clone()))
            assert torch.equal(sel.hist, torch.full_like(sel.hist, float("-inf")))
    assert results[0][:2] == results[1][:2]
    assert torch.equal(results[0][2], results[1][2])
    _use_record_nll(monkeypatch, None)


def test_record_nll_validate_writes_nothing():
    hist, count = torch.full((4, 3), float("-inf")), torch.zeros(4, dtype=torch.uint8)
    logp = torch.log_softmax(torch.randn(3, 5), 1)
    with pytest.raises(ValueError, match=r"index out of range \[0, 4\): got -1"):
        torch.ops.ies_fast.record_nll(hist, count, logp, torch.tensor([0, 1, 2]), torch.tensor([0, 1, -1]), -100, True)
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        torch.ops.ies_fast.record_nll(hist, count, logp, torch.tensor([0, 1, 7]), torch.tensor([0, 1, 2]), -100, True)
    assert torch.isneginf(hist).all()
    torch.ops.ies_fast.record_nll(hist, count, logp, torch.tensor([0, -100, 2]), torch.tensor([0, 1, 2]), -100, True)
    assert torch.isneginf(hist[1]).all() and hist[0, 0] == -logp[0, 0] and hist[2, 0] == -logp[2, 2]

"""Multi-exit losses: reductions, per-exit decisions against per-exit reference
criteria, the masked loss, and a tiny multi-exit ResNet trained with IES."""
import math

import pytest
import torch
import torch.nn.functional as F

from ies_fast import IES, ReferenceCriterion
from ies_fast.losses.exits import multi_exit_loss, per_exit_cross_entropy, reduce_exits
from ies_fast.nn import MultiExitResNet
from ies_fast.selectors.per_exit import PerExitIES, virtual_index


def exit_losses(n, H, epoch, gen, plateau):
    """[n, H] losses: plateaued (sample, exit) pairs settle, the others jump around."""
    base = torch.rand(n, H, generator=gen) * 2 + 0.1
    settled = 1.0 / (1 + epoch) ** 2 + torch.rand(n, H, generator=gen) * 1e-4
    return torch.where(plateau, settled, base)


@pytest.mark.parametrize("n,H,order,window", [(37, 3, 2, 3), (20, 2, 1, 2), (11, 4, 0, 1)])
def test_per_exit_masks_match_per_exit_references(n, H, order, window):
    sel = PerExitIES(n, delta=0.05, order=order, window=window, backend="torch", num_exits=H, exit_reduction="per_exit")
    assert isinstance(sel, PerExitIES)
    refs = [ReferenceCriterion(n, 0.05, order, window) for _ in range(H)]
    gen = torch.Generator().manual_seed(n * H)
    plateau = torch.rand(n, H, generator=gen) < 0.6
    plateau[: n // 3] = True  # some samples settle on every exit
    saw_partial = saw_full = False
    for epoch in range(12):
        losses = exit_losses(n, H, epoch, gen, plateau)
        if epoch == 7:
            plateau &= torch.rand(n, H, generator=gen) < 0.8  # some terms move again
        order_ = torch.randperm(n, generator=gen)
        for chunk in order_.split(5):
            sel.observe(losses[chunk], chunk)
            for h, ref in enumerate(refs):
                ref.observe(losses[chunk, h].tolist(), chunk.tolist())
        sel.step()
        want = torch.stack([torch.tensor(ref.step()) for ref in refs], dim=1)
        assert torch.equal(sel.exit_mastered_mask(), want), f"epoch {epoch}"
        assert torch.equal(sel.removed_mask(), want.all(dim=1)), "removed only when all exits are mastered"
        idx = torch.randperm(n, generator=gen)[:9]
        assert torch.equal(sel.exit_mask(idx), ~want[idx])
        partial = want.any(1) & ~want.all(1)
        saw_partial |= bool(partial.any())
        saw_full |= bool(want.all(1).any())
        assert not (partial & sel.removed_mask()).any()
    assert saw_partial and saw_full, "the test should master some exits and some whole samples"
    s = sel.stats()
    assert s["num_exits"] == H and s["terms_masked_total"] > s["backward_saved"] > 0


@pytest.mark.parametrize("reduction,weights", [("mean", None), ("sum", None), ("weights", (0.2, 0.3, 0.5))])
def test_reduced_exits_match_reference_on_the_reduced_loss(reduction, weights):
    n, H = 29, 3
    sel = IES(n, delta=0.05, backend="torch", num_exits=H, exit_reduction=reduction, exit_weights=weights)
    assert type(sel) is IES
    ref = ReferenceCriterion(n, 0.05)
    gen = torch.Generator().manual_seed(4)
    plateau = (torch.rand(n, 1, generator=gen) < 0.5).expand(n, H)
    w = torch.tensor(weights) if weights else None
    any_mastered = False
    for epoch in range(10):
        losses = exit_losses(n, H, epoch, gen, plateau)
        sel.observe(losses, torch.arange(n))
        reduced = {"mean": losses.mean(1), "sum": losses.sum(1)}.get(reduction)
        reduced = reduced if reduced is not None else (losses * w).sum(1)
        ref.observe(reduced.tolist(), range(n))
        sel.step()
        want = torch.tensor(ref.step())
        assert torch.equal(sel.mastered_mask(), want)
        any_mastered |= bool(want.any())
        idx = torch.arange(0, n, 3)
        assert torch.equal(sel.exit_mask(idx), (~want[idx]).unsqueeze(1).expand(-1, H))
    assert any_mastered


def test_make_selector_is_the_one_router():
    import ies_fast

    assert type(ies_fast.make_selector("ies", 6, num_exits=2, exit_reduction="per_exit")) is PerExitIES
    assert type(ies_fast.make_selector("ies", 6, num_exits=2)) is IES
    assert type(ies_fast.make_selector("infobatch", 6, num_epochs=3)) is ies_fast.InfoBatch
    with pytest.raises(ValueError, match="make_selector"):
        IES(6, num_exits=2, exit_reduction="per_exit")
    with pytest.raises(ValueError, match="kind"):
        ies_fast.make_selector("nope", 6)


def test_reduce_exits_and_virtual_index():
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reduce_exits(x, 3, "mean"), x.mean(1))
    torch.testing.assert_close(reduce_exits(x, 3, "weights", (1.0, 0.0, 2.0)), x[:, 0] + 2 * x[:, 2])
    assert virtual_index(torch.tensor([0, 2, -1]), 3).tolist() == [0, 1, 2, 6, 7, 8, -1, -1, -1]
    single = IES(4, backend="torch")
    single.observe(torch.rand(2, 1), torch.tensor([0, 1]))  # [B, 1] accepted for one exit


def test_multi_exit_loss_normalisation():
    gen = torch.Generator().manual_seed(1)
    for B, H in [(4, 2), (7, 3), (16, 4)]:
        L = torch.rand(B, H, generator=gen, requires_grad=True)
        keep = torch.rand(B, H, generator=gen) < 0.6
        keep[0, 0] = True
        w = torch.rand(H, generator=gen) + 0.1
        got = multi_exit_loss(L, keep, w.tolist())
        torch.testing.assert_close(multi_exit_loss(L, keep, w), got)
        want = (L * keep * w).sum() / (keep * w).sum()
        torch.testing.assert_close(got, want)
        # nothing masked, equal weights: mean over exits of each exit's batch mean
        torch.testing.assert_close(multi_exit_loss(L), L.mean(0).mean())
        # gradient per kept term is w_h / sum(kept weights): its scale follows the kept count
        got.backward()
        torch.testing.assert_close(L.grad, keep * w / (keep * w).sum())
    # masked non-finite terms do not poison the loss; all masked -> 0 with zero grad
    L = torch.tensor([[1.0, math.nan]], requires_grad=True)
    assert multi_exit_loss(L, torch.tensor([[True, False]])).item() == 1.0
    z = multi_exit_loss(L, torch.zeros(1, 2, dtype=torch.bool))
    z.backward()
    assert z.item() == 0.0 and torch.equal(L.grad, torch.zeros(1, 2))


def test_per_exit_state_dict_round_trip_and_set_removal():
    n, H = 15, 2
    a = PerExitIES(n, delta=0.05, order=0, window=1, backend="torch", num_exits=H, exit_reduction="per_exit")
    gen = torch.Generator().manual_seed(2)
    a.observe(torch.rand(n, H, generator=gen) * 0.1, torch.arange(n))
    a.step()
    b = PerExitIES(n, delta=0.05, order=0, window=1, backend="torch", num_exits=H, exit_reduction="per_exit")
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.exit_mastered_mask(), b.exit_mastered_mask())
    assert torch.equal(a.removed_mask(), b.removed_mask()) and a.stats() == b.stats()
    losses = torch.rand(n, H, generator=gen) * 0.1
    for s in (a, b):
        s.observe(losses, torch.arange(n))
        s.step()
    assert torch.equal(a.exit_mastered_mask(), b.exit_mastered_mask())
    assert a.exit_mastered_mask().any()
    a.set_removal(False)
    assert a.exit_mask(torch.arange(n)).all() and not a.removed_mask().any()
    with pytest.raises(ValueError, match="num_exits"):
        PerExitIES(n, num_exits=3, exit_reduction="per_exit").load_state_dict(b.state_dict())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="exit_reduction"):
        IES(4, num_exits=2, exit_reduction="max")
    with pytest.raises(ValueError, match="exit_weights"):
        IES(4, num_exits=2, exit_reduction="weights")
    with pytest.raises(ValueError, match="exit_weights"):
        IES(4, num_exits=2, exit_reduction="weights", exit_weights=[1.0])
    with pytest.raises(ValueError, match="num_exits"):
        IES(4, num_exits=0)
    sel = PerExitIES(4, num_exits=2, exit_reduction="per_exit")
    with pytest.raises(ValueError, match="per_sample_loss"):
        sel.observe(torch.rand(3), torch.arange(3))
    with pytest.raises(ValueError, match="per_sample_loss"):
        IES(4, num_exits=2).observe(torch.rand(3, 3), torch.arange(3))
    with pytest.raises(ValueError, match="index"):
        sel.observe(torch.rand(2, 2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="keep"):
        multi_exit_loss(torch.rand(2, 2), torch.ones(2, 3, dtype=torch.bool))


def test_multi_exit_resnet_trains_with_per_exit_ies():
    """A tiny multi-exit ResNet on an easy synthetic task: the loss falls, exits get
    mastered term by term, fully mastered samples leave the loader and are scored."""
    torch.manual_seed(0)
    n, classes, H = 48, 3, 3
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 8, 8, generator=gen) * 0.3
    x[torch.arange(n), y] += 1.0  # the class is written in its colour channel
    model = MultiExitResNet(classes, widths=(4, 8, 8), blocks=(1, 1, 1))
    assert model(x[:2]).shape == (2, H, classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sel = PerExitIES(n, delta=0.05, order=1, window=2, backend="torch", num_exits=H, exit_reduction="per_exit")
    first = last = None
    masked_terms = removed = 0
    for epoch in range(9):
        model.train()
        kept = sel.kept_indices()
        perm = kept[torch.randperm(len(kept), generator=gen)]
        epoch_loss = []
        for idx in perm.split(16):
            per_exit = per_exit_cross_entropy(model(x[idx]), y[idx])
            sel.observe(per_exit, idx)
            keep = sel.exit_mask(idx)
            masked_terms += int((~keep).sum())
            loss = multi_exit_loss(per_exit, keep)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss.append(per_exit.mean().item())
        if sel.needs_scoring():
            gone = sel.scoring_mask().nonzero().squeeze(1)
            removed += len(gone)
            if len(gone):
                model.eval()
                with torch.no_grad():
                    sel.observe(per_exit_cross_entropy(model(x[gone]), y[gone]), gone, scoring=True)
        sel.step()
        first = first if first is not None else sum(epoch_loss) / len(epoch_loss)
        last = sum(epoch_loss) / len(epoch_loss)
    assert last < first * 0.5
    assert masked_terms > 0, "some (sample, exit) terms should be masked"
    s = sel.stats()
    assert s["terms_masked_total"] > 0 and s["observed"] > 0
    assert removed > 0 and removed == s["scored_total"], "fully mastered samples leave the loader and are scored"

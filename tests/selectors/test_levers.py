"""Levers of issue 27 on the selector side: ``IES(threshold="relative")`` (δ as a
fraction of each epoch's mean recorded loss) against the absolute rule fed that
epoch's δ by hand, and its checkpoint field."""
import pytest
import torch

from ies_fast import IES


def _epochs(seed, num_samples=257, epochs=9):
    g = torch.Generator().manual_seed(seed)
    # losses that settle at different speeds per sample, with noise: some pass, some do not
    rate = torch.rand(num_samples, generator=g) * 0.8
    base = torch.rand(num_samples, generator=g) * 2 + 0.2
    return [base * torch.exp(-rate * e) + 0.05 * torch.rand(num_samples, generator=g) for e in range(epochs)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("order,window", [(2, 3), (1, 2)])
def test_relative_threshold_is_the_absolute_rule_at_delta_times_the_epochs_mean_loss(seed, order, window):
    n = 257
    rel = IES(n, delta=0.4, order=order, window=window, threshold="relative", backend="torch")
    ref = IES(n, delta=0.4, order=order, window=window, backend="torch")
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    seen_any = False
    for epoch, losses in enumerate(_epochs(seed, n)):
        kept = ~rel.removed_mask()
        # only kept samples are recorded (as without scoring): the mean is over what was recorded
        idx = index[kept[index]]
        rel.observe(losses[idx], idx)
        ref.observe(losses[idx], idx)
        ref.delta = 0.4 * float(losses[idx].double().mean())
        rel.step()
        ref.step()
        assert torch.equal(rel.mastered, ref.mastered), f"epoch {epoch}"
        seen_any |= bool(rel.mastered.any()) and not bool(rel.mastered.all())
    assert seen_any, "the data must give a mixed decision somewhere"


def test_relative_threshold_does_not_depend_on_the_loss_scale():
    n = 300
    a = IES(n, delta=0.3, threshold="relative", backend="torch")
    b = IES(n, delta=0.3, threshold="relative", backend="torch")
    idx = torch.arange(n)
    for losses in _epochs(5, n):
        a.observe(losses, idx)
        b.observe(losses * 64.0, idx)  # a power of two: the scaled losses are exact in fp32
        a.step()
        b.step()
        assert torch.equal(a.mastered, b.mastered)
    assert 0 < int(a.mastered.sum()) < n


def test_threshold_is_checked_and_kept_in_the_state():
    with pytest.raises(ValueError, match="threshold"):
        IES(10, threshold="quantile")
    a = IES(10, delta=0.5, threshold="relative")
    state = a.state_dict()
    assert state["threshold"] == "relative"
    IES(10, threshold="relative").load_state_dict(state)
    with pytest.raises(ValueError, match="threshold"):
        IES(10).load_state_dict(state)
    old = {k: v for k, v in IES(10).state_dict().items() if k != "threshold"}  # from before the option
    IES(10).load_state_dict(old)
    with pytest.raises(ValueError, match="threshold"):
        IES(10, threshold="relative").load_state_dict(old)

"""Bad input to ``ies_fast.cross_entropy`` and the ``IES`` constructor raises a
ValueError or TypeError naming the argument, or F's own error (issue 23)."""
import pytest
import torch
import torch.nn.functional as F

import ies_fast


def _batch(B=4, C=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, generator=g), torch.randint(0, C, (B,), generator=g)


def test_index_on_the_meta_device_is_a_value_error():
    x, y = _batch()
    sel = ies_fast.IES(10, backend="torch")
    with pytest.raises(ValueError, match="index.*meta"):
        ies_fast.cross_entropy(x, y, torch.arange(4, device="meta"), selector=sel)
    with pytest.raises(ValueError, match="index.*meta"):
        sel.observe(torch.rand(4), torch.arange(4, device="meta"))


def test_a_float_third_positional_is_not_taken_for_an_index():
    """F.cross_entropy(x, y, w) means class weights; ours reads the third positional
    as ``index`` and says so instead of silently ignoring the weights."""
    x, y = _batch()
    w = torch.tensor([1.0, 2.0, 0.5])
    with pytest.raises(TypeError, match="third positional.*weight"):
        ies_fast.cross_entropy(x, y, w)
    torch.testing.assert_close(ies_fast.cross_entropy(x, y, weight=w), F.cross_entropy(x, y, weight=w))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int16])
def test_class_targets_of_another_integer_type_raise_as_torch_does(dtype):
    x, y = _batch()
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(x, y.to(dtype))
    with pytest.raises(RuntimeError) as ours:
        ies_fast.cross_entropy(x, y.to(dtype))
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(RuntimeError, match="Long or Byte"):
        ies_fast.cross_entropy(x, y.to(dtype), torch.arange(4), selector=ies_fast.IES(10))


@pytest.mark.parametrize("n", [10**12, 2**63, 2**70])
def test_ies_too_many_samples_names_num_samples_and_the_bytes(n):
    with pytest.raises(ValueError, match=rf"num_samples={n}.*\d+ bytes"):
        ies_fast.IES(n)


def test_selectors_refuse_the_meta_device():
    for make in (lambda: ies_fast.IES(10, device="meta"), lambda: ies_fast.InfoBatch(10, 3, device="meta"),
                 lambda: ies_fast.RandomRemoval(10, 0.3, device="meta")):
        with pytest.raises(ValueError, match="meta"):
            make()

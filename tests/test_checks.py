"""ies_fast.checks: one rule for bad arguments everywhere (a wrong type raises
TypeError, a wrong value ValueError, both naming the argument), and the memory check."""
import math

import pytest
import torch

import ies_fast
from ies_fast.checks import check_choice, check_fits, check_float, check_fraction, check_int


def test_check_int():
    assert check_int("n", 3, min=1) == 3
    assert check_int("n", -5) == -5
    for bad in (3.0, True, "3", None):
        with pytest.raises(TypeError, match="n must be a positive int"):
            check_int("n", bad, min=1)
    with pytest.raises(ValueError, match=r"n must be an int in \[0, 3\], got 4"):
        check_int("n", 4, min=0, max=3)
    with pytest.raises(ValueError, match="n must be an int >= 2, got 1"):
        check_int("n", 1, min=2)


def test_check_float_and_fraction():
    assert check_float("x", 2, min=0) == 2.0 and isinstance(check_float("x", 2), float)
    for bad in (True, "1", None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="x must be a finite number"):
            check_float("x", bad)
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="x must be a finite number >= 0"):
            check_float("x", bad, min=0)
    with pytest.raises(ValueError, match="x must be a finite number > 0"):
        check_float("x", 0.0, min=0, min_open=True)
    assert check_fraction("p", 0.25) == 0.25
    with pytest.raises(ValueError, match=r"p must be a finite number in \[0.0, 0.9\]"):
        check_fraction("p", 0.95, 0.0, 0.9)


def test_check_choice():
    assert check_choice("kind", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"kind must be one of \('a', 'b'\), got 'c'"):
        check_choice("kind", "c", ("a", "b"))


@pytest.mark.parametrize("args,kwargs,name", [
    ((8.0,), {}, "num_samples"), ((8,), {"window": 2.0}, "window"), ((8,), {"order": 1.0}, "order"),
    ((8,), {"score_every": True}, "score_every"), ((8,), {"delta": "0.1"}, "delta"),
])
def test_a_wrong_type_is_a_type_error_everywhere(args, kwargs, name):
    with pytest.raises(TypeError, match=name):
        ies_fast.IES(*args, **kwargs)


@pytest.mark.parametrize("make,name", [
    (lambda: ies_fast.IES(0), "num_samples"), (lambda: ies_fast.IES(8, window=0), "window"),
    (lambda: ies_fast.InfoBatch(8, num_epochs=0), "num_epochs"),
    (lambda: ies_fast.InfoBatch(8, num_epochs=2, prune_ratio=0.95), "prune_ratio"),
    (lambda: ies_fast.RandomRemoval(8, ratio=1.5), "ratio"),
])
def test_a_wrong_value_is_a_value_error(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_check_fits_names_num_samples():
    check_fits(10, 8, torch.device("cpu"), "IES")
    with pytest.raises(ValueError, match=r"num_samples=\d+: IES needs at least"):
        check_fits(2**62, 8, torch.device("cpu"), "IES")

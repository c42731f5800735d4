"""IESDataset: an epoch with nothing recorded is an error, dict items train like
tuple items, and load_state_dict checks the whole state before applying any of it
(every integer in range)."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ies_fast
from ies_fast.data import KeptSampler

EPOCHS, DELTA, BATCH = 8, 5e-3, 64


def digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    return TensorDataset(torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target))


class Dicts(Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"input": x, "target": y}


def new_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(dataset, unpack, epochs=EPOCHS):
    model = new_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ds = ies_fast.IESDataset(dataset, model, delta=DELTA)
    loader = DataLoader(ds, batch_size=BATCH, sampler=ds.sampler)
    masks = []
    for _ in range(epochs):
        for batch in loader:
            x, y, index = unpack(batch)
            loss = ds.update(F.cross_entropy(model(x), y, reduction="none"), index)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ds.end_epoch()
        masks.append(ds.selector.mastered_mask().clone())
    return model, masks


def test_an_epoch_with_nothing_recorded_is_an_error():
    data = digits()
    model = new_model()
    ds = ies_fast.IESDataset(data, model)
    loader = DataLoader(ds, batch_size=BATCH, sampler=ds.sampler)
    for x, y, index in loader:
        F.cross_entropy(model(x), y).backward()  # forgot ds.update(...)
    with pytest.raises(RuntimeError, match="no per-sample loss was recorded"):
        iter(loader).__next__()
    with pytest.raises(RuntimeError, match="update"):
        ds.end_epoch()
    assert ds.selector.epoch == 0  # the epoch stays open: nothing was stepped


def test_losses_recorded_into_the_selector_directly_count():
    data = digits()
    model = new_model()
    ds = ies_fast.IESDataset(data, model)
    for x, y, index in DataLoader(ds, batch_size=BATCH, sampler=ds.sampler):
        ies_fast.cross_entropy(model(x), y, index, selector=ds.selector)
    ds.end_epoch()
    assert ds.selector.epoch == 1


def test_dict_items_train_like_tuple_items():
    data = digits()
    ref_model, ref_masks = train(data, lambda b: b)
    model, masks = train(Dicts(data), lambda b: (b["input"], b["target"], b["index"]))
    assert int(ref_masks[-1].sum()) > 100, "samples must be removed (and scored) here"
    for a, b in zip(ref_masks, masks):
        assert torch.equal(a, b)
    for p, q in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_dict_items_without_the_keys_are_refused_at_construction():
    data = Dicts(digits())
    with pytest.raises(ValueError, match="'image'"):
        ies_fast.IESDataset(data, new_model(), input_key="image")
    ds = ies_fast.IESDataset(data, new_model())
    assert set(ds[3]) == {"input", "target", "index"} and ds[3]["index"] == 3


@pytest.mark.parametrize("bad", [{"epoch": -1}, {"seed": True}, {"shuffle": "no"}, {"seed": 2**64},
                                 {"epoch": 2**64}, {"seed": -(2**63) - 1}])
def test_a_bad_sampler_state_changes_nothing(bad):
    data = digits()
    source = ies_fast.IESDataset(data, new_model())
    source.selector.observe(torch.rand(len(data)), torch.arange(len(data)))
    source.selector.step()
    state = source.state_dict()
    state["sampler"] = {**state["sampler"], **bad}
    ds = ies_fast.IESDataset(data, new_model(), seed=5)
    with pytest.raises(ValueError, match=next(iter(bad))):
        ds.load_state_dict(state)
    assert ds.selector.epoch == 0 and int(ds.selector.count.sum()) == 0  # the selector was not restored
    assert ds.sampler.seed == 5 and ds.sampler.shuffle is True


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1, True])
def test_kept_sampler_seeds_must_fit_the_generator(seed):
    sel = ies_fast.IES(10)
    with pytest.raises(TypeError if isinstance(seed, bool) else ValueError, match="seed"):
        KeptSampler(sel, seed=seed)
    sampler = KeptSampler(sel, seed=3)
    with pytest.raises(ValueError, match="seed"):
        sampler.load_state_dict({"seed": seed, "epoch": 0})
    assert sampler.seed == 3
    KeptSampler(sel, seed=2**63 - 1).set_epoch(2**62)
    assert len(list(KeptSampler(sel, seed=2**63 - 1))) == 10

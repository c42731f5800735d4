"""ies_fast.IESDataset (the three-line plain loop) against the hand-wired loop of the
README on the bundled digits: same masks every epoch, same model at the end."""
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from ies_fast.data import IndexedDataset, KeptSampler, ScoringSampler

EPOCHS, DELTA, BATCH, SPLIT = 8, 5e-3, 64, 5


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return TensorDataset(x, torch.tensor(d.target))


def new_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def hand_wired(data):
    model = new_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sel = ies_fast.IES(len(data), delta=DELTA, score_policy="backoff")  # the wrapper's default scoring
    train_ds = IndexedDataset(data)
    sampler = KeptSampler(sel, shuffle=True, seed=0)
    loader = DataLoader(train_ds, batch_size=BATCH, sampler=sampler)
    masks = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for x, y, index in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            sel.observe(losses.detach(), index)
            losses.mean().backward()
            opt.step()
            opt.zero_grad()
        sel.score(model, DataLoader(train_ds, batch_size=256, sampler=ScoringSampler(sel)))
        sel.step()
        masks.append(sel.mastered_mask().clone())
    return model, sel, masks


def three_lines(data, epochs=EPOCHS, model=None, opt=None, train_set=None):
    model = model or new_model()
    opt = opt or torch.optim.Adam(model.parameters(), lr=0.01)
    train_set = train_set or ies_fast.IESDataset(data, model, delta=DELTA)
    loader = DataLoader(train_set, batch_size=BATCH, sampler=train_set.sampler)
    masks = []
    for epoch in range(epochs):
        for x, y, index in loader:
            loss = train_set.update(F.cross_entropy(model(x), y, reduction="none"), index)
            loss.backward()
            opt.step()
            opt.zero_grad()
        train_set.end_epoch()  # only to read the mask here; the next epoch's iter() would close it too
        masks.append(train_set.selector.mastered_mask().clone())
    return model, train_set, masks, opt


def test_three_lines_match_the_hand_wired_loop():
    data = digits()
    ref_model, ref_sel, ref_masks = hand_wired(data)
    model, train_set, masks, _ = three_lines(data)
    assert int(ref_masks[-1].sum()) > 300, "IES must remove samples in this setting"
    for epoch, (a, b) in enumerate(zip(ref_masks, masks)):
        assert torch.equal(a, b), f"epoch {epoch}"
    for p, q in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(ref_sel.hist, train_set.selector.hist)
    assert ref_sel.stats() == train_set.selector.stats()


def test_epoch_closes_when_the_next_one_starts():
    """Without end_epoch(), iterating the loader again scores and steps first."""
    data = digits()
    model = new_model()
    train_set = ies_fast.IESDataset(data, model, delta=DELTA)
    loader = DataLoader(train_set, batch_size=BATCH, sampler=train_set.sampler)
    for epoch in range(3):
        assert train_set.selector.epoch == max(epoch - 1, 0) if epoch else True
        for x, y, index in loader:
            train_set.update(F.cross_entropy(model(x), y, reduction="none"), index)
        assert train_set.selector.epoch == epoch  # epoch e-1 closed when epoch e began
    assert train_set.end_epoch() == 0 and train_set.selector.epoch == 3
    assert train_set.end_epoch() == 0 and train_set.selector.epoch == 3  # nothing open: no-op


def test_resume_from_state_dict_continues_like_an_uninterrupted_run(tmp_path):
    data = digits()
    ref_model, ref_set, ref_masks, _ = three_lines(data)
    model, train_set, _, opt = three_lines(data, epochs=SPLIT)
    path = tmp_path / "ckpt.pt"
    torch.save({"ies": train_set.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    model2 = new_model()
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(ckpt["opt"])
    resumed = ies_fast.IESDataset(data, model2, delta=DELTA)
    resumed.load_state_dict(ckpt["ies"])
    _, resumed, masks, _ = three_lines(data, epochs=EPOCHS - SPLIT, model=model2, opt=opt2, train_set=resumed)
    assert torch.equal(masks[-1], ref_masks[-1])
    assert torch.equal(resumed.selector.hist, ref_set.selector.hist)
    for p, q in zip(ref_model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_workers_receive_only_the_data():
    data = digits()
    train_set = ies_fast.IESDataset(data, new_model())
    clone = pickle.loads(pickle.dumps(train_set))
    assert not hasattr(clone, "model") and not hasattr(clone, "selector")
    x, y, i = clone[5]
    assert i == 5 and torch.equal(x, data[5][0])


def test_bad_input_is_one_clear_error():
    data = digits()
    model = new_model()
    with pytest.raises(TypeError, match="model"):
        ies_fast.IESDataset(data, "not a model")
    with pytest.raises(ValueError, match="score_batch_size"):
        ies_fast.IESDataset(data, model, score_batch_size=0)
    with pytest.raises(ValueError, match="num_samples"):
        ies_fast.IESDataset(data, model, selector=ies_fast.IES(10))
    train_set = ies_fast.IESDataset(data, model)
    with pytest.raises(ValueError, match="per_sample_loss"):
        train_set.update(torch.ones(()), torch.zeros(1, dtype=torch.long))
    good = train_set.state_dict()
    with pytest.raises(ValueError, match="sampler"):
        train_set.load_state_dict({**good, "sampler": None})
    with pytest.raises(ValueError, match="state"):
        train_set.load_state_dict({**good, "version": 99})


def test_the_core_never_imports_lightning_or_transformers():
    code = ("import sys, ies_fast, ies_fast.integrations, ies_fast.data; "
            "assert not {'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_wrapper_passes_scoring_policy_floor_and_threshold_to_its_selector():
    data = torch.utils.data.TensorDataset(torch.randn(40, 64), torch.randint(0, 10, (40,)))
    default = ies_fast.IESDataset(data, new_model())
    assert default.selector.scoring_schedule.policy == "backoff" and default.selector.threshold == "absolute"
    ds = ies_fast.IESDataset(data, new_model(), delta=0.2, score_policy="every", score_max_interval=4, min_kept=0.25,
                             threshold="relative", seed=3)
    sel = ds.selector
    assert (sel.delta, sel.scoring_schedule.policy, sel.threshold) == (0.2, "every", "relative")
    assert sel.kept_floor.min_kept == len(data) // 4
    with pytest.raises(ValueError, match="threshold"):
        ies_fast.IESDataset(data, new_model(), threshold="quantile")

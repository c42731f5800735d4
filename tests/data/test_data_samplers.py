"""torch data path: kept/scoring samplers, the indexed dataset, loaders, DDP shards."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ies_fast
from ies_fast.data import (IndexedDataset, KeptBatchSampler, KeptSampler, ScoringSampler, kept_loader,
                           scoring_loader, shard)

N = 37


def set_mastered(sel, mask):
    sel.mastered.copy_(mask)
    sel._invalidate()


def random_masks(epochs, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) < p for p in [0.0, 0.3, 0.6, 0.9, 1.0][:epochs]]


def test_each_epoch_yields_exactly_the_kept_indices():
    sel = ies_fast.IES(N, backend="torch")
    sampler = KeptSampler(sel, seed=3)
    orders = []
    for e, mask in enumerate(random_masks(5)):
        set_mastered(sel, mask)
        sampler.set_epoch(e)
        got = list(sampler)
        assert len(sampler) == len(got) == int((~mask).sum())
        assert sorted(got) == (~mask).nonzero().squeeze(1).tolist()
        orders.append(got)
    assert orders[0] != sorted(orders[0])  # shuffled


def test_driven_by_ies_steps_and_default_epoch_changes_order():
    sel = ies_fast.IES(N, delta=0.5, order=0, window=1, backend="torch")
    sampler = KeptSampler(sel)
    seen_orders = []
    g = torch.Generator().manual_seed(1)
    for epoch in range(4):
        got = list(sampler)
        assert sorted(got) == sel.kept_indices().tolist()
        seen_orders.append(got)
        idx = torch.tensor(got, dtype=torch.int64)
        sel.observe(torch.rand(idx.numel(), generator=g), idx)
        if sel.needs_scoring():
            gone = sel.scoring_mask().nonzero().squeeze(1)
            sel.observe(torch.rand(gone.numel(), generator=g), gone, scoring=True)
        sel.step()
    assert 0 < len(sel.kept_indices()) < N  # the kept set did change
    full = ies_fast.IES(N, backend="torch")
    s = KeptSampler(full)
    a = list(s)
    full.step()
    assert list(s) != a  # selector.epoch drives the shuffle without set_epoch


def test_seeded_and_unshuffled():
    sel = ies_fast.IES(N, backend="torch")
    a, b = KeptSampler(sel, seed=5), KeptSampler(sel, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(KeptSampler(sel, shuffle=False)) == list(range(N))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n_kept", [0, 1, 10, 11, 37])
def test_two_ranks(drop_last, n_kept):
    sel = ies_fast.IES(N, backend="torch")
    mask = torch.ones(N, dtype=torch.bool)
    mask[torch.randperm(N, generator=torch.Generator().manual_seed(n_kept))[:n_kept]] = False
    set_mastered(sel, mask)
    kept = set((~mask).nonzero().squeeze(1).tolist())
    ranks = [KeptSampler(sel, seed=7, num_replicas=2, rank=r, drop_last=drop_last) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    got = [list(r) for r in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == len(ranks[1])
    together = got[0] + got[1]
    if drop_last:
        assert len(together) == n_kept - n_kept % 2 and len(set(together)) == len(together)
        assert set(together) <= kept
    else:
        assert set(together) == kept and len(together) == n_kept + n_kept % 2
    if n_kept % 2 == 0:
        assert not set(got[0]) & set(got[1])


def test_shard_matches_distributed_sampler():
    from torch.utils.data import DistributedSampler

    for n in (5, 8, 1):
        data = list(range(n))
        for drop_last in (False, True):
            for rank in range(3):
                ds = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=False, drop_last=drop_last)
                assert shard(torch.arange(n), 3, rank, drop_last).tolist() == list(ds)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sampler(drop_last):
    sel = ies_fast.IES(N, backend="torch")
    for e, mask in enumerate(random_masks(4, seed=4)):
        set_mastered(sel, mask)
        bs = KeptBatchSampler(sel, 4, seed=1, drop_last=drop_last)
        bs.set_epoch(e)
        batches = list(bs)
        assert len(batches) == len(bs)
        flat = [i for b in batches for i in b]
        kept = (~mask).nonzero().squeeze(1).tolist()
        assert all(len(b) == 4 for b in batches[:-1])
        if drop_last:
            assert len(flat) == len(kept) // 4 * 4 and set(flat) <= set(kept)
        else:
            assert sorted(flat) == kept


def test_state_dict_round_trip():
    sel = ies_fast.IES(N, backend="torch")
    a = KeptSampler(sel, seed=9)
    a.set_epoch(4)
    b = KeptSampler(sel)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b)
    with pytest.raises(ValueError, match="state"):
        b.load_state_dict({"epoch": 1})


def test_scoring_sampler_ascending_and_sharded():
    sel = ies_fast.IES(N, backend="torch")
    mask = random_masks(3)[2]
    set_mastered(sel, mask)
    removed = mask.nonzero().squeeze(1).tolist()
    assert list(ScoringSampler(sel)) == removed
    assert list(ScoringSampler(sel, all_samples=True)) == list(range(N))
    parts = [list(ScoringSampler(sel, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == removed and parts[0] == sorted(parts[0])
    padded = [list(ScoringSampler(sel, num_replicas=2, rank=r, pad=True)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) and set(padded[0] + padded[1]) == set(removed)


def test_indexed_dataset_and_loaders():
    x = torch.randn(N, 3)
    y = torch.randint(0, 4, (N,))
    ds = IndexedDataset(TensorDataset(x, y))
    xi, yi, i = ds[5]
    assert i == 5 and torch.equal(xi, x[5]) and yi == y[5]
    assert ds.__getitems__([2, 3])[1][2] == 3
    sel = ies_fast.IES(N, backend="torch")
    set_mastered(sel, random_masks(2)[1])
    seen = []
    for xb, yb, ib in kept_loader(TensorDataset(x, y), sel, 8, seed=2):
        assert torch.equal(xb, x[ib]) and torch.equal(yb, y[ib])
        seen += ib.tolist()
    assert sorted(seen) == sel.kept_indices().tolist()
    seen = [i for _, _, ib in scoring_loader(TensorDataset(x, y), sel, 16) for i in ib.tolist()]
    assert seen == sel.scoring_mask().nonzero().squeeze(1).tolist()
    assert list(DataLoader(ds, batch_size=N))[0][2].tolist() == list(range(N))


def test_bad_input():
    sel = ies_fast.IES(N, backend="torch")
    short = TensorDataset(torch.randn(N - 1, 2), torch.zeros(N - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_samples"):
        IndexedDataset(short, sel)
    with pytest.raises(ValueError, match="num_samples"):
        kept_loader(short, sel, 4)
    with pytest.raises(ValueError, match="rank"):
        KeptSampler(sel, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        KeptSampler(sel, num_replicas=0)
    with pytest.raises(ValueError, match="batch_size"):
        KeptBatchSampler(sel, 0)
    with pytest.raises(TypeError, match="selector"):
        KeptSampler(object())
    set_mastered(sel, torch.ones(N, dtype=torch.bool))  # everything mastered: empty epoch
    assert list(KeptSampler(sel)) == [] and len(KeptSampler(sel)) == 0
    assert list(KeptBatchSampler(sel, 4)) == [] and len(KeptBatchSampler(sel, 4)) == 0
    assert list(kept_loader(TensorDataset(torch.randn(N, 2), torch.zeros(N, dtype=torch.long)), sel, 4)) == []


def test_dali_is_optional_and_named_when_missing():
    import subprocess
    import sys

    code = (
        "import sys, ies_fast.data\n"
        "assert 'nvidia.dali' not in sys.modules, 'ies_fast.data imported DALI eagerly'\n"
        "sys.modules['nvidia.dali'] = None\n"
        "try:\n"
        "    import ies_fast.data.dali\n"
        "except ImportError as e:\n"
        "    assert 'nvidia-dali-cuda130' in str(e) and 'nvidia-dali-cuda120' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

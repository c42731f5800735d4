"""The in-memory batch source of ``ies-fast train``: batched crop+flip against a
per-image reference, and epochs that visit exactly the kept / removed / test samples."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ies_fast import RandomRemoval
from ies_fast.app.train.batches import CROP_PADDING, TensorBatches, crop_flip


def _reference_crop_flip(x, shift, flip, padding):
    out = []
    for img, (dy, dx), f in zip(x, shift.tolist(), flip.tolist()):
        p = F.pad(img.permute(2, 0, 1), (padding,) * 4)  # CHW, zero border
        c = p[:, dy:dy + img.shape[0], dx:dx + img.shape[1]]
        out.append((c.flip(2) if f else c).permute(1, 2, 0))
    return torch.stack(out)


@pytest.mark.parametrize("shape,padding", [((7, 32, 32, 3), 4), ((5, 9, 13, 1), 2), ((3, 6, 6, 4), 0)])
def test_crop_flip_matches_per_image_reference(shape, padding):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    shift = torch.randint(0, 2 * padding + 1, (shape[0], 2), generator=g)
    flip = torch.rand(shape[0], generator=g) < 0.5
    assert torch.equal(crop_flip(x, shift, flip, padding), _reference_crop_flip(x, shift, flip, padding))


def _data(n=50, n_test=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        name="toy", kind="image", num_classes=3, input_shape=(3, 8, 8),
        train_x=torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8),
        train_y=torch.randint(0, 3, (n,), generator=g),
        test_x=torch.randint(0, 256, (n_test, 8, 8, 3), generator=g, dtype=torch.uint8),
        test_y=torch.randint(0, 3, (n_test,), generator=g), mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 70.0))


def _batches(data, sel, **kw):
    return TensorBatches(data, sel, batch_size=8, eval_batch_size=16, seed=3, device=torch.device("cpu"), **kw)


def test_epoch_visits_kept_samples_once_and_scores_the_removed():
    data = _data()
    sel = RandomRemoval(50, 0.4, seed=1)
    src = _batches(data, sel)
    src.set_epoch(0)
    trained = torch.cat([index for _, _, index in src.train()])
    assert sorted(trained.tolist()) == sel.kept_indices().tolist()
    assert len(src) == -(-len(trained) // 8)
    scored = torch.cat([index for _, _, index in src.score()])
    assert scored.tolist() == torch.nonzero(sel.scoring_mask()).squeeze(1).tolist()
    for x, y, index in src.score():  # no augmentation: the normalised pixels
        ref = (data.train_x[index].permute(0, 3, 1, 2).float() - torch.tensor(data.mean).view(1, 3, 1, 1)) / \
            torch.tensor(data.std).view(1, 3, 1, 1)
        assert torch.allclose(x, ref) and torch.equal(y, data.train_y[index])


def test_augmentation_is_a_function_of_seed_and_epoch():
    data = _data()
    sel = RandomRemoval(50, 0.2, seed=0)
    a, b = _batches(data, sel), _batches(data, sel)
    for src in (a, b):
        src.set_epoch(4)
    xa = torch.cat([x for x, _, _ in a.train()])
    assert torch.equal(xa, torch.cat([x for x, _, _ in b.train()]))  # a resumed run sees the same pixels
    b.set_epoch(5)
    assert not torch.equal(xa, torch.cat([x for x, _, _ in b.train()]))
    assert CROP_PADDING == 4


def test_ranks_share_the_kept_set_and_the_test_set():
    data = _data()
    sel = RandomRemoval(50, 0.3, seed=2)
    ranks = [_batches(data, sel, num_replicas=3, rank=r) for r in range(3)]
    trained, tested = [], []
    for src in ranks:
        src.set_epoch(1)
        trained += torch.cat([i for _, _, i in src.train()]).tolist()
        tested += [y.numel() for _, y in src.test()]
    assert set(trained) == set(sel.kept_indices().tolist())
    assert len(trained) == 3 * -(-len(sel.kept_indices()) // 3)  # DistributedSampler-style padding
    assert sum(tested) == 13


def test_vectors_pass_through_unchanged():
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(name="v", kind="vector", num_classes=2, input_shape=(5,),
                           train_x=torch.randn(20, 5, generator=g), train_y=torch.randint(0, 2, (20,), generator=g),
                           test_x=torch.randn(4, 5, generator=g), test_y=torch.randint(0, 2, (4,), generator=g))
    sel = RandomRemoval(20, 0.25, seed=0)
    src = _batches(data, sel)
    src.set_epoch(0)
    for x, y, index in src.train():
        assert torch.equal(x, data.train_x[index])

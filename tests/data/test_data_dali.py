"""DALI data path (CPU, device_id=None): only kept samples, each once per epoch;
the ImageNet-folder pipeline on generated JPEGs; bad input."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")
Image = pytest.importorskip("PIL.Image")

import ies_fast  # noqa: E402
from ies_fast.data.dali import DALIKeptIterator, array_loader, array_pipeline, imagenet_loader, scan_folder  # noqa: E402
from ies_fast.data.dali.arrays import CIFAR_MEAN, CIFAR_STD  # noqa: E402

pytestmark = pytest.mark.dali
N = 23


def set_mastered(sel, mask):
    sel.mastered.copy_(torch.as_tensor(mask))
    sel._invalidate()


def arrays(n=N, hw=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def masks(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(N) < p for p in (0.0, 0.4, 0.8, 1.0, 0.5)]


def normalised(images):
    return (torch.from_numpy(images).float() - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)


@pytest.mark.parametrize("batch_size", [4, 5])
def test_arrays_each_epoch_yields_the_kept_indices_once(batch_size):
    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    it = array_loader(images, labels, sel, batch_size, num_threads=1, seed=1)
    for epoch, mask in enumerate(masks()):  # includes an all-mastered (empty) epoch
        set_mastered(sel, mask)
        it.set_epoch(epoch)
        batches = list(it)
        assert len(batches) == len(it)
        seen = [i for _, _, idx in batches for i in idx.tolist()]
        assert sorted(seen) == np.flatnonzero(~mask).tolist()
        for x, y, idx in batches:
            assert x.shape == (idx.numel(), 3, 6, 6) and x.dtype == torch.float32
            assert torch.equal(y, torch.from_numpy(labels)[idx])
        assert all(b[2].numel() == batch_size for b in batches[:-1])


def test_arrays_augmentation_is_a_padded_shifted_flipped_crop():
    images, labels = arrays(hw=8)
    sel = ies_fast.IES(N, backend="torch")
    x, _, idx = next(iter(array_loader(images, labels, sel, N, num_threads=1, padding=2)))
    ref = normalised(images[idx.numpy()]).permute(0, 3, 1, 2)  # N C H W
    zero = (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    for k in range(N):
        ok = False
        for img in (ref[k], ref[k].flip(-1)):
            padded = zero.expand(3, 12, 12).clone()
            padded[:, 2:10, 2:10] = img
            ok |= any(torch.allclose(x[k], padded[:, a:a + 8, b:b + 8], atol=1e-4) for a in range(5) for b in range(5))
        assert ok, f"sample {k} is not a shifted/flipped crop"


def test_arrays_val_scoring_and_channels_last():
    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    set_mastered(sel, masks()[2])
    got = list(array_loader(images, labels, sel, 8, mode="scoring", channels_last=True, num_threads=1))
    idx = torch.cat([b[2] for b in got])
    assert idx.tolist() == np.flatnonzero(masks()[2]).tolist()  # removed samples, ascending
    x = torch.cat([b[0] for b in got])
    assert got[0][0].is_contiguous(memory_format=torch.channels_last) and x.shape[1] == 3
    assert torch.allclose(x.permute(0, 2, 3, 1), normalised(images[idx.numpy()]), atol=1e-4)
    val = list(array_loader(images, labels, None, 10, mode="val", num_threads=1))
    assert torch.cat([b[2] for b in val]).tolist() == list(range(N))


@pytest.mark.parametrize("drop_last", [False, True])
def test_arrays_two_ranks(drop_last):
    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    set_mastered(sel, masks()[1])
    kept = set(np.flatnonzero(~masks()[1]).tolist())
    parts = [[i for _, _, b in array_loader(images, labels, sel, 4, num_replicas=2, rank=r, drop_last=drop_last,
                                            num_threads=1) for i in b.tolist()] for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    if drop_last:
        assert not set(parts[0]) & set(parts[1]) and set(parts[0] + parts[1]) <= kept
        assert len(parts[0]) == len(kept) // 2
    else:
        assert set(parts[0] + parts[1]) == kept


def test_arrays_bad_input():
    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    with pytest.raises(ValueError, match="num_samples"):
        array_pipeline(images[:-1], labels[:-1], sel, 4, num_threads=1)
    with pytest.raises(ValueError, match="uint8"):
        array_pipeline(images.astype(np.float32), labels, sel, 4, num_threads=1)
    other = ies_fast.IES(N, backend="torch")
    pipe = array_pipeline(images, labels, sel, 4, num_threads=1)
    with pytest.raises(ValueError, match="another selector"):
        DALIKeptIterator(pipe, other)
    with pytest.raises(TypeError, match="built by"):
        DALIKeptIterator(object())
    with pytest.raises(ValueError, match="needs a selector"):
        array_pipeline(images, labels, None, 4, num_threads=1)


def make_folder(root, classes=3, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(root / f"n{c:02d}", exist_ok=True)
        for k in range(per_class):
            img = rng.integers(0, 256, (10 + 2 * k, 12, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"n{c:02d}" / f"im{k}.JPEG", quality=90)
    return root


def test_imagenet_folder_kept_epochs_and_val(tmp_path):
    root = make_folder(tmp_path / "train")
    files, labels, classes = scan_folder(str(root))
    assert len(files) == 9 and classes == ["n00", "n01", "n02"] and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    sel = ies_fast.IES(9, backend="torch")
    it = imagenet_loader(str(root), sel, 4, size=8, num_threads=1, io_threads=2)
    rng = np.random.default_rng(3)
    for epoch, p in enumerate((0.0, 0.5, 1.0, 0.3)):
        mask = rng.random(9) < p
        set_mastered(sel, mask)
        it.set_epoch(epoch)
        batches = list(it)
        seen = [i for _, _, b in batches for i in b.tolist()]
        assert sorted(seen) == np.flatnonzero(~mask).tolist()
        for x, y, idx in batches:
            assert x.shape == (idx.numel(), 3, 8, 8) and torch.isfinite(x).all()
            assert torch.equal(y, torch.from_numpy(labels)[idx])
    val = list(imagenet_loader(str(root), None, 4, mode="val", size=8, num_threads=1))
    x = torch.cat([b[0] for b in val])
    assert torch.cat([b[2] for b in val]).tolist() == list(range(9)) and x.shape == (9, 3, 8, 8)
    # deterministic: centre crop of the resized image, no flip
    again = torch.cat([b[0] for b in imagenet_loader(str(root), None, 4, mode="val", size=8, num_threads=1)])
    assert torch.equal(x, again) and x.std() > 0.1


def test_imagenet_bad_files(tmp_path):
    root = make_folder(tmp_path / "train")
    (root / "n01" / "im1.JPEG").write_bytes(b"")  # empty
    (root / "n02" / "zz.JPEG").write_bytes(b"not a jpeg at all")
    os.symlink(tmp_path / "missing.JPEG", root / "n00" / "zz.JPEG")  # unreadable
    sel = ies_fast.IES(11, backend="torch")
    with pytest.raises(ValueError, match=r"(im1|zz)\.JPEG"):
        list(imagenet_loader(str(root), sel, 4, size=8, num_threads=1))
    it = imagenet_loader(str(root), sel, 4, size=8, num_threads=1, on_error="skip")
    seen = [i for _, _, b in it for i in b.tolist()]
    src = it.source
    assert src.skipped == 3 and sorted(os.path.basename(f) for f in src.skipped_files) == ["im1.JPEG", "zz.JPEG", "zz.JPEG"]
    assert len(seen) == 8 and len(set(seen)) == 8
    with pytest.raises(ValueError, match="num_samples"):
        imagenet_loader(str(root), ies_fast.IES(9, backend="torch"), 4, size=8, num_threads=1)


def test_imagenet_corrupt_body_names_the_file(tmp_path):
    root = make_folder(tmp_path / "val", classes=2, per_class=2)
    bad = root / "n01" / "im0.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)  # JPEG header, garbage body
    with pytest.raises(RuntimeError, match="im0.JPEG"):
        list(imagenet_loader(str(root), None, 4, mode="val", size=8, num_threads=1))


def test_epoch_left_early_does_not_leak_into_the_next():
    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    it = array_loader(images, labels, sel, 3, shuffle=False, num_threads=1, prefetch_queue_depth=2)
    assert next(iter(it))[2].tolist() == [0, 1, 2]  # abandoned after one batch
    set_mastered(sel, masks()[1])
    seen = [i for _, _, b in it for i in b.tolist()]
    assert seen == np.flatnonzero(~masks()[1]).tolist()


def test_scoring_pass_over_the_dali_scoring_pipeline():
    from ies_fast.selectors.scoring import score

    images, labels = arrays()
    sel = ies_fast.IES(N, backend="torch")
    set_mastered(sel, masks()[2])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 36, 10))
    n = score(sel, model, array_loader(images, labels, sel, 5, mode="scoring", num_threads=1))
    gone = torch.from_numpy(np.flatnonzero(masks()[2]))
    assert n == gone.numel()
    slot = sel.count.long() % sel.history_length
    recorded = sel.hist.gather(1, slot.unsqueeze(1)).squeeze(1)
    x = normalised(images[gone.numpy()]).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels)[gone], reduction="none")
    assert torch.allclose(recorded[gone], expected, atol=1e-5)

"""ies_fast.app.train.idx: IDX files (raw and gzip) and label + pixel CSVs read back
exactly, the .npy cache is used and never unpickles, malformed files name the file."""
import gzip
import os

import numpy as np
import pytest

from ies_fast.app.train.data_cache import cached_pixel_csv
from ies_fast.app.train.idx import find_idx, read_idx, read_idx_split, read_pixel_csv


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written independently of the reader: magic 0 0 type ndim, big-endian dims."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return bytes([0, 0, code, array.ndim]) + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_folder(folder, n_train=30, n_test=10, gz=True, seed=0):
    """The four standard MNIST files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for stem, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            raw = idx_bytes(a)
            path = os.path.join(folder, stem + (".gz" if gz else ""))
            with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
                f.write(raw)
        data[split] = (x, y)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_split_round_trip(tmp_path, gz):
    data = write_idx_folder(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = read_idx_split(str(tmp_path), split)
        np.testing.assert_array_equal(x, data[split][0])
        np.testing.assert_array_equal(y, data[split][1])
        assert x.dtype == np.uint8 and y.dtype == np.int64 and x.flags.c_contiguous


def test_idx_other_types_and_native_order(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    (tmp_path / "a").write_bytes(idx_bytes(a))
    got = read_idx(str(tmp_path / "a"))
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.int32 and got.dtype.isnative


def test_idx_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)
    with pytest.raises(ValueError, match="bad.*not an IDX file"):
        read_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5])
    with pytest.raises(ValueError, match="short.*header says shape"):
        read_idx(str(short))
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))[:-12])
    with pytest.raises(ValueError, match="broken.gz"):
        read_idx(str(broken_gz))


def test_idx_split_missing_and_mismatched(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        read_idx_split(str(tmp_path), "train")
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="30 labels"):
        read_idx_split(str(tmp_path), "train")
    assert find_idx(str(tmp_path), "t10k-images-idx3-ubyte").endswith("t10k-images-idx3-ubyte")
    os.rename(str(tmp_path / "t10k-images-idx3-ubyte"), str(tmp_path / "t10k-images.idx3-ubyte"))
    assert find_idx(str(tmp_path), "t10k-images-idx3-ubyte").endswith("t10k-images.idx3-ubyte")


def write_csv(path, x, y, header=True):
    with open(path, "w") as f:
        if header:
            f.write("label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29)) + "\n")
        for image, label in zip(x, y):
            f.write(f"{label}," + ",".join(str(v) for v in image.reshape(-1)) + "\n")


@pytest.mark.parametrize("header", [True, False])
def test_pixel_csv(tmp_path, header):
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5)
    write_csv(tmp_path / "d.csv", x, y, header)
    gx, gy = read_pixel_csv(str(tmp_path / "d.csv"))
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


def test_pixel_csv_bad(tmp_path):
    (tmp_path / "short.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="short.csv.*785"):
        read_pixel_csv(str(tmp_path / "short.csv"))
    (tmp_path / "text.csv").write_text("1," + ",".join(["7"] * 783) + ",x\n")
    with pytest.raises(ValueError, match="text.csv"):
        read_pixel_csv(str(tmp_path / "text.csv"))
    (tmp_path / "big.csv").write_text("1," + ",".join(["300"] * 784) + "\n")
    with pytest.raises(ValueError, match="big.csv.*0..255"):
        read_pixel_csv(str(tmp_path / "big.csv"))


def test_csv_cache_is_npy_and_used(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4)
    write_csv(tmp_path / "d.csv", x, y)
    cache = tmp_path / "cache"
    a = cached_pixel_csv(str(tmp_path / "d.csv"), str(cache))
    files = sorted(os.listdir(cache))
    assert len(files) == 3 and sum(f.endswith(".npy") for f in files) == 2 and files[0].endswith("-entry.json")
    import ies_fast.app.train.data_cache as idx

    monkeypatch.setattr(idx, "read_pixel_csv", lambda *a, **k: pytest.fail("parsed again despite the cache"))
    b = cached_pixel_csv(str(tmp_path / "d.csv"), str(cache))
    for got in (a, b):
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], y)


# ---- hostile IDX files (issue 31): header first, bounded streaming, regular files only ----
def test_idx_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """A small header followed by 64 MiB of zeros (64 KiB compressed): refused after
    reading what the header promises, never holding the whole stream."""
    import tracemalloc
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    parts = [comp.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8)))]
    zeros = bytes(1 << 20)
    parts += [comp.compress(zeros) for _ in range(64)] + [comp.flush()]
    (tmp_path / "bomb.gz").write_bytes(b"".join(parts))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="bomb.gz.*more than 7840"):
            read_idx(str(tmp_path / "bomb.gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak} bytes held while reading"


def test_idx_header_claiming_too_much_is_refused_unread(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + np.asarray([2**31, 28, 28], ">u4").tobytes()
    (tmp_path / "huge.gz").write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(ValueError, match="huge.gz.*refused unread"):
        read_idx(str(tmp_path / "huge.gz"))


def test_idx_sparse_terabyte_is_refused_up_front(tmp_path, no_hang):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.write(idx_bytes(np.zeros((10, 28, 28), np.uint8)))
        f.truncate(2**40)
    with pytest.raises(ValueError, match="sparse.*header says shape"):
        read_idx(str(path))


def test_idx_fifo_is_refused_without_blocking(tmp_path, no_hang):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="fifo.*not a regular file"):
        read_idx(str(tmp_path / "fifo"))


@pytest.mark.parametrize("split,stem", [("test", "t10k-images-idx3-ubyte"), ("train", "train-images-idx3-ubyte")])
def test_idx_split_without_samples_names_the_file(tmp_path, split, stem):
    write_idx_folder(tmp_path, gz=False, **{f"n_{split}": 0})
    with pytest.raises(ValueError, match=f"{stem}.*no {split} samples"):
        read_idx_split(str(tmp_path), split)

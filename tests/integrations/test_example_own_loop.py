"""examples/fashion_own_loop.py: its IDX reader on a written file, and one short run of
the user's loop with and without IES on stand-in images (the script's measured use is
in docs/results.md)."""
import gzip
import importlib.util
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "fashion_own_loop.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("fashion_own_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_read_idx_round_trips_and_refuses_other_types(example, tmp_path):
    images = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 5, 3, 4) + images.numpy().tobytes())
    assert torch.equal(example.read_idx(str(path)), images)
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 2) + b"\0" * 8)
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        example.read_idx(str(bad))


def test_the_loop_trains_with_and_without_ies(example):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (256,), generator=g)
    x = torch.randn(10, 1, 28, 28, generator=g)[y] + 0.3 * torch.randn(256, 1, 28, 28, generator=g)
    data = (TensorDataset(x, y), (x[:64], y[:64]))
    base = example.run(data, delta=0.0, epochs=6, seed=0, batch_size=64)
    ies = example.run(data, delta=10.0, epochs=6, seed=0, batch_size=64)  # a huge δ: removes after the warm-up
    assert base["saved"] == 0.0 and ies["saved"] > 0.0
    assert 0.0 <= ies["test_acc"] <= 1.0 and base["test_acc"] > 0.5
    assert base["cpu_s"] >= base["train_cpu_s"] > 0

"""Triton stream compaction against torch.nonzero."""
import os

import pytest
import torch
from _support.triton_compile import compile_for_sm90

from ies_fast.ops.compact.triton import compact_triton


def check(mask, block=0):
    indices, count = compact_triton(mask, block=block)
    want = torch.nonzero(mask.reshape(-1)).squeeze(1)
    assert indices.dtype == torch.int64 and indices.shape == (mask.numel(),)
    assert count.dtype == torch.int64 and count.dim() == 0 and count.device == mask.device
    assert int(count) == want.numel()
    assert torch.equal(indices[: int(count)], want)


@pytest.mark.parametrize("n", [0, 1, 7, 64, 65, 1000, 4097])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_random_masks(n, p):
    gen = torch.Generator().manual_seed(n)
    mask = torch.rand(n, generator=gen) < p
    check(mask, block=64)


@pytest.mark.parametrize("n", [1, 5000, 12289])
def test_default_block(n):
    gen = torch.Generator().manual_seed(n + 1)
    check(torch.rand(n, generator=gen) < 0.6)


def test_multi_dim_mask_is_flattened():
    gen = torch.Generator().manual_seed(2)
    check(torch.rand(13, 11, generator=gen) < 0.5, block=16)


def test_bad_mask():
    with pytest.raises(TypeError, match="mask"):
        compact_triton(torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="block"):
        compact_triton(torch.zeros(4, dtype=torch.bool), block=48)


# ---- compiled mode, without a GPU -----------------------------------------------------


def test_kernels_compile_for_sm90(tmp_path):
    compile_for_sm90(tmp_path, """
from ies_fast.ops.compact.triton import _block_count_kernel, _scatter_kernel
build(_block_count_kernel, dict(flags_ptr="*u8", counts_ptr="*i32", N="i32"), dict(BLOCK=4096))
build(_scatter_kernel, dict(flags_ptr="*u8", ends_ptr="*i64", out_ptr="*i64", N="i32"), dict(BLOCK=4096))
""")


#: the CUDA tests need compiled kernels: run them as ``TRITON_INTERPRET=0 pytest -m gpu``
compiled = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="interpreted Triton; run TRITON_INTERPRET=0 pytest -m gpu"
)


@pytest.mark.gpu
@compiled
@pytest.mark.parametrize("n", [1_281_167, 10_000_000])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_cuda_matches_nonzero(n, p):
    gen = torch.Generator(device="cuda").manual_seed(0)
    check(torch.rand(n, generator=gen, device="cuda") < p)

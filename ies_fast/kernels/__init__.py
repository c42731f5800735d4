"""Triton kernels behind the ``triton`` backend (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` for tests). Importing this package imports Triton, so
:func:`ies_fast.backend.triton_status` reports False where Triton is missing.

* :func:`fused_cross_entropy`: per-sample cross-entropy + ring write in one pass;
* :func:`record_triton`, :func:`close_epoch_triton`: the selector's ring buffer;
* :func:`compact_triton`: bool mask -> ascending index list, count on device.
"""
import triton  # noqa: F401  (fail here, not at first kernel launch, when Triton is absent)

from .compact import compact_triton
from .cross_entropy import fused_cross_entropy
from .ring import close_epoch_triton, record_triton

__all__ = ["fused_cross_entropy", "record_triton", "close_epoch_triton", "compact_triton"]

"""DALI pipelines that read, decode and augment only the samples a selector keeps.

Needs NVIDIA DALI (``pip install nvidia-dali-cuda130``, or ``nvidia-dali-cuda120``
for CUDA 12); importing this package without it raises ``ImportError`` saying so.
The same code runs CPU-only (``device_id=None``) and on a GPU.

>>> it = ies_fast.data.dali.array_loader(images, labels, sel, batch_size=256)
>>> for x, y, index in it: ...           # one epoch over sel.kept_indices()
"""
try:
    import nvidia.dali  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ies_fast.data.dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 (CUDA 13) "
        "or nvidia-dali-cuda120 (CUDA 12)"
    ) from e

from .arrays import array_loader, array_pipeline
from .imagenet import ImageFolderSource, imagenet_loader, imagenet_pipeline, scan_folder
from .iterator import DALIKeptIterator
from .source import ArraySource, KeptSource

__all__ = ["ArraySource", "DALIKeptIterator", "ImageFolderSource", "KeptSource", "array_loader", "array_pipeline",
           "imagenet_loader", "imagenet_pipeline", "scan_folder"]

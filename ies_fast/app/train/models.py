"""Models for ``ies-fast train``, chosen by name for a dataset's input shape.

Small-image datasets (CIFAR, synthetic) get the CIFAR variants used in the data
pruning literature: ResNets with a 3x3 stride-1 stem and no max-pool, and VGG-16
with BatchNorm. Vector datasets (digits, mnist1d) get an MLP or a small 1-D CNN.
ImageNet models come from torchvision (an optional dependency), built without
pretrained weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_int
from ...nn import BasicBlock

SMALL_MODELS = ("resnet8", "resnet18", "resnet34", "vgg16", "mlp", "cnn1d")
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mlp")
_IMAGE_ONLY = ("resnet8", "resnet18", "resnet34", "resnet50", "resnet101", "vgg16")


# ---- CIFAR ResNet -------------------------------------------------------------------------
class ResNetCifar(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, four stages of BasicBlocks (widths
    64..512, stride 2 from the second stage on), global average pool, linear head.
    The global pool makes it work for any input size (>= 8 keeps every stage > 1x1)."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2]; 11,173,962 parameters for 10 classes)."""
    return ResNetCifar((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    """CIFAR ResNet-34 (BasicBlocks [3, 4, 6, 3])."""
    return ResNetCifar((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


class ResNet8(nn.Module):
    """A small residual CNN for 28x28 grey images on a CPU budget: 3x3 stem, 2x2
    max-pool, three BasicBlocks (widths ``w, 2w, 4w``, stride 2 from the second),
    global average pool, linear head (77,754 parameters at w=16, 10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.layers = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet8(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> ResNet8:
    """:class:`ResNet8` (the Fashion-MNIST / MNIST recipes' model)."""
    return ResNet8(num_classes, in_channels, width)


# ---- CIFAR VGG-16 -------------------------------------------------------------------------
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGGCifar(nn.Module):
    """CIFAR VGG-16 with BatchNorm, global average pool and one linear layer. Max-pools
    that would take a side below 1 pixel are left out, so inputs smaller than 32x32 work."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_hw: tuple = (32, 32),
                 config=VGG16_CONFIG):
        super().__init__()
        layers, c = [], in_channels
        h, w = image_hw
        for v in config:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


def vgg16(num_classes: int = 10, in_channels: int = 3, image_hw: tuple = (32, 32)) -> VGGCifar:
    """CIFAR VGG-16 (BatchNorm) for ``image_hw`` inputs."""
    return VGGCifar(num_classes, in_channels, image_hw)


# ---- vector models ------------------------------------------------------------------------
def mlp(num_classes: int, input_shape: tuple, hidden: int = 256) -> nn.Sequential:
    """Flatten, then two hidden ReLU layers of ``hidden`` units: a baseline for any input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


class CNN1d(nn.Module):
    """MNIST-1D's ConvBase-like net: a ``(D,)`` vector as one channel of length D, three
    Conv1d(k=5, pad=2) + ReLU (stride 2 on the 2nd and 3rd), flatten, linear head."""

    def __init__(self, num_classes: int, length: int, channels: int = 32):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(1, channels, 5, 1, 2), nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 5, 2, 2), nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, 5, 2, 2), nn.ReLU(inplace=True))
        out_len = math.ceil(math.ceil(length / 2) / 2)  # each stride-2, k=5, pad=2 conv: ceil(L / 2)
        self.fc = nn.Linear(channels * out_len, num_classes)

    def forward(self, x):
        return self.fc(self.convs(x.reshape(x.shape[0], 1, -1)).flatten(1))


# ---- by name ------------------------------------------------------------------------------
def import_torchvision():
    """``(torchvision or None, why not)``. A broken install (e.g. built for another torch)
    fails with RuntimeError rather than ImportError; it counts as missing too."""
    try:
        import torchvision
    except ImportError:
        return None, ""
    except Exception as e:  # noqa: BLE001 - any failed import means "not usable"
        return None, f"; the installed one fails to import: {str(e).splitlines()[-1] if str(e) else type(e).__name__}"
    return torchvision, ""


def model_names(imagenet: bool = False) -> list[str]:
    """Names :func:`build_model` accepts: for ImageNet, the torchvision models (listed
    only when torchvision imports) and ``mlp``; otherwise the small-input models."""
    if not imagenet:
        return list(SMALL_MODELS)
    return list(IMAGENET_MODELS) if import_torchvision()[0] is not None else ["mlp"]


def build_model(name: str, num_classes: int, input_shape: tuple, *, imagenet: bool = False) -> nn.Module:
    """The model ``name`` for ``num_classes`` classes and samples of ``input_shape``:
    ``(C, H, W)`` for images, ``(D,)`` for vectors. ``imagenet=True`` picks torchvision's
    ImageNet architectures (randomly initialised) instead of the CIFAR variants."""
    valid = IMAGENET_MODELS if imagenet else SMALL_MODELS
    if name not in valid:
        kind = "ImageNet" if imagenet else "this dataset"
        raise ValueError(f"model must be one of {', '.join(valid)} for {kind}, got {name!r}")
    check_int("num_classes", num_classes, min=2)
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (D,) with positive sizes, got {input_shape!r}")
    if name in _IMAGE_ONLY and len(shape) != 3:
        raise ValueError(f"model {name!r} needs images (C, H, W), got input_shape {shape}; "
                         f"use mlp or cnn1d for vector data")
    if name == "cnn1d" and len(shape) != 1:
        raise ValueError(f"model 'cnn1d' needs vectors (D,), got input_shape {shape}; "
                         f"use resnet18, resnet34, vgg16 or mlp for images")
    if name == "mlp":
        return mlp(num_classes, shape)
    if imagenet:
        torchvision, why = import_torchvision()
        if torchvision is None:
            raise ImportError(f"model {name!r} for ImageNet needs torchvision: pip install \"ies_fast[vision]\" "
                              f"(the torchvision built for torch {torch.__version__.split('+')[0]}){why}")
        if shape[0] != 3:
            raise ValueError(f"torchvision's {name} needs 3-channel images, got input_shape {shape}")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if name == "cnn1d":
        return CNN1d(num_classes, shape[0])
    if name == "vgg16":
        return vgg16(num_classes, shape[0], shape[1:])
    if name == "resnet8":
        return resnet8(num_classes, shape[0])
    return (resnet18 if name == "resnet18" else resnet34)(num_classes=num_classes, in_channels=shape[0])

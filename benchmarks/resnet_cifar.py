"""A small CIFAR ResNet-18 (3x3 stem, no max-pool) for the epoch benchmark.

Used only when ``ies_fast.train.models`` is not available; :func:`resnet18`
prefers that one so the benchmark times the model the training loop uses.
"""
from __future__ import annotations

from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
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


def resnet18(num_classes: int = 10) -> tuple[nn.Module, str]:
    """``(model, source)``: the project's CIFAR ResNet-18 when it exists, else the local one."""
    try:
        from ies_fast.train import models  # landing from the training-loop issue

        for name in ("resnet18", "ResNet18", "cifar_resnet18"):
            factory = getattr(models, name, None)
            if factory is not None:
                return factory(num_classes=num_classes), f"ies_fast.train.models.{name}"
    except Exception:  # not landed yet, or a different signature
        pass
    return ResNetCifar(num_classes=num_classes), "benchmarks/resnet_cifar.py"

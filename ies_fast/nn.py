"""Network blocks the library ships: the CIFAR-style residual block and a small
multi-exit ResNet (one classifier per stage) for multi-exit IES, its tests and
demos. The app's models (``ies-fast train``) build on :class:`BasicBlock`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected when the shape changes) shortcut."""

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


class MultiExitResNet(nn.Module):
    """A small CIFAR-style ResNet (3x3 stem, stages of basic blocks, stride 2 between
    stages) with a classifier head (global average pool + linear) after every
    stage. ``forward`` returns logits ``[B, H, C]``, ``H = len(widths)``; the last
    exit is the usual ResNet output. ``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)``
    is a multi-exit ResNet-18."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64), blocks=(1, 1, 1), in_channels: int = 3):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths and blocks must have the same non-zero length, got {widths!r} and {blocks!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, heads, cin = [], [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            heads.append(nn.Linear(w, num_classes))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, logits = self.stem(x), []
        for stage, head in zip(self.stages, self.heads):
            out = stage(out)
            logits.append(head(F.adaptive_avg_pool2d(out, 1).flatten(1)))
        return torch.stack(logits, dim=1)

"""The epoch benchmark's model: the training loop's CIFAR ResNet-18
(:func:`ies_fast.app.train.models.resnet18`), so the benchmark times what ``ies-fast train`` runs."""
from __future__ import annotations

from torch import nn

from ies_fast.app.train import models


def resnet18(num_classes: int = 10) -> tuple[nn.Module, str]:
    """``(model, source)``: the CIFAR ResNet-18 and where it comes from (recorded in the results)."""
    return models.resnet18(num_classes=num_classes), "ies_fast.app.train.models.resnet18"

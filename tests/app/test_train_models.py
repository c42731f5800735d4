"""ies_fast.app.train.models: every name builds for its input kind and gives [B, classes];
the CIFAR ResNet-18 has its known size; errors name what is wrong."""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

import pytest
import torch

from ies_fast.app.train.models import build_model, model_names, resnet18

IMAGE_SHAPES = [(3, 32, 32), (3, 16, 16)]
VECTOR_SHAPES = [(64,), (40,)]
IMAGE_MODELS = ["resnet18", "resnet34", "vgg16", "mlp"]


def require_torchvision():
    """Skip unless torchvision imports (a build for another torch fails with RuntimeError)."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torchvision not usable: {type(e).__name__}: {e}")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def built(name: str, num_classes: int, shape: tuple) -> torch.nn.Module:
    """One model per (name, classes, shape) for the whole module: building the ResNets is the slow part."""
    torch.manual_seed(0)
    return build_model(name, num_classes, shape)


@pytest.mark.parametrize("shape", IMAGE_SHAPES + [(1, 8, 8)])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_forward(name, shape):
    resnet_any_size = name.startswith("resnet") and shape[0] == 3  # global pooling: one ResNet serves every size
    model = built(name, 7, (3, 32, 32) if resnet_any_size else shape)
    with torch.no_grad():
        out = model.eval()(torch.randn(3, *shape))
    assert out.shape == (3, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", VECTOR_SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn1d"])
def test_vector_models_forward(name, shape):
    model = build_model(name, 10, shape)
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def test_model_names():
    assert model_names() == ["resnet8", "resnet18", "resnet34", "vgg16", "mlp", "cnn1d"]
    for name in model_names():
        shape = (40,) if name == "cnn1d" else (3, 32, 32)
        build_model(name, 10, shape)


def test_resnet8_size_and_layout():
    # the Fashion-MNIST / MNIST recipes' small residual CNN: 28x28 grey in, 10 classes out
    model = built("resnet8", 10, (1, 28, 28))
    assert n_params(model) == 77_754
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1
    assert [b.conv1.out_channels for b in model.layers] == [16, 32, 64]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_size_and_layout():
    # the CIFAR ResNet-18 of the data-pruning literature: 3x3 stride-1 stem, no max-pool
    model = built("resnet18", 10, (3, 32, 32))
    assert n_params(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert len(model.layers) == 8 and len(built("resnet34", 7, (3, 32, 32)).layers) == 16
    assert n_params(built("resnet34", 7, (3, 32, 32))) == 21_280_583  # 21,282,122 with 10 classes
    small = resnet18(3, in_channels=1)
    assert small.conv1.in_channels == 1 and small.fc.out_features == 3
    assert n_params(small) == 11_173_962 - 7 * 513 - 2 * 9 * 64  # 7 fewer outputs, 2 fewer input planes


def test_vgg16_small_inputs_drop_pools():
    pools = lambda m: sum(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(built("vgg16", 10, (3, 32, 32))) == 5
    assert pools(build_model("vgg16", 10, (3, 8, 8))) == 3
    modules = list(built("vgg16", 10, (3, 32, 32)).modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in modules) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules) == 13


def test_backward():
    torch.manual_seed(0)
    for name, shape in [("resnet18", (3, 16, 16)), ("cnn1d", (40,)), ("mlp", (64,))]:
        model = build_model(name, 10, shape)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, *shape)), torch.arange(4))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_errors():
    with pytest.raises(ValueError, match=r"model must be one of resnet8, resnet18, resnet34, vgg16, mlp, cnn1d.*'foo'"):
        build_model("foo", 10, (3, 32, 32))
    with pytest.raises(ValueError, match=r"'resnet50'"):
        build_model("resnet50", 10, (3, 32, 32))  # ImageNet only
    with pytest.raises(ValueError, match=r"'resnet18' needs images \(C, H, W\).*mlp or cnn1d"):
        build_model("resnet18", 10, (64,))
    with pytest.raises(ValueError, match=r"'vgg16' needs images"):
        build_model("vgg16", 10, (40,))
    with pytest.raises(ValueError, match=r"'cnn1d' needs vectors"):
        build_model("cnn1d", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 1, (64,))
    with pytest.raises(ValueError, match=r"'cnn1d'"):
        build_model("cnn1d", 10, (3, 224, 224), imagenet=True)  # no cnn1d for ImageNet


def test_imagenet_mlp_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    assert model_names(imagenet=True) == ["mlp"]
    assert build_model("mlp", 5, (3, 8, 8), imagenet=True)(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    with pytest.raises(ImportError, match=r"model 'resnet50' for ImageNet needs torchvision: pip install \"ies_fast\[vision\]\""):
        build_model("resnet50", 1000, (3, 224, 224), imagenet=True)


class _BrokenTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import torchvision`` fails the way a wheel built for another torch does."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "torchvision" else None

    def create_module(self, spec):
        raise RuntimeError("operator torchvision::nms does not exist")

    def exec_module(self, module):
        pass


def test_imagenet_models_with_a_broken_torchvision(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(), *sys.meta_path])
    assert model_names(imagenet=True) == ["mlp"]
    with pytest.raises(ImportError, match=r"ies_fast\[vision\].*fails to import: operator torchvision::nms does not exist"):
        build_model("resnet50", 1000, (3, 224, 224), imagenet=True)


def test_imagenet_torchvision_models():
    require_torchvision()
    assert model_names(imagenet=True) == ["resnet18", "resnet34", "resnet50", "resnet101", "vgg16", "mlp"]
    torch.manual_seed(0)
    model = build_model("resnet50", 12, (3, 64, 64), imagenet=True).eval()
    assert type(model).__module__.startswith("torchvision")
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 12)
    assert n_params(build_model("resnet18", 1000, (3, 224, 224), imagenet=True)) == 11_689_512


def test_imagenet_models_come_from_torchvision_get_model(monkeypatch):
    # the torchvision path without torchvision: a stand-in records the call
    import types

    calls = []
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(get_model=lambda name, **kw: calls.append((name, kw)) or torch.nn.Identity())
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    assert "resnet101" in model_names(imagenet=True)
    assert isinstance(build_model("resnet101", 1000, (3, 224, 224), imagenet=True), torch.nn.Identity)
    assert calls == [("resnet101", dict(weights=None, num_classes=1000))]
    with pytest.raises(ValueError, match="resnet50' needs images"):
        build_model("resnet50", 10, (64,), imagenet=True)
    with pytest.raises(ValueError, match="one of resnet18, resnet34, resnet50, resnet101, vgg16, mlp for ImageNet"):
        build_model("resnet152", 10, (3, 224, 224), imagenet=True)

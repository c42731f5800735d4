"""TrainConfig: the recipes fill what is left unset; bad values name the flag."""
import dataclasses

import pytest

from ies_fast.train.config import TrainConfig, resolve


def test_cifar_recipes_follow_the_paper():
    c10 = resolve(TrainConfig(dataset="cifar10", data_dir="x"))
    assert (c10.model, c10.epochs, c10.batch_size, c10.optimizer, c10.lr, c10.momentum, c10.weight_decay,
            c10.lr_schedule, c10.lr_gamma, c10.delta, c10.order, c10.window) == (
        "resnet18", 200, 64, "sgd", 0.1, 0.9, 5e-4, "exp", 0.96, 1e-3, 2, 3)
    c100 = resolve(TrainConfig(dataset="cifar100", data_dir="x"))
    assert (c100.model, c100.delta) == ("resnet34", 2e-3)


def test_imagenet_recipe_uses_dali_delta_one_and_annealing():
    c = resolve(TrainConfig(dataset="imagenet", data_dir="x"))
    assert (c.loader, c.delta, c.anneal, c.image_size, c.batch_size, c.epochs) == ("dali", 1.0, 0.1, 224, 128, 150)


def test_explicit_values_win_over_the_recipe():
    c = resolve(TrainConfig(dataset="cifar10", data_dir="x", model="vgg16", delta=0.0, epochs=3))
    assert (c.model, c.delta, c.epochs) == ("vgg16", 0.0, 3)


@pytest.mark.parametrize("change,flag", [
    (dict(epochs=0), "--epochs"), (dict(batch_size=-1), "--batch-size"), (dict(delta=-1.0), "--delta"),
    (dict(delta=float("nan")), "--delta"), (dict(lr=0.0), "--lr"), (dict(anneal=1.5), "--anneal"),
    (dict(order=4), "--order"), (dict(selector="greedy"), "--selector"), (dict(loader="dali"), "--loader"),
    (dict(dataset="cifar10"), "--data-dir"), (dict(prune_ratio=0.95), "--prune-ratio"), (dict(window=0), "--window"),
    (dict(dataset="svhn"), "--dataset"), (dict(out=""), "--out"),
])
def test_bad_values_name_the_flag(change, flag):
    with pytest.raises(ValueError, match=flag):
        resolve(dataclasses.replace(TrainConfig(dataset="digits"), **change))

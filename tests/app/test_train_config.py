"""TrainConfig: the recipes fill what is left unset; bad values name the flag."""
import dataclasses

import pytest

from ies_fast.app.train.config import TrainConfig, resolve


def test_cifar_recipes_follow_the_paper():
    c10 = resolve(TrainConfig(dataset="cifar10", data_dir="x"))
    assert (c10.model, c10.epochs, c10.batch_size, c10.optimizer, c10.lr, c10.momentum, c10.weight_decay,
            c10.lr_schedule, c10.lr_gamma, c10.delta, c10.order, c10.window) == (
        "resnet18", 200, 64, "sgd", 0.1, 0.9, 5e-4, "exp", 0.96, 1e-3, 2, 3)
    c100 = resolve(TrainConfig(dataset="cifar100", data_dir="x"))
    assert (c100.model, c100.delta) == ("resnet34", 2e-3)
    # the CIFAR recipes follow cifar_main.py's eligibility rule exactly (docs/semantics.md)
    assert (c10.eligibility, c100.eligibility, c10.k) == ("official", "official", 1)
    assert resolve(TrainConfig(dataset="digits")).eligibility == "paper"


def test_rule_options_reach_the_selector():
    import torch

    from ies_fast.app.train.loop import selector_for_config

    c = resolve(TrainConfig(dataset="digits", k=2, eligibility="official", order=1, window=4))
    sel = selector_for_config(c, 10, torch.device("cpu"))
    assert (sel.k, sel.eligibility, sel.history_length) == (2, "official", 1 + 4 + 2 - 1 + 1)


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
    (dict(dataset="svhn"), "--dataset"), (dict(out=""), "--out"), (dict(k=0), "--k"),
    (dict(eligibility="cifar"), "--eligibility"), (dict(delta=1e-50), "--delta"),
])
def test_bad_values_name_the_flag(change, flag):
    with pytest.raises(ValueError, match=flag):
        resolve(dataclasses.replace(TrainConfig(dataset="digits"), **change))


def _saved(**change):
    return resolve(TrainConfig(dataset="digits", lr=0.07, batch_size=32, **change)).to_dict()


def test_resume_takes_the_runs_options_and_only_the_changeable_ones_from_the_flags():
    from ies_fast.app.train.config import CHANGEABLE_ON_RESUME, resumed_config

    saved = dict(_saved(stop_after=1, workers=3), lr_milestones=[0.5, 0.75])  # lists: as JSON would return them
    given = {"out", "resume", "workers", "plot", "dataset"}
    c = resumed_config(saved, TrainConfig(dataset="digits", out="o", resume=True, workers=1, plot=False, lr=0.5),
                       given)
    # lr was not given: the run's 0.07 stays (and would be recorded in config.json); the given changeable ones apply
    assert (c.lr, c.batch_size, c.workers, c.plot, c.out, c.resume) == (0.07, 32, 1, False, "o", True)
    assert c.lr_milestones == (0.5, 0.75)
    # --stop-after belongs to one invocation (left out: none); --workers left out keeps the run's
    c = resumed_config(saved, TrainConfig(resume=True), {"resume"})
    assert (c.stop_after, c.workers, c.lr) == (None, 3, 0.07)
    assert {"stop_after", "workers", "progress", "plot"} <= set(CHANGEABLE_ON_RESUME)
    assert not {"lr", "momentum", "weight_decay", "score_every", "batch_size", "lr_gamma", "epochs"} & set(
        CHANGEABLE_ON_RESUME)


def test_resume_names_every_differing_run_option():
    from ies_fast.app.train.config import resumed_config

    now = TrainConfig(dataset="digits", lr=0.1, batch_size=16, momentum=0.5, score_every=2, lr_gamma=0.9,
                      weight_decay=1e-4, workers=0, resume=True)
    with pytest.raises(ValueError) as exc:
        resumed_config(_saved(), now)  # the Python API: every field counts as given
    for flag in ("--lr 0.07 (now 0.1)", "--batch-size 32 (now 16)", "--momentum", "--score-every", "--lr-gamma",
                 "--weight-decay"):
        assert flag in str(exc.value)
    assert "--workers" not in str(exc.value)
    # the same values (recipe ones left None included) resume fine
    same = resumed_config(_saved(), TrainConfig(dataset="digits", lr=0.07, batch_size=32, workers=0, resume=True))
    assert same.workers == 0 and same.lr == 0.07


def test_resume_rejects_a_checkpoint_config_it_does_not_know():
    from ies_fast.app.train.config import resumed_config

    with pytest.raises(ValueError, match="unknown options mystery"):
        resumed_config(dict(_saved(), mystery=1), TrainConfig(resume=True), set())


@pytest.mark.parametrize("change,flag", [(dict(seed=-1), "--seed"), (dict(seed=2**32), "--seed"),
                                         (dict(dist_timeout=0.0), "--dist-timeout")])
def test_seed_and_timeout_ranges(change, flag):
    with pytest.raises(ValueError, match=flag):
        resolve(dataclasses.replace(TrainConfig(dataset="digits"), **change))

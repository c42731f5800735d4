"""``TrainConfig``: every option of ``ies-fast train``, and the per-dataset recipes
that fill the options left unset (the paper's CIFAR and ImageNet settings).

A field left ``None`` takes the recipe's value in :func:`resolve`; :func:`validate`
raises ``ValueError`` naming the option for anything out of range, so the command
line can print it as a one-line error.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ...selectors.ies import THRESHOLDS
from ...selectors.rule import ELIGIBILITY, decision_threshold

DATASETS = ("digits", "mnist1d", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "folder", "synthetic")
ON_BAD_IMAGE = ("raise", "skip")
SELECTORS = ("ies", "infobatch", "random", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("exp", "multistep", "linear", "cosine", "constant")
LOADERS = ("torch", "dali")
EARLY_STOP = ("none", "patience", "mastered")
SCORE_POLICIES = ("every", "backoff")

#: the paper's settings (Appendix B; official cifar_main.py, whose eligibility rule the
#: CIFAR recipes take: docs/semantics.md) and small-data defaults
RECIPES = {
    "cifar10": dict(model="resnet18", epochs=200, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    lr_schedule="exp", delta=1e-3, anneal=0.0, min_kept=0.0, eligibility="official"),
    "cifar100": dict(model="resnet34", epochs=200, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                     lr_schedule="exp", delta=2e-3, anneal=0.0, min_kept=0.0, eligibility="official"),
    "imagenet": dict(model="resnet101", epochs=150, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                     lr_schedule="exp", delta=1.0, anneal=0.1, loader="dali", image_size=224, min_kept=0.0,
                     eligibility="paper"),
    "synthetic": dict(model="resnet18", epochs=10, batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                      lr_schedule="exp", delta=1e-3, anneal=0.0, min_kept=0.0, eligibility="paper"),
    "digits": dict(model="mlp", epochs=60, batch_size=64, optimizer="sgd", lr=0.05, weight_decay=0.0,
                   lr_schedule="constant", delta=2e-4, anneal=0.0, min_kept=0.05, eligibility="paper"),
    # mnist1d: δ=1e-2 + backoff scoring + the 5% floor, the measured winner (docs/results.md,
    # "Cheaper scoring and the collapse guard": 0.92x random removal's time, 95.47% vs 93.97%)
    "mnist1d": dict(model="cnn1d", epochs=60, batch_size=100, optimizer="sgd", lr=0.05, weight_decay=0.0,
                    lr_schedule="constant", delta=1e-2, anneal=0.0, min_kept=0.05, eligibility="paper",
                    score_policy="backoff"),
    # sized so that `ies-fast compare` (4 selectors x 3 seeds) fits an hour on a 2-core CPU
    # (docs/training.md, docs/results.md)
    # eval_every=5: the test pass (10,000 images) is the same for every selector and was a third of a
    # 10k-slice run; it does not change training (docs/results.md, "Fashion-MNIST 10k-slice front")
    # δ=0.2: the baseline's accuracy (-0.01 points, 3 seeds) with 42% saved, 1.61x, 12% faster than InfoBatch's
    # best point within 0.2 points (docs/results.md, "Full-size fronts": the quiet-box set)
    "fashion-mnist": dict(model="resnet8", epochs=15, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                          lr_schedule="cosine", delta=0.2, anneal=0.0, min_kept=0.0, eligibility="paper",
                          score_policy="backoff", eval_every=5),
    # mnist: N=1, w=2 (the first test after 3 of 8 epochs' losses, not 5) and δ=0.3: 2.10x at -0.10 points
    # with 59% saved, against random removal's 1.94x and InfoBatch's 1.44x (docs/results.md, "Full-size fronts")
    "mnist": dict(model="resnet8", epochs=8, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                  lr_schedule="cosine", delta=0.3, order=1, window=2, anneal=0.0, min_kept=0.0, eligibility="paper",
                  score_policy="backoff", eval_every=4),
}

#: ``folder`` images up to this side (``--image-size``, default 64) train like Fashion-MNIST:
#: the project's ResNet-8, resize + padded random crop; larger ones like ImageNet with
#: torchvision's ResNet-18 and RandomResizedCrop (the same side as in datasets.SMALL_FOLDER_SIZE)
SMALL_FOLDER_SIZE = 64
FOLDER_DEFAULT_SIZE = 64


def folder_recipe(image_size: Optional[int]) -> dict:
    """The ``folder`` recipe for ``image_size``: Fashion-MNIST's (15 epochs, SGD 0.1 cosine,
    backoff scoring) with δ=0.1 (what the folder runs measured) and ResNet-8 up to
    :data:`SMALL_FOLDER_SIZE` pixels, else with torchvision's ResNet-18 (ImageNet stem)."""
    size = FOLDER_DEFAULT_SIZE if image_size is None else image_size
    small = isinstance(size, int) and size <= SMALL_FOLDER_SIZE
    return {**RECIPES["fashion-mnist"], "model": "resnet8" if small else "resnet18", "image_size": size,
            "delta": 0.1, "loader": "torch", "eval_every": 1}  # a user's own photos: a test accuracy every epoch


def uses_torchvision_models(config: "TrainConfig") -> bool:
    """Whether ``--model`` names a torchvision ImageNet architecture (imagenet, and
    ``folder`` above :data:`SMALL_FOLDER_SIZE` unless the model is the project's resnet8)."""
    if config.dataset == "folder":
        return config.image_size > SMALL_FOLDER_SIZE and config.model != "resnet8"
    return config.dataset == "imagenet"


@dataclass
class TrainConfig:
    """One training run. ``None`` means "the dataset's recipe" (see :data:`RECIPES`)."""

    dataset: str = "digits"
    data_dir: Optional[str] = None
    model: Optional[str] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    lr_schedule: Optional[str] = None
    lr_gamma: float = 0.96
    lr_milestones: tuple = (0.5, 0.75)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    eval_batch_size: int = 512
    eval_every: Optional[int] = None
    selector: str = "ies"
    delta: Optional[float] = None
    threshold: str = "absolute"
    order: Optional[int] = None
    window: Optional[int] = None
    k: int = 1
    eligibility: Optional[str] = None
    anneal: Optional[float] = None
    score_every: int = 1
    score_policy: Optional[str] = None
    score_max_interval: int = 8
    min_kept: Optional[float] = None
    prune_ratio: float = 0.5
    random_ratio: float = 0.3
    early_stop: str = "none"
    patience: int = 10
    loader: Optional[str] = None
    workers: int = 4
    amp: bool = False
    compile: bool = False
    device: Optional[str] = None
    backend: str = "auto"
    seed: int = 0
    deterministic: bool = False
    out: str = "runs/ies"
    resume: bool = False
    stop_after: Optional[int] = None
    progress: bool = True
    plot: bool = True
    dist_timeout: float = 600.0
    synthetic_size: int = 10000
    synthetic_classes: int = 10
    image_size: Optional[int] = None
    subset: Optional[int] = None
    label_noise: float = 0.0
    on_bad_image: str = "raise"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: options that may differ from the checkpoint on ``--resume``: where and how the run
#: executes, not what it computes. Every other option defines the run and must match.
CHANGEABLE_ON_RESUME = ("out", "resume", "stop_after", "progress", "plot", "workers", "data_dir", "device", "backend",
                        "compile", "deterministic", "eval_batch_size", "dist_timeout")

#: options added after runs were recorded, with the value that reproduces those runs: a
#: finished run whose config.json lacks one is read back when the option is at that value
ADDED_OPTIONS = {"eval_every": 1, "threshold": "absolute", "on_bad_image": "raise"}

#: changeable options that belong to one invocation: a resumed run takes them from its own
#: command line (their defaults when left out), never from the checkpoint
PER_INVOCATION = ("out", "resume", "stop_after", "progress", "plot")

#: the largest ``--seed`` (the seed feeds numpy's 32-bit generator and per-epoch torch generators)
MAX_SEED = 2**32 - 1


#: options whose flag is a switch that turns them off
_OFF_SWITCHES = {"progress": "--no-progress", "plot": "--no-plot"}


def flag(option: str) -> str:
    """The command-line flag of an option: ``batch_size`` -> ``--batch-size``."""
    return _OFF_SWITCHES.get(option, "--" + option.replace("_", "-"))


def resumed_config(saved: dict, config: TrainConfig, given=None) -> TrainConfig:
    """The config a resumed run uses: the checkpoint's ``saved`` options, with the
    changeable ones (:data:`CHANGEABLE_ON_RESUME`) taken from ``config`` where given
    (:data:`PER_INVOCATION` ones always).

    ``given`` names the options the user set (the command line's flags); ``None``
    means all of them (the Python API). A given run-defining option that differs
    from the checkpoint raises ``ValueError`` naming every such flag, so nothing is
    silently ignored and nothing changes mid-run."""
    fields = TrainConfig.__dataclass_fields__
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise ValueError(f"its checkpoint's config has unknown options {', '.join(unknown)}")
    before = _with_recipe(config)
    after = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    given = set(fields) if given is None else set(given)
    diff = [k for k in fields if k in given and k not in CHANGEABLE_ON_RESUME
            and getattr(before, k) != getattr(after, k)]
    if diff:
        got = ", ".join(f"{flag(k)} {getattr(after, k)!r} (now {getattr(before, k)!r})" for k in diff)
        raise ValueError(f"options that define the run differ from its checkpoint: {got} "
                         f"(leave them out to keep the run's values)")
    return dataclasses.replace(after, **{k: getattr(config, k) for k in CHANGEABLE_ON_RESUME
                                         if k in given or k in PER_INVOCATION})


def _fail(option: str, message: str) -> None:
    raise ValueError(f"--{option.replace('_', '-')} {message}")


def _choice(option: str, value, choices) -> None:
    if value not in choices:
        _fail(option, f"must be one of {', '.join(choices)}; got {value!r}")


def _positive_int(option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(option, f"must be a positive integer; got {value!r}")


def _number(option: str, value, low: float, high: float = math.inf, *, open_low: bool = False,
            open_high: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        _fail(option, f"must be a number in {lo}{low}, {high}{hi}; got {value!r}")


#: what every recipe takes unless it names its own value (IES's order 2 and window 3 are the paper's)
RECIPE_BASE = {"loader": "torch", "image_size": 32, "score_policy": "every", "eval_every": 1, "order": 2, "window": 3}


def _with_recipe(config: TrainConfig) -> TrainConfig:
    _choice("dataset", config.dataset, DATASETS)
    chosen = folder_recipe(config.image_size) if config.dataset == "folder" else RECIPES[config.dataset]
    recipe = {**RECIPE_BASE, **chosen}
    if config.early_stop != "none":
        recipe["eval_every"] = 1  # early stopping reads the test accuracy every epoch
    return dataclasses.replace(config, **{k: v for k, v in recipe.items() if getattr(config, k) is None})


def resolve(config: TrainConfig, *, need_data: bool = True) -> TrainConfig:
    """A copy of ``config`` with every ``None`` filled from the dataset's recipe
    (``need_data=False``: ``--data-dir`` may be missing, as for ``--print-config``)."""
    resolved = _with_recipe(config)
    validate(resolved, need_data=need_data)
    return resolved


def validate(c: TrainConfig, *, need_data: bool = True) -> None:
    """Raise ``ValueError`` naming the first bad option of a resolved config."""
    _choice("dataset", c.dataset, DATASETS)
    _choice("selector", c.selector, SELECTORS)
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("lr_schedule", c.lr_schedule, SCHEDULES)
    _choice("loader", c.loader, LOADERS)
    _choice("early_stop", c.early_stop, EARLY_STOP)
    for name in ("epochs", "batch_size", "eval_batch_size", "eval_every", "window", "k", "score_every", "patience", "synthetic_size",
                 "image_size"):
        _positive_int(name, getattr(c, name))
    if c.synthetic_classes < 2:
        _fail("synthetic_classes", f"must be at least 2; got {c.synthetic_classes!r}")
    if isinstance(c.order, bool) or c.order not in (0, 1, 2, 3):
        _fail("order", f"must be 0, 1, 2 or 3; got {c.order!r}")
    if isinstance(c.workers, bool) or not isinstance(c.workers, int) or c.workers < 0:
        _fail("workers", f"must be an integer >= 0; got {c.workers!r}")
    _number("lr", c.lr, 0.0, open_low=True)
    _number("momentum", c.momentum, 0.0, 1.0, open_high=True)
    _number("weight_decay", c.weight_decay, 0.0)
    _number("lr_gamma", c.lr_gamma, 0.0, 1.0, open_low=True)
    _number("delta", c.delta, 0.0)
    _choice("threshold", c.threshold, THRESHOLDS)
    _choice("eligibility", c.eligibility, ELIGIBILITY)
    try:
        decision_threshold(c.delta, c.window)
    except ValueError:
        _fail("delta", f"is positive but delta * window rounds to 0 in fp32 (it would act as 0); got {c.delta!r}")
    _number("anneal", c.anneal, 0.0, 1.0)
    _choice("score_policy", c.score_policy, SCORE_POLICIES)
    _positive_int("score_max_interval", c.score_max_interval)
    _number("min_kept", c.min_kept, 0.0, 1.0)
    _number("prune_ratio", c.prune_ratio, 0.0, 0.9)
    _number("random_ratio", c.random_ratio, 0.0, 1.0, open_high=True)
    if not all(isinstance(m, (int, float)) and 0 < m < 1 for m in c.lr_milestones):
        _fail("lr_milestones", f"must be fractions of the run in (0, 1); got {c.lr_milestones!r}")
    _choice("on_bad_image", c.on_bad_image, ON_BAD_IMAGE)
    if need_data and c.dataset in ("cifar10", "cifar100", "imagenet", "folder") and not c.data_dir:
        _fail("data_dir", f"is required for {c.dataset} (the folder holding the data set; see --help)")
    if c.loader == "dali" and c.dataset in ("digits", "mnist1d"):
        _fail("loader", f"dali needs an image data set (fashion-mnist, mnist, cifar10, cifar100, imagenet, folder, "
                        f"synthetic); "
                        f"{c.dataset} is vectors")
    if c.eval_every > 1 and c.early_stop != "none":
        _fail("eval_every", f"must be 1 with --early-stop {c.early_stop} (it reads the test accuracy every epoch); "
                            f"got {c.eval_every!r}")
    if c.stop_after is not None:
        _positive_int("stop_after", c.stop_after)
    if c.subset is not None:
        _positive_int("subset", c.subset)
    _number("label_noise", c.label_noise, 0.0, 1.0, open_high=True)
    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or not 0 <= c.seed <= MAX_SEED:
        _fail("seed", f"must be an integer in [0, 2**32 - 1]; got {c.seed!r}")
    _number("dist_timeout", c.dist_timeout, 0.0, open_low=True)
    if not c.out:
        _fail("out", "must name a folder for logs and checkpoints")

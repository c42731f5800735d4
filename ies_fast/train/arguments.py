"""The command-line flags of ``ies-fast train`` (shared by ``ies-fast compare``) and
their mapping onto :class:`~ies_fast.train.config.TrainConfig`. A flag left out
takes the dataset's recipe (``config.RECIPES``)."""
from __future__ import annotations

import argparse

from . import config as cfg
from .schedule import KINDS


def add_arguments(parser: argparse.ArgumentParser, *, for_compare: bool = False) -> None:
    """Add every training flag to ``parser`` (``for_compare``: without the ones
    ``compare`` sets itself: ``--selector``, ``--seed``, ``--resume``, ``--stop-after``,
    ``--no-plot``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=cfg.DATASETS, default="digits",
         help="digits and mnist1d need no files; cifar10/cifar100 read the python-pickle layout from --data-dir; "
              "imagenet reads DIR/train/<class>/* and DIR/val/<class>/*; synthetic makes learnable random images")
    data.add_argument("--data-dir", default=None, help="folder holding the data set (cifar10, cifar100, imagenet)")
    data.add_argument("--loader", choices=cfg.LOADERS, default=None,
         help="torch: device tensors + KeptSampler (in-memory data) or DataLoader workers (image folder); "
              "dali: DALI pipelines that decode and augment only kept samples (default: dali for imagenet)")
    data.add_argument("--workers", type=int, default=4, help="loader worker processes / DALI I/O threads (image folders)")
    data.add_argument("--synthetic-size", type=int, default=10000, help="synthetic: number of training samples")
    data.add_argument("--synthetic-classes", type=int, default=10, help="synthetic: number of classes")
    data.add_argument("--image-size", type=int, default=None, help="synthetic: image side; imagenet: crop side (224)")

    model = parser.add_argument_group("model and optimisation")
    model.add_argument("--model", default=None,
         help="resnet18, resnet34, vgg16, mlp, cnn1d (CIFAR-style: 3x3 stem, no max-pool); for imagenet "
              "torchvision's resnet18/34/50/101, vgg16 (default: the recipe's)")
    model.add_argument("--optimizer", choices=cfg.OPTIMIZERS, default=None)
    model.add_argument("--lr", type=float, default=None, help="initial learning rate")
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--weight-decay", type=float, default=None)
    model.add_argument("--lr-schedule", choices=KINDS, default=None,
         help="a function of epoch progress (see docs/training.md): exp (gamma per epoch), multistep, linear, "
              "cosine, constant")
    model.add_argument("--lr-gamma", type=float, default=0.96, help="exp schedule: factor per epoch")
    model.add_argument("--epochs", type=int, default=None)
    model.add_argument("--batch-size", type=int, default=None, help="per process (under torchrun: per rank)")
    model.add_argument("--eval-batch-size", type=int, default=512, help="batch for scoring and test (no grad)")
    model.add_argument("--amp", action="store_true", help="bf16 autocast for forward passes")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    model.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")

    sel = parser.add_argument_group("sample selection")
    if not for_compare:
        sel.add_argument("--selector", choices=cfg.SELECTORS, default="ies",
             help="ies; infobatch; random (removes --random-ratio each epoch); none (baseline: IES with δ=0)")
    sel.add_argument("--delta", type=float, default=None, help="IES threshold δ (recipe: 1e-3 CIFAR-10, 2e-3 CIFAR-100, "
                                                        "1 ImageNet); 0 removes nothing")
    sel.add_argument("--order", type=int, default=2, help="order N of the loss difference (0-3)")
    sel.add_argument("--window", type=int, default=3, help="epochs w averaged in the score")
    sel.add_argument("--anneal", type=float, default=None,
         help="fraction of the last epochs trained on the full data (recipe: 0.1 for imagenet, else 0)")
    sel.add_argument("--score-every", type=int, default=1, help="re-score removed samples every s epochs")
    sel.add_argument("--score-policy", choices=cfg.SCORE_POLICIES, default="every",
         help="every: re-score every removed sample every --score-every epochs (the paper's); backoff: a sample's "
              "interval starts at --score-every and doubles while it stays mastered, up to --score-max-interval, "
              "and starts over when it comes back (docs/semantics.md)")
    sel.add_argument("--score-max-interval", type=int, default=8, help="backoff: the longest re-scoring interval, in epochs")
    sel.add_argument("--min-kept", type=float, default=None,
         help="collapse guard: train at least this fraction of the samples every epoch, filling up with random "
              "mastered samples (docs/semantics.md) (default: the dataset's recipe)")
    sel.add_argument("--prune-ratio", type=float, default=0.5, help="infobatch: prune ratio")
    sel.add_argument("--random-ratio", type=float, default=0.3, help="random: fraction removed per epoch")
    sel.add_argument("--early-stop", choices=cfg.EARLY_STOP, default="none",
         help="patience: stop when test accuracy has not improved for --patience epochs; "
              "mastered: stop when every sample is mastered")
    sel.add_argument("--patience", type=int, default=10)
    sel.add_argument("--backend", choices=("auto", "triton", "native", "torch"), default="auto",
         help="selector kernels (see ies-fast info)")

    run = parser.add_argument_group("run")
    if not for_compare:
        run.add_argument("--seed", type=int, default=0)
        run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        run.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                         help="stop (checkpointed) once EPOCH epochs are done; continue later with --resume")
    run.add_argument("--out", default="runs/ies", help="folder for log.jsonl, log.csv, summary.json, curves.png, "
                                                "checkpoint.pt")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    if not for_compare:  # compare's own --plot names its figure
        run.add_argument("--no-plot", dest="plot", action="store_false", help="no curves.png")


def config_from_args(args: argparse.Namespace, **overrides) -> cfg.TrainConfig:
    """A :class:`TrainConfig` from parsed flags (absent ones keep the dataclass default)."""
    fields = {f for f in cfg.TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(overrides)
    return cfg.TrainConfig(**values)

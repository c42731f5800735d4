"""The ``ies-fast`` command: ``demo`` (embedded digits, baseline vs IES), ``train``
(the reference loop: digits, mnist1d, CIFAR, ImageNet, synthetic), ``compare``
(IES, InfoBatch, random removal and the baseline on the same data and seeds),
``sweep`` (IES over a δ grid and the others over ratios: the δ that fits) and
``info`` (active backends). Bad arguments end in one line on stderr and exit 2."""
from __future__ import annotations

import argparse
import json
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _out_per_dataset(parser: argparse.ArgumentParser, command: str) -> None:
    """``--out`` of ``compare``/``sweep`` defaults to ``runs/<command>-<dataset>`` (:func:`_default_out`)."""
    parser.set_defaults(out=None)
    for action in parser._actions:
        if action.dest == "out":
            action.help = f"folder of the runs, one sub-folder per run (default: runs/{command}-DATASET)"


class OneLineParser(argparse.ArgumentParser):
    """``ies-fast``'s parsers: a bad flag or value is one line on stderr and exit 2
    (the valid choices are in argparse's message; ``--help`` has the usage), and a
    long flag must be spelled out (``--epoch 3`` is an error, not ``--epochs 3``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _hint_misplaced_seeds(argv: list) -> None:
    """``train`` runs one seed: ``train --seeds 1`` says so instead of argparse's
    "unrecognized arguments" against the top-level usage."""
    if argv and argv[0] == "train" and any(a == "--seeds" or a.startswith(("--seeds=", "--num-seeds")) for a in argv):
        raise SystemExit(_error("train runs one seed: did you mean --seed S? (compare and sweep take --seeds S [S ...])",
                                prog="ies-fast train"))


def build_parser() -> argparse.ArgumentParser:
    from .train import arguments
    from .train import compare as _compare
    from .train import sweep as _sweep

    parser = OneLineParser(prog="ies-fast", description="Instance-dependent Early Stopping for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="baseline vs IES on scikit-learn's bundled digits; prints a table, writes a plot",
                          formatter_class=arguments.HelpFormatter)
    demo.add_argument("--epochs", type=_positive_int, default=60, help="epochs per run")
    arguments.add_seed_arguments(demo)  # each seed runs both arms
    demo.add_argument("--delta", type=float, default=2e-4, help="IES threshold δ for the IES arm")
    demo.add_argument("--plot", default="ies_demo.png", help="PNG path ('' for none)")
    recipes = dict(formatter_class=arguments.HelpFormatter, epilog=arguments.recipes_epilog())
    train = sub.add_parser("train", help="train one model with a sample selector (the paper's recipes by default)",
                           **recipes)
    arguments.add_arguments(train)
    compare = sub.add_parser("compare", help="IES, InfoBatch, random removal and the baseline on the same data and seeds",
                             **recipes)
    arguments.add_arguments(compare, for_compare=True)
    _compare.add_arguments(compare)
    _out_per_dataset(compare, "compare")
    sweep = sub.add_parser("sweep", help="IES over a δ grid, InfoBatch and random removal over ratios, several seeds: "
                                         "one table, a Pareto plot, the δ that saves most within --tolerance",
                           **recipes)
    arguments.add_arguments(sweep, for_compare=True)
    _sweep.add_arguments(sweep)
    _out_per_dataset(sweep, "sweep")
    sub.add_parser("info", help="print ies_fast.backend_info() as JSON")
    from . import bench as _bench_mod

    _bench_mod.add_arguments(sub.add_parser("bench", help="run the benchmark suite (GPU sizes on CUDA, small on CPU); "
                                            "writes bench.json, bench.md", formatter_class=arguments.HelpFormatter))
    return parser


def _error(message: str, prog: str = "ies-fast") -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


#: what a run can reject before it starts (bad flags, missing data, a checkpoint that does not fit)
SETUP_ERRORS = (ValueError, FileNotFoundError, ImportError)


def _setup_errors():
    from ..io.checkpoint import CheckpointError
    from ..io.run_folder import RunFolderError
    from .train.loop import RunError

    return SETUP_ERRORS + (RunError, CheckpointError, RunFolderError)


def _default_out(args) -> None:
    """``compare`` and ``sweep`` keep each data set's runs in its own folder
    (``runs/compare-digits``, ``runs/sweep-mnist1d``) unless ``--out`` says otherwise,
    so two README commands in a row never resume each other's runs."""
    if args.out is None:
        args.out = f"runs/{args.command}-{args.dataset}"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _train(args, argv) -> int:
    from .train import interrupt
    from .train.arguments import config_from_args, given_options
    from .train.config import resolve, resumed_config
    from ..data.image_files import BadImageFile
    from .train.loop import RunError, Trainer

    trainer = None
    with interrupt.signals_raise():  # Ctrl-C, kill: one line, the lock released, exit 130/143
        try:
            config = config_from_args(args)
            if args.print_config:  # with --resume: what the resumed run would use
                if config.resume:
                    config = resumed_config(Trainer.read_resume_state(config)["config"], config, given_options(argv))
                print(json.dumps(resolve(config, need_data=False).to_dict(), indent=2))  # the recipe, no data needed
                return 0
            trainer = Trainer(config, given=given_options(argv))
        except _setup_errors() as exc:
            return _error(_first_line(exc))
        except (KeyboardInterrupt, interrupt.Interrupted) as exc:
            print(f"ies-fast: {interrupt.interrupted_line(None, exc)}", file=sys.stderr)
            return interrupt.exit_code(exc)
        from ..io import distributed

        try:
            summary = trainer.run()
        except (RunError, BadImageFile) as exc:  # a full disk, a planted link, a bad image: one line naming it
            return _error(_first_line(exc))
        except (KeyboardInterrupt, interrupt.Interrupted) as exc:
            print(f"ies-fast: {interrupt.interrupted_line(trainer, exc)}", file=sys.stderr)
            return interrupt.exit_code(exc)
        finally:
            trainer.release_run_lock()
            distributed.cleanup()
    if trainer.main:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


def _compare(args) -> int:
    from .train import compare as _cmp
    from .train.arguments import config_from_args
    from .train.config import resolve

    _default_out(args)
    try:
        base = resolve(config_from_args(args, progress=False, plot=True))
        _cmp.run(args, base)  # each run in OUT/<selector>-seed<seed>
    except _setup_errors() as exc:  # bad options, an unusable --out, a run folder written with other options
        return _error(_first_line(exc))
    return 0


def _sweep(args, argv) -> int:
    from .train import sweep as _sw
    from .train.arguments import config_from_args
    from .train.config import resolve

    _default_out(args)
    try:
        base = resolve(config_from_args(args, progress=False, plot=True))
        _sw.check_args(args)
        _sw.run(args, base)  # each point and seed in OUT/<selector>[-<param><value>]-seed<k>
    except _setup_errors() as exc:  # bad options, or a run folder written with other options
        return _error(_first_line(exc))
    return 0


def _info(args, argv) -> int:
    from .. import backend_info

    print(json.dumps(backend_info(), indent=2))
    return 0


def _bench(args, argv) -> int:
    from .bench import BenchError, run

    try:
        return run(args)
    except BenchError as exc:
        return _error(str(exc))


def _demo(args, argv) -> int:
    if args.delta < 0:
        return _error("--delta must be >= 0")
    if len(args.seeds) == 1 and args.seeds[0] > 0 and any(a.startswith("--seeds") for a in argv):
        # demo's --seeds used to be a count: say what it means now
        print(f"ies-fast: note: --seeds lists seed values (it was a count in demo before): running seed "
              f"{args.seeds[0]} only; --num-seeds {args.seeds[0]} runs seeds 0 .. {args.seeds[0] - 1}", file=sys.stderr)
    from .demo import DemoConfig, main as demo_main

    try:
        demo_main(DemoConfig(epochs=args.epochs, delta=args.delta, seeds=tuple(args.seeds)), plot_path=args.plot)
    except ImportError as exc:  # a missing optional package, found before any training
        return _error(str(exc))
    return 0


#: subcommand -> handler(args, argv) returning the exit status (a new subcommand: its parser
#: in build_parser, its handler here)
COMMANDS = {"demo": _demo, "train": _train, "compare": lambda args, argv: _compare(args), "sweep": _sweep,
            "info": _info, "bench": _bench}


#: what an interrupted ``compare`` or ``sweep`` says (each run has its own folder in --out)
RESUMABLE_LINE = ("interrupted ({name}): the finished runs, and the interrupted one's last checkpoint, are in "
                  "--out; the same command again reads the finished runs back and resumes the rest")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _hint_misplaced_seeds(argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except KeyboardInterrupt as exc:  # Ctrl-C outside train's own handler: one line, no traceback
        from .train import interrupt

        name = exc.args[0] if isinstance(exc, interrupt.Interrupted) else "SIGINT"
        line = RESUMABLE_LINE.format(name=name) if args.command in ("compare", "sweep") else f"interrupted ({name})"
        print(f"ies-fast: {line}", file=sys.stderr)
        return interrupt.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())

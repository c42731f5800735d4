"""The ``ies-fast`` command: ``demo`` (embedded digits, baseline vs IES), ``compare``
(IES, InfoBatch, random removal, baseline on digits) and ``info`` (active backends)."""
from __future__ import annotations

import argparse
import json
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ies-fast", description="Instance-dependent Early Stopping for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="baseline vs IES on scikit-learn's bundled digits; prints a table, writes a plot")
    demo.add_argument("--epochs", type=_positive_int, default=60)
    demo.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds per arm")
    demo.add_argument("--delta", type=float, default=2e-4, help="IES threshold δ for the IES arm")
    demo.add_argument("--plot", default="ies_demo.png", help="PNG path ('' for none)")
    compare = sub.add_parser("compare", help="IES, InfoBatch, random removal and the baseline on the same data and seeds")
    compare.add_argument("--dataset", choices=["digits"], default="digits",
                         help="only the embedded digits for now (ies-fast train is not built yet)")
    compare.add_argument("--epochs", type=_positive_int, default=60)
    compare.add_argument("--delta", type=float, default=2e-4, help="IES threshold δ")
    compare.add_argument("--prune-ratio", type=float, default=0.5, help="InfoBatch prune ratio")
    from .train import compare as _compare

    _compare.add_arguments(compare)
    sub.add_parser("info", help="print ies_fast.backend_info() as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from . import backend_info

        print(json.dumps(backend_info(), indent=2))
        return 0
    if args.delta < 0:
        print("ies-fast: error: --delta must be >= 0", file=sys.stderr)
        return 2
    if args.command == "compare":
        from .demo import DigitsCompareConfig, train_digits
        from .train import compare as _compare

        base = DigitsCompareConfig(epochs=args.epochs, delta=args.delta, prune_ratio=args.prune_ratio)
        _compare.run(args, base, train_fn=train_digits)
        return 0
    from .demo import DemoConfig, main as demo_main

    demo_main(DemoConfig(epochs=args.epochs, delta=args.delta, seeds=tuple(range(args.seeds))), plot_path=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

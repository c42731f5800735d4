"""The ``ies-fast`` command: ``demo`` (embedded digits, baseline vs IES) and ``info``
(which backends are active)."""
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
    from .demo import DemoConfig, main as demo_main

    demo_main(DemoConfig(epochs=args.epochs, delta=args.delta, seeds=tuple(range(args.seeds))), plot_path=args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

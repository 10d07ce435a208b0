"""The `goodput` command line: the parser of every command, and `main`.

Thin: parse arguments, call the pure model, print. Errors from the model are printed as one
line a person can act on, with exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from goodput.cli.args import GoodputParser
from goodput.cli.capacity import add_capacity_parsers
from goodput.cli.explain import add_explain_parser
from goodput.cli.observe import add_observe_parser
from goodput.cli.operator import add_crd_parser, add_operator_parser
from goodput.cli.render import add_render_parser
from goodput.cli.simulate import add_simulate_parser
from goodput.model.errors import CapacityModelError


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("goodput-operator")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = GoodputParser(prog="goodput", description="Size LLM inference fleets from first principles.")
    parser.add_argument("--version", action="version", version=f"goodput {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=GoodputParser)

    add_capacity_parsers(sub)
    add_operator_parser(sub)
    add_observe_parser(sub)
    add_explain_parser(sub)
    add_simulate_parser(sub)
    add_render_parser(sub)
    _add_demo_parser(sub)
    add_crd_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    """`goodput demo`, where the dev harness (goodput.demo, .devcluster, .emulator) is installed: the
    operator's image leaves it out, and there the command says so instead of failing every command."""
    try:
        from goodput.cli.demo import add_demo_parser
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("goodput."):
            raise
        missing = exc.name

        def unavailable(args: argparse.Namespace) -> int:
            raise CapacityModelError(f"`goodput demo` needs the dev harness ({missing}), which this installation "
                                     "leaves out (the operator's image does): run it from a source checkout "
                                     "(./dev demo)")

        p = sub.add_parser("demo", help="the closed loop on a local cluster (not in this installation)",
                           add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=unavailable)
        return
    add_demo_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CapacityModelError as exc:
        print(f"goodput: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `goodput ... | head`
        return 0

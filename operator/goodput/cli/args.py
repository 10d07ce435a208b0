"""Argument types and output helpers shared by every `goodput` command.

A leaf of the CLI package: the command modules import it, it imports none of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goodput.model.errors import CapacityModelError
from goodput.model.hardware import get_accelerator
from goodput.model.sizing import MODES
from goodput.sim.traces import read_text_file as read_text_file  # re-exported


def number_arg(kind: type[int] | type[float], minimum: float, inclusive: bool,
               maximum: float | None = None) -> Any:
    """An argparse type: a finite number of `kind` above (or at) `minimum` and at most `maximum`
    (the CRD's bound where the CRD has one), with a message naming what is wrong."""
    bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {maximum:g}")
        return value

    return parse


def fraction_arg(text: str) -> float:
    """An argparse type: a fraction in [0, 1)."""
    value = float(number_arg(float, 0.0, inclusive=True)(text))
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 1")
    return value


def percentile_arg(text: str) -> float:
    """An argparse type: a percentile in [50, 100), as the CRD's slo.percentile."""
    value = float(number_arg(float, 50.0, inclusive=True)(text))
    if value >= 100.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 100 (the CRD's slo.percentile bound)")
    return value


def check_plot_target(path: Path | None) -> None:
    """Before any work: fail now, not after a long run, when a plot asked for cannot be drawn."""
    if path is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CapacityModelError("--plot needs matplotlib: pip install 'goodput-operator[plot]'") from None
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CapacityModelError(f"--plot {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise CapacityModelError(f"--plot {path} is a folder; give a file name such as {path / 'plot.png'}")


# Bounds shared with the CRD (api/v1alpha1.py), so the CLI refuses what admission would.
MAX_REQUEST_RATE_RPS = 1_000_000.0


MAX_TOKENS = 10_000_000.0


MAX_TTFT_MS = 3_600_000.0


MAX_ITL_MS = 600_000.0


MAX_GPUS = 100_000


MAX_COST_PER_HOUR = 10_000_000.0


MAX_PRICE_PER_GPU_HOUR = 10_000.0


positive_float = number_arg(float, 0.0, inclusive=False)


non_negative_float = number_arg(float, 0.0, inclusive=True)


positive_int = number_arg(int, 1, inclusive=True)


token_count = number_arg(float, 0.0, inclusive=False, maximum=MAX_TOKENS)


def add_slo_and_mode_args(p: argparse.ArgumentParser) -> None:
    """The SLO targets and the serving mode, as `plan` and `simulate` both take them."""
    p.add_argument("--ttft-p99-ms", type=number_arg(float, 0.0, False, maximum=MAX_TTFT_MS), required=True,
                   help="time-to-first-token target at --slo-percentile, ms")
    p.add_argument("--itl-p99-ms", type=number_arg(float, 0.0, False, maximum=MAX_ITL_MS), required=True,
                   help="inter-token latency target at --slo-percentile, ms")
    p.add_argument("--slo-percentile", type=percentile_arg, default=99.0,
                   help="the percentile the SLOs apply to, in [50, 100)")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="aggregated replicas, disaggregated prefill/decode pools, or auto (the cheaper)")


def parse_prices(items: Sequence[str]) -> dict[str, float]:
    """`--price GPU=USD` values (repeatable): USD per GPU-hour by catalog GPU id."""
    prices: dict[str, float] = {}
    for item in items:
        gpu, sep, usd = item.partition("=")
        if not sep:
            raise CapacityModelError(f"--price takes GPU=USD, got {item!r}")
        gpu_id = get_accelerator(gpu.strip()).gpu_id  # an unknown GPU says so, with the known ones
        try:
            value = float(usd)
        except ValueError:
            raise CapacityModelError(f"--price {item!r}: {usd!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= MAX_PRICE_PER_GPU_HOUR):
            raise CapacityModelError(f"--price {item!r}: USD per GPU-hour must be above 0 and at most "
                                     f"{MAX_PRICE_PER_GPU_HOUR:g}")
        prices[gpu_id] = value
    return prices


def gpu_ids(values: Sequence[str] | str) -> list[str]:
    """`--gpu` values, repeatable and comma-separated, in order, each once."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for gpu_id in (g.strip() for g in item.split(",")):
            if gpu_id and gpu_id not in out:
                out.append(gpu_id)
    return out


OUTPUT_FORMATS = ("table", "wide", "json", "yaml")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """kubectl's `-o json|yaml|wide|table`; `--json` stays as an alias of `-o json`."""
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="table",
                   help="table (default), wide (every column), json or yaml")
    p.add_argument("--json", dest="output", action="store_const", const="json", help="the same as -o json")


def structured(args: argparse.Namespace) -> bool:
    """Whether the command prints data (json/yaml) rather than text (table/wide)."""
    return getattr(args, "output", "table") in ("json", "yaml")


def emit(data: Any, fmt: str = "json") -> None:
    """Print data as JSON (strict: no NaN) or YAML (block style, keys in the order given)."""
    if fmt == "yaml":
        import yaml

        json.dumps(data, allow_nan=False, default=str)  # the same refusal of NaN as JSON
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
        return
    json.dump(data, sys.stdout, indent=2, allow_nan=False, default=str)
    sys.stdout.write("\n")


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A headed table, kubectl style: upper-case headers, columns padded to their widest cell."""
    cells = [[str(h).upper() for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS, [], ()) \
                or action.option_strings == []:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


class GoodputParser(argparse.ArgumentParser):
    """`goodput`'s parsers: defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

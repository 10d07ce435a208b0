"""The `goodput` command line: predict, plan, validate, catalog.

Thin: parse arguments, call the pure model, print. Errors from the model are printed as one
line a person can act on, with exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goodput.model.architecture import ModelArch, arch_from_hf_config_file, get_model, model_catalog
from goodput.model.efficiency import DEFAULT_ENGINE, ENGINE_CLASSES, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import Accelerator, accelerator_catalog, get_accelerator
from goodput.model.measurements import MEASUREMENT_COLUMNS, evaluate, summarize
from goodput.model.precision import WEIGHT_PRECISIONS
from goodput.model.replica import TP_DEGREES, ReplicaModel, smallest_tp
from goodput.model.report import plan_report, predict_report
from goodput.model.sizing import MODES, Budget, plan
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.sim.trace import BUNDLED_TRACES, trace_path


# ------------------------------------------------------------------------------------------
# argument helpers
# ------------------------------------------------------------------------------------------
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


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file, or one line naming why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CapacityModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CapacityModelError(f"cannot read {what} {path}: not UTF-8 text ({exc.reason})") from None


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


_positive_float = number_arg(float, 0.0, inclusive=False)
_non_negative_float = number_arg(float, 0.0, inclusive=True)
_positive_int = number_arg(int, 1, inclusive=True)
_token_count = number_arg(float, 0.0, inclusive=False, maximum=MAX_TOKENS)


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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="catalog model id or Hugging Face name (see `goodput catalog models`)")
    src.add_argument("--model-config", type=Path, metavar="FILE",
                     help="a Hugging Face config.json on disk (read locally, never downloaded)")
    p.add_argument("--precision", default="bf16", help=f"weight precision: {', '.join(WEIGHT_PRECISIONS)}")
    p.add_argument("--kv-dtype", "--kv-cache-dtype", default="auto",
                   help="KV-cache dtype: auto (model dtype) or fp8")
    p.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                   help="override the price per GPU-hour of a GPU (repeatable)")


def _model(args: argparse.Namespace) -> ModelArch:
    if args.model_config is not None:
        return arch_from_hf_config_file(args.model_config)
    return get_model(args.model)


def _prices(args: argparse.Namespace) -> dict[str, float]:
    return parse_prices(args.price)


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


def _gpus(spec: Sequence[str] | str, prices: dict[str, float]) -> list[Accelerator]:
    out: list[Accelerator] = []
    for gpu_id in gpu_ids(spec):
        gpu = get_accelerator(gpu_id)
        if any(g.gpu_id == gpu.gpu_id for g in out):
            continue  # an alias of one already given
        if gpu.gpu_id in prices:
            gpu = gpu.with_price(prices[gpu.gpu_id])
        out.append(gpu)
    if not out:
        raise CapacityModelError("--gpu needs at least one GPU id")
    return out


def _lengths(mean: float, p99: float | None) -> LengthDistribution:
    return LengthDistribution.fixed(mean) if p99 is None else LengthDistribution.lognormal(mean, p99)


def _trace_lengths(name_or_path: str) -> tuple[LengthDistribution, LengthDistribution]:
    """Empirical prompt/output length distributions from a trace (Azure CSV or Mooncake JSONL), read
    by the simulator's reader, which rejects bad rows with their line number."""
    from goodput.sim.trace import parse_trace

    path = trace_path(name_or_path)
    trace = parse_trace(read_text_file(path, "trace").splitlines(), "auto", str(path))
    return (LengthDistribution.empirical(trace.prompts.astype(float)),
            LengthDistribution.empirical(trace.outputs.astype(float)))


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


# ------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------
def _check_predicted_fit(report: dict[str, Any], arch: ModelArch, r: ReplicaModel, gpu: Accelerator,
                         args: argparse.Namespace) -> None:
    """predict refuses a configuration that cannot run rather than print figures for it."""
    tokens = args.input_len + args.output_len
    if not report["fits"]:
        raise CapacityModelError(
            f"{arch.model_id} in {r.precision.name} does not fit at TP{r.tp} on {gpu.name}: "
            f"{report['weights_per_gpu_gib']} GiB of weights per GPU leave no room for one sequence of "
            f"{tokens} tokens; use a larger --tp")
    if not report["batch_fits"]:
        raise CapacityModelError(
            f"--batch {args.batch} does not fit: the KV cache of {arch.model_id} at TP{r.tp} on {gpu.name} holds "
            f"{report['max_batch']} sequences of {tokens} tokens ({report['kv_capacity_tokens']:,} tokens); "
            f"use --batch {max(report['max_batch'], 1)} or less, or a larger --tp")


def cmd_predict(args: argparse.Namespace) -> int:
    arch = _model(args)
    gpus = _gpus(args.gpu, _prices(args))
    if len(gpus) > 1:
        raise CapacityModelError(f"predict takes one --gpu, got {', '.join(g.gpu_id for g in gpus)} "
                                 "(`goodput plan` compares several)")
    gpu = gpus[0]
    eff = calibrated_efficiency(args.engine)
    if args.tp is not None and args.tp not in TP_DEGREES:
        raise CapacityModelError(f"--tp {args.tp}: the InferenceDeployment CRD allows tensor-parallel degrees "
                                 f"{', '.join(map(str, TP_DEGREES))}")
    tp = args.tp or smallest_tp(arch, gpu, args.precision, args.input_len + args.output_len, args.kv_dtype, eff)
    r = ReplicaModel(arch, gpu, args.precision, tp, args.kv_dtype, eff)
    report = predict_report(r, args.batch, args.input_len, args.output_len)
    _check_predicted_fit(report, arch, r, gpu, args)
    if structured(args):
        emit(report, args.output)
        return 0
    lines = [
        f"{arch.model_id} · {r.precision.name} weights · KV {r.kv_cache_dtype} · {gpu.name} × TP{tp} · {args.engine}",
        "  fits                 yes",
        f"  weights              {report['weights_per_gpu_gib']} GiB per GPU ({report['weights_total_gib']} GiB total)",
        f"  KV cache             {report['kv_cache_per_gpu_gib']} GiB per GPU = "
        f"{report['kv_capacity_tokens']:,} tokens ({report['kv_bytes_per_token']:.0f} B/token)",
        f"  largest batch        {report['max_batch']} sequences of {args.input_len + args.output_len} tokens",
        f"  decode step          {report['decode_step_ms']} ms at batch {args.batch} ({report['decode_bound']}-bound)",
        f"  prefill of the batch {report['prefill_batch_ms']} ms ({args.batch} × {args.input_len} tokens)",
        f"  TTFT at batch 1      {report['ttft_batch1_ms']} ms",
        f"  output tokens/s      {report['output_tokens_per_s']} at batch {args.batch}",
    ]
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------
def _workload(args: argparse.Namespace) -> Workload:
    if args.lengths_from is not None:
        inputs, outputs = _trace_lengths(args.lengths_from)
    else:
        if args.input_len is None or args.output_len is None:
            raise CapacityModelError("give --input-len and --output-len, or --lengths-from TRACE.csv")
        inputs = _lengths(args.input_len, args.input_len_p99)
        outputs = _lengths(args.output_len, args.output_len_p99)
    return Workload(args.rate, inputs, outputs, args.prefix_hit_rate)


def _fmt_money(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}"


def cmd_plan(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_plot_target(args.plot)
    arch = _model(args)
    gpus = _gpus(args.gpu, _prices(args))
    workload = _workload(args)
    slo = SLO(args.ttft_p99_ms, args.itl_p99_ms, args.slo_percentile)
    budget = Budget(args.max_gpus, args.max_cost_per_hour)
    result = plan(arch, gpus, args.precision, workload, slo, args.kv_dtype, args.mode, budget,
                  min_replicas=args.min_replicas)
    elapsed = time.perf_counter() - started
    report = plan_report(result)
    report["model"] = arch.model_id
    report["precision"] = args.precision
    report["kv_cache_dtype"] = args.kv_dtype
    report["elapsed_s"] = round(elapsed, 3)
    plotted = args.plot is not None and result.chosen is not None
    if plotted:
        from goodput.plot import fleet_curves, fleet_path, plot_fleet, plot_plan  # matplotlib only when asked for

        plot_plan(result, arch, args.precision, args.kv_dtype, args.plot)
        modes = ("aggregated", "disaggregated") if args.mode == "auto" else (args.mode,)
        curves = fleet_curves(arch, gpus, args.precision, workload, slo, args.kv_dtype, modes, args.min_replicas)
        plot_fleet(curves, workload.rate_rps, f"{arch.model_id} · {args.precision} (KV {args.kv_dtype}) · TTFT "
                   f"{slo.label} ≤ {slo.ttft_ms:g} ms, ITL ≤ {slo.itl_ms:g} ms: the cheapest fleet per GPU type "
                   "and mode", fleet_path(args.plot))
    if structured(args):
        emit(report, args.output)
        return 0 if result.chosen is not None else 1
    print(_plan_text(report, slo))
    if plotted:
        print(f"\nroofline plot written to {args.plot}; GPUs and $/hour against request rate in "
              f"{fleet_path(args.plot)}")
    elif args.plot is not None:
        print("\nno roofline plot: there is no plan to draw")
    return 0 if result.chosen is not None else 1


def _plan_text(report: dict[str, Any], slo: SLO) -> str:
    d = report["demand"]
    out = [
        f"demand: {d['rate_rps']:g} req/s · prompt {d['input_len_mean']:.0f} tokens (p99 {d['input_len_p99']:.0f}) · "
        f"output {d['output_len_mean']:.0f} (p99 {d['output_len_p99']:.0f})",
        f"SLOs: TTFT {slo.label} ≤ {slo.ttft_ms:g} ms · ITL {slo.label} ≤ {slo.itl_ms:g} ms",
        "",
    ]
    c = report["chosen"]
    if c is None:
        out.append("NO PLAN: " + report["message"])
        return "\n".join(out)
    head = "PLAN (limited by budget)" if report["limited_by_budget"] else "PLAN"
    out.append(f"{head}: {c['mode']} on {c['gpu']} — {c['gpus']} GPUs, {_fmt_money(c['usd_per_hour'])}/h, "
               f"{_fmt_money(c['usd_per_million_tokens'])} per 1M tokens "
               f"({_fmt_money(c['usd_per_million_output_tokens'])} per 1M output tokens)")
    for p in c["pools"]:
        out.append(f"  {p['role']:<10} {p['replicas']} × TP{p['tp']}  goodput {p['goodput_rps_per_replica']:.2f} req/s "
                   f"per replica (then: {p['limit_at_goodput']}); --max-num-batched-tokens "
                   f"{p['max_num_batched_tokens']} --max-num-seqs {p['max_num_seqs']}")
    out.append(f"  predicted at this load: TTFT {slo.label} {c['predicted_ttft_ms']} ms, "
               f"ITL {slo.label} {c['predicted_itl_ms']} ms; serves up to {c['served_rps']} req/s")
    if report["limited_by_budget"]:
        out.append("  " + report["message"])
    if report["alternatives"]:
        out += ["", "alternatives:", f"  {'mode':<14}{'gpu':<16}{'TP':<8}{'replicas':<10}{'GPUs':>5}{'$/h':>10}"
                f"{'$/1M tok':>10}  why not"]
        for a in report["alternatives"]:
            reps = "+".join(f"{p['replicas']}{p['role'][0].upper()}" for p in a["pools"]) \
                if a["mode"] == "disaggregated" else str(a["pools"][0]["replicas"])
            money = f"{_fmt_money(a['usd_per_hour']):>10}{_fmt_money(a['usd_per_million_tokens']):>10}"
            out.append(f"  {a['mode']:<14}{a['gpu']:<16}{a['tp']:<8}{reps:<10}{a['gpus']:>5}{money}  {a['reason']}")
    if report["rejected"]:
        out += ["", "not possible:"] + [f"  {r['configuration']}: {r['reason']}" for r in report["rejected"]]
    out.append(f"\n(planned in {report['elapsed_s'] * 1000:.0f} ms)")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# validate
# ------------------------------------------------------------------------------------------
def _measurement_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a measurements CSV; a file that is not one (another CSV, a trace, empty, a header
    alone) is refused with what it lacks, since validating nothing would pass silently."""
    reader = csv.DictReader(read_text_file(path, "measurements").splitlines())
    header = [c.strip().lstrip("\ufeff") for c in (reader.fieldnames or [])]
    if not header:
        raise CapacityModelError(f"{path} is empty: not a measurements CSV (its header names "
                                 f"{', '.join(MEASUREMENT_COLUMNS)})")
    missing = [c for c in MEASUREMENT_COLUMNS if c not in header]
    if missing:
        raise CapacityModelError(f"{path} is not a measurements CSV: its header lacks {', '.join(missing)}")
    reader.fieldnames = header
    rows = list(reader)
    if not rows:
        raise CapacityModelError(f"{path} has a header but no measurements")
    return rows


def cmd_validate(args: argparse.Namespace) -> int:
    rows = _measurement_rows(args.measurements)
    results = evaluate(rows)
    summary = summarize(results)
    if structured(args):
        out_rows = []
        for r in results:
            item: dict[str, Any] = dict(r.row)
            item["predicted"] = r.predicted
            item["ape"] = r.ape
            if r.error:
                item["error"] = r.error
            out_rows.append(item)
        emit({"rows": out_rows, "summary": summary}, args.output)
    else:
        print(f"{'model':<15}{'gpu':<15}{'prec':<5}{'tp':>3}{'in':>7}{'out':>6}{'load':>6}  {'metric':<24}"
              f"{'measured':>11}{'predicted':>11}{'APE':>8}")
        for r in results:
            row = r.row
            cell = {k: str(row.get(k) or "") for k in MEASUREMENT_COLUMNS}  # a short line has None cells
            prefix = (f"{cell['model_id']:<15}{cell['gpu_id']:<15}{cell['precision_id']:<5}"
                      f"{cell['tp']:>3}{cell['input_len']:>7}{cell['output_len']:>6}"
                      f"{cell['load']:>6}  {r.metric:<24}")
            if r.error:
                print(prefix + f"ERROR: {r.error}")
            else:
                assert r.measured is not None and r.predicted is not None and r.ape is not None
                print(prefix + f"{r.measured:>11.1f}{r.predicted:>11.1f}{r.ape * 100:>7.1f}%")
        print()
        overall = summary["overall"]
        assert isinstance(overall, dict)
        if overall.get("count"):
            print(f"overall: {overall['count']} rows predicted, {summary['errors']} errors; "
                  f"median APE {overall['median_ape'] * 100:.1f}%, p90 APE {overall['p90_ape'] * 100:.1f}%")
        per_metric = summary["per_metric"]
        assert isinstance(per_metric, dict)
        for metric, s in per_metric.items():
            print(f"  {metric:<26} n={s['count']:<4} median {s['median_ape'] * 100:5.1f}%  "
                  f"p90 {s['p90_ape'] * 100:5.1f}%")
    overall = summary["overall"]
    assert isinstance(overall, dict)
    failed = summary["errors"] != 0 and args.strict
    if args.max_median_ape is not None and overall.get("median_ape", math.inf) > args.max_median_ape:
        failed = True
    if args.max_p90_ape is not None and overall.get("p90_ape", math.inf) > args.max_p90_ape:
        failed = True
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------
# catalog
# ------------------------------------------------------------------------------------------
def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A headed table, kubectl style: upper-case headers, columns padded to their widest cell."""
    cells = [[str(h).upper() for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


_CATALOG_DTYPES = ("bf16", "fp8", "fp4", "int8")


def _gpu_rows(wide: bool) -> tuple[list[str], list[list[object]]]:
    header = ["gpu", "name", "memory GiB", "HBM TB/s", *(f"{d} TFLOPS" for d in _CATALOG_DTYPES), "$/GPU-h"]
    rows: list[list[object]] = []
    for g in accelerator_catalog().values():
        flops = [f"{g.dense_flops[d] / 1e12:,.0f}" if d in g.dense_flops else "-" for d in _CATALOG_DTYPES]
        row: list[object] = [g.gpu_id, g.name, f"{g.memory_gib:.0f}", f"{g.hbm_bandwidth_bytes_s / 1e12:.2f}",
                             *flops, f"{g.usd_per_gpu_hour:.2f}"]
        rows.append(row + ([g.price_source] if wide else []))
    return header + (["price source"] if wide else []), rows


def _model_rows(wide: bool) -> tuple[list[str], list[list[object]]]:
    header = ["model", "params B", "active B", "attention", "KV B/token (16-bit)"]
    rows: list[list[object]] = []
    for m in model_catalog().values():
        row: list[object] = [m.model_id, f"{m.params_total / 1e9:.1f}",
                             f"{m.params_active / 1e9:.1f}" if m.is_moe else "-", m.attention,
                             f"{m.kv_bytes_per_token_16bit:,.0f}"]
        rows.append(row + ([m.hf_name] if wide else []))
    return header + (["hugging face name"] if wide else []), rows


def cmd_catalog(args: argparse.Namespace) -> int:
    if args.what == "checkpoints":
        from goodput.render_command import checkpoint_rows, print_checkpoints

        if structured(args):
            emit(checkpoint_rows(), args.output)
        else:
            print_checkpoints(checkpoint_rows())
        return 0
    if structured(args):
        if args.what == "gpus":
            emit([{"gpu_id": g.gpu_id, "name": g.name, "memory_gib": g.memory_gib,
                   "hbm_tb_s": g.hbm_bandwidth_bytes_s / 1e12,
                   "tflops": {k: v / 1e12 for k, v in g.dense_flops.items()},
                   "usd_per_gpu_hour": g.usd_per_gpu_hour, "price_source": g.price_source}
                  for g in accelerator_catalog().values()], args.output)
        else:
            emit([{"model_id": m.model_id, "hf_name": m.hf_name, "params_total_b": m.params_total / 1e9,
                   "params_active_b": m.params_active / 1e9, "attention": m.attention,
                   "kv_bytes_per_token_16bit": m.kv_bytes_per_token_16bit} for m in model_catalog().values()],
                 args.output)
        return 0
    wide = args.output == "wide"
    print_table(*(_gpu_rows(wide) if args.what == "gpus" else _model_rows(wide)))
    return 0


def _priority_arg(text: str) -> int | str:
    """`--priority`: an integer, or `random` (each replica draws its own; see cmd_operator)."""
    if text == "random":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'random', got {text!r}") from None


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the operator (kopf) against the cluster of $KUBECONFIG, or in-cluster."""
    import os
    import random

    os.environ["GOODPUT_TIMER_SECONDS"] = str(args.timer_seconds)  # read when the handlers register
    if args.kubeconfig:
        # Before the Kubernetes client is imported: it (and kopf's login through it) reads $KUBECONFIG then.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from goodput.kube.actions import CONTEXT_ENV

    if args.context:
        os.environ[CONTEXT_ENV] = args.context
    if args.prometheus:
        os.environ["GOODPUT_PROMETHEUS_URL"] = args.prometheus
    if args.metrics_port is not None:
        os.environ["GOODPUT_METRICS_PORT"] = str(args.metrics_port)
    import logging

    import kopf

    from goodput.kube.actions import KubeConfigError, load_config

    try:
        # Fail fast, in one line: kopf would retry a missing kubeconfig every 60 s, with tracebacks.
        load_config(None, args.context) if args.context else load_config()
    except KubeConfigError as exc:
        raise CapacityModelError(str(exc)) from None
    import goodput.handlers.operator  # noqa: F401  (registers the handlers)

    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = kopf.OperatorSettings()
    if args.no_cluster_scan:
        # Exact namespaces only: kopf neither lists namespaces nor watches CRDs (cluster-scoped reads a
        # namespace-bound install has no RBAC for); the CRD must exist when the operator starts.
        settings.scanning.disabled = True
    peering: dict[str, Any] = {"standalone": True}
    if args.peering:
        # kopf peering is not leader election: replicas of equal priority all stay active (with a warning).
        # `random` gives each replica its own priority, so exactly one (the highest) works and the others
        # pause until its keep-alives stop. A dev-mode operator above 1000 pauses them all.
        priority = random.randint(1, 1000) if args.priority == "random" else args.priority
        peering = {"standalone": False, "peering_name": args.peering, "priority": priority}
    kopf.run(standalone=peering["standalone"], peering_name=peering.get("peering_name"),
             priority=peering.get("priority"), settings=settings, clusterwide=not args.namespace,
             namespaces=args.namespace or (), liveness_endpoint=args.liveness)
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from goodput.api.crd import crd_yaml, reference_markdown

    if args.reference:
        text = reference_markdown()
    elif args.output == "json":
        import yaml

        text = json.dumps(yaml.safe_load(crd_yaml()), indent=2) + "\n"
    else:
        text = crd_yaml()
    if args.output_file is None:
        sys.stdout.write(text)
        return 0
    if not (args.output_file.parent.is_dir() or not str(args.output_file.parent)):
        raise CapacityModelError(f"--output-file {args.output_file}: the folder {args.output_file.parent} "
                                 "does not exist")
    args.output_file.write_text(text, encoding="utf-8")
    print(f"wrote {args.output_file}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------
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

    p = sub.add_parser("predict", help="per-replica figures for one configuration")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, action="append", help="GPU id (see `goodput catalog gpus`)")
    p.add_argument("--tp", "--tensor-parallel-size", type=_positive_int,
                   help="tensor-parallel degree (default: the smallest that fits)")
    p.add_argument("--batch", type=_positive_int, default=1, help="sequences decoded together")
    p.add_argument("--engine", choices=list(ENGINE_CLASSES), default=DEFAULT_ENGINE,
                   help="the engine whose efficiency factors apply (vllm-eager: no CUDA graphs)")
    p.add_argument("--input-len", type=_positive_int, required=True, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=_positive_int, required=True, help="output tokens per sequence")
    add_output_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="the cheapest configuration meeting the SLOs")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, action="append",
                   help="GPU id; several separated by commas, or --gpu repeated")
    p.add_argument("--rate", type=number_arg(float, 0.0, True, maximum=MAX_REQUEST_RATE_RPS), required=True,
                   help=f"demand, requests per second (at most {MAX_REQUEST_RATE_RPS:g}, as the CRD)")
    p.add_argument("--input-len", type=_token_count, help="mean prompt tokens")
    p.add_argument("--input-len-p99", type=_token_count, help="p99 prompt tokens (lognormal); default: all alike")
    p.add_argument("--output-len", type=_token_count, help="mean output tokens")
    p.add_argument("--output-len-p99", type=_token_count, help="p99 output tokens (lognormal)")
    p.add_argument("--lengths-from", metavar="TRACE.csv",
                   help="take the length distributions from an Azure-format trace CSV, or a bundled one: "
                   + ", ".join(BUNDLED_TRACES))
    p.add_argument("--prefix-hit-rate", type=fraction_arg, default=0.0,
                   help="fraction of prompt tokens served from the prefix cache")
    add_slo_and_mode_args(p)
    p.add_argument("--min-replicas", type=number_arg(int, 1, True, maximum=10_000), default=1, metavar="N",
                   help="every pool runs at least N replicas (2 or more: no single point of failure), as the "
                        "CRD's scaling.minReplicas")
    p.add_argument("--max-gpus", type=number_arg(int, 1, True, maximum=MAX_GPUS), help="budget: at most N GPUs")
    p.add_argument("--max-cost-per-hour", type=number_arg(float, 0.0, False, maximum=MAX_COST_PER_HOUR),
                   metavar="USD", help="budget: at most USD per hour")
    add_output_args(p)
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write a roofline picture of this workload, and FILE-fleet.png: GPUs and $/hour against "
                        "request rate per GPU type and mode")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("validate", help="predict published measurements and report the errors")
    p.add_argument("--measurements", type=Path, required=True, metavar="FILE.csv",
                   help="a measurements CSV (the format of ../shared/data/measurements/README.md)")
    add_output_args(p)
    p.add_argument("--strict", action="store_true", help="exit 1 if any row cannot be predicted")
    p.add_argument("--max-median-ape", type=_positive_float, help="exit 1 above this median error (0.2 = 20%%)")
    p.add_argument("--max-p90-ape", type=_positive_float, help="exit 1 above this p90 error")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("catalog", help="list the GPUs, models or checkpoints the model knows")
    p.add_argument("what", choices=("gpus", "models", "checkpoints"), help="which catalog")
    add_output_args(p)
    p.set_defaults(func=cmd_catalog)
    p = sub.add_parser("operator", help="run the operator against the current cluster")
    p.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (default: all)")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="the kubeconfig to use outside a pod (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    p.add_argument("--timer-s", "--timer-seconds", dest="timer_seconds", type=_positive_float, default=30.0,
                   metavar="S", help="reconcile period, seconds")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true", default=True,
                      help="no peering between operator replicas (default)")
    mode.add_argument("--peering", metavar="NAME", help="kopf peering through the (Cluster)KopfPeering NAME, "
                      "which must exist (the Helm chart makes it when replicaCount > 1 or peering.enabled)")
    p.add_argument("--priority", type=_priority_arg, default=0, metavar="N|random",
                   help="peering priority (default 0); `random`: each replica draws 1-1000, so one is active")
    p.add_argument("--no-cluster-scan", action="store_true",
                   help="with --namespace: do not list namespaces or watch CRDs (no cluster-scoped RBAC needed)")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO",
                   type=str.upper, help="log verbosity")
    p.add_argument("--liveness", default=None, metavar="URL",
                   help="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz (default: none)")
    p.add_argument("--prometheus", metavar="URL", help="default Prometheus for live metrics (spec.prometheus.url "
                   "overrides it); without one, plans follow spec.workload")
    p.add_argument("--metrics-port", type=number_arg(int, 1, True, maximum=65535), metavar="PORT",
                   help="serve the operator's own /metrics here (default: not served)")
    p.set_defaults(func=cmd_operator)

    from goodput.metrics.cli_observe import add_observe_parser

    add_observe_parser(sub)

    from goodput.kube.explain import add_explain_parser

    add_explain_parser(sub)

    from goodput.sim.cli import add_simulate_parser

    add_simulate_parser(sub)

    from goodput.render_command import add_render_parser

    add_render_parser(sub)

    from goodput.demo.run import add_demo_parser

    add_demo_parser(sub)

    p = sub.add_parser("crd", help="print (or write) the InferenceDeployment CRD generated from the API models")
    p.add_argument("--output-file", type=Path, metavar="FILE", help="write here instead of to stdout")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="the CRD's format")
    p.add_argument("--reference", action="store_true", help="the field reference in Markdown instead")
    p.set_defaults(func=cmd_crd)
    return parser


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


if __name__ == "__main__":
    raise SystemExit(main())

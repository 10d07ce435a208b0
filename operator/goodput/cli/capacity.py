"""`goodput predict`, `plan`, `validate` and `catalog`: the capacity model from the command line."""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goodput.cli.args import (
    MAX_COST_PER_HOUR,
    MAX_GPUS,
    MAX_REQUEST_RATE_RPS,
    add_output_args,
    add_slo_and_mode_args,
    check_plot_target,
    emit,
    fraction_arg,
    gpu_ids,
    number_arg,
    parse_prices,
    positive_float,
    positive_int,
    print_table,
    read_text_file,
    structured,
    token_count,
)
from goodput.model.architecture import ModelArch, arch_from_hf_config_file, get_model, model_catalog
from goodput.model.efficiency import DEFAULT_ENGINE, ENGINE_CLASSES, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import Accelerator, accelerator_catalog, get_accelerator
from goodput.model.measurements import MEASUREMENT_COLUMNS, evaluate, summarize
from goodput.model.precision import WEIGHT_PRECISIONS
from goodput.model.replica import TP_DEGREES, ReplicaModel, smallest_tp
from goodput.model.report import plan_report, predict_report
from goodput.model.sizing import Budget, plan
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.sim.trace import BUNDLED_TRACES, trace_path


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
        from goodput.cli.render import checkpoint_rows, print_checkpoints

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


def add_capacity_parsers(sub: Any) -> None:
    """Add ``predict``, ``plan``, ``validate`` and ``catalog`` to the subparsers of `goodput`."""
    p = sub.add_parser("predict", help="per-replica figures for one configuration")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, action="append", help="GPU id (see `goodput catalog gpus`)")
    p.add_argument("--tp", "--tensor-parallel-size", type=positive_int,
                   help="tensor-parallel degree (default: the smallest that fits)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences decoded together")
    p.add_argument("--engine", choices=list(ENGINE_CLASSES), default=DEFAULT_ENGINE,
                   help="the engine whose efficiency factors apply (vllm-eager: no CUDA graphs)")
    p.add_argument("--input-len", type=positive_int, required=True, help="prompt tokens per sequence")
    p.add_argument("--output-len", type=positive_int, required=True, help="output tokens per sequence")
    add_output_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="the cheapest configuration meeting the SLOs")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, action="append",
                   help="GPU id; several separated by commas, or --gpu repeated")
    p.add_argument("--rate", type=number_arg(float, 0.0, True, maximum=MAX_REQUEST_RATE_RPS), required=True,
                   help=f"demand, requests per second (at most {MAX_REQUEST_RATE_RPS:g}, as the CRD)")
    p.add_argument("--input-len", type=token_count, help="mean prompt tokens")
    p.add_argument("--input-len-p99", type=token_count, help="p99 prompt tokens (lognormal); default: all alike")
    p.add_argument("--output-len", type=token_count, help="mean output tokens")
    p.add_argument("--output-len-p99", type=token_count, help="p99 output tokens (lognormal)")
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
    p.add_argument("--max-median-ape", type=positive_float, help="exit 1 above this median error (0.2 = 20%%)")
    p.add_argument("--max-p90-ape", type=positive_float, help="exit 1 above this p90 error")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("catalog", help="list the GPUs, models or checkpoints the model knows")
    p.add_argument("what", choices=("gpus", "models", "checkpoints"), help="which catalog")
    add_output_args(p)
    p.set_defaults(func=cmd_catalog)

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
from goodput.model.measurements import evaluate, summarize
from goodput.model.precision import WEIGHT_PRECISIONS
from goodput.model.replica import TP_DEGREES, ReplicaModel, smallest_tp
from goodput.model.report import plan_report, predict_report
from goodput.model.sizing import MODES, Budget, plan
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.sim.trace import BUNDLED_TRACES, trace_path


# ------------------------------------------------------------------------------------------
# argument helpers
# ------------------------------------------------------------------------------------------
def number_arg(kind: type[int] | type[float], minimum: float, inclusive: bool) -> Any:
    """An argparse type: a finite number of `kind` above (or at) `minimum`, with a clear message."""
    bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


_positive_float = number_arg(float, 0.0, inclusive=False)
_non_negative_float = number_arg(float, 0.0, inclusive=True)
_positive_int = number_arg(int, 1, inclusive=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="catalog model id or Hugging Face name (see `goodput catalog models`)")
    src.add_argument("--model-config", type=Path, metavar="FILE",
                     help="a Hugging Face config.json on disk (read locally, never downloaded)")
    p.add_argument("--precision", required=True, help=f"weight precision: {', '.join(WEIGHT_PRECISIONS)}")
    p.add_argument("--kv-dtype", default="auto", help="KV-cache dtype: auto (model dtype) or fp8")
    p.add_argument("--price", action="append", default=[], metavar="GPU=USD",
                   help="override the price per GPU-hour of a GPU (repeatable)")


def _model(args: argparse.Namespace) -> ModelArch:
    if args.model_config is not None:
        return arch_from_hf_config_file(args.model_config)
    return get_model(args.model)


def _prices(args: argparse.Namespace) -> dict[str, float]:
    prices: dict[str, float] = {}
    for item in args.price:
        gpu, sep, usd = item.partition("=")
        if not sep:
            raise CapacityModelError(f"--price takes GPU=USD, got {item!r}")
        try:
            prices[get_accelerator(gpu).gpu_id] = float(usd)
        except ValueError:
            raise CapacityModelError(f"--price {item!r}: {usd!r} is not a number") from None
    return prices


def _gpus(spec: str, prices: dict[str, float]) -> list[Accelerator]:
    out = []
    for gpu_id in [g for g in spec.split(",") if g.strip()]:
        gpu = get_accelerator(gpu_id)
        if gpu.gpu_id in prices:
            gpu = gpu.with_price(prices[gpu.gpu_id])
        out.append(gpu)
    if not out:
        raise CapacityModelError("--gpu needs at least one GPU id")
    return out


def _lengths(mean: float, p99: float | None) -> LengthDistribution:
    return LengthDistribution.fixed(mean) if p99 is None else LengthDistribution.lognormal(mean, p99)


def _trace_lengths(path: Path) -> tuple[LengthDistribution, LengthDistribution]:
    """Empirical prompt/output length distributions from an Azure-format trace CSV."""
    inputs, outputs = [], []
    try:
        with path.open(encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                try:
                    inputs.append(float(row["ContextTokens"]))
                    outputs.append(float(row["GeneratedTokens"]))
                except (KeyError, TypeError, ValueError):
                    # line_num counts physical lines, blank ones included (the reader skips those).
                    raise CapacityModelError(
                        f"{path}:{reader.line_num}: expected ContextTokens and GeneratedTokens numbers") from None
    except OSError as exc:
        raise CapacityModelError(f"cannot read {path}: {exc.strerror}") from exc
    if not inputs:
        raise CapacityModelError(f"{path} has no requests")
    return LengthDistribution.empirical(inputs), LengthDistribution.empirical(outputs)


def _emit(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


# ------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    arch = _model(args)
    gpu = _gpus(args.gpu, _prices(args))[0]
    eff = calibrated_efficiency(args.engine)
    if args.tp is not None and args.tp not in TP_DEGREES:
        raise CapacityModelError(f"--tp {args.tp}: the InferenceDeployment CRD allows tensor-parallel degrees "
                                 f"{', '.join(map(str, TP_DEGREES))}")
    tp = args.tp or smallest_tp(arch, gpu, args.precision, args.input_len + args.output_len, args.kv_dtype, eff)
    r = ReplicaModel(arch, gpu, args.precision, tp, args.kv_dtype, eff)
    report = predict_report(r, args.batch, args.input_len, args.output_len)
    if not report["fits"]:
        raise CapacityModelError(
            f"{arch.model_id} in {r.precision.name} does not fit at TP{tp} on {gpu.name}: "
            f"{report['weights_per_gpu_gib']} GiB of weights per GPU leave no room for one sequence of "
            f"{args.input_len + args.output_len} tokens; use a larger --tp")
    if not report["batch_fits"]:
        raise CapacityModelError(
            f"--batch {args.batch} does not fit: the KV cache of {arch.model_id} at TP{tp} on {gpu.name} holds "
            f"{report['max_batch']} sequences of {args.input_len + args.output_len} tokens "
            f"({report['kv_capacity_tokens']:,} tokens); "
            f"use --batch {max(report['max_batch'], 1)} or less, or a larger --tp")
    if args.json:
        _emit(report)
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
        inputs, outputs = _trace_lengths(trace_path(args.lengths_from))
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
    arch = _model(args)
    gpus = _gpus(args.gpu, _prices(args))
    workload = _workload(args)
    slo = SLO(args.ttft_p99_ms, args.itl_p99_ms, args.slo_percentile)
    budget = Budget(args.max_gpus, args.max_cost_per_hour)
    result = plan(arch, gpus, args.precision, workload, slo, args.kv_dtype, args.mode, budget)
    elapsed = time.perf_counter() - started
    report = plan_report(result)
    report["model"] = arch.model_id
    report["precision"] = args.precision
    report["kv_cache_dtype"] = args.kv_dtype
    report["elapsed_s"] = round(elapsed, 3)
    plotted = args.plot is not None and result.chosen is not None
    if plotted:
        from goodput.plot import plot_plan  # matplotlib only when asked for

        plot_plan(result, arch, args.precision, args.kv_dtype, args.plot)
    if args.json:
        _emit(report)
        return 0 if result.chosen is not None else 1
    print(_plan_text(report, slo))
    if plotted:
        print(f"\nroofline plot written to {args.plot}")
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
def cmd_validate(args: argparse.Namespace) -> int:
    try:
        with args.measurements.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise CapacityModelError(f"cannot read {args.measurements}: {exc.strerror}") from exc
    results = evaluate(rows)
    summary = summarize(results)
    if args.json:
        out_rows = []
        for r in results:
            item: dict[str, Any] = dict(r.row)
            item["predicted"] = r.predicted
            item["ape"] = r.ape
            if r.error:
                item["error"] = r.error
            out_rows.append(item)
        _emit({"rows": out_rows, "summary": summary})
    else:
        print(f"{'model':<15}{'gpu':<15}{'prec':<5}{'tp':>3}{'in':>7}{'out':>6}{'load':>6}  {'metric':<24}"
              f"{'measured':>11}{'predicted':>11}{'APE':>8}")
        for r in results:
            row = r.row
            prefix = (f"{row.get('model_id', ''):<15}{row.get('gpu_id', ''):<15}{row.get('precision_id', ''):<5}"
                      f"{row.get('tp', ''):>3}{row.get('input_len', ''):>7}{row.get('output_len', ''):>6}"
                      f"{row.get('load', ''):>6}  {r.metric:<24}")
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
def cmd_catalog(args: argparse.Namespace) -> int:
    if args.what == "gpus":
        rows: list[dict[str, Any]] = [{"gpu_id": g.gpu_id, "name": g.name, "memory_gib": g.memory_gib,
                 "hbm_tb_s": g.hbm_bandwidth_bytes_s / 1e12,
                 "tflops": {k: v / 1e12 for k, v in g.dense_flops.items()},
                 "usd_per_gpu_hour": g.usd_per_gpu_hour, "price_source": g.price_source}
                for g in accelerator_catalog().values()]
        if args.json:
            _emit(rows)
        else:
            for r in rows:
                dtypes = ",".join(k for k in r["tflops"] if k != "fp16")
                print(f"{r['gpu_id']:<16}{r['name']:<24}{r['memory_gib']:>5.0f} GiB {r['hbm_tb_s']:>6.2f} TB/s  "
                      f"${r['usd_per_gpu_hour']:>5.2f}/h  {dtypes}")
    else:
        models = list(model_catalog().values())
        if args.json:
            _emit([{"model_id": m.model_id, "hf_name": m.hf_name, "params_total_b": m.params_total / 1e9,
                    "params_active_b": m.params_active / 1e9, "attention": m.attention,
                    "kv_bytes_per_token_16bit": m.kv_bytes_per_token_16bit} for m in models])
        else:
            for m in models:
                moe = f" (MoE {m.params_active / 1e9:.1f}B active)" if m.is_moe else ""
                print(f"{m.model_id:<16}{m.hf_name:<38}{m.params_total / 1e9:>7.1f}B{moe} {m.attention}")
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
    if args.prometheus:
        os.environ["GOODPUT_PROMETHEUS_URL"] = args.prometheus
    if args.metrics_port is not None:
        os.environ["GOODPUT_METRICS_PORT"] = str(args.metrics_port)
    import logging

    import kopf

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

    text = reference_markdown() if args.reference else crd_yaml()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goodput", description="Size LLM inference fleets from first principles.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="per-replica figures for one configuration")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, help="GPU id (see `goodput catalog gpus`)")
    p.add_argument("--tp", type=_positive_int, help="tensor-parallel degree (default: the smallest that fits)")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--engine", choices=list(ENGINE_CLASSES), default=DEFAULT_ENGINE,
                   help="the engine whose efficiency factors apply (default vllm; vllm-eager: no CUDA graphs)")
    p.add_argument("--input-len", type=_positive_int, required=True)
    p.add_argument("--output-len", type=_positive_int, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="the cheapest configuration meeting the SLOs")
    _add_model_args(p)
    p.add_argument("--gpu", required=True, help="GPU id, or several separated by commas")
    p.add_argument("--rate", type=_non_negative_float, required=True, help="demand, requests per second")
    p.add_argument("--input-len", type=_positive_float, help="mean prompt tokens")
    p.add_argument("--input-len-p99", type=_positive_float, help="p99 prompt tokens (lognormal); default: all alike")
    p.add_argument("--output-len", type=_positive_float, help="mean output tokens")
    p.add_argument("--output-len-p99", type=_positive_float, help="p99 output tokens (lognormal)")
    p.add_argument("--lengths-from", metavar="TRACE.csv",
                   help="take the length distributions from an Azure-format trace CSV, or a bundled one: "
                   + ", ".join(BUNDLED_TRACES))
    p.add_argument("--prefix-hit-rate", type=_non_negative_float, default=0.0,
                   help="fraction of prompt tokens served from the prefix cache")
    p.add_argument("--ttft-p99-ms", type=_positive_float, required=True)
    p.add_argument("--itl-p99-ms", type=_positive_float, required=True)
    p.add_argument("--slo-percentile", type=_positive_float, default=99.0,
                   help="the percentile the SLOs apply to (default 99)")
    p.add_argument("--mode", choices=MODES, default="auto")
    p.add_argument("--max-gpus", type=_positive_int)
    p.add_argument("--max-cost-per-hour", type=_positive_float, metavar="USD")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write a roofline picture of this workload")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("validate", help="predict published measurements and report the errors")
    p.add_argument("--measurements", type=Path, required=True, metavar="FILE.csv")
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row cannot be predicted")
    p.add_argument("--max-median-ape", type=_positive_float, help="exit 1 above this median error (0.2 = 20%%)")
    p.add_argument("--max-p90-ape", type=_positive_float, help="exit 1 above this p90 error")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("catalog", help="list the GPUs or models the model knows")
    p.add_argument("what", choices=("gpus", "models"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_catalog)
    p = sub.add_parser("operator", help="run the operator against the current cluster")
    p.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (default: all)")
    p.add_argument("--timer-seconds", type=_positive_float, default=30.0, help="reconcile period (default 30)")
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
                   type=str.upper, help="default INFO")
    p.add_argument("--liveness", default=None, metavar="URL", help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--prometheus", metavar="URL", help="default Prometheus for live metrics (spec.prometheus.url "
                   "overrides it); without one, plans follow spec.workload")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve the operator's own /metrics here")
    p.set_defaults(func=cmd_operator)

    from goodput.metrics.cli_observe import add_observe_parser

    add_observe_parser(sub)

    from goodput.kube.explain import add_explain_parser

    add_explain_parser(sub)

    from goodput.sim.cli import add_simulate_parser

    add_simulate_parser(sub)

    from goodput.demo.run import add_demo_parser

    add_demo_parser(sub)

    p = sub.add_parser("crd", help="print (or write) the InferenceDeployment CRD generated from the API models")
    p.add_argument("--output", "-o", type=Path, metavar="FILE")
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

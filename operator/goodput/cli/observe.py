"""`goodput observe`: print the Observation the planner would get from Prometheus, as it gets it.

    goodput observe --prometheus URL (--name NAME [-n NAMESPACE] | --selector LABELS)
                    [--window-s 60] [--long-window-s 600] [--percentile 99]
                    [--timeout-s 5] [-o table|wide|json|yaml]

``--json`` prints the dataclass as a dict (times in ISO 8601, None as null). The text form is one
table per pool, a row per PoolMetrics field and a column per window, then the `missing` notes.
Exit status: 0 when Prometheus answered (even with gaps: read the notes), 1 when it did not
(`Observation.error`), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import sys
from typing import Any

from goodput.api.vocabulary import DEPLOYMENT_LABEL, PROM_ROLE_LABEL
from goodput.cli.args import add_output_args, emit, number_arg, structured
from goodput.metrics.prometheus import DEFAULT_TIMEOUT_S, PrometheusCollector
from goodput.metrics.promql import Matcher, parse_selector
from goodput.planner.observation import ROLES, Observation, PoolMetrics


def _selector(text: str) -> tuple[Matcher, ...]:
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_positive = number_arg(float, 0.0, inclusive=False)


def _quantile(text: str) -> float:
    value = float(_positive(text))
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (0.99 for p99)")
    return value


def _percentile(text: str) -> float:
    value = float(_positive(text))
    if not 50 <= value < 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [50, 100) (99 for p99)")
    return value / 100.0


def add_observe_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``observe`` to the subparsers of `goodput` (``sub`` from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "observe", help="print the live observation of a deployment, read from Prometheus",
        description="Read vLLM's metrics from Prometheus the way the operator does and print the Observation "
                    "the planner would get, with every gap named.")
    p.add_argument("--prometheus", required=True, metavar="URL", help="e.g. http://prometheus.monitoring:9090")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help=f"the InferenceDeployment's name (its pods' {DEPLOYMENT_LABEL})")
    which.add_argument("--selector", type=_selector, metavar="LABELS",
                       help="Prometheus label matchers instead of --name/-n, e.g. 'namespace=prod,app=vllm' "
                            "(=, !=, =~, !~; quote values with commas); series without " + PROM_ROLE_LABEL + " count "
                            "as the aggregated pool")
    p.add_argument("--namespace", "-n", default=None,
                   help="with --name (default: the kubeconfig context's namespace, else default, as kubectl)")
    p.add_argument("--kubeconfig", metavar="FILE", help="only for the default namespace (default: $KUBECONFIG, "
                                                        "~/.kube/config); observe reads Prometheus, not the cluster")
    p.add_argument("--context", help="the kubeconfig context whose namespace is the default (default: its current)")
    p.add_argument("--window-s", "--window-seconds", dest="window_seconds", type=_positive, default=60.0,
                   metavar="S", help="the short window, seconds")
    p.add_argument("--long-window-s", "--long-window-seconds", dest="long_window_seconds", type=_positive,
                   default=600.0, metavar="S", help="the trend window, seconds")
    which_q = p.add_mutually_exclusive_group()
    which_q.add_argument("--percentile", dest="quantile", type=_percentile, default=0.99, metavar="P",
                         help="latency percentile, as the CRD's slo.percentile (default: 99)")
    which_q.add_argument("--quantile", dest="quantile", type=_quantile, help="the same as a fraction, 0..1")
    p.add_argument("--timeout-s", "--timeout-seconds", dest="timeout_seconds", type=_positive,
                   default=DEFAULT_TIMEOUT_S, metavar="S", help="per-query timeout, seconds")
    add_output_args(p)
    p.set_defaults(func=cmd_observe)
    return p


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """kubectl's rule: the context's namespace, else "default". A kubeconfig named on the command line
    must work; without one, a missing or broken kubeconfig just means "default"."""
    from goodput.kube.actions import KubeConfigError, load_config
    from goodput.model.errors import CapacityModelError

    try:
        return load_config(kubeconfig, context) or "default"
    except KubeConfigError as exc:
        if kubeconfig or context:
            raise CapacityModelError(str(exc)) from None
        return "default"


def cmd_observe(args: argparse.Namespace) -> int:
    if args.name is not None and args.namespace is None:
        args.namespace = default_namespace(args.kubeconfig, args.context)
    collector = PrometheusCollector(args.prometheus, timeout_s=args.timeout_seconds)
    now = dt.datetime.now(dt.UTC)
    if args.selector is not None:
        obs = collector.observe_selector(args.selector, now, args.window_seconds, args.long_window_seconds,
                                         args.quantile)
        target = "{" + ",".join(m.render() for m in args.selector) + "}"
    else:
        obs = collector.observe(args.namespace, args.name, now, args.window_seconds, args.long_window_seconds,
                                args.quantile)
        target = f"{args.namespace}/{args.name}"
    if structured(args):
        emit(observation_dict(obs), args.output)
    else:
        print(observation_text(obs, target, args.prometheus, args.quantile))
    return 1 if obs.error is not None else 0


# ------------------------------------------------------------------------------------------
def observation_dict(obs: Observation) -> dict[str, Any]:
    """The dataclass as a dict, JSON-ready: datetimes in ISO 8601, tuples as lists."""
    out: dict[str, Any] = _jsonable(dataclasses.asdict(obs))
    return out


def observation_json(obs: Observation) -> str:
    return json.dumps(observation_dict(obs), indent=2, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_FIELDS = [f.name for f in dataclasses.fields(PoolMetrics) if f.name != "role"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):  # cumulative (bound, count) buckets: how many observations they hold
        return f"{value[-1][1]:.0f} obs" if value else "-"
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.4g}"


def observation_text(obs: Observation, target: str, url: str, quantile: float = 0.99) -> str:
    lines = [f"{target} from {url} at {obs.time.isoformat(timespec='seconds')}"]
    if obs.error is not None:
        lines.append(f"unavailable: {obs.error}")
        return "\n".join(lines)
    short, long = f"{obs.window_s:g} s", f"{obs.long_window_s:g} s"
    lines.append(f"windows: {short} (now) and {long} (trend); latencies at p{quantile * 100:g}; "
                 f"available to plan: {'yes' if obs.available else 'no'}")
    roles = [r for r in ROLES if r in obs.pools or r in obs.long_pools]
    roles += sorted(r for r in {*obs.pools, *obs.long_pools} if r not in ROLES)
    if not roles:
        lines.append("no pools")
    width = max(len(f) for f in [*_FIELDS, "arrival_rate_rps"]) + 2
    for role in roles:
        a, b = obs.pools.get(role), obs.long_pools.get(role)
        lines.append("")
        lines.append(f"{role + ' pool':<{width}}{short:>12}{long:>12}")
        for name in _FIELDS:
            lines.append(f"  {name:<{width - 2}}{_fmt(_get(a, name)):>12}{_fmt(_get(b, name)):>12}")
        lines.append(f"  {'arrival_rate_rps':<{width - 2}}{_fmt(a.arrival_rate_rps if a else None):>12}"
                     f"{_fmt(b.arrival_rate_rps if b else None):>12}   (derived: requests + queue growth)")
    if obs.missing:
        lines.append("")
        lines.append("missing:")
        lines += [f"  - {note}" for note in obs.missing]
    return "\n".join(lines)


def _get(pool: PoolMetrics | None, name: str) -> Any:
    return None if pool is None else getattr(pool, name)


def main(argv: list[str] | None = None) -> int:
    """Run `observe` alone (until it is wired into `goodput`): ``python -m goodput.cli.observe``."""
    parser = argparse.ArgumentParser(prog="goodput")
    add_observe_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["observe", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""`goodput operator` (run the operator) and `goodput crd` (print the CRD)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from goodput.cli.args import (
    number_arg,
    positive_float,
)
from goodput.model.errors import CapacityModelError

PEERING_LIFETIME_S = 10  # HA: a standby takes over about 10-15 s after the active replica dies


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

    from goodput.handlers.settings import OperatorSettings, SettingsError
    from goodput.kube.actions import KubeConfigError, load_config

    try:
        OperatorSettings.from_env(os.environ)  # what the handlers read on import: a bad value fails here, in one line
    except SettingsError as exc:
        raise CapacityModelError(str(exc)) from None

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
        # A peer is dead once its keep-alive is this old: the takeover after a crash takes about this
        # long plus the survivor's next keep-alive (kopf refreshes 5-10 s before the lifetime ends).
        settings.peering.lifetime = args.peering_lifetime
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


def add_operator_parser(sub: Any) -> None:
    p = sub.add_parser("operator", help="run the operator against the current cluster")
    p.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (default: all)")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="the kubeconfig to use outside a pod (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    p.add_argument("--timer-s", "--timer-seconds", dest="timer_seconds", type=positive_float, default=30.0,
                   metavar="S", help="reconcile period, seconds")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true", default=True,
                      help="no peering between operator replicas (default)")
    mode.add_argument("--peering", metavar="NAME", help="kopf peering through the (Cluster)KopfPeering NAME, "
                      "which must exist (the Helm chart makes it when replicaCount > 1 or peering.enabled)")
    p.add_argument("--priority", type=_priority_arg, default=0, metavar="N|random",
                   help="peering priority (default 0); `random`: each replica draws 1-1000, so one is active")
    p.add_argument("--peering-lifetime", type=number_arg(int, 6, True, 3600), default=PEERING_LIFETIME_S,
                   metavar="S", help=f"seconds after its last keep-alive that a peer counts as gone and a standby "
                   f"takes over (default {PEERING_LIFETIME_S}; kopf's own is 60); each replica patches the "
                   "peering object about every S-7 seconds")
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


def add_crd_parser(sub: Any) -> None:
    p = sub.add_parser("crd", help="print (or write) the InferenceDeployment CRD generated from the API models")
    p.add_argument("--output-file", type=Path, metavar="FILE", help="write here instead of to stdout")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="the CRD's format")
    p.add_argument("--reference", action="store_true", help="the field reference in Markdown instead")
    p.set_defaults(func=cmd_crd)

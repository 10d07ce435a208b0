"""`goodput explain NAME`: read an InferenceDeployment, its Deployments and its Events, and print
what the operator decided and why (the report itself is `goodput.render.explain`, pure).

    goodput explain NAME [-n NAMESPACE] [--kubeconfig FILE] [--context NAME] [--events N] [-o json|yaml]

Exit status: 0 when the resource was read (whatever its health), 1 when it does not exist,
2 when the Kubernetes API cannot be reached or refuses (no kubeconfig, connection refused,
forbidden). Events and Deployments are best effort: a failure to read them is a note, not an exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from goodput.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from goodput.cli.args import add_output_args, emit, number_arg, structured
from goodput.planner.observation import PoolObservation
from goodput.render.explain import explain_data, explain_text

REQUEST_TIMEOUT_S = (5.0, 15.0)  # connect, read


_non_negative_int = number_arg(int, 0, inclusive=True)


def add_explain_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``explain`` to the subparsers of `goodput` (``sub`` from ``add_subparsers``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "explain", help="what an InferenceDeployment runs, why, and what is wrong with it",
        description="Read an InferenceDeployment's status, Deployments and Events and explain them: the plan "
                    "and the demand it is sized for, the autoscaler's state, predicted against observed "
                    "latency, the last decisions with their reasons, and every unhealthy condition.")
    p.add_argument("name", help="the InferenceDeployment's name")
    p.add_argument("--namespace", "-n", default=None,
                   help="its namespace (default: the context's namespace, else default)")
    p.add_argument("--kubeconfig", metavar="FILE", help="the kubeconfig to use (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    p.add_argument("--events", type=_non_negative_int, default=10, metavar="N",
                   help="how many of its newest Events to show (default 10; 0: none)")
    add_output_args(p)
    p.set_defaults(func=cmd_explain)
    return p


def _fail(message: str, code: int) -> int:
    print(f"goodput explain: {message}", file=sys.stderr)
    return code


def cmd_explain(args: argparse.Namespace) -> int:
    # The Kubernetes client is imported here: `goodput` commands that do not talk to a cluster stay fast.
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from goodput.kube.actions import KubeConfigError, load_config

    try:
        context_namespace = load_config(args.kubeconfig, args.context)
    except KubeConfigError as exc:
        return _fail(str(exc), 2)
    api = client.ApiClient()
    server = api.configuration.host
    name, namespace = args.name, args.namespace or context_namespace or "default"
    try:
        got = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        if exc.status == 404:
            return _fail(f"InferenceDeployment {namespace}/{name} not found (kubectl get infd -n {namespace}; "
                         "if the kind itself is unknown, the CRD is not installed)", 1)
        return _fail(f"the API server at {server} refused to read {namespace}/{name}: {exc.status} {exc.reason}", 2)
    except (HTTPError, OSError) as exc:
        return _fail(f"cannot reach the Kubernetes API server at {server}: {getattr(exc, 'reason', None) or exc}", 2)

    obj: dict[str, Any] = dict(got) if isinstance(got, dict) else {}
    notes: list[str] = []
    events = _events(api, obj, args.events, notes) if args.events else []
    deployments = _deployments(api, namespace, name, notes) if not (obj.get("spec") or {}).get("dryRun") else None
    now = dt.datetime.now(dt.UTC)
    if structured(args):
        data = explain_data(obj, events, now, deployments=deployments, max_events=args.events)
        data["notes"] += notes
        emit(data, args.output)
    else:
        sys.stdout.write(explain_text(obj, events, now, deployments=deployments, max_events=args.events))
        for note in notes:
            print(f"note: {note}")
    return 0


def _events(api: Any, obj: dict[str, Any], limit: int, notes: list[str]) -> list[dict[str, Any]]:
    """The resource's Events (core/v1), as the apiserver serves them; only this object's (by uid)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    meta = obj.get("metadata") or {}
    selector = f"involvedObject.kind={KIND},involvedObject.name={meta.get('name')}"
    try:
        listed = client.CoreV1Api(api).list_namespaced_event(meta.get("namespace", "default"), field_selector=selector,
                                                             _request_timeout=REQUEST_TIMEOUT_S)
    except (ApiException, HTTPError, OSError) as exc:
        notes.append(f"could not read Events: {getattr(exc, 'reason', None) or exc}")
        return []
    uid = meta.get("uid")
    items: list[dict[str, Any]] = [api.sanitize_for_serialization(e) for e in listed.items]
    # An earlier object of the same name (deleted and re-created) left Events of another uid.
    return [e for e in items if not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid)]


def _deployments(api: Any, namespace: str, name: str, notes: list[str]) -> dict[str, PoolObservation] | None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from goodput.kube.actions import Kube

    try:
        return Kube(api).observe_pools(namespace, name)
    except (ApiException, HTTPError, OSError) as exc:
        notes.append(f"could not read the Deployments (ready replicas come from the Ready condition): "
                     f"{getattr(exc, 'reason', None) or exc}")
        return None

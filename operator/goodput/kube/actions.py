"""Carry out an Outcome against the Kubernetes API: server-side apply, deletes, Events.

Server-side apply under the field manager ``goodput-operator`` with force: the operator owns
the fields it sets (replicas among them) and nothing else, so a GitOps tool that owns other
fields (annotations, extra labels) does not fight it.

Every call has a timeout (a hung apiserver must not hold a reconcile, and its lock, forever).
The status patch carries the resourceVersion the reconcile read: a concurrent writer makes it
fail with 409 instead of being overwritten, and the handler recomputes from a fresh read. Events
have names derived from their content, so posting one twice (a retry after a lost answer)
creates it once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from goodput.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from goodput.api.vocabulary import DELETION_COST_ANNOTATION, DEPLOYMENT_LABEL, ROLE_LABEL
from goodput.planner.observation import PoolObservation
from goodput.render.reconcile import Event
from goodput.render.scale_down import PodState, ScaleDownPlan, plan_scale_down
from goodput.render.vllm import FIELD_MANAGER, pool_name

log = logging.getLogger(__name__)
APPLY = "application/apply-patch+yaml"
REQUEST_TIMEOUT_S = (5.0, 20.0)  # connect, read


class KubeConfigError(Exception):
    """No usable Kubernetes configuration: the message says which file and what is wrong with it."""


CONTEXT_ENV = "GOODPUT_KUBE_CONTEXT"  # `goodput operator --context`: read by the login handler and at startup


def client_connection(namespace: str | None = None) -> dict[str, Any]:
    """What the Kubernetes client was configured with (by `load_config`), as the keyword arguments
    of kopf's ConnectionInfo, so that kopf talks to the same cluster as the client at a chosen context."""
    from kubernetes import client

    cfg = client.Configuration.get_default_copy()
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    scheme, _, token = str(auth).partition(" ") if " " in str(auth) else ("Bearer", "", str(auth))
    return {"server": cfg.host, "ca_path": cfg.ssl_ca_cert or None, "insecure": not cfg.verify_ssl,
            "username": cfg.username or None, "password": cfg.password or None,
            "scheme": scheme if token else None, "token": token or None,
            "certificate_path": cfg.cert_file or None, "private_key_path": cfg.key_file or None,
            "default_namespace": namespace}


def load_config(config_file: str | None = None, context: str | None = None) -> str | None:
    """In a pod: the service account; elsewhere: ``config_file`` (default $KUBECONFIG, else
    ~/.kube/config) at ``context`` (default its current context), as kubectl chooses. Returns the
    namespace that context names (None when it names none). Raises KubeConfigError with one line a
    person can act on (no file, not YAML, no such context)."""
    import os

    import yaml

    if config_file is None and context is None:  # explicit flags win over the pod's account, as in kubectl
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return _in_cluster_namespace()
        except config.ConfigException:
            pass
    where = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        # Named explicitly: the client reads $KUBECONFIG once, when it is imported.
        config.load_kube_config(config_file=where, context=context)  # type: ignore[no-untyped-call]
        contexts, active = config.list_kube_config_contexts(config_file=where)  # type: ignore[no-untyped-call]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeConfigError(f"the kubeconfig {where} is not valid YAML{at}") from None
    except (config.ConfigException, OSError, TypeError, AttributeError, KeyError, ValueError) as exc:
        # The client's own messages name what is missing ("Invalid kube-config file. No configuration found.").
        raise KubeConfigError(f"no usable Kubernetes configuration in {where} (set KUBECONFIG, or run in a "
                              f"pod): {str(exc).strip() or type(exc).__name__}") from None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def _in_cluster_namespace() -> str | None:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # --- reads -------------------------------------------------------------------------------
    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The InferenceDeployment as the apiserver has it now (None: gone). A list by name, not a
        get: the operator's RBAC grants list and watch on the resource, which kopf needs anyway."""
        custom = client.CustomObjectsApi(self.api)
        listed: Any = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           field_selector=f"metadata.name={name}",
                                                           _request_timeout=REQUEST_TIMEOUT_S)
        items = listed.get("items") or []
        return dict(items[0]) if items else None

    def observe_pools(self, namespace: str, name: str) -> dict[str, PoolObservation]:
        """The owned Deployments' replicas and ready replicas, their pods the scheduler could not
        place, and how long their pods took from creation to Ready, by pool role."""
        selector = f"{DEPLOYMENT_LABEL}={name}"
        deployments = self.apps.list_namespaced_deployment(namespace, label_selector=selector,
                                                           _request_timeout=REQUEST_TIMEOUT_S)
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S)
        pending: dict[str, list[str]] = {}
        starts: dict[str, list[tuple[dt.datetime, float]]] = {}
        for pod in pods.items:
            role = ((pod.metadata.labels if pod.metadata else None) or {}).get(ROLE_LABEL)
            if not role or (pod.metadata and pod.metadata.deletion_timestamp):
                continue
            why = unschedulable(pod)
            if why is not None:
                pending.setdefault(role, []).append(why)
            start = cold_start(pod)
            if start is not None:
                starts.setdefault(role, []).append(start)
        out = {}
        for d in deployments.items:
            role = ((d.metadata.labels if d.metadata else None) or {}).get(ROLE_LABEL)
            if role:
                stuck = pending.get(role, [])
                out[role] = PoolObservation(replicas=d.spec.replicas or 0,
                                            ready_replicas=(d.status.ready_replicas or 0) if d.status else 0,
                                            pending_replicas=len(stuck), pending_message=stuck[0] if stuck else "",
                                            pod_starts=tuple(sorted(starts.get(role, []))))
        return out

    # --- writes ------------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        opts: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY,
                                "_request_timeout": REQUEST_TIMEOUT_S}
        if kind == "PodMonitor":
            self.custom.patch_namespaced_custom_object("monitoring.coreos.com", "v1", meta["namespace"], "podmonitors",
                                                       meta["name"], obj, **opts)
            return
        appliers = {"Deployment": self.apps.patch_namespaced_deployment,
                    "Service": self.core.patch_namespaced_service,
                    "ServiceAccount": self.core.patch_namespaced_service_account,
                    "Role": self.rbac.patch_namespaced_role,
                    "RoleBinding": self.rbac.patch_namespaced_role_binding}
        if kind not in appliers:
            raise ValueError(f"the operator does not apply {kind}")
        appliers[kind](meta["name"], meta["namespace"], obj, **opts)

    def has_pod_monitor_crd(self) -> bool:
        """Whether the Prometheus Operator's API group (which serves PodMonitor) is installed."""
        try:
            groups = client.ApisApi(self.api).get_api_versions(_request_timeout=REQUEST_TIMEOUT_S).groups or []
        except (ApiException, OSError) as exc:
            log.info("cannot tell whether PodMonitors are served (%s): none applied", exc)
            return False
        return any(g.name == "monitoring.coreos.com" and any(v.version == "v1" for v in g.versions or [])
                   for g in groups)

    def pool_pods(self, namespace: str, name: str, role: str) -> list[PodState]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{DEPLOYMENT_LABEL}={name},{ROLE_LABEL}={role}",
                                             _request_timeout=REQUEST_TIMEOUT_S)
        return [pod_state(p) for p in pods.items if p.metadata is not None]

    def mark_leaving_pods(self, namespace: str, name: str, role: str, target: int,
                          in_flight: dict[str, float] | None) -> ScaleDownPlan:
        """Before a pool drops to ``target`` replicas: write pod-deletion costs so that the pods
        with the fewest requests in flight are the ones the ReplicaSet deletes."""
        plan = plan_scale_down(self.pool_pods(namespace, name, role), target, in_flight)
        for pod, cost in sorted(plan.costs.items()):
            try:
                body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: str(cost)}}}
                self.core.patch_namespaced_pod(pod, namespace, body, _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as exc:
                if exc.status != 404:  # gone meanwhile: one fewer to choose from
                    raise
        return plan

    def delete_pool(self, namespace: str, name: str, role: str) -> None:
        # The router's ServiceAccount, Role and binding stay until the resource goes (owner reference).
        for delete in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                delete(pool_name(name, role), namespace, propagation_policy="Background",
                       _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def post_event(self, body: dict[str, Any], event: Event, now: dt.datetime) -> None:
        """Create the Event; one that already exists (posted before an answer was lost) is done."""
        meta = body["metadata"]
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=event_name(meta["name"], meta.get("uid") or "", event, now),
                                         namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind=KIND,
                                                     name=meta["name"], namespace=meta["namespace"],
                                                     uid=meta.get("uid")),
            reason=event.reason,
            message=event.message[:1024],
            type=event.type,
            source=client.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            reporting_instance=FIELD_MANAGER,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            action="Reconcile",
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], ev, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 409:  # 409 AlreadyExists: this very Event was posted already
                raise

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any],
                     resource_version: str | None = None) -> None:
        """Merge-patch the status subresource with ``patch`` (``{"status": ...}``, see
        `goodput.render.patch.status_patch`); with `resource_version`, only if the object is still
        at it (else 409 Conflict)."""
        custom = client.CustomObjectsApi(self.api)
        body: dict[str, Any] = dict(patch)
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body,
                                                     _request_timeout=REQUEST_TIMEOUT_S)


def pod_state(pod: Any) -> PodState:
    meta, status = pod.metadata, pod.status
    ready = bool(status is not None and status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in (status.conditions or [])))
    created = meta.creation_timestamp.timestamp() if meta.creation_timestamp is not None else 0.0
    return PodState(str(meta.name), ready, meta.deletion_timestamp is not None, created)


def unschedulable(pod: Any) -> str | None:
    """The scheduler's message for a Pending pod it could not place (PodScheduled=False,
    Unschedulable), or None for any other pod."""
    if not pod.status or pod.status.phase != "Pending":
        return None
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return str(c.message or "Unschedulable")
    return None


def cold_start(pod: Any) -> tuple[dt.datetime, float] | None:
    """(Ready at, seconds from creation to Ready) for a Ready pod whose containers never restarted
    (a restart moves Ready's transition time: that would be a restart's time, not a start's)."""
    meta, status = pod.metadata, pod.status
    if meta is None or status is None or meta.creation_timestamp is None:
        return None
    if any((c.restart_count or 0) > 0 for c in (status.container_statuses or [])):
        return None
    ready = next((c for c in (status.conditions or []) if c.type == "Ready" and c.status == "True"), None)
    if ready is None or ready.last_transition_time is None:
        return None
    at = ready.last_transition_time.replace(microsecond=0)
    return at, max((at - meta.creation_timestamp).total_seconds(), 0.0)


def event_name(name: str, uid: str, event: Event, now: dt.datetime) -> str:
    """A name from the Event's content and time: the same Event posted twice is one object."""
    digest = hashlib.sha256(f"{uid}\n{now.isoformat()}\n{event.reason}\n{event.message}".encode()).hexdigest()
    return f"{name[:200]}.{digest[:16]}"

"""Desired Kubernetes objects for a recommendation: what the operator applies and `goodput render`
prints. Pure: the same inputs give the same objects.

Per pool, one Deployment and one Service: ``<name>-aggregated``, or ``<name>-prefill`` and
``<name>-decode`` wired for NIXL KV transfer. In disaggregated mode vLLM's P/D-aware router
(``vllm-router``) runs as ``<name>-router`` with a ServiceAccount allowed to watch pods: it finds
the prefill and decode pods through the Kubernetes API by their labels, sends each request to a
prefill pod (``max_tokens=1``, ``kv_transfer_params.do_remote_decode``) and then to a decode pod
with the ``kv_transfer_params`` the prefill answered. The Service ``<name>`` that clients use
selects the aggregated pool, or the router. Every object carries the ``app.kubernetes.io/*``
labels, ``goodput.dev/role`` and an owner reference to the InferenceDeployment, so deleting it
garbage-collects them.

What each vLLM pod gets (see the README, "What gets deployed"):

- the checkpoint of the plan's weight precision and the flags vLLM expects for it on that vendor
  (`goodput.model.serving`), ``--max-model-len`` the plan sized the KV cache for;
- the vendor's GPU resource, a node affinity for the GPU type's node label, the vendor's image;
- ``prometheus.io/*`` annotations (and, with the Prometheus Operator, a PodMonitor) carrying the
  labels the metrics collector groups by;
- a graceful exit: a preStop hook that waits until the engine has no request running or waiting
  (the pods chosen to leave have the fewest; see `goodput.kube.actions.mark_leaving_pods`), vLLM's
  own drain on SIGTERM (``--shutdown-timeout``) on releases that have it (0.18 and later), and a
  termination grace period that covers both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from goodput.api.v1alpha1 import GROUP, KIND, VERSION, InferenceDeploymentSpec
from goodput.api.vocabulary import DEPLOYMENT_LABEL, ROLE_LABEL, TP_ANNOTATION, VLLM_ROLES, Role, prometheus_label_name
from goodput.model.precision import weight_precision
from goodput.model.serving import DEFAULT_IMAGES, DEFAULT_RESOURCES, vendor_of
from goodput.planner.recommend import PoolTarget, Recommendation, ResolvedSpec, max_model_len

FIELD_MANAGER = "goodput-operator"
ROUTER_ROLE = Role.ROUTER
SHM_SIZE = "16Gi"
ROUTER_IMAGE = "vllm/vllm-router:v0.1.17"
ROUTER_METRICS_PORT = 29000
METRICS_PATH = "/metrics"
# vLLM learned to drain in-flight requests on SIGTERM (--shutdown-timeout) in 0.18.0 (vllm-project/vllm#34730).
SHUTDOWN_TIMEOUT_SINCE = (0, 18)
PRESTOP_SETTLE_S = 5  # for routers and endpoints to stop sending new requests to a leaving pod
MIN_GRACE_S, MAX_GRACE_S = 30, 3600


@dataclass(frozen=True)
class RenderConfig:
    """Operator-wide defaults (the chart's values); the spec overrides each of them."""

    vllm_images: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    router_image: str = ROUTER_IMAGE
    pod_monitor: bool = False  # the Prometheus Operator's PodMonitor CRD is installed
    # (kind, name) of the Role or ClusterRole that lets a router watch pods, made by the Helm chart:
    # the operator then binds it and writes no RBAC rules itself. None: a Role of the router's own.
    router_role: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RenderConfig:
        """GOODPUT_VLLM_IMAGE_NVIDIA, GOODPUT_VLLM_IMAGE_AMD, GOODPUT_ROUTER_IMAGE, GOODPUT_POD_MONITOR
        (true), GOODPUT_ROUTER_ROLE (``ClusterRole/NAME`` or ``Role/NAME``)."""
        images = dict(DEFAULT_IMAGES)
        for vendor in images:
            images[vendor] = env.get(f"GOODPUT_VLLM_IMAGE_{vendor.upper()}") or images[vendor]
        kind, _, role_name = (env.get("GOODPUT_ROUTER_ROLE") or "").partition("/")
        role = (kind, role_name) if kind in ("Role", "ClusterRole") and role_name else None
        return cls(images, env.get("GOODPUT_ROUTER_IMAGE") or ROUTER_IMAGE,
                   env.get("GOODPUT_POD_MONITOR", "").lower() in ("1", "true", "yes"), role)


DEFAULT_RENDER_CONFIG = RenderConfig()


def pool_name(name: str, role: str) -> str:
    return f"{name}-{role}"


def labels(name: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm-router" if role == ROUTER_ROLE else "vllm",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "goodput",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        DEPLOYMENT_LABEL: name,
        ROLE_LABEL: role,
    }


def selector(name: str, role: str) -> dict[str, str]:
    # Deployment selectors are immutable: only labels that never change for a pool.
    return {DEPLOYMENT_LABEL: name, ROLE_LABEL: role}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(name: str, namespace: str, uid: str, role: str, object_name: str) -> dict[str, Any]:
    return {"name": object_name, "namespace": namespace, "labels": labels(name, role),
            "ownerReferences": [owner_reference(name, uid)]}


# --- vendor, image, version ------------------------------------------------------------------
def image_for(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, config: RenderConfig) -> str:
    return spec.template.image or config.vllm_images.get(resolved.vendor) or DEFAULT_IMAGES[resolved.vendor]


def resource_name(spec: InferenceDeploymentSpec, resolved: ResolvedSpec) -> str:
    facts = vendor_of(spec.accelerator.gpu)
    return spec.accelerator.resource_name or (facts.resource_name if facts else DEFAULT_RESOURCES[resolved.vendor])


def vllm_version(image: str) -> tuple[int, int] | None:
    """The vLLM release an image tag names (``vllm/vllm-openai:v0.11.0`` -> (0, 11); AMD's
    ``rocm/vllm:rocm7.0.0_vllm_0.11.2_...`` -> (0, 11)); None when the tag does not say."""
    tag = image.rsplit("@", 1)[0].rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    found = re.search(r"vllm[_-]?v?(\d+)\.(\d+)", tag) or re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-.].*)?", tag)
    return (int(found.group(1)), int(found.group(2))) if found else None


def node_affinity(spec: InferenceDeploymentSpec) -> dict[str, Any] | None:
    """Required node affinity for the GPU type the pool was sized for (None: nothing to pin to)."""
    acc = spec.accelerator
    if not acc.pin_to_gpu_type:
        return None
    facts = vendor_of(acc.gpu)
    if acc.node_label is not None:
        key, values = acc.node_label.key, list(acc.node_label.values)
    elif facts is not None:
        key, values = facts.node_label, list(facts.node_label_values)
    else:
        return None  # a custom accelerator without spec.accelerator.nodeLabel
    term = {"matchExpressions": [{"key": key, "operator": "In", "values": values}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


# --- the vLLM container ------------------------------------------------------------------------
def termination_grace_s(spec: InferenceDeploymentSpec) -> int:
    """Long enough for a request the plan expects to finish: the p99 output (4x the mean without
    one) at the ITL target, plus the TTFT target, twice over, plus the preStop settle time."""
    if spec.template.termination_grace_period_seconds:
        return spec.template.termination_grace_period_seconds
    out = spec.workload.output_tokens
    longest_s = (out.p99 or 4 * out.mean) * spec.slo.itl_ms / 1000 + spec.slo.ttft_ms / 1000
    return int(min(MAX_GRACE_S, max(MIN_GRACE_S, math.ceil(2 * longest_s + PRESTOP_SETTLE_S))))


def drain_command(port: int, limit_s: int) -> list[str]:
    """preStop: wait (at most ``limit_s``) until vLLM's own gauges show nothing running or waiting.
    Works with every vLLM release: before 0.18 a SIGTERM aborts what is in flight, so the drain
    has to happen before it."""
    script = (
        "import time,urllib.request as u\n"
        f"end=time.time()+{limit_s}\n"
        f"time.sleep({PRESTOP_SETTLE_S})\n"
        "while time.time()<end:\n"
        " try:\n"
        f"  text=u.urlopen('http://127.0.0.1:{port}{METRICS_PATH}',timeout=2).read().decode()\n"
        " except Exception:\n"
        "  break\n"
        " n=sum(float(l.rsplit(' ',1)[1]) for l in text.splitlines()\n"
        "       if l.split('{')[0] in ('vllm:num_requests_running','vllm:num_requests_waiting'))\n"
        " if n<=0:\n"
        "  break\n"
        " time.sleep(1)\n")
    return ["python3", "-c", script]


def vllm_args(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, pool: PoolTarget,
              config: RenderConfig = DEFAULT_RENDER_CONFIG) -> list[str]:
    precision = weight_precision(resolved.precision)
    checkpoint = resolved.checkpoint
    args = [
        "--model", resolved.hugging_face_name,
        "--served-model-name", resolved.served_model_name,
        "--tensor-parallel-size", str(pool.tp),
        "--max-num-seqs", str(pool.max_num_seqs),
        "--max-num-batched-tokens", str(max(pool.max_num_batched_tokens, pool.max_num_seqs)),
        "--max-model-len", str(resolved.max_model_len or max_model_len(spec)),
        "--gpu-memory-utilization", f"{0.90:.2f}",
        "--kv-cache-dtype", resolved.kv_cache_dtype,
        "--port", str(spec.template.port),
    ]
    quantized = checkpoint is not None and (checkpoint.quant_method or checkpoint.online_quantization)
    if precision.name in ("bf16", "fp16") and not quantized:
        args += ["--dtype", "bfloat16" if precision.name == "bf16" else "float16"]
    flag = checkpoint.vllm_quantization(resolved.vendor) if checkpoint is not None else None
    if flag:
        args += ["--quantization", flag]
    if spec.engine == "vllm-eager":  # sized with the no-CUDA-graph factors: run it that way
        args.append("--enforce-eager")
    if pool.role in ("prefill", "decode"):
        # NixlConnector does not act on kv_role (vLLM's NixlConnector guide): the router decides per
        # request who prefills (kv_transfer_params.do_remote_decode) and who decodes; kv_both is
        # what vLLM's own P/D examples and tests run.
        args += ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"},
                                                    separators=(",", ":"))]
    version = vllm_version(image_for(spec, resolved, config))
    if version is not None and version >= SHUTDOWN_TIMEOUT_SINCE:
        args += ["--shutdown-timeout", str(max(1, termination_grace_s(spec) - PRESTOP_SETTLE_S - 5))]
    return args + list(spec.template.extra_args)


def _env(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, pool: PoolTarget) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    secret = spec.template.hugging_face_token_secret
    if secret is not None:
        # Referenced by name: the token never passes through the operator.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    if resolved.checkpoint is not None:
        env += [{"name": k, "value": v} for k, v in sorted(resolved.checkpoint.vllm_env(resolved.vendor).items())]
    if pool.role in ("prefill", "decode"):
        env.append({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env + list(spec.template.env or [])


def scrape_annotations(port: int) -> dict[str, str]:
    """For a Prometheus that discovers pods itself (kubernetes_sd_configs, role pod)."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": METRICS_PATH}


def deployment(name: str, namespace: str, uid: str, spec: InferenceDeploymentSpec, resolved: ResolvedSpec,
               pool: PoolTarget, config: RenderConfig = DEFAULT_RENDER_CONFIG) -> dict[str, Any]:
    t = spec.template
    resources: dict[str, Any] = json.loads(json.dumps(t.resources or {}))
    for section in ("limits", "requests"):
        resources.setdefault(section, {})[resource_name(spec, resolved)] = pool.tp
    port = t.port
    cold_start = max(spec.scaling.cold_start_seconds, 30)
    grace = termination_grace_s(spec)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": image_for(spec, resolved, config),
        "args": vllm_args(spec, resolved, pool, config),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # Weights load for minutes: the startup probe allows twice the cold start before liveness applies.
        "startupProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10,
                         "failureThreshold": math.ceil(2 * cold_start / 10)},
        "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 15, "failureThreshold": 4},
        "lifecycle": {"preStop": {"exec": {"command": drain_command(port, max(1, grace - 5))}}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *(t.volume_mounts or [])],
    }
    env = _env(spec, resolved, pool)
    if env:
        container["env"] = env
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}, *(t.volumes or [])],
        "terminationGracePeriodSeconds": grace,
    }
    affinity = node_affinity(spec)
    if affinity is not None:
        pod_spec["affinity"] = affinity
    if t.node_selector:
        pod_spec["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod_spec["tolerations"] = list(t.tolerations)
    if t.service_account_name:
        pod_spec["serviceAccountName"] = t.service_account_name
    meta = _metadata(name, namespace, uid, pool.role, pool_name(name, pool.role))
    meta["annotations"] = {TP_ANNOTATION: str(pool.tp)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": selector(name, pool.role)},
            # Keep serving capacity during a rollout: one extra pod at a time, none taken away first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels(name, pool.role), "annotations": scrape_annotations(port)},
                         "spec": pod_spec},
        },
    }


def service(name: str, namespace: str, uid: str, role: str, port: int,
            service_name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, uid, role, service_name or pool_name(name, role)),
        "spec": {"selector": selector(name, role),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }


# --- the P/D router ----------------------------------------------------------------------------
def router_args(name: str, namespace: str, spec: InferenceDeploymentSpec, port: int) -> list[str]:
    """vllm-router (PyPI 0.1.17) in vLLM P/D mode with Kubernetes service discovery."""
    r = spec.router
    return [
        "--host", "0.0.0.0", "--port", str(port),
        "--vllm-pd-disaggregation",
        "--service-discovery", "--service-discovery-namespace", namespace,
        "--service-discovery-port", str(spec.template.port),
        "--prefill-selector", f"{DEPLOYMENT_LABEL}={name}", f"{ROLE_LABEL}=prefill",
        "--decode-selector", f"{DEPLOYMENT_LABEL}={name}", f"{ROLE_LABEL}=decode",
        "--prefill-policy", r.prefill_policy, "--decode-policy", r.decode_policy,
        "--prometheus-host", "0.0.0.0", "--prometheus-port", str(ROUTER_METRICS_PORT),
        *r.extra_args,
    ]


def router_objects(name: str, namespace: str, uid: str, spec: InferenceDeploymentSpec,
                   config: RenderConfig = DEFAULT_RENDER_CONFIG) -> list[dict[str, Any]]:
    """The router's ServiceAccount, the binding to a role that lets it watch pods in its namespace
    (the chart's, or a Role of its own when rendered without one), and its Deployment."""
    account = pool_name(name, ROUTER_ROLE)
    port = spec.template.port
    rbac = "rbac.authorization.k8s.io/v1"
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.router.image or config.router_image,
        "command": ["vllm-router"],
        "args": router_args(name, namespace, spec, port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": ROUTER_METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 15, "failureThreshold": 4},
    }
    if spec.router.resources:
        container["resources"] = json.loads(json.dumps(spec.router.resources))
    own_role = config.router_role is None
    role_kind, role_name = config.router_role or ("Role", account)
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _metadata(name, namespace, uid, ROUTER_ROLE, account)}]
    if own_role:
        objs.append({"apiVersion": rbac, "kind": "Role",
                     "metadata": _metadata(name, namespace, uid, ROUTER_ROLE, account),
                     "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    objs += [
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": _metadata(name, namespace, uid, ROUTER_ROLE, account),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": _metadata(name, namespace, uid, ROUTER_ROLE, account),
         "spec": {"replicas": spec.router.replicas, "selector": {"matchLabels": selector(name, ROUTER_ROLE)},
                  "template": {"metadata": {"labels": labels(name, ROUTER_ROLE),
                                            "annotations": scrape_annotations(ROUTER_METRICS_PORT)},
                               "spec": {"serviceAccountName": account, "containers": [container]}}}},
    ]
    return objs


def pod_monitors(name: str, namespace: str, uid: str, with_router: bool) -> list[dict[str, Any]]:
    """Prometheus Operator PodMonitors for this resource's vLLM pods (port ``http``) and router pods
    (port ``metrics``). The pod labels the collector groups by (goodput.dev/inference-deployment,
    goodput.dev/role) become target labels under the names Kubernetes SD gives them; the Prometheus
    Operator adds namespace and pod itself."""
    relabel = [{"sourceLabels": [f"__meta_kubernetes_pod_label_{prometheus_label_name(k)}"],
                "targetLabel": prometheus_label_name(k)}
               for k in (DEPLOYMENT_LABEL, ROLE_LABEL)]
    vllm_roles = {"key": ROLE_LABEL, "operator": "In", "values": list(VLLM_ROLES)}
    wanted = [("vllm", name, "http", [vllm_roles])]
    if with_router:
        wanted.append((ROUTER_ROLE, pool_name(name, ROUTER_ROLE), "metrics",
                       [{"key": ROLE_LABEL, "operator": "In", "values": [ROUTER_ROLE]}]))
    return [{
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(name, namespace, uid, role, object_name),
        "spec": {
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: name}, "matchExpressions": expressions},
            "podMetricsEndpoints": [{"port": port, "path": METRICS_PATH, "interval": "15s", "relabelings": relabel}],
        },
    } for role, object_name, port, expressions in wanted]


def desired_objects(name: str, namespace: str, uid: str, spec: InferenceDeploymentSpec, resolved: ResolvedSpec,
                    rec: Recommendation, config: RenderConfig = DEFAULT_RENDER_CONFIG) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for pool in rec.pools:
        objs.append(deployment(name, namespace, uid, spec, resolved, pool, config))
        objs.append(service(name, namespace, uid, pool.role, spec.template.port))
    if rec.mode == "aggregated":
        entry = "aggregated"
    else:
        objs += router_objects(name, namespace, uid, spec, config)
        entry = ROUTER_ROLE
    objs.append(service(name, namespace, uid, entry, spec.template.port, service_name=name))
    if config.pod_monitor:
        objs += pod_monitors(name, namespace, uid, with_router=rec.mode != "aggregated")
    return objs


def obsolete_pools(rec: Recommendation) -> list[str]:
    """Pools a mode change leaves behind (deleted after the new pools are applied)."""
    wanted = {p.role for p in rec.pools} | ({ROUTER_ROLE} if rec.mode == "disaggregated" else set())
    return [role for role in ("aggregated", "prefill", "decode", ROUTER_ROLE) if role not in wanted]

"""Desired Kubernetes objects for a recommendation: vLLM Deployments and Services. Pure.

One Deployment and one Service per pool: ``<name>-aggregated``, or ``<name>-prefill`` and
``<name>-decode`` wired for KV transfer (NixlConnector, producer and consumer roles). The
Service ``<name>`` selects the pool that answers clients (aggregated, or decode behind a P/D-aware
router). Every object carries the ``app.kubernetes.io/*`` labels, ``goodput.dev/role`` and an
owner reference to the InferenceDeployment, so deleting it garbage-collects them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from goodput.api.v1alpha1 import GROUP, KIND, VERSION, InferenceDeploymentSpec
from goodput.model.precision import weight_precision
from goodput.planner.recommend import PoolTarget, Recommendation, ResolvedSpec, max_model_len

FIELD_MANAGER = "goodput-operator"
ROLE_LABEL = "goodput.dev/role"
OWNER_LABEL = "goodput.dev/inference-deployment"
SHM_SIZE = "16Gi"


def pool_name(name: str, role: str) -> str:
    return f"{name}-{role}"


def labels(name: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "goodput",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        OWNER_LABEL: name,
        ROLE_LABEL: role,
    }


def selector(name: str, role: str) -> dict[str, str]:
    # Deployment selectors are immutable: only labels that never change for a pool.
    return {OWNER_LABEL: name, ROLE_LABEL: role}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def vllm_args(spec: InferenceDeploymentSpec, resolved: ResolvedSpec, pool: PoolTarget) -> list[str]:
    precision = weight_precision(resolved.precision)
    args = [
        "--model", resolved.hugging_face_name,
        "--served-model-name", resolved.served_model_name,
        "--tensor-parallel-size", str(pool.tp),
        "--max-num-seqs", str(pool.max_num_seqs),
        "--max-num-batched-tokens", str(max(pool.max_num_batched_tokens, pool.max_num_seqs)),
        "--max-model-len", str(max_model_len(spec)),
        "--gpu-memory-utilization", f"{0.90:.2f}",
        "--kv-cache-dtype", resolved.kv_cache_dtype,
        "--port", str(spec.template.port),
    ]
    if precision.name in ("bf16", "fp16"):
        args += ["--dtype", "bfloat16" if precision.name == "bf16" else "float16"]
    if precision.vllm_quantization:
        args += ["--quantization", precision.vllm_quantization]
    if spec.engine == "vllm-eager":  # sized with the no-CUDA-graph factors: run it that way
        args.append("--enforce-eager")
    if pool.role in ("prefill", "decode"):
        role = "kv_producer" if pool.role == "prefill" else "kv_consumer"
        args += ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": role},
                                                    separators=(",", ":"))]
    return args + list(spec.template.extra_args)


def _env(spec: InferenceDeploymentSpec, pool: PoolTarget) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    secret = spec.template.hugging_face_token_secret
    if secret is not None:
        # Referenced by name: the token never passes through the operator.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    if pool.role in ("prefill", "decode"):
        env.append({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env + list(spec.template.env or [])


def deployment(name: str, namespace: str, uid: str, spec: InferenceDeploymentSpec, resolved: ResolvedSpec,
               pool: PoolTarget) -> dict[str, Any]:
    t = spec.template
    resources: dict[str, Any] = json.loads(json.dumps(t.resources or {}))
    gpu_resource = spec.accelerator.resource_name
    for section in ("limits", "requests"):
        resources.setdefault(section, {})[gpu_resource] = pool.tp
    port = t.port
    cold_start = max(spec.scaling.cold_start_seconds, 30)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": t.image,
        "args": vllm_args(spec, resolved, pool),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # Weights load for minutes: the startup probe allows twice the cold start before liveness applies.
        "startupProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10,
                         "failureThreshold": math.ceil(2 * cold_start / 10)},
        "readinessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *(t.volume_mounts or [])],
    }
    env = _env(spec, pool)
    if env:
        container["env"] = env
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}, *(t.volumes or [])],
        "terminationGracePeriodSeconds": 60,
    }
    if t.node_selector:
        pod_spec["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod_spec["tolerations"] = list(t.tolerations)
    if t.service_account_name:
        pod_spec["serviceAccountName"] = t.service_account_name
    obj_labels = labels(name, pool.role)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": pool_name(name, pool.role),
            "namespace": namespace,
            "labels": obj_labels,
            "annotations": {"goodput.dev/tensor-parallel": str(pool.tp)},
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": selector(name, pool.role)},
            # Keep serving capacity during a rollout: one extra pod at a time, none taken away first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": obj_labels}, "spec": pod_spec},
        },
    }


def service(name: str, namespace: str, uid: str, role: str, port: int,
            service_name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name or pool_name(name, role), "namespace": namespace,
                     "labels": labels(name, role), "ownerReferences": [owner_reference(name, uid)]},
        "spec": {"selector": selector(name, role),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }


def desired_objects(name: str, namespace: str, uid: str, spec: InferenceDeploymentSpec, resolved: ResolvedSpec,
                    rec: Recommendation) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for pool in rec.pools:
        objs.append(deployment(name, namespace, uid, spec, resolved, pool))
        objs.append(service(name, namespace, uid, pool.role, spec.template.port))
    entry = "aggregated" if rec.mode == "aggregated" else "decode"
    objs.append(service(name, namespace, uid, entry, spec.template.port, service_name=name))
    return objs


def obsolete_pools(rec: Recommendation) -> list[str]:
    """Pools a mode change leaves behind (deleted after the new pools are applied)."""
    wanted = {p.role for p in rec.pools}
    return [role for role in ("aggregated", "prefill", "decode") if role not in wanted]

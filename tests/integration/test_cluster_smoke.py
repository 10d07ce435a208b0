"""Smoke tests of the local control plane: real apiserver, scheduler, controllers; kwok nodes."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import polling
import pytest

from goodput.devcluster.build import KUBERNETES_VERSION
from goodput.devcluster.cluster import DEFAULT_GPU_PRODUCT, GPU_RESOURCE, LocalCluster, node_is_ready, pod_is_ready

pytestmark = pytest.mark.integration

wait_for = partial(polling.wait_for, timeout=60.0, interval=0.2)



def deployment_yaml(name: str, namespace: str, *, replicas: int, gpus: int) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: registry.k8s.io/pause:3.10
        resources:
          requests: {{cpu: 100m, memory: 64Mi, {GPU_RESOURCE}: "{gpus}"}}
          limits: {{{GPU_RESOURCE}: "{gpus}"}}
"""


def apply(cluster: LocalCluster, manifest: str) -> None:
    proc = cluster.kubectl("apply", "-f", "-", input=manifest)
    assert proc.returncode == 0, proc.stderr


def pods(cluster: LocalCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    return list(cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3D{app}")["items"])


def replicasets(cluster: LocalCluster, namespace: str, app: str) -> list[dict[str, Any]]:
    return list(cluster.api("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets?labelSelector=app%3D{app}")
                ["items"])


def kwok_node_names(cluster: LocalCluster) -> set[str]:
    return {n["metadata"]["name"] for n in cluster.api("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")["items"]}


def running_ready(cluster: LocalCluster, namespace: str, app: str, count: int) -> list[dict[str, Any]] | None:
    ready = [p for p in pods(cluster, namespace, app) if pod_is_ready(p)]
    return ready if len(ready) == count else None


def test_kubectl_reports_server_version(cluster: LocalCluster) -> None:
    proc = cluster.kubectl("version", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_gpu_nodes_are_ready(cluster: LocalCluster) -> None:
    proc = cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    nodes = json.loads(proc.stdout)["items"]
    assert len(nodes) == 4
    for node in nodes:
        name = node["metadata"]["name"]
        assert node_is_ready(node), f"{name} not Ready: {node['status'].get('conditions')}"
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8", name
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == DEFAULT_GPU_PRODUCT
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_gpu_deployment_gets_running_ready_pods(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, deployment_yaml("fits", namespace, replicas=2, gpus=2))

    rs = wait_for("the Deployment's ReplicaSet", lambda: replicasets(cluster, namespace, "fits"), timeout=30)
    assert rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"

    ready = wait_for("2 pods Running and Ready", lambda: running_ready(cluster, namespace, "fits", 2), timeout=60)
    kwok_nodes = kwok_node_names(cluster)
    for pod in ready:
        assert pod["spec"]["nodeName"] in kwok_nodes
        assert pod["spec"]["containers"][0]["resources"]["requests"][GPU_RESOURCE] == "2"
        assert pod["status"]["containerStatuses"][0]["ready"] is True
        assert pod["status"].get("podIP")

    proc = cluster.kubectl("rollout", "status", "deployment/fits", "-n", namespace, "--timeout=30s")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_oversized_gpu_request_stays_pending(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, deployment_yaml("too-big", namespace, replicas=1, gpus=9))
    pod = wait_for("the pod of the 9-GPU Deployment", lambda: pods(cluster, namespace, "too-big"), timeout=30)[0]
    name = pod["metadata"]["name"]

    def scheduling_failure() -> dict[str, Any] | None:
        events = cluster.api("GET", f"/api/v1/namespaces/{namespace}/events"
                                    f"?fieldSelector=involvedObject.name%3D{name}")["items"]
        return next((e for e in events if e.get("reason") == "FailedScheduling"
                     and f"Insufficient {GPU_RESOURCE}" in (e.get("message") or "")), None)

    event = wait_for("a FailedScheduling event for Insufficient nvidia.com/gpu", scheduling_failure, timeout=30)
    assert event["type"] == "Warning"
    current = cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    assert current["status"]["phase"] == "Pending"
    assert not current["spec"].get("nodeName")


def test_deleting_deployment_garbage_collects_pods(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, deployment_yaml("doomed", namespace, replicas=2, gpus=1))
    wait_for("2 pods Running and Ready", lambda: running_ready(cluster, namespace, "doomed", 2), timeout=60)

    proc = cluster.kubectl("delete", "deployment", "doomed", "-n", namespace, "--wait=false")
    assert proc.returncode == 0, proc.stderr

    wait_for("the ReplicaSet and pods to be garbage-collected",
             lambda: not replicasets(cluster, namespace, "doomed") and not pods(cluster, namespace, "doomed"),
             timeout=60)

"""Every object the operator renders, over a matrix of models, precisions, modes and GPUs, is
accepted by the real kube-apiserver (``kubectl apply --dry-run=server``): Deployments with their
node affinity, preStop hooks, probes and GPU resources, Services, the router's ServiceAccount and
RoleBinding, and PodMonitors against the Prometheus Operator's own CRD (from its Go module).

The InferenceDeployments themselves go through the same dry run, so the specs are ones admission
accepts. Specs the capacity model refuses (a precision the GPU cannot run, no checkpoint for the
precision, a model that does not fit) are counted, not rendered: the operator applies nothing for
them either.
"""

from __future__ import annotations

import itertools
import json
import sys
import uuid
from typing import Any

from goodput.cli.render import render_objects
from goodput.demo.stack import install_crd
from goodput.devcluster.build import prometheus_operator_crd
from goodput.devcluster.cluster import LocalCluster
from goodput.render.vllm import RenderConfig

MODELS = ("llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b", "qwen2.5-72b", "gpt-oss-120b", "deepseek-v3")
PRECISIONS = ("bf16", "fp8", "int8", "int4-awq", "int4-gptq", "fp4", "mxfp4")
GPUS = ("h100-sxm-80gb", "h200-sxm-141gb", "a100-sxm-80gb", "b200-180gb", "mi300x-192gb", "l40s-48gb")
MODES = ("aggregated", "disaggregated")


def manifest(i: int, model: str, precision: str, gpu: str, mode: str) -> dict[str, Any]:
    return {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": f"m{i}"},
            "spec": {"model": {"id": model}, "precision": {"weights": precision,
                                                           "kvCache": "fp8" if precision != "bf16" else "auto"},
                     "accelerator": {"gpu": gpu}, "slo": {"ttftMs": 2000, "itlMs": 60}, "mode": mode,
                     "workload": {"requestRate": 5, "inputTokens": {"mean": 1500, "p99": 6000},
                                  "outputTokens": {"mean": 300, "p99": 1200}},
                     "scaling": {"maxGpus": 64}}}


def test_every_rendered_object_is_accepted_by_the_apiserver(cluster: LocalCluster, namespace: str) -> None:
    install_crd(cluster)
    crd = prometheus_operator_crd("podmonitors")
    out = cluster.kubectl("apply", "--server-side", "-f", str(crd))
    assert out.returncode == 0, out.stderr
    assert cluster.kubectl("wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com",
                           "--timeout=30s").returncode == 0
    config = RenderConfig(pod_monitor=True, router_role=("ClusterRole", "goodput-operator-vllm-router"))
    items: list[dict[str, Any]] = []
    refused: dict[str, int] = {}
    rendered = 0
    kinds: dict[str, int] = {}
    combos = itertools.product(MODELS, PRECISIONS, GPUS, MODES)
    for i, (model, precision, gpu, mode) in enumerate(combos):
        m = manifest(i, model, precision, gpu, mode)
        objs, status = render_objects(m, namespace, uid=str(uuid.uuid4()), config=config)
        if not objs:
            cond = next(c for c in status["conditions"] if c["type"] == "Degraded")
            why = cond["message"].split(":")[0][:60]
            refused[why] = refused.get(why, 0) + 1
            continue
        rendered += 1
        items.append({**m, "metadata": {**m["metadata"], "namespace": namespace}})
        for o in objs:
            kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
        items += objs
    print(f"[dry-run] {rendered} specs rendered into {len(items)} objects {kinds}; refused: {refused}",
          file=sys.stderr)
    assert rendered >= 60, f"the matrix rendered only {rendered} specs: {refused}"
    assert {"Deployment", "Service", "ServiceAccount", "RoleBinding", "PodMonitor", "InferenceDeployment"} <= \
        set(kinds) | {"InferenceDeployment"}
    for n, chunk in enumerate(range(0, len(items), 400)):
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items[chunk:chunk + 400]})
        result = cluster.kubectl("apply", "--dry-run=server", "--server-side", "--field-manager=goodput-operator",
                                 "-f", "-", input=doc, timeout=300)
        assert result.returncode == 0, f"chunk {n}: {result.stderr[-3000:]}"
        accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
        assert len(accepted) == len(items[chunk:chunk + 400]), result.stdout[-2000:]

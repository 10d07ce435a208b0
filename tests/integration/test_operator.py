"""The operator end to end on a real control plane (etcd, kube-apiserver, controller-manager,
scheduler) with kwok GPU nodes: kubectl in, Deployments and pods out, status and Events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import polling
import pytest
import yaml

from goodput.demo.stack import stop_process

pytestmark = pytest.mark.integration
wait_for = partial(polling.wait_for, timeout=60.0, interval=0.5)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
NS = "default"


def kjson(cluster: Any, *args: str) -> Any:
    out = cluster.kubectl(*args, "-o", "json")
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], None]]:
    """Install the CRD and run `goodput operator` as its own process; yields a restart function."""
    applied = cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    wait_for("the CRD to be established", lambda: cluster.kubectl(
        "wait", "--for=condition=Established", "crd/inferencedeployments.goodput.dev", "--timeout=5s").returncode == 0)
    log_dir = tmp_path_factory.mktemp("operator")
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    state: dict[str, Any] = {"n": 0}

    def start() -> None:
        state["n"] += 1
        log = (log_dir / f"operator-{state['n']}.log").open("w")
        state["proc"] = subprocess.Popen(
            [sys.executable, "-m", "goodput.cli", "operator", "--timer-seconds", "3", "--namespace", NS],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        state["log"] = log

    def stop() -> None:
        stop_process(state["proc"])
        state["log"].close()

    def restart() -> None:
        stop()
        start()

    start()
    try:
        yield restart
    finally:
        stop()
        for path in sorted(log_dir.glob("*.log")):
            sys.stderr.write(f"--- {path.name} (tail)\n" + "".join(path.read_text().splitlines(True)[-30:]))


def infd(cluster: Any, name: str) -> dict[str, Any]:
    return kjson(cluster, "get", "infd", name, "-n", NS) or {}


def plan_of(cluster: Any, name: str) -> dict[str, Any]:
    return (infd(cluster, name).get("status") or {}).get("plan") or {}


def deployment(cluster: Any, name: str) -> dict[str, Any] | None:
    return kjson(cluster, "get", "deployment", name, "-n", NS, "--show-managed-fields")


def events_for(cluster: Any, name: str) -> list[dict[str, Any]]:
    data = kjson(cluster, "get", "events", "-n", NS, "--field-selector",
                 f"involvedObject.kind=InferenceDeployment,involvedObject.name={name}")
    return (data or {}).get("items", [])


def ready_pods(cluster: Any, selector: str) -> int:
    pods = (kjson(cluster, "get", "pods", "-n", NS, "-l", selector) or {}).get("items", [])
    return sum(1 for p in pods if p["status"].get("phase") == "Running"
               and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])))


def args_of(dep: dict[str, Any]) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_aggregated_example_runs_on_fake_gpu_nodes(cluster: Any, operator: Any) -> None:
    assert cluster.kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "aggregated-small.yaml")).returncode == 0
    plan = wait_for("a plan in status", lambda: plan_of(cluster, "llama-8b-chat"))
    dep = wait_for("the vLLM Deployment", lambda: deployment(cluster, "llama-8b-chat-aggregated"))
    args = args_of(dep)
    assert args[args.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == str(plan["tensorParallel"])
    assert dep["spec"]["replicas"] == plan["decodeReplicas"]
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == plan["tensorParallel"]
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"
    # Server-side apply under the operator's own field manager.
    assert any(m.get("manager") == "goodput-operator" and m.get("operation") == "Apply"
               for m in dep["metadata"]["managedFields"])
    wait_for("pods Running and Ready on kwok GPU nodes",
             lambda: ready_pods(cluster, "goodput.dev/inference-deployment=llama-8b-chat") == plan["decodeReplicas"])
    wait_for("the Ready condition", lambda: any(
        c["type"] == "Ready" and c["status"] == "True" for c in infd(cluster, "llama-8b-chat")["status"]["conditions"]))
    assert any(e["reason"] == "Initial" for e in events_for(cluster, "llama-8b-chat"))
    columns = cluster.kubectl("get", "infd", "llama-8b-chat", "-n", NS).stdout
    for header in ("MODEL", "GPU", "MODE", "PREFILL", "DECODE", "GPUS", "READY", "AGE"):
        assert header in columns
    assert "llama-3.1-8b" in columns and "$/H" not in columns  # cost and latencies wait for -o wide
    wide = cluster.kubectl("get", "infd", "llama-8b-chat", "-n", NS, "-o", "wide").stdout
    for header in ("$/H", "TTFT MS (SLO PCT)", "ITL MS (SLO PCT)"):
        assert header in wide


def test_more_demand_scales_up_with_an_event(cluster: Any, operator: Any) -> None:
    before = wait_for("a plan", lambda: plan_of(cluster, "llama-8b-chat"))["decodeReplicas"]
    patch = {"spec": {"workload": {"requestRate": 70}}}
    assert cluster.kubectl("patch", "infd", "llama-8b-chat", "-n", NS, "--type=merge",
                           "-p", json.dumps(patch)).returncode == 0
    after = wait_for("more replicas", lambda: (p := plan_of(cluster, "llama-8b-chat")).get("decodeReplicas", 0) > before
                     and p["decodeReplicas"])
    wait_for("the Deployment to follow", lambda: deployment(cluster, "llama-8b-chat-aggregated")["spec"]["replicas"]
             == after)
    # A person changed the spec: its plan applies at once, said so (metric-driven changes are ScaleUp).
    scale_ups = [e for e in events_for(cluster, "llama-8b-chat") if e["reason"] == "SpecChanged"]
    assert scale_ups and "req/s" in scale_ups[0]["message"] and f"{before}→{after}" in scale_ups[0]["message"]


def test_tighter_slo_changes_replicas_with_a_reason(cluster: Any, operator: Any) -> None:
    before = wait_for("a plan", lambda: plan_of(cluster, "llama-8b-chat"))["decodeReplicas"]
    patch = {"spec": {"slo": {"ttftMs": 350}}}
    assert cluster.kubectl("patch", "infd", "llama-8b-chat", "-n", NS, "--type=merge",
                           "-p", json.dumps(patch)).returncode == 0
    wait_for("replicas to change", lambda: plan_of(cluster, "llama-8b-chat").get("decodeReplicas") != before)
    reasons = [e["reason"] for e in events_for(cluster, "llama-8b-chat")]
    assert "SpecChanged" in reasons or "Reconfigure" in reasons


def test_disaggregated_example_wires_kv_transfer(cluster: Any, operator: Any) -> None:
    assert cluster.kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "disaggregated-70b-fp8-h100.yaml")).returncode == 0
    prefill = wait_for("the prefill Deployment", lambda: deployment(cluster, "llama-70b-prefill"))
    decode = wait_for("the decode Deployment", lambda: deployment(cluster, "llama-70b-decode"))
    for dep in (prefill, decode):
        args = args_of(dep)
        config = json.loads(args[args.index("--kv-transfer-config") + 1])
        # NixlConnector does not act on kv_role: the router decides per request who prefills.
        assert config == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        assert "--quantization" not in args  # the FP8 checkpoint it loads carries its quantization config
        assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    assert prefill["metadata"]["labels"]["goodput.dev/role"] == "prefill"
    # The Service clients call is the P/D router's, which sends each request through both pools.
    assert kjson(cluster, "get", "service", "llama-70b", "-n", NS)["spec"]["selector"]["goodput.dev/role"] == "router"
    plan = plan_of(cluster, "llama-70b")
    wait_for("decode pods ready", lambda: ready_pods(
        cluster, "goodput.dev/inference-deployment=llama-70b,goodput.dev/role=decode") == plan["decodeReplicas"])


def test_dry_run_plans_without_deployments(cluster: Any, operator: Any) -> None:
    assert cluster.kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "dry-run.yaml")).returncode == 0
    plan = wait_for("a plan", lambda: plan_of(cluster, "qwen-72b-what-if"))
    assert plan["gpus"] >= 1
    time.sleep(4)  # at least one timer period
    deps = kjson(cluster, "get", "deployments", "-n", NS, "-l", "goodput.dev/inference-deployment=qwen-72b-what-if")
    assert deps["items"] == []
    conditions = {c["type"]: c for c in infd(cluster, "qwen-72b-what-if")["status"]["conditions"]}
    assert conditions["ScalingActive"]["reason"] == "DryRun"


def test_budget_capped_example_reports_scaling_limited(cluster: Any, operator: Any) -> None:
    assert cluster.kubectl("apply", "-n", NS, "-f", str(EXAMPLES / "budget-capped.yaml")).returncode == 0
    plan = wait_for("a plan", lambda: plan_of(cluster, "mistral-capped"))
    assert plan["gpus"] <= 4
    conditions = {c["type"]: c for c in infd(cluster, "mistral-capped")["status"]["conditions"]}
    assert conditions["ScalingLimited"]["status"] == "True"
    assert "over the budget" in conditions["ScalingLimited"]["message"]


def test_semantic_error_is_a_condition_and_touches_nothing(cluster: Any, operator: Any) -> None:
    bad = yaml.safe_load((EXAMPLES / "aggregated-small.yaml").read_text())
    bad["metadata"]["name"] = "fp8-on-a100"
    bad["spec"]["accelerator"]["gpu"] = "a100-sxm-80gb"
    bad["spec"]["precision"]["weights"] = "fp8"
    applied = cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(bad))
    assert applied.returncode == 0, applied.stderr
    cond = wait_for("the Degraded condition", lambda: next(
        (c for c in (infd(cluster, "fp8-on-a100").get("status") or {}).get("conditions", [])
         if c["type"] == "Degraded" and c["status"] == "True"), None))
    assert "FP8 tensor cores" in cond["message"]
    assert any(e["type"] == "Warning" and e["reason"] == "InvalidSpec" for e in events_for(cluster, "fp8-on-a100"))
    assert deployment(cluster, "fp8-on-a100-aggregated") is None


BAD_SPECS = [
    ({"scaling": {"aggregated": {"minReplicas": 5, "maxReplicas": 2}}}, "minReplicas must be <= maxReplicas"),
    ({"slo": {"ttftMs": -5, "itlMs": 40}}, "should be greater than 0"),
    ({"mode": "sideways"}, "Unsupported value"),
    ({"model": {"servedModelName": "x"}}, "model needs either id"),
    ({"workload": {"inputTokens": {"mean": 2000, "p99": 100}}}, "p99 must be >= mean"),
    ({"precision": {"weights": "fp3"}}, "Unsupported value"),
    ({"bogusField": True}, "unknown field"),
]


@pytest.mark.parametrize("patch, message", BAD_SPECS)
def test_bad_specs_are_rejected_at_admission(cluster: Any, operator: Any, patch: dict[str, Any], message: str) -> None:
    obj = yaml.safe_load((EXAMPLES / "aggregated-small.yaml").read_text())
    obj["metadata"]["name"] = "rejected"
    obj["spec"].update(patch)
    out = cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(obj))
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_restarting_the_operator_changes_nothing(cluster: Any, operator: Any) -> None:
    name = "llama-8b-chat"
    wait_for("a settled plan", lambda: plan_of(cluster, name))
    dep_before = deployment(cluster, f"{name}-aggregated")
    decisions_before = infd(cluster, name)["status"]["decisions"]
    events_before = len(events_for(cluster, name))
    operator()  # restart
    time.sleep(8)  # resume handler plus two timer periods
    dep_after = deployment(cluster, f"{name}-aggregated")
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert dep_after["spec"]["replicas"] == dep_before["spec"]["replicas"]
    assert infd(cluster, name)["status"]["decisions"] == decisions_before
    assert len(events_for(cluster, name)) == events_before


def test_replicas_edited_by_hand_are_restored(cluster: Any, operator: Any) -> None:
    name = "llama-8b-chat"
    planned = wait_for("a plan", lambda: plan_of(cluster, name))["decodeReplicas"]
    assert cluster.kubectl("scale", "deployment", f"{name}-aggregated", "-n", NS,
                           f"--replicas={planned + 2}").returncode == 0
    wait_for("the planned replicas back", lambda: deployment(cluster, f"{name}-aggregated")["spec"]["replicas"]
             == planned, timeout=30)
    assert any(e["reason"] == "ReplicasRestored" for e in events_for(cluster, name))


def test_cold_start_is_measured_from_the_pods(cluster: Any, operator: Any) -> None:
    """Pods that take 25 s from creation to Ready (kwok delays them, as a vLLM pod loading weights
    would be): the operator keeps that creation-to-Ready time per pool in status (issue 16)."""
    name = "llama-8b-chat"
    wait_for("a plan", lambda: plan_of(cluster, name))
    patch = {"spec": {"template": {"metadata": {"annotations": {"goodput.dev/kwok-ready-delay": "25s"}}}}}
    assert cluster.kubectl("patch", "deployment", f"{name}-aggregated", "-n", NS, "--type=merge",
                           "-p", json.dumps(patch)).returncode == 0

    def measured() -> list[float] | None:
        starts = ((infd(cluster, name).get("status") or {}).get("autoscaler") or {}).get("coldStarts") or {}
        seconds = [s for s in (starts.get("aggregated") or {}).get("seconds", []) if s >= 20]
        return seconds or None

    seconds = wait_for("a 25 s pod start in status.autoscaler.coldStarts", measured, timeout=120)
    assert all(24.0 <= s <= 45.0 for s in seconds), seconds


def test_delete_garbage_collects_owned_objects(cluster: Any, operator: Any) -> None:
    assert cluster.kubectl("delete", "infd", "llama-70b", "-n", NS, "--wait=true").returncode == 0
    owned = "goodput.dev/inference-deployment=llama-70b"
    for kind in ("deployments", "services", "pods"):
        wait_for(f"owned {kind} gone",
                 lambda kind=kind: not (kjson(cluster, "get", kind, "-n", NS, "-l", owned) or {}).get("items"),
                 timeout=90)

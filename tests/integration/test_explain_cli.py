"""`goodput explain` against a real apiserver: a status written through the status subresource the
way the operator writes it (the pure `reconcile`, then kube/actions.py), Events posted the same way,
and the command run as a subprocess with KUBECONFIG pointing at the test cluster."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polling
import pytest
import yaml

from goodput.devcluster.cluster import free_ports
from goodput.kube.actions import Kube
from goodput.render.reconcile import Event, reconcile

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "aggregated-small.yaml"
NAME = "llama-8b-chat"


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    applied = cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    assert applied.returncode == 0, applied.stderr
    polling.wait_for("the CRD to be established", lambda: cluster.kubectl(
        "wait", "--for=condition=Established", "crd/inferencedeployments.goodput.dev", "--timeout=5s").returncode == 0)


def explain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "goodput.cli", "explain", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def create(cluster: Any, namespace: str) -> dict[str, Any]:
    created = cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    assert created.returncode == 0, created.stderr
    got = cluster.kubectl("get", "infd", NAME, "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    obj: dict[str, Any] = json.loads(got.stdout)
    return obj


def test_explain_names_the_plan_and_the_decision(cluster: Any, crd: None, namespace: str) -> None:
    obj = create(cluster, namespace)
    # Before the operator has written anything: said so, exit 0.
    fresh = explain(cluster.env, NAME, "-n", namespace)
    assert fresh.returncode == 0, fresh.stderr
    assert "NOT RECONCILED" in fresh.stdout and "is it running?" in fresh.stdout

    # What the operator does: the pure reconcile, then its status patch and its Events.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    outcome = reconcile(obj, {}, now)
    kube = Kube(cluster.api_client())
    kube.patch_status(namespace, NAME, {"status": outcome.status})
    for event in outcome.events:
        kube.post_event(obj, event, now)
    # An Event left by an earlier object of the same name (another uid) is not this one's.
    stale = dict(obj, metadata=dict(obj["metadata"], uid="00000000-0000-0000-0000-000000000000"))
    kube.post_event(stale, Event("Normal", "StaleObject", "from a deleted predecessor"), now)

    result = explain(cluster.env, NAME, "-n", namespace)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    plan = outcome.status["plan"]
    decision = outcome.status["decisions"][0]
    assert out.splitlines()[0].startswith(f"{namespace}/{NAME}: UNHEALTHY")
    assert f"Plan: aggregated on h100-sxm-80gb, {plan['gpus']} GPUs, ${plan['costPerHour']:.2f}/h" in out
    assert f"0/{plan['aggregatedReplicas']}" in out  # no Deployment exists: none ready
    assert "ready/desired*" not in out  # the Deployments were read, not guessed from the condition
    assert "Initial" in out and decision["message"] in out
    assert "Events (newest 1):" in out and "StaleObject" not in out
    assert "sized for 20.00 req/s from spec.workload hints" in out

    as_json = explain(cluster.env, NAME, "-n", namespace, "--json", "--events", "5")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["plan"]["pools"][0]["desiredReplicas"] == plan["aggregatedReplicas"]
    assert data["plan"]["pools"][0]["readyReplicas"] == 0
    assert [e["reason"] for e in data["events"]] == ["Initial"]
    assert data["decisions"][0]["reason"] == "Initial" and data["healthy"] is False


def test_missing_resource_exits_1(cluster: Any, crd: None, namespace: str) -> None:
    result = explain(cluster.env, "no-such-deployment", "-n", namespace)
    assert result.returncode == 1
    assert f"InferenceDeployment {namespace}/no-such-deployment not found" in result.stderr
    assert result.stdout == ""


def test_unreachable_apiserver_exits_2(cluster: Any, tmp_path: Path) -> None:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    (port,) = free_ports(1)  # nothing listens there
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = explain(dict(cluster.env, KUBECONFIG=str(kubeconfig)), NAME)
    assert result.returncode == 2
    assert f"cannot reach the Kubernetes API server at https://127.0.0.1:{port}" in result.stderr

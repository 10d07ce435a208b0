"""The real KEDA and the real HPA scale the emulated vLLM fleet: the vLLM production-stack recipe.

Real parts: the control plane (``keda_cluster``: its own LocalCluster with kwok GPU nodes and the
HPA controller syncing every 5 s), KEDA v2.21.0's operator and metrics adapter (built from its Go
module, external.metrics.k8s.io served through the apiserver's aggregation layer), a real
Prometheus scraping every 1 s. The vLLM pods are emulated (``goodput.emulator.process``, one
`EngineReplica` per Running pod, vLLM's exact ``/metrics``); the goodput operator does NOT run:
the InferenceDeployment is there only for the emulator to read the model, and the Deployment is
the one the operator would render first (``goodput render``), applied once and then owned by
KEDA's HPA.

The ScaledObject is the production-stack tutorial's: KEDA's Prometheus scaler on
``sum(vllm:num_requests_waiting{...})`` with threshold 5 (metric type AverageValue, KEDA's
default), min 1 replica. Two settings are the test's, for time: the HPA's scale-down
stabilization window is 20 s (``advanced.horizontalPodAutoscalerConfig.behavior``; the
Kubernetes default is 300 s) and the HPA controller syncs every 5 s (default 15 s).

Scenario (one timeline, every sample logged): base load 1 req/s (2000 prompt + 1000 output
tokens, far below one replica's capacity: nothing waits) -> KEDA makes the HPA, whose status
shows the external metric at 0 and 1 replica; a 12x step -> the running batch fills up
(``--max-num-seqs 160``), requests wait, the HPA scales the Deployment above 1 replica; the load
back to 0.25 req/s -> the queue drains and, after the stabilization window, the HPA returns
the Deployment to 1 replica.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL
from goodput.cli.render import render_objects
from goodput.demo.stack import (
    EmulatorHandle,
    Processes,
    apply_manifest,
    create_namespace,
    emulator_argv,
    install_crd,
    log_tail,
    loop_env,
)
from goodput.devcluster.cluster import LocalCluster
from goodput.devcluster.keda import LocalKeda, hpa_name, production_stack_scaled_object
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, free_port
from goodput.metrics.prometheus import NAMESPACE_LABEL

pytestmark = pytest.mark.integration

NAME = "llama-keda"
DEPLOYMENT = f"{NAME}-aggregated"
SCALED_OBJECT = "vllm-scaledobject"
HPA = hpa_name(SCALED_OBJECT)
BASE_RPS = 1.0
STEP = 12.0  # x BASE_RPS: 12 req/s, about three replicas' worth
LOW = 0.25
PROMPT_TOKENS, OUTPUT_TOKENS = 2000, 1000
COLD_START_S = 10
THRESHOLD = 5
MAX_REPLICAS = 6
SCALE_DOWN_WINDOW_S = 20
SAMPLE_S = 2.0


def spec() -> dict[str, Any]:
    return {
        "model": {"id": "llama-3.1-8b"},
        "precision": {"weights": "bf16"},
        "accelerator": {"gpu": "h100-sxm-80gb"},
        "slo": {"ttftMs": 1000, "itlMs": 40},
        "mode": "aggregated",
        "workload": {"requestRate": BASE_RPS, "inputTokens": {"mean": PROMPT_TOKENS},
                     "outputTokens": {"mean": OUTPUT_TOKENS}},
        "scaling": {"aggregated": {"minReplicas": 1, "maxReplicas": MAX_REPLICAS},
                    "coldStartSeconds": COLD_START_S},
        # nobody runs the goodput operator here; if one did, it would plan and change nothing
        "dryRun": True,
    }


def waiting_query(ns: str) -> str:
    return f'sum(vllm:num_requests_waiting{{{NAMESPACE_LABEL}="{ns}",{PROM_DEPLOYMENT_LABEL}="{NAME}"}})'


def scaled_object(ns: str, prometheus_url: str) -> dict[str, Any]:
    """The production-stack tutorial's ScaledObject, plus a 20 s scale-down window (see the docstring)."""
    return production_stack_scaled_object(ns, SCALED_OBJECT, DEPLOYMENT, prometheus_url, waiting_query(ns),
                                          threshold=THRESHOLD, max_replicas=MAX_REPLICAS,
                                          scale_down_window_s=SCALE_DOWN_WINDOW_S)


@dataclass
class Fleet:
    cluster: LocalCluster
    keda: LocalKeda
    ns: str
    prom: LocalPrometheus
    emulator: EmulatorHandle
    work: Path
    t0: float = field(default_factory=time.time)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def get(self, path: str) -> Any:
        try:
            return self.cluster.api("GET", path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def hpa(self) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.get(
            f"/apis/autoscaling/v2/namespaces/{self.ns}/horizontalpodautoscalers/{HPA}")
        return obj

    def replicas(self) -> int:
        dep = self.get(f"/apis/apps/v1/namespaces/{self.ns}/deployments/{DEPLOYMENT}")
        return int(dep["spec"]["replicas"]) if dep else 0

    def waiting(self) -> float | None:
        try:
            result = self.prom.query(waiting_query(self.ns), timeout=3)
        except Exception:
            return None
        return float(result[0]["value"][1]) if result else None

    def sample(self) -> dict[str, Any]:
        assert self.emulator.proc.poll() is None, f"the emulator exited:\n{log_tail(self.emulator.log_path)}"
        hpa = self.hpa() or {}
        status = hpa.get("status") or {}
        metric: dict[str, Any] = next((m["external"]["current"] for m in status.get("currentMetrics") or []
                                       if m.get("type") == "External"), {})
        try:
            emu = self.emulator.state()
        except OSError:
            emu = {}
        row = {
            "t": round(time.time() - self.t0, 1),
            "rate": emu.get("rate"),
            "replicas": self.replicas(),
            "hpaDesired": status.get("desiredReplicas"),
            "hpaMetric": metric.get("averageValue") or metric.get("value"),
            "promWaiting": self.waiting(),
            "serving": sum(1 for r in emu.get("replicas", []) if r.get("serving")),
            "running": sum(int(r.get("running", 0)) for r in emu.get("replicas", [])),
        }
        self.timeline.append(row)
        print(f"[real-keda +{row['t']:6.1f} s] rate {row['rate']} req/s, replicas {row['replicas']} "
              f"(HPA desired {row['hpaDesired']}, metric {row['hpaMetric']}), waiting {row['promWaiting']}, "
              f"running {row['running']} on {row['serving']} serving", file=sys.stderr, flush=True)
        return row

    def wait(self, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            row = self.sample()
            if check(row):
                return row
            if time.monotonic() > deadline:
                return None
            time.sleep(SAMPLE_S)


@pytest.fixture(scope="module")
def fleet(keda_cluster: tuple[LocalCluster, LocalKeda], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"the real-KEDA test needs Prometheus at {DEFAULT_BINARY} (apt-get install prometheus)",
                    pytrace=False)
    cluster, keda = keda_cluster
    work = tmp_path_factory.mktemp("real-keda")
    saved = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    for key in saved:
        os.environ[key] = ",".join([h for h in (saved[key] or "").split(",") if h] + ["127.0.0.1", "localhost"])
    ns = f"keda-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)
    prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1).start()
    procs = Processes(work, loop_env(cluster.env, window_s=20, long_window_s=60))
    try:
        infd = {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
                "metadata": {"name": NAME, "namespace": ns}, "spec": spec()}
        apply_manifest(cluster, infd)
        # the Deployment the operator would render first (with dryRun off), applied once
        objects, _ = render_objects({**infd, "spec": {**spec(), "dryRun": False}}, ns)
        dep = next(o for o in objects if o["kind"] == "Deployment")
        dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "keda-test"
        apply_manifest(cluster, dep)
        load = ["--rate-schedule", f"0:{BASE_RPS:g}", "--lengths", f"fixed:{PROMPT_TOKENS},{OUTPUT_TOKENS}"]
        argv = emulator_argv(cluster.kubeconfig, ns, NAME, targets_file=prom.targets_path(),
                             control_port=free_port(), cold_start_s=COLD_START_S, load=load, drain_s=60, seed=3)
        emulator = EmulatorHandle.start(procs, argv, NAME)
        emulator.wait_ready(timeout=30)
        yield Fleet(cluster, keda, ns, prom, emulator, work)
    finally:
        codes = procs.stop_all()
        prom.stop()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path, 15)}")
        sys.stderr.write(keda.logs(15) + "\n")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_scaled_object_scales_the_fleet_through_keda_and_the_hpa(fleet: Fleet) -> None:
    cluster, ns = fleet.cluster, fleet.ns
    started = time.monotonic()
    apply_manifest(cluster, scaled_object(ns, fleet.prom.url))
    fleet.t0 = time.time()

    # 1. KEDA takes the ScaledObject (Ready) and makes the HPA on its external metric
    def ready() -> bool:
        so = fleet.get(f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{SCALED_OBJECT}") or {}
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (so.get("status") or {}).get("conditions") or [])

    deadline = time.monotonic() + 60
    while not (ready() and fleet.hpa()):
        assert time.monotonic() < deadline, (
            f"KEDA made no HPA for the ScaledObject within 60 s:\n"
            f"{cluster.kubectl('get', 'scaledobject', '-n', ns, '-o', 'yaml').stdout[-3000:]}\n{fleet.keda.logs()}")
        time.sleep(1)
    hpa = fleet.hpa() or {}
    metrics = hpa["spec"]["metrics"]
    assert len(metrics) == 1 and metrics[0]["type"] == "External", metrics
    target = metrics[0]["external"]["target"]
    assert target["type"] == "AverageValue" and float(target["averageValue"]) == THRESHOLD, target
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == MAX_REPLICAS
    made_s = time.time() - fleet.t0

    # 2. at base load the HPA reads the metric through the adapter (AbleToScale, a current value)
    # and keeps one replica
    row = fleet.wait(lambda r: r["hpaMetric"] is not None and r["serving"] >= 1, timeout=60)
    conditions = {c["type"]: c for c in ((fleet.hpa() or {}).get("status") or {}).get("conditions") or []}
    assert row is not None, (f"the HPA never showed the external metric: {conditions}\n"
                             f"{cluster.kubectl('describe', 'hpa', HPA, '-n', ns).stdout[-3000:]}\n{fleet.keda.logs()}")
    assert conditions.get("ScalingActive", {}).get("status") == "True", conditions
    for _ in range(5):
        assert fleet.sample()["replicas"] == 1, "scaled up at base load"
        time.sleep(SAMPLE_S)

    # 3. a 12x step: requests wait, the HPA scales the Deployment out
    fleet.emulator.set_rate(STEP)
    step_at = time.time() - fleet.t0
    up = fleet.wait(lambda r: r["replicas"] > 1, timeout=180)
    assert up is not None, f"no scale-up within 180 s of the step; timeline: {json.dumps(fleet.timeline[-10:])}"
    up_s = up["t"] - step_at
    peak = fleet.wait(lambda r: r["replicas"] >= 3 or r["t"] - up["t"] > 60, timeout=90) or up

    # 4. the load drops: the queue drains, the HPA returns to one replica after its window
    fleet.emulator.set_rate(LOW / BASE_RPS)
    drop_at = time.time() - fleet.t0
    down = fleet.wait(lambda r: r["replicas"] == 1, timeout=240)
    assert down is not None, f"no scale-down to 1 within 240 s; timeline: {json.dumps(fleet.timeline[-10:])}"
    peak_replicas = max(r["replicas"] for r in fleet.timeline)

    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={HPA}",
                             "-o", "custom-columns=AGE:.lastTimestamp,REASON:.reason,MESSAGE:.message").stdout
    summary = (f"HPA made {made_s:.1f} s after the ScaledObject; step at +{step_at:.0f} s, first scale-up "
               f"{up_s:.1f} s later (to {up['replicas']}), {peak['replicas']} at +{peak['t']:.0f} s, peak "
               f"{peak_replicas}; load dropped at +{drop_at:.0f} s, back to 1 replica {down['t'] - drop_at:.1f} s "
               f"later; whole test {time.monotonic() - started:.0f} s")
    print(f"[real-keda] {summary}\n[real-keda] HPA events:\n{events}", file=sys.stderr, flush=True)
    (fleet.work / "timeline.json").write_text(json.dumps({"summary": summary, "timeline": fleet.timeline}, indent=1))
    assert peak_replicas <= MAX_REPLICAS
    assert "SuccessfulRescale" in events, events

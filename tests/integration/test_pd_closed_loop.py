"""The disaggregated closed loop through the real ``vllm-router`` (issue 14): the operator deploys
the prefill and decode pools and the router, the router finds the pods through Kubernetes (its
rendered command line, run as a process of this machine with the cluster's kubeconfig), clients
send HTTP requests to the router, the emulated replicas (``--listen pod-ip``) serve vLLM's OpenAI
API and the NixlConnector exchange, Prometheus scrapes them, and the operator scales from what it
reads.

1. steady load (4 req/s of 4000 + 50 tokens): >= 99% of the requests served, and within the SLOs'
   end-to-end budget, every one prefilled on a prefill pod and decoded on a decode pod;
2. a step to 12 req/s, more than one prefill replica serves (8.7 req/s each, per the capacity
   model): the operator adds prefill replicas with its reason, and the router sends prefills to
   the new pods it discovers.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from goodput.demo.stack import (
    ROUTER_BINARY,
    EmulatorHandle,
    Processes,
    apply_manifest,
    create_namespace,
    emulator_argv,
    install_crd,
    log_tail,
    loop_env,
    no_proxy_for_loopback,
    operator_argv,
    router_argv,
    wait_deployment,
)
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, free_port

pytestmark = pytest.mark.integration

NAME = "pd-loop"
TIMER_S, WINDOW_S, LONG_WINDOW_S = 5.0, 20.0, 60.0
SLO_TTFT_MS, SLO_ITL_MS = 2000, 60
PROMPT_WORDS, OUTPUT_TOKENS = 4000, 50
QUIET_S, STEADY_S, STEADY_RPS = 15.0, 40.0, 4.0
STEP_RPS, STEP_WITHIN_S = 12.0, 90.0


def spec() -> dict[str, Any]:
    return {"model": {"id": "llama-3.1-8b", "servedModelName": "llama"}, "precision": {"weights": "bf16"},
            "accelerator": {"gpu": "h100-sxm-80gb"}, "slo": {"ttftMs": SLO_TTFT_MS, "itlMs": SLO_ITL_MS},
            "mode": "disaggregated",
            "workload": {"requestRate": STEADY_RPS, "inputTokens": {"mean": PROMPT_WORDS},
                         "outputTokens": {"mean": OUTPUT_TOKENS}},
            "scaling": {"prefill": {"minReplicas": 1, "maxReplicas": 4}, "decode": {"minReplicas": 1, "maxReplicas": 2},
                        "coldStartSeconds": 5, "scaleDownStabilizationSeconds": 600}}


def _say(text: str) -> None:
    sys.stderr.write(f"[pd-loop] {text}\n")


def _within(load: dict[str, Any], since: dict[str, Any]) -> tuple[int, int, int, int]:
    """(answered, served, served within the SLOs' end-to-end budget, failed) between the snapshot
    ``since`` and ``load``: a request still in flight at ``load`` is neither served nor failed."""
    budget_s = (SLO_TTFT_MS + SLO_ITL_MS * (OUTPUT_TOKENS - 1)) / 1000
    e2e = load["e2eS"][len(since["e2eS"]):]
    served, failed = load["served"] - since["served"], load["failed"] - since["failed"]
    return served + failed, served, sum(x <= budget_s for x in e2e), failed


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    if not ROUTER_BINARY.exists():
        pytest.fail(f"vllm-router is not installed beside {sys.executable} (the dev extras install it)", pytrace=False)
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"this test needs Prometheus at {DEFAULT_BINARY}", pytrace=False)
    restore_proxy = no_proxy_for_loopback()
    yield tmp_path
    restore_proxy()


def test_the_operator_scales_a_disaggregated_fleet_behind_the_real_router(cluster: Any, work: Path) -> None:
    ns = f"pdl-{uuid.uuid4().hex[:6]}"
    create_namespace(cluster, ns)
    install_crd(cluster)
    prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1).start()
    procs = Processes(work, loop_env(cluster.env, window_s=WINDOW_S, long_window_s=LONG_WINDOW_S))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        apply_manifest(cluster, {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
                                 "metadata": {"name": NAME, "namespace": ns}, "spec": spec()})
        operator = procs.spawn(operator_argv(ns, prom.url, timer_s=TIMER_S), "operator.log")
        router_dep = wait_deployment(cluster, ns, f"{NAME}-router", timeout=60, alive=[operator])
        load = ["--rate-schedule", f"0:0,{QUIET_S:g}:{STEADY_RPS:g}",
                "--lengths", f"fixed:{PROMPT_WORDS},{OUTPUT_TOKENS}"]
        argv = emulator_argv(cluster.kubeconfig, ns, NAME, targets_file=prom.targets_path("vllm"),
                             control_port=free_port(), cold_start_s=3, load=load,
                             extra=["--listen", "pod-ip", "--poll-s", "0.5", "--send-to", url])
        emu = EmulatorHandle.start(procs, argv, NAME)
        emu.wait_ready(timeout=60)
        deadline = time.monotonic() + 40
        while len([r for r in emu.state()["replicas"] if r["serving"]]) < 2:
            assert time.monotonic() < deadline, f"no prefill and decode replica serving: {emu.state()['replicas']}"
            time.sleep(0.5)
        procs.spawn(router_argv(router_dep, ROUTER_BINARY, port, free_port()), "router.log")

        # 1. steady load through the router
        while emu.state()["time"] < QUIET_S:
            time.sleep(0.5)
        start = emu.state()["apiLoad"]
        while emu.state()["time"] < QUIET_S + STEADY_S:
            time.sleep(1)
        steady = emu.state()["apiLoad"]
        answered, served, within, failed = _within(steady, start)
        e2e = steady["e2eS"][len(start["e2eS"]):]
        _say(f"steady {STEADY_RPS:g} req/s through vllm-router: {answered} answered, {served} served, {failed} "
             f"failed, {within} within the "
             f"SLOs' end-to-end budget; e2e p50/p99 {np.percentile(e2e, 50):.2f}/{np.percentile(e2e, 99):.2f} s; "
             f"statuses {steady['statuses']}")

        # 2. a step the prefill pool cannot hold alone
        before = {r["pod"] for r in emu.state()["replicas"] if r["role"] == "prefill"}
        emu.set_rate(STEP_RPS / STEADY_RPS)
        t_step = time.monotonic()
        new_serving: list[dict[str, Any]] = []
        while time.monotonic() - t_step < STEP_WITHIN_S:
            reps = emu.state()["replicas"]
            new_serving = [r for r in reps if r["role"] == "prefill" and r["pod"] not in before
                           and (r["nixl"] or {}).get("prefills_for_remote_decode", 0) > 0]
            if new_serving:
                break
            time.sleep(1)
        after = emu.state()
        emu.set_rate(0)
        obj = cluster.kubectl("get", "infd", NAME, "-n", ns, "-o", "json")
    finally:
        codes = procs.stop_all()
        prom.stop()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)}; tail)\n{log_tail(path)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")

    status = (json.loads(obj.stdout).get("status") or {}) if obj.returncode == 0 else {}
    ups = [d for d in status.get("decisions", []) if d.get("pool") == "prefill"
           and (d.get("toReplicas") or 0) > (d.get("fromReplicas") or 0)]
    for d in status.get("decisions", []):
        _say(f"decision {d.get('time')}: {d.get('reason')}: {str(d.get('message'))[:220]}")
    prefill_pods = [(r["pod"], r["nixl"]) for r in after["replicas"] if r["role"] == "prefill"]
    _say(f"after the step to {STEP_RPS:g} req/s: prefill pods {prefill_pods}")
    assert answered >= 0.7 * STEADY_RPS * STEADY_S, (answered, steady)
    assert served >= 0.99 * answered and within >= 0.99 * answered, steady["errors"][:5]
    assert ups, f"no prefill scale-up within {STEP_WITHIN_S:.0f} s of the step: {status.get('decisions')}"
    assert new_serving, f"no new prefill pod got a prefill through the router: {after['replicas']}"

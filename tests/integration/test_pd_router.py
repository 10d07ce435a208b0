"""The P/D path through the real ``vllm-router`` (PyPI 0.1.17, ``--vllm-pd-disaggregation``) in front of
emulated prefill and decode replicas: every request is prefilled on a prefill replica (its KV kept),
its KV read by a decode replica through the NixlConnector ``kv_transfer_params`` the router relays,
and decoded there.

The replicas are the emulator's own (``goodput.emulator.process.Emulator``: its engines, its HTTP
ports, its loop); only the cluster side is given directly (four Running pods), so that this test
needs no control plane. What drives them is the real router binary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.demo.stack import ROUTER_BINARY
from goodput.emulator.common import ReplicaConfig
from goodput.emulator.process import (
    Emulator,
    FixedLengths,
    LoadGenerator,
    PodInfo,
    RateSchedule,
    Snapshot,
    _PoissonEvents,
)
from goodput.model.replica import ReplicaModel
from goodput.planner.recommend import resolve

N_REQUESTS = 12
MAX_TOKENS = 24
# the steady-load run through the rendered router
SLO_TTFT_MS, SLO_ITL_MS = 2000, 60
QUIET_S, STEADY_S, STEADY_RPS = 15.0, 30.0, 3.0
PROMPT_WORDS, OUTPUT_TOKENS = 300, 30


class _Pods:
    """The cluster side the emulator's watcher would read: fixed Running pods."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.handed = False

    def latest(self) -> Snapshot | None:
        if self.handed:
            return None
        self.handed = True
        return self.snapshot

    def current(self) -> Snapshot:
        return self.snapshot


def _snapshot() -> Snapshot:
    spec = InferenceDeploymentSpec.model_validate({
        "model": {"id": "llama-3.1-8b", "servedModelName": "llama"}, "precision": {"weights": "bf16"},
        "accelerator": {"gpu": "h100-sxm-80gb"}, "slo": {"ttftMs": 2000, "itlMs": 60}, "mode": "disaggregated",
        "workload": {"requestRate": 4, "inputTokens": {"mean": 500}, "outputTokens": {"mean": 50}}})
    resolved = resolve(spec, "pd")
    model = ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, 1, "auto")
    pods = {}
    for role in ("prefill", "decode"):
        for i in range(2):
            config = ReplicaConfig(role, 1, 256, 8192, 8192, "auto", "llama")
            uid = f"uid-{role}-{i}"
            pods[uid] = PodInfo(uid, f"pd-{role}-{i}", role, time.time() - 60, False, config, model)
    return Snapshot(pods, spec, resolved)


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        namespace="default", name="pd", rate_multiplier=1.0, cold_start_s=0.0, seed=1, drain_s=0.0,
        queue_limit=100, legacy_names=False, listen="loopback", targets_file=str(tmp_path / "targets.json"),
        tick_s=0.05,
        duration_s=None, control_port=0, load_description="no load of its own: requests come through the router")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any], timeout_s: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    stop = threading.Event()
    load = LoadGenerator(_PoissonEvents(np.random.default_rng(1), FixedLengths(10, 10)), RateSchedule.parse("0:0"))
    emu = Emulator(_args(tmp_path), _Pods(_snapshot()), load, stop)  # type: ignore[arg-type]
    thread = threading.Thread(target=emu.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with emu.lock:
            if sum(r.serving for r in emu.replicas.values()) == 4:
                break
        time.sleep(0.05)
    yield emu
    stop.set()
    thread.join(timeout=5)


@pytest.fixture
def router(emulator: Emulator, tmp_path: Path) -> Iterator[str]:
    assert ROUTER_BINARY.exists(), f"vllm-router is not installed beside {sys.executable}: pip install -e '.[dev]'"
    ports = {r.role: [] for r in emulator.replicas.values()}  # type: dict[str, list[int]]
    for r in sorted(emulator.replicas.values(), key=lambda r: r.pod.name):
        assert r.port is not None
        ports[r.role].append(r.port)
    port, metrics_port = _free_port(), _free_port()
    cmd = [str(ROUTER_BINARY), "--vllm-pd-disaggregation", "--host", "127.0.0.1", "--port", str(port),
           "--policy", "round_robin", "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
           "--worker-startup-timeout-secs", "60"]
    for p in ports["prefill"]:
        cmd += ["--prefill", f"http://127.0.0.1:{p}"]
    for p in ports["decode"]:
        cmd += ["--decode", f"http://127.0.0.1:{p}"]
    log = (tmp_path / "router.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None, f"vllm-router exited: {(tmp_path / 'router.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "vllm-router did not become healthy in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.copy(tmp_path / "router.log", tmp_path / "router.log.kept")


def _nixl(emulator: Emulator, role: str) -> list[dict[str, int]]:
    with emulator.lock:
        return [r.api.kv.snapshot() for r in sorted(emulator.replicas.values(), key=lambda r: r.pod.name)
                if r.role == role and r.api is not None]


def test_requests_through_the_real_router_prefill_on_prefill_and_decode_on_decode(
        emulator: Emulator, router: str) -> None:
    prompt = " ".join(f"word{i}" for i in range(300))
    for i in range(N_REQUESTS):
        if i % 3 == 2:  # chat, streamed
            body: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": prompt}],
                                    "max_tokens": MAX_TOKENS, "stream": True}
            status, raw = _post(f"{router}/v1/chat/completions", body)
            assert status == 200, raw[:500]
            events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]" and len(events) == MAX_TOKENS + 1
        else:
            status, raw = _post(f"{router}/v1/completions", {"model": "llama", "prompt": prompt,
                                                              "max_tokens": MAX_TOKENS})
            assert status == 200, raw[:500]
            answer = json.loads(raw)
            # the decode replica generated them all: the prefill stage's single token is not the answer
            assert answer["usage"] == {"prompt_tokens": 300, "completion_tokens": MAX_TOKENS,
                                       "total_tokens": 300 + MAX_TOKENS}
    prefill, decode = _nixl(emulator, "prefill"), _nixl(emulator, "decode")
    # every request was prefilled on a prefill replica for a remote decode, both replicas in turn
    assert sum(p["prefills_for_remote_decode"] for p in prefill) == N_REQUESTS
    assert all(p["prefills_for_remote_decode"] > 0 for p in prefill)
    # ... and its KV read from there by the decode replica that decoded it
    assert sum(p["kv_reads_served"] for p in prefill) == N_REQUESTS
    assert sum(p["held_blocks"] for p in prefill) == 0
    assert sum(d["remote_prefill_decodes"] for d in decode) == N_REQUESTS
    assert all(d["remote_prefill_decodes"] > 0 for d in decode)
    assert all(x["local_requests"] == 0 and x["kv_read_failures"] == 0 for x in prefill + decode)
    with emulator.lock:
        state = emulator.state()
    assert state["apiRequests"] == 2 * N_REQUESTS
    assert state["handoffs"] == N_REQUESTS and state["completed"] == N_REQUESTS
    # the engines saw it as vLLM's /metrics shows it: the prompts computed on prefill, one token each
    # there, and every answer's tokens generated on decode
    prompt_tokens = (N_REQUESTS - N_REQUESTS // 3) * 300 + (N_REQUESTS // 3) * (300 + 4)
    assert _counter(emulator, "prefill", "vllm:prompt_tokens") == prompt_tokens
    assert _counter(emulator, "prefill", "vllm:generation_tokens") == N_REQUESTS
    assert _counter(emulator, "decode", "vllm:generation_tokens") == N_REQUESTS * MAX_TOKENS


def _counter(emulator: Emulator, role: str, name: str) -> float:
    """A counter of vLLM's exposition, summed over the role's replicas."""
    with emulator.lock:
        texts = [r.engine.metrics_text("llama") for r in emulator.replicas.values() if r.role == role]
    return sum(sample.value for text in texts for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == f"{name}_total")

def test_a_decode_whose_kv_cannot_be_read_is_refused(emulator: Emulator) -> None:
    """The decode side really reads the blocks: unknown ones (a restarted prefill pod) give 503."""
    with emulator.lock:
        pre = next(r for r in emulator.replicas.values() if r.role == "prefill")
        dec = next(r for r in emulator.replicas.values() if r.role == "decode")
    params = {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": "gone-engine",
              "remote_block_ids": [1, 2], "remote_host": "127.0.0.1", "remote_port": pre.port, "tp_size": 1}
    status, raw = _post(f"http://127.0.0.1:{dec.port}/v1/completions",
                        {"model": "llama", "prompt": "a b c", "max_tokens": 4, "kv_transfer_params": params})
    assert status == 503, raw
    assert _nixl(emulator, "decode")[0]["kv_read_failures"] + _nixl(emulator, "decode")[1]["kv_read_failures"] == 1


# ------------------------------------------------------------------------------------------
# what the operator renders, in a real control plane: the router finds the pods through Kubernetes
# ------------------------------------------------------------------------------------------
def test_steady_load_through_the_rendered_router_that_finds_the_pods_through_kubernetes(
        cluster: Any, tmp_path: Path) -> None:
    from goodput.cli.render import render_objects
    from goodput.demo.stack import (
        EmulatorHandle,
        Processes,
        apply_manifest,
        create_namespace,
        emulator_argv,
        install_crd,
        log_tail,
        router_argv,
        wait_until_router_serves,
    )
    from goodput.devcluster.prometheus import free_port

    ns, name = f"pd-{uuid.uuid4().hex[:6]}", "pd"
    create_namespace(cluster, ns)
    install_crd(cluster)
    infd = {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"id": "llama-3.1-8b", "servedModelName": "llama"}, "precision": {"weights": "bf16"},
                     "accelerator": {"gpu": "h100-sxm-80gb"},
                     "slo": {"ttftMs": SLO_TTFT_MS, "itlMs": SLO_ITL_MS}, "mode": "disaggregated",
                     "scaling": {"prefill": {"minReplicas": 2}, "decode": {"minReplicas": 2}},
                     "workload": {"requestRate": 2, "inputTokens": {"mean": 500}, "outputTokens": {"mean": 50}}}}
    apply_manifest(cluster, infd)
    objects, _ = render_objects(infd)  # the operator's own reconcile step
    for obj in objects:
        apply_manifest(cluster, obj)
    router_dep = next(o for o in objects if o["kind"] == "Deployment" and "router" in o["metadata"]["name"])
    procs = Processes(tmp_path, cluster.env)  # KUBECONFIG for the router, no proxy
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        # steady Poisson load sent as HTTP requests to the router, after a quiet start in which the
        # replicas come up and the router discovers them
        argv = emulator_argv(cluster.kubeconfig, ns, name, targets_file=tmp_path / "targets.json",
                             control_port=free_port(), cold_start_s=0,
                             load=["--rate-schedule", f"0:0,{QUIET_S:g}:{STEADY_RPS:g}",
                                   "--lengths", f"fixed:{PROMPT_WORDS},{OUTPUT_TOKENS}"],
                             extra=["--listen", "pod-ip", "--poll-s", "0.5", "--send-to", url])
        emu = EmulatorHandle.start(procs, argv, name)
        emu.wait_ready(timeout=60)
        deadline = time.monotonic() + 30
        while True:
            reps = [r for r in emu.state()["replicas"] if r["serving"]]
            if len(reps) == 4 and all(r["host"] != "127.0.0.1" for r in reps):
                break
            assert time.monotonic() < deadline, f"emulated pods not serving on pod IPs: {emu.state()['replicas']}"
            time.sleep(0.5)
        # the router starts once the replicas serve (in a cluster, vLLM's readiness probe holds the pods
        # back until then; kwok's pods are Ready at once), and is used once it has found both pools
        procs.spawn(router_argv(router_dep, ROUTER_BINARY, port, free_port()), "router.log")
        wait_until_router_serves(url, "llama", QUIET_S - 1)
        probes = 1  # the request that first came back 200 (the ones refused before it reached no pod)
        while emu.state()["time"] < QUIET_S + STEADY_S:
            time.sleep(1)
        emu.set_rate(0)
        deadline = time.monotonic() + 30
        while (load := emu.state()["apiLoad"])["served"] + load["failed"] < load["sent"]:
            assert time.monotonic() < deadline, f"requests still in flight: {load}"
            time.sleep(0.5)
        reps = emu.state()["replicas"]
    finally:
        codes = procs.stop_all()
        for _, path in procs.started:
            sys.stderr.write(f"--- {path.name} (exit {codes.get(path.name)})\n{log_tail(path)}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
    sent, served = load["sent"], load["served"]
    budget_s = (SLO_TTFT_MS + SLO_ITL_MS * (OUTPUT_TOKENS - 1)) / 1000
    within = sum(e2e <= budget_s for e2e in load["e2eS"])
    sys.stderr.write(f"P/D through vllm-router: {sent} sent at {STEADY_RPS:g} req/s, {served} served "
                     f"({100 * served / max(sent, 1):.1f}%), {within} within the SLOs' end-to-end budget of "
                     f"{budget_s:.2f} s ({100 * within / max(sent, 1):.1f}%); statuses {load['statuses']}; "
                     f"e2e p50/p99 {np.percentile(load['e2eS'], 50):.3f}/{np.percentile(load['e2eS'], 99):.3f} s\n")
    assert sent >= 0.7 * STEADY_RPS * STEADY_S
    assert served >= 0.99 * sent and within >= 0.99 * sent, load["errors"]
    nixl = {r["pod"]: r["nixl"] for r in reps}
    prefill = [nixl[r["pod"]] for r in reps if r["role"] == "prefill"]
    decode = [nixl[r["pod"]] for r in reps if r["role"] == "decode"]
    # every served request: prefilled on a discovered prefill pod, its KV read once, decoded on a decode pod
    assert sum(p["prefills_for_remote_decode"] for p in prefill) == served + probes
    assert sum(p["kv_reads_served"] for p in prefill) == served + probes
    assert sum(d["remote_prefill_decodes"] for d in decode) == served + probes
    assert all(x["local_requests"] == 0 and x["kv_read_failures"] == 0 for x in prefill + decode)

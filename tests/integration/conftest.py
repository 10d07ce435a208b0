"""Fixtures for the integration tests: one real local control plane per test session.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) is built
from source with ``go`` on first use and cached (see ``goodput.devcluster.build``); after that
the session fixture starts it in a few seconds. Set ``GOODPUT_DEVCLUSTER_KEEP=1`` to keep the
work dir (certificates, kubeconfig, component logs) after the run.

These tests never skip: a machine without ``go`` (and without cached binaries) FAILS them, so a
broken CI setup cannot pass as an empty integration suite.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from goodput.devcluster.build import cache_dir, ensure_binaries, expected_binaries
from goodput.devcluster.cluster import LocalCluster

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration carries the ``integration`` marker."""
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _say(msg: str) -> None:
    print(f"[integration] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    missing = [p for p in expected_binaries().all() if not p.exists()]
    if missing:
        if shutil.which("go") is None:
            pytest.fail(
                "integration tests need the Go toolchain: `go` is not on PATH and the control-plane binaries "
                f"are not cached under {cache_dir()} (missing: {', '.join(p.name for p in missing)}). "
                "Install Go (see README) or set GOODPUT_CACHE to a cache with the binaries.",
                pytrace=False,
            )
        _say(f"building {', '.join(p.name for p in missing)} from source (first run only, ~15-25 min) ...")
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

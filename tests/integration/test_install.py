"""The install artifacts against the real tools: helm lint and template (schema rejections
included), manifests/install.yaml in sync with the chart, every render accepted by a real API
server (server-side dry run), the chart's RBAC granted for real and probed with impersonation, and
the operator run under its ServiceAccount's own token with the namespace-bound, peering RBAC.

Never skips: no helm (ensure_helm fetches and caches it) or no control plane fails these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import polling
import pytest
import yaml

from goodput.demo.stack import stop_process
from goodput.devcluster.cluster import LocalCluster, free_ports
from goodput.devcluster.helm import run_helm

pytestmark = pytest.mark.integration
wait_for = partial(polling.wait_for, timeout=60.0, interval=0.5)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "goodput-operator"
INSTALL = ROOT / "manifests" / "install.yaml"
CHART_CRDS = ("inferencedeployments.goodput.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
sys.path.insert(0, str(ROOT / "tools"))

import render_manifests  # noqa: E402

# `helm`: the session fixture of tests/conftest.py


def template(helm: Path, release: str, namespace: str, *sets: str) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return run_helm(*args, helm=helm).stdout


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs)


def kubectl_ok(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    out = cluster.kubectl(*args, input=input)
    assert out.returncode == 0, f"kubectl {' '.join(args)}:\n{out.stderr}"
    return out.stdout


def server_dry_run(cluster: LocalCluster, docs: list[dict[str, Any]]) -> None:
    out = kubectl_ok(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", input=dump(docs))
    assert out.count("(server dry run)") == len(docs), out


@pytest.fixture(scope="module")
def chart_crds(cluster: LocalCluster) -> None:
    """The chart's CRDs, applied for real (objects of those kinds can only be dry-run once they are
    established). The InferenceDeployment CRD is the same file other tests apply: identical content,
    same field manager, so no conflict."""
    kubectl_ok(cluster, "apply", "--server-side", "-f", str(CHART / "crds"))
    def established(crd: str) -> bool:
        return cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=5s").returncode == 0

    for crd in CHART_CRDS:
        wait_for(f"CRD {crd} established", partial(established, crd))


# --------------------------------------------------------------------------------------------
# helm itself


def test_helm_is_v3(helm: Path) -> None:
    assert run_helm("version", "--short", helm=helm).stdout.startswith("v3.")


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={a,b}",), ("replicaCount=3",),
                                  ("serviceMonitor.enabled=true", "grafanaDashboard.enabled=true"),
                                  ("prometheus.url=http://prometheus.monitoring:9090", "logLevel=DEBUG")])
def test_helm_lint_strict(helm: Path, sets: tuple[str, ...]) -> None:
    args = ["lint", str(CHART), "--strict"]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args, helm=helm, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize(("sets", "message"), [
    (("replicaCount=two",), "at '/replicaCount': got string, want integer"),
    (("bogus=1",), "additional properties 'bogus' not allowed"),
    (("watchNamespaces={team-*}",), "/watchNamespaces/0"),
    (("logLevel=TRACE",), "/logLevel"),
    (("securityContext.allowPrivilegeEscalation=true",), "/securityContext/allowPrivilegeEscalation"),
    (("podSecurityContext.runAsNonRoot=false",), "/podSecurityContext/runAsNonRoot"),
])
def test_helm_rejects_bad_values(helm: Path, sets: tuple[str, ...], message: str) -> None:
    for verb in ("lint", "template"):
        args = [verb, str(CHART)] if verb == "lint" else [verb, "x", str(CHART)]
        for s in sets:
            args += ["--set", s]
        out = run_helm(*args, helm=helm, check=False)
        assert out.returncode != 0, f"helm {verb} accepted {sets}"
        assert "values don't meet the specifications of the schema" in out.stdout + out.stderr
        assert message in out.stdout + out.stderr, out.stdout + out.stderr


def test_install_yaml_is_the_rendered_chart() -> None:
    assert INSTALL.read_text(encoding="utf-8") == render_manifests.render(), (
        "manifests/install.yaml is out of date: run `.venv/bin/python tools/render_manifests.py`")
    kinds = [d["kind"] for d in docs_of(INSTALL.read_text(encoding="utf-8"))]
    assert kinds[0] == "Namespace" and kinds.count("CustomResourceDefinition") == 3
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= set(kinds)


# --------------------------------------------------------------------------------------------
# a real API server accepts every render


def test_install_yaml_server_dry_run(cluster: LocalCluster, chart_crds: None) -> None:
    docs = docs_of(INSTALL.read_text(encoding="utf-8"))
    namespace = docs[0]
    assert namespace["kind"] == "Namespace"
    # Namespaced objects cannot be dry-run into a namespace that does not exist: create it for real.
    kubectl_ok(cluster, "apply", "--server-side", "-f", "-", input=dump([namespace]))
    try:
        server_dry_run(cluster, docs)
    finally:
        cluster.kubectl("delete", "namespace", namespace["metadata"]["name"], "--wait=false")


@pytest.mark.parametrize("variant", ["default", "namespaced", "peering", "namespaced-peering", "monitoring"])
def test_chart_server_dry_run(cluster: LocalCluster, chart_crds: None, helm: Path, namespace: str,
                              variant: str) -> None:
    sets = {"default": (), "namespaced": (f"watchNamespaces={{{namespace},default}}",),
            "peering": ("replicaCount=2",),
            "namespaced-peering": (f"watchNamespaces={{{namespace}}}", "replicaCount=2"),
            "monitoring": ("serviceMonitor.enabled=true", "prometheus.url=http://prometheus:9090")}[variant]
    docs = docs_of(template(helm, "goodput-operator", namespace, *sets))
    if variant == "monitoring":
        # The test cluster has no Prometheus Operator CRDs: the ServiceMonitor cannot be dry-run by
        # the server (nor by kubectl's client side, which needs its REST mapping). Its content is
        # checked in tests/unit/test_chart.py; everything else in this render goes to the server.
        monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
        assert len(monitors) == 1 and monitors[0]["apiVersion"] == "monitoring.coreos.com/v1"
        docs = [d for d in docs if d["kind"] != "ServiceMonitor"]
    if "peering" in variant:
        assert any(d["kind"] in ("ClusterKopfPeering", "KopfPeering") for d in docs)
    server_dry_run(cluster, docs)


def test_helm_install_and_uninstall(cluster: LocalCluster, chart_crds: None, helm: Path, namespace: str) -> None:
    """A real `helm install` (CRDs already there: helm leaves them) with peering, then uninstall."""
    release = f"inst-{namespace}"
    fullname = f"{release}-goodput-operator"
    kube = ["--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    out = run_helm("install", release, str(CHART), *kube, "--set", "replicaCount=2", helm=helm).stdout
    try:
        assert "STATUS: deployed" in out
        assert f"share the ClusterKopfPeering {fullname}; one is active at a time" in out  # NOTES.txt
        assert _kjson(cluster, "get", "clusterkopfpeering", fullname) is not None
        assert _kjson(cluster, "get", "clusterrole", fullname) is not None
        dep = _kjson(cluster, "get", "deployment", fullname, "-n", namespace)
        assert dep["spec"]["replicas"] == 2
    finally:
        run_helm("uninstall", release, *kube, "--wait", helm=helm)
    for kind in ("clusterkopfpeering", "clusterrole", "clusterrolebinding"):
        assert cluster.kubectl("get", kind, fullname).returncode != 0, f"{kind} left behind by helm uninstall"
    assert _kjson(cluster, "get", "crd", "inferencedeployments.goodput.dev") is not None, "CRDs are kept"


# --------------------------------------------------------------------------------------------
# the RBAC, granted for real


def can_i(cluster: LocalCluster, user: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", f"--as={user}", *args)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {out.stdout}{out.stderr}"
    return answer == "yes"


@pytest.fixture
def cluster_rbac(cluster: LocalCluster, helm: Path, namespace: str) -> Iterator[str]:
    """The default (cluster-wide) chart's ServiceAccount, ClusterRoles (the operator's, and the
    vllm-router's it binds to each router) and binding, applied for real under a release name of
    its own; yields the ServiceAccount's user name."""
    release = f"rbac-{namespace}"
    docs = [d for d in docs_of(template(helm, release, namespace))
            if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    kubectl_ok(cluster, "apply", "--server-side", "-f", "-", input=dump(docs))
    try:
        yield f"system:serviceaccount:{namespace}:{release}-goodput-operator"
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", f"{release}-goodput-operator", "--wait=false")
        cluster.kubectl("delete", "clusterrole", f"{release}-goodput-operator-vllm-router", "--wait=false")


def test_cluster_rbac_allows_what_the_operator_does_and_nothing_more(cluster: LocalCluster,
                                                                      cluster_rbac: str) -> None:
    sa = cluster_rbac
    wait_for("the ClusterRoleBinding to take effect", lambda: can_i(
        cluster, sa, "list", "inferencedeployments.goodput.dev", "--all-namespaces"))
    allowed = [
        ("list", "inferencedeployments.goodput.dev", "--all-namespaces"),
        ("watch", "inferencedeployments.goodput.dev", "--all-namespaces"),
        ("patch", "inferencedeployments.goodput.dev", "-n", "team-a"),
        ("patch", "inferencedeployments.goodput.dev", "--subresource=status", "-n", "team-a"),
        ("list", "deployments.apps", "-n", "team-a"),
        ("create", "deployments.apps", "-n", "team-a"),  # server-side apply of a new pool
        ("patch", "deployments.apps", "-n", "team-a"),
        ("delete", "deployments.apps", "-n", "team-a"),
        ("create", "services", "-n", "team-a"),
        ("patch", "services", "-n", "team-a"),
        ("delete", "services", "-n", "team-a"),
        ("create", "events", "-n", "team-a"),
        ("get", "pods", "-n", "team-a"),
        ("watch", "pods", "--all-namespaces"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    denied = [
        ("get", "secrets", "-n", "team-a"),
        ("list", "secrets", "--all-namespaces"),
        ("watch", "secrets", "--all-namespaces"),
        ("get", "configmaps", "-n", "team-a"),
        ("get", "deployments.apps", "-n", "team-a"),
        ("update", "deployments.apps", "-n", "team-a"),
        ("get", "services", "-n", "team-a"),
        ("create", "pods", "-n", "team-a"),
        ("create", "pods", "--subresource=exec", "-n", "team-a"),
        ("delete", "inferencedeployments.goodput.dev", "-n", "team-a"),
        ("create", "inferencedeployments.goodput.dev", "-n", "team-a"),
        ("update", "inferencedeployments.goodput.dev", "-n", "team-a"),
        ("list", "namespaces"),
        ("list", "nodes"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "clusterkopfpeerings.kopf.dev"),  # peering is off in the default render
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("escalate", "clusterroles.rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts", "-n", "team-a"),
        # --subresource: kubectl reads "serviceaccounts/token" as the ServiceAccount named token
        ("create", "serviceaccounts", "--subresource=token", "-n", "team-a"),
        ("*", "*", "--all-namespaces"),
    ]
    assert [a for a in allowed if not can_i(cluster, sa, *a)] == []
    assert [d for d in denied if can_i(cluster, sa, *d)] == []


# --------------------------------------------------------------------------------------------
# the operator itself, under the chart's namespace-bound peering RBAC and its own token


def _service_account_kubeconfig(cluster: LocalCluster, token: str, path: Path) -> Path:
    config = yaml.safe_load(cluster.kubeconfig.read_text(encoding="utf-8"))
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def _kjson(cluster: LocalCluster, *args: str) -> Any:
    out = cluster.kubectl(*args, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_operator_reconciles_with_only_the_charts_rbac(cluster: LocalCluster, chart_crds: None, helm: Path,
                                                       namespace: str, tmp_path: Path) -> None:
    ns = namespace
    docs = docs_of(template(helm, "goodput-operator", ns, f"watchNamespaces={{{ns}}}", "replicaCount=2"))
    real = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "KopfPeering")]
    # The second Role is the vllm-router's, which the operator binds to each router's ServiceAccount.
    assert [d["kind"] for d in real] == ["ServiceAccount", "Role", "Role", "RoleBinding", "KopfPeering"]
    kubectl_ok(cluster, "apply", "--server-side", "-f", "-", input=dump(real))
    sa = next(d for d in real if d["kind"] == "ServiceAccount")["metadata"]["name"]
    peering = next(d for d in real if d["kind"] == "KopfPeering")["metadata"]["name"]
    token = kubectl_ok(cluster, "create", "token", sa, "-n", ns, "--duration=20m").strip()
    kubeconfig = _service_account_kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")
    assert cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", ns).returncode != 0, \
        "the operator's token must not read secrets"

    # The chart's own arguments, with the ports moved to free ones and a short reconcile period.
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    health_port, metrics_port = free_ports(2)
    args = [a for a in container["args"] if not a.startswith(("--liveness=", "--metrics-port=", "--timer-seconds="))]
    args += [f"--liveness=http://127.0.0.1:{health_port}/healthz", f"--metrics-port={metrics_port}",
             "--timer-seconds=3"]
    assert f"--namespace={ns}" in args and "--no-cluster-scan" in args and f"--peering={peering}" in args
    env = dict(cluster.env, KUBECONFIG=str(kubeconfig), POD_ID=f"{sa}-test-pod")
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "goodput.cli", "operator", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        kubectl_ok(cluster, "apply", "-n", ns, "-f", str(ROOT / "manifests" / "examples" / "aggregated-small.yaml"))

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as rsp:
                    return bool(rsp.status == 200)
            except OSError:
                return False

        wait_for("kopf's health endpoint", healthy)
        plan = wait_for("a plan in status (status subresource patched)", lambda: (
            (_kjson(cluster, "get", "infd", "llama-8b-chat", "-n", ns) or {}).get("status") or {}).get("plan"))
        dep = wait_for("the vLLM Deployment (server-side apply as the ServiceAccount)", lambda: _kjson(
            cluster, "get", "deployment", "llama-8b-chat-aggregated", "-n", ns))
        assert dep["spec"]["replicas"] == plan["aggregatedReplicas"]
        wait_for("the pool's Service", lambda: _kjson(cluster, "get", "service", "llama-8b-chat-aggregated", "-n", ns))
        wait_for("an Event for the decision", lambda: (_kjson(
            cluster, "get", "events", "-n", ns, "--field-selector",
            "involvedObject.kind=InferenceDeployment,involvedObject.name=llama-8b-chat") or {}).get("items"))
        status = wait_for("this replica's keep-alive in the KopfPeering", lambda: (_kjson(
            cluster, "get", "kopfpeering", peering, "-n", ns) or {}).get("status"))
        assert f"{sa}-test-pod" in status
        infd = _kjson(cluster, "get", "infd", "llama-8b-chat", "-n", ns)
        assert any(k.startswith("goodput.dev/") for k in infd["metadata"].get("annotations", {})), \
            "kopf's progress annotations (patch on the resource)"
        time.sleep(4)  # one timer reconcile more
        assert proc.poll() is None, "the operator exited"
    finally:
        stop_process(proc)
        cluster.kubectl("delete", "infd", "llama-8b-chat", "-n", ns, "--wait=false")
        # Shown by pytest when the test fails.
        sys.stderr.write("--- operator log (tail)\n" + "".join(log_path.read_text().splitlines(True)[-60:]))
    text = log_path.read_text(encoding="utf-8")
    for sign in ("Forbidden", "forbidden", "403", "Not enough permissions", "Traceback"):
        assert sign not in text, f"{sign!r} in the operator's log:\n{text[-4000:]}"

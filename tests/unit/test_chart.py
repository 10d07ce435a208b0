"""The Helm chart, its schema, its RBAC and pod security, and the Dockerfile: checked statically.

Rendering uses a real helm v3 (goodput.devcluster.helm.ensure_helm: cached, fetched on first use).
These tests never skip: without helm they fail and say why. tests/integration/test_install.py
lints the chart with helm and applies what it renders to a real API server.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from goodput.api.crd import crd_yaml
from goodput.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "goodput-operator"
RELEASE = "goodput-operator"
FULLNAME = "goodput-operator"  # the release name contains the chart name: fullname is the release name
NAMESPACE = "goodput-system"

# --------------------------------------------------------------------------------------------
# The RBAC the operator needs, rule by rule: (apiGroup, resource, verb). Anything the chart grants
# beyond this, or lacks of it, fails test_rbac_is_exactly_what_the_operator_uses.
NAMESPACED_PERMISSIONS = {
    # kopf lists then watches the custom resource (its watch stream) ...
    ("goodput.dev", "inferencedeployments", "list"),
    ("goodput.dev", "inferencedeployments", "watch"),
    # ... and patches its handler-progress and diff-base annotations onto it (AnnotationsProgressStorage).
    ("goodput.dev", "inferencedeployments", "patch"),
    # Kube.patch_status: the plan and conditions, through the status subresource.
    ("goodput.dev", "inferencedeployments/status", "patch"),
    # Kube.observe_pools: list_namespaced_deployment by the owner label.
    ("apps", "deployments", "list"),
    # Kube.apply: server-side apply is a PATCH, and the API server also authorizes it as `create`
    # when the object does not exist yet (seen for real: 403 "cannot create" with patch alone).
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "create"),
    # Kube.delete_pool: a pool the plan no longer has.
    ("apps", "deployments", "delete"),
    # Kube.apply / Kube.delete_pool for the pools' Services (never read back).
    ("", "services", "patch"),
    ("", "services", "create"),
    ("", "services", "delete"),
    # Kube.post_event: core v1 Events (kopf's own posting is off; events.k8s.io is not used).
    ("", "events", "create"),
    # Read-only pods: Pending pods of a pool tell of GPUs the cluster lacks (planned capacity signal).
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    # Kube.mark_leaving_pods: controller.kubernetes.io/pod-deletion-cost before a scale-down.
    ("", "pods", "patch"),
    # Disaggregated mode: the router's ServiceAccount and its RoleBinding to the chart's router role
    # (the API server allows binding only roles whose permissions the operator holds; no rules written).
    ("", "serviceaccounts", "create"),
    ("", "serviceaccounts", "patch"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "patch"),
    # PodMonitors where the Prometheus Operator serves them.
    ("monitoring.coreos.com", "podmonitors", "create"),
    ("monitoring.coreos.com", "podmonitors", "patch"),
}
# What the chart's vllm-router role grants (bound by the operator to each router's ServiceAccount).
ROUTER_PERMISSIONS = {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch")}
CLUSTER_ONLY_PERMISSIONS = {
    # kopf watches CRDs to notice resources added/removed at run time (cluster-wide mode only;
    # namespace-bound it runs with --no-cluster-scan). Discovery (/apis) needs no RBAC.
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
PEERING_CLUSTER = {
    # kopf peering, cluster-wide: watch the ClusterKopfPeering, patch this replica's keep-alive into
    # its status. The chart creates the object, so no `create`; kopf never GETs it.
    ("kopf.dev", "clusterkopfpeerings", "list"),
    ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
}
PEERING_NAMESPACED = {
    # The same, per watched namespace (namespace-bound operators peer through KopfPeerings).
    ("kopf.dev", "kopfpeerings", "list"),
    ("kopf.dev", "kopfpeerings", "watch"),
    ("kopf.dev", "kopfpeerings", "patch"),
}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "approve", "sign"}
FORBIDDEN_RESOURCES = {"*", "secrets", "serviceaccounts/token", "roles", "clusterroles",
                       "clusterrolebindings", "nodes/proxy", "pods/exec", "pods/attach", "certificatesigningrequests"}


# --------------------------------------------------------------------------------------------
# `helm`: the session fixture of tests/conftest.py


def render(helm: Path, *sets: str, chart: Path = CHART, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    from goodput.devcluster.helm import run_helm

    args = ["template", RELEASE, str(chart), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args, helm=helm).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = the(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


VARIANTS = {
    "default": (),
    "namespaced": ("watchNamespaces={team-a,team-b}",),
    "peering": ("replicaCount=2",),
    "namespaced-peering": ("watchNamespaces={team-a}", "peering.enabled=true"),
}


# --------------------------------------------------------------------------------------------
# CRDs


def test_chart_crd_is_the_generated_one() -> None:
    copy = CHART / "crds" / "inferencedeployments.goodput.dev.yaml"
    assert copy.read_text(encoding="utf-8") == crd_yaml(), (
        "the chart's CRD drifted from goodput.api: run "
        "`goodput crd --output-file helm/goodput-operator/crds/inferencedeployments.goodput.dev.yaml`")


def test_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text(encoding="utf-8")))
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    for name, scope, kind in (("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering"),
                              ("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering")):
        spec = by_name[name]["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_chart_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    app_version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert app_version
    assert (chart["apiVersion"], chart["version"], chart["appVersion"]) == ("v2", "0.1.0", app_version.group(1))


# --------------------------------------------------------------------------------------------
# values.schema.json


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return loaded


def test_schema_is_draft7_and_default_values_pass(schema: dict[str, Any], values: dict[str, Any]) -> None:
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    assert schema["additionalProperties"] is False


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def _schema_at(schema: dict[str, Any], root: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node = schema
    for key in path:
        if "$ref" in node:
            node = root["definitions"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties") or {}
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def test_schema_describes_every_default_value(schema: dict[str, Any], values: dict[str, Any]) -> None:
    undescribed = [".".join(p) for p in _leaves(values) if _schema_at(schema, schema, p) is None]
    assert undescribed == []


@pytest.mark.parametrize(("change", "keyword"), [
    ({"replicaCount": "two"}, "type"),
    ({"replicaCount": -1}, "minimum"),
    ({"bogus": 1}, "additionalProperties"),
    ({"image": {"repository": "x", "tag": "1", "pullPolicy": "Sometimes"}}, "enum"),
    ({"watchNamespaces": ["team-*"]}, "pattern"),  # exact names: a Role is made in each
    ({"watchNamespaces": ["a", "a"]}, "uniqueItems"),
    ({"logLevel": "TRACE"}, "enum"),
    ({"timerSeconds": 0}, "exclusiveMinimum"),
    ({"prometheus": {"url": "prometheus:9090", "timeoutSeconds": 5}}, "anyOf"),
    ({"peering": {"enabled": True, "name": "", "priority": "high"}}, "anyOf"),
    ({"securityContext": {"privileged": True}}, "const"),
    ({"securityContext": {"allowPrivilegeEscalation": True}}, "const"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "const"),
    ({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}, "enum"),
    ({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "contains"),
    ({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}, "maxItems"),
    ({"metrics": {"port": 70000, "service": {"type": "ClusterIP"}}}, "maximum"),
])
def test_schema_rejects_bad_values(schema: dict[str, Any], values: dict[str, Any], change: dict[str, Any],
                                   keyword: str) -> None:
    errors = list(jsonschema.Draft7Validator(schema).iter_errors({**values, **change}))
    assert [e.validator for e in errors] == [keyword], [e.message for e in errors]


# --------------------------------------------------------------------------------------------
# RBAC


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_is_exactly_what_the_operator_uses(helm: Path, variant: str) -> None:
    docs = render(helm, *VARIANTS[variant])
    namespaced = "watchNamespaces" in " ".join(VARIANTS[variant])
    peering = variant.endswith("peering")
    everything = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    roles = [r for r in everything if r["metadata"]["name"] == FULLNAME]
    router_roles = [r for r in everything if r["metadata"]["name"] == f"{FULLNAME}-vllm-router"]
    assert len(roles) + len(router_roles) == len(everything) and len(router_roles) == len(roles)
    for role in router_roles:
        assert granted(role) == ROUTER_PERMISSIONS, role["metadata"]
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    if namespaced:
        assert of_kind(docs, "ClusterRole") == [] and of_kind(docs, "ClusterRoleBinding") == [], \
            "a namespace-bound install needs nothing cluster-scoped"
        watched = next(s.split("{")[1].rstrip("}").split(",") for s in VARIANTS[variant] if "watchNamespaces" in s)
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
        expected = NAMESPACED_PERMISSIONS | (PEERING_NAMESPACED if peering else set())
    else:
        assert of_kind(docs, "Role") == [] and len(roles) == 1
        expected = NAMESPACED_PERMISSIONS | CLUSTER_ONLY_PERMISSIONS | (PEERING_CLUSTER if peering else set())
    for role in roles:
        assert granted(role) == expected, role["metadata"]
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"resourceNames/nonResourceURLs? {rule}"
            assert "*" not in rule["apiGroups"]
            assert not set(rule["resources"]) & FORBIDDEN_RESOURCES, rule
            assert not set(rule["verbs"]) & FORBIDDEN_VERBS, rule
    assert len(bindings) == len(roles)
    sa = the(docs, "ServiceAccount")["metadata"]
    for binding in bindings:
        ref = binding["roleRef"]
        assert ref["name"] == FULLNAME, "bound to the chart's own role, never to admin/edit/cluster-admin"
        assert ref["kind"] == ("Role" if binding["kind"] == "RoleBinding" else "ClusterRole")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]


def test_no_wildcards_or_secrets_anywhere_in_the_rendered_rbac(helm: Path) -> None:
    for sets in VARIANTS.values():
        for doc in render(helm, *sets):
            if doc["kind"] in ("ClusterRole", "Role"):
                text = yaml.safe_dump(doc["rules"])
                assert "'*'" not in text and "secrets" not in text


# --------------------------------------------------------------------------------------------
# The operator's pod


def test_pod_security(helm: Path) -> None:
    docs = render(helm)
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 65532
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden)
    # The only writable place is an emptyDir at /tmp.
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert set(c["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert pod["serviceAccountName"] == the(docs, "ServiceAccount")["metadata"]["name"]


def test_probes_ports_and_arguments_agree_with_the_cli(helm: Path) -> None:
    docs = render(helm, "prometheus.url=http://prometheus.monitoring:9090", "logLevel=DEBUG", "timerSeconds=15")
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    args = build_parser().parse_args(["operator", *c["args"]])
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.metrics_port == ports["metrics"]
    assert (args.prometheus, args.log_level, args.timer_seconds) == ("http://prometheus.monitoring:9090", "DEBUG", 15)
    assert args.namespace is None and args.peering is None and not args.no_cluster_scan
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GOODPUT_WINDOW_SECONDS"] == "60" and env["GOODPUT_LONG_WINDOW_SECONDS"] == "600"
    assert env["GOODPUT_PROMETHEUS_TIMEOUT_SECONDS"] == "5"
    assert "POD_ID" in env  # kopf's peer identity
    service = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= the(docs, "Deployment")["spec"]["template"]["metadata"][
        "labels"].items()


def test_standalone_by_default(helm: Path) -> None:
    docs = render(helm)
    assert the(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators
    assert of_kind(docs, "ClusterKopfPeering") == [] and of_kind(docs, "KopfPeering") == []
    assert build_parser().parse_args(["operator", *container(docs)["args"]]).peering is None


def test_more_than_one_replica_turns_peering_on(helm: Path) -> None:
    docs = render(helm, "replicaCount=2")
    assert the(docs, "Deployment")["spec"]["strategy"] == {"type": "RollingUpdate"}
    peering = the(docs, "ClusterKopfPeering")
    args = build_parser().parse_args(["operator", *container(docs)["args"]])
    assert args.peering == peering["metadata"]["name"] == FULLNAME
    assert args.priority == "random"
    docs = render(helm, "replicaCount=2", "peering.priority=7", "peering.name=fleet")
    args = build_parser().parse_args(["operator", *container(docs)["args"]])
    assert (args.peering, args.priority) == ("fleet", 7)


def test_watch_namespaces(helm: Path) -> None:
    docs = render(helm, "watchNamespaces={team-a,team-b}", "peering.enabled=true")
    args = build_parser().parse_args(["operator", *container(docs)["args"]])
    assert args.namespace == ["team-a", "team-b"] and args.no_cluster_scan
    assert sorted(p["metadata"]["namespace"] for p in of_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    assert of_kind(docs, "ClusterKopfPeering") == []


def test_service_monitor_only_when_enabled(helm: Path) -> None:
    assert of_kind(render(helm), "ServiceMonitor") == []
    docs = render(helm, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=kube-prometheus")
    sm = the(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    service = next(s for s in of_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The dashboard selects on the series' own namespace/name labels: they must survive the scrape.
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


def test_grafana_dashboard_configmap(helm: Path, tmp_path: Path) -> None:
    chart = tmp_path / "goodput-operator"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "dashboards", ignore_errors=True)
    assert of_kind(render(helm, "grafanaDashboard.enabled=true", chart=chart), "ConfigMap") == [], \
        "no dashboard file: nothing rendered"
    (chart / "dashboards").mkdir()
    dashboard = json.dumps({"title": "goodput-operator", "panels": [{"id": 1, "title": "a \"quoted\" panel"}]},
                           indent=2)
    (chart / "dashboards" / "goodput-operator.json").write_text(dashboard, encoding="utf-8")
    assert of_kind(render(helm, chart=chart), "ConfigMap") == [], "disabled by default"
    cm = the(render(helm, "grafanaDashboard.enabled=true", chart=chart), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["goodput-operator.json"]) == json.loads(dashboard)


# --------------------------------------------------------------------------------------------
# The operator command the chart runs


def test_operator_command_passes_peering_to_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    import goodput.kube.actions

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kw: calls.append(kw))
    monkeypatch.setattr(goodput.kube.actions, "load_config", lambda: None)  # no cluster here; kopf.run is faked
    for var in ("GOODPUT_TIMER_SECONDS", "GOODPUT_PROMETHEUS_URL", "GOODPUT_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    parser = build_parser()

    def run(*argv: str) -> dict[str, Any]:
        args = parser.parse_args(["operator", *argv])
        assert args.func(args) == 0
        return calls.pop()

    kw = run()
    assert kw["standalone"] is True and kw["peering_name"] is None and kw["clusterwide"] is True
    assert kw["settings"].scanning.disabled is False
    kw = run("--peering", "fleet", "--priority", "random", "--namespace", "a", "--no-cluster-scan")
    assert kw["standalone"] is False and kw["peering_name"] == "fleet" and 1 <= kw["priority"] <= 1000
    assert kw["clusterwide"] is False and list(kw["namespaces"]) == ["a"]
    assert kw["settings"].scanning.disabled is True
    assert run("--peering", "fleet", "--priority", "5")["priority"] == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "--standalone", "--peering", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "--priority", "high"])


# --------------------------------------------------------------------------------------------
# Dockerfile


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfile() -> None:
    ins = _instructions()
    froms = [arg for op, arg in ins if op == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms), "multi-stage, slim base"
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] == "65532", "the image runs as 65532, never root"
    assert not [arg for op, arg in ins if op == "ADD"], "COPY only: no ADD of URLs or archives"
    assert not [arg for op, arg in ins if op in ("ENV", "ARG") and re.search(r"(PASSWORD|TOKEN|SECRET|KEY)=",
                                                                         arg, re.IGNORECASE)]
    copied = " ".join(arg for op, arg in ins if op == "COPY")
    assert not re.search(r"\.env|kubeconfig|\.pem|\.key|id_rsa|\.git\b|\.venv", copied)
    assert ("ENTRYPOINT", '["goodput", "operator"]') in final
    final_runs = " ".join(arg for op, arg in final if op == "RUN")
    assert "--no-index" in final_runs, "the runtime stage installs built wheels only, nothing from an index"
    assert not re.search(r"apt-get|gcc|build-essential", final_runs), "no build tools in the runtime stage"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    patterns = [x for x in lines if x and not x.startswith("#")]
    assert patterns[0] == "*", "allow-list: everything is excluded unless named"
    assert {p.lstrip("!").rstrip("/") for p in patterns if p.startswith("!")} == {"pyproject.toml", "README.md",
                                                                                   "operator"}

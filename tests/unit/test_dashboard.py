"""The Grafana dashboard shipped with the chart: valid JSON, a sound layout, and every PromQL query
naming only series that exist — the operator's own (read from the prometheus_client objects in
handlers/exporter.py) or vLLM's (as the emulator exposes them, engine/vllm_metrics.py) — with only
labels those series carry."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL
from goodput.engine.vllm_metrics import ReplicaStats, exposition
from goodput.handlers import exporter
from goodput.metrics import prometheus as collector

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "goodput-operator" / "dashboards" / "goodput-operator.json"
GRID_WIDTH = 24
# Labels Prometheus attaches to every scraped series.
SCRAPE_LABELS = frozenset({collector.JOB_LABEL, collector.INSTANCE_LABEL})
# Labels a vLLM pod's series carry after the usual Kubernetes relabeling (as the collector queries them).
VLLM_TARGET_LABELS = frozenset({collector.NAMESPACE_LABEL, PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL,
                                collector.POD_LABEL}) | SCRAPE_LABELS
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                      "offset", "inf", "nan"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


# --- a small PromQL reader -----------------------------------------------------------------------
def parse_promql(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """({metric: labels used in its selectors}, labels used in by/without/on/ignoring clauses).
    Metric identifiers may contain ':'; functions are identifiers followed by '('."""
    labels: dict[str, set[str]] = {}
    text = _GRAFANA_VAR.sub("0", _RANGE.sub("", expr.replace("$__rate_interval", "")))
    for m in _SELECTOR.finditer(text):
        if m.group(1) is None or m.group(1) in KEYWORDS:
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        labels.setdefault(m.group(1), set()).update(_MATCHER.findall(m.group(2)))
    text = _SELECTOR.sub(lambda m: f" {m.group(1)} ", text)
    grouping = {label.strip() for m in _GROUPING.finditer(text) for label in m.group(1).split(",") if label.strip()}
    text = _STRING.sub(" ", _GROUPING.sub(" ", text))
    for m in _IDENT.finditer(text):
        name, rest = m.group(1), text[m.end():].lstrip()
        if name not in KEYWORDS and not rest.startswith("("):
            labels.setdefault(name, set())
    return labels, grouping


@pytest.mark.parametrize(("expr", "metrics", "grouping"), [
    ('sum by (le, pod) (rate(vllm:x_bucket{a="1", b=~"$v"}[$__rate_interval]))', {"vllm:x_bucket": {"a", "b"}},
     {"le", "pod"}),
    ("1000 * histogram_quantile($quantile, sum(rate(m_total[5m]))) > bool 0", {"m_total": set()}, set()),
    ('a{x="y,z"} / on (x) group_left b', {"a": {"x"}, "b": set()}, {"x"}),
    ("max without (job) (c:d:e)", {"c:d:e": set()}, {"job"}),
])
def test_promql_reader(expr: str, metrics: dict[str, set[str]], grouping: set[str]) -> None:
    assert parse_promql(expr) == (metrics, grouping)


# --- the series that exist -------------------------------------------------------------------------
def _operator_metrics() -> Iterator[MetricWrapperBase]:
    return (v for v in vars(exporter).values() if isinstance(v, MetricWrapperBase))


@cache
def known_series() -> dict[str, frozenset[str]]:
    """Every series name a query may use, with the labels it carries in Prometheus."""
    series: dict[str, frozenset[str]] = {}
    for metric in _operator_metrics():
        family = next(iter(metric.describe()))
        labels = frozenset(metric._labelnames) | SCRAPE_LABELS
        names = [family.name] if family.type == "gauge" else [f"{family.name}_total", f"{family.name}_created"]
        assert family.type in ("gauge", "counter"), f"{family.name}: teach this test about {family.type}"
        series.update(dict.fromkeys(names, labels))
    text = exposition(ReplicaStats(), running=1, waiting=0, kv_usage=0.5, model_name="m", max_model_len=4096)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[sample.name] = series.get(sample.name, frozenset()) | frozenset(sample.labels) | VLLM_TARGET_LABELS
    return series


def test_known_series_cover_both_sources() -> None:
    series = known_series()
    assert "goodput_decisions_total" in series and "goodput_decisions" not in series  # counters: _total
    assert series["goodput_desired_replicas"] >= {"namespace", "name", "pool"}
    assert series["vllm:request_success_total"] >= {"finished_reason", "goodput_dev_role", "model_name"}
    assert "le" in series["vllm:time_to_first_token_seconds_bucket"]


# --- the dashboard ---------------------------------------------------------------------------------
@cache
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows hold their panels
    return out


def queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every PromQL the dashboard runs: panels, annotations, variables."""
    out = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", ""))
           for p in panels() for t in p.get("targets", [])]
    out += [(f"annotation {a['name']!r}", a["expr"], a.get("titleFormat", "") + a.get("textFormat", ""))
            for a in dashboard()["annotations"]["list"] if "expr" in a]
    return out


def label_value_queries() -> list[tuple[str, str, str]]:
    """(variable, selector expr, label) of the label_values(...) variables."""
    out = []
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"])
            assert m, f"variable {v['name']}: expected label_values(SELECTOR, LABEL), got {v['definition']!r}"
            out.append((v["name"], m.group(1), m.group(2)))
    return out


def test_dashboard_is_grafana_json() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "name"):
        assert variables[name]["type"] == "query"
        assert variables[name]["definition"].startswith("label_values(goodput_planned_gpus")
    for p in panels():
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_panel_ids_unique_and_grid_sound() -> None:
    ps = panels()
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for p in ps:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "xywh") and g["w"] > 0 and g["h"] > 0, p["title"]
        assert g["x"] + g["w"] <= GRID_WIDTH, f"{p['title']} is wider than the grid"
        for cell in itertools.product(range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, f"{p['title']!r} overlaps {cells[cell]!r}"
            cells[cell] = p["title"]


def test_every_query_uses_existing_series_and_labels() -> None:
    series = known_series()
    problems = []
    for where, expr, legend in [*queries(), *((f"variable {v}", e, "") for v, e, _ in label_value_queries())]:
        used, grouping = parse_promql(expr)
        assert used, f"{where}: no metric found in {expr!r}"
        for metric, labels in used.items():
            if metric not in series:
                problems.append(f"{where}: unknown series {metric}")
                continue
            problems += [f"{where}: {metric} has no label {label!r}" for label in sorted(labels - series[metric])]
            problems += [f"{where}: grouping by {label!r}, which {metric} lacks"
                         for label in sorted(grouping - series[metric])]
        available = set().union(*(series.get(m, frozenset()) for m in used))
        problems += [f"{where}: legend names {label!r}, not a label of {sorted(used)}"
                     for label in _LEGEND_LABEL.findall(legend) if label not in available]
    for variable, expr, label in label_value_queries():
        (metric,) = parse_promql(expr)[0]
        if label not in series.get(metric, frozenset()):
            problems.append(f"variable {variable}: {metric} has no label {label!r}")
    assert not problems, "\n".join(problems)


def test_every_operator_series_and_the_vllm_request_rate_are_charted() -> None:
    used = {m for _, expr, _ in queries() for m in parse_promql(expr)[0]}
    for metric in _operator_metrics():
        family = next(iter(metric.describe()))
        name = family.name if family.type == "gauge" else f"{family.name}_total"
        assert name in used, f"the dashboard does not chart {name}"
    assert {"vllm:request_success_total", "vllm:num_requests_running"} <= used


def test_operator_series_selected_by_the_dashboard_variables() -> None:
    """Each operator query is filtered by the namespace and name variables (a dashboard for one resource)."""
    for where, expr, _ in queries():
        for metric, labels in parse_promql(expr)[0].items():
            expected = {"namespace", "name"} if metric.startswith("goodput_") else {
                collector.NAMESPACE_LABEL, PROM_DEPLOYMENT_LABEL}
            assert expected <= labels, f"{where}: {metric} is not filtered by {sorted(expected - labels)}"

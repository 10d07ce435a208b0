"""The shared (fleet-wide) collector against a fake Prometheus that answers both the fleet-wide and
the per-resource queries from one world of per-deployment, per-role values: for every resource the
shared collector's Observation must equal the per-resource collector's, field by field and note
by note, while the queries it sends per tick do not grow with the number of resources."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Mapping
from typing import Any

import pytest
import requests

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL as DEPLOYMENT_LABEL
from goodput.api.vocabulary import PROM_ROLE_LABEL as ROLE_LABEL
from goodput.metrics.prometheus import (
    NAMESPACE_LABEL,
    PrometheusCollector,
    QueryPlan,
    deployment_matchers,
)
from goodput.metrics.shared import FLEET_BY, SharedCollector, fleet_matchers
from goodput.planner.observation import Observation

NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
W, LW = 60.0, 600.0

Values = dict[str, dict[str, Any]]  # field -> role -> value (a float, "NaN", or a list for several series)
TTFT_LE = [("0.25", 5.0), ("0.5", 9.0), ("1.0", 10.0), ("+Inf", 10.0)]


def full(scale: float = 1.0) -> Values:
    base = {"pods_reporting": 2, "request_rate_rps": 5, "queue_growth_rps": -0.5, "prompt_tokens_tps": 6000,
            "generation_tokens_tps": 1050, "input_len_mean": 1200, "input_len_p99": 3500, "output_len_mean": 210,
            "output_len_p99": 750, "ttft_ms": 0.875, "itl_ms": 0.0875, "itl_mean_ms": 0.05, "kv_cache_usage": 0.7,
            "running": 30, "waiting": 5, "preemptions_rps": 0.1, "prefix_cache_hit_rate": 0.2,
            "ttft_mean_ms": 0.4, "prefill_time_mean_ms": 0.01, "arrival_dispersion": 1.5}
    return {k: {"decode": v * scale, "prefill": v * scale / 2} for k, v in base.items()}


class World:
    """What Prometheus holds: (namespace, name) -> short-window values, long-window values, and the
    labelled answers (TTFT buckets per le, KV capacity per pod)."""

    def __init__(self) -> None:
        self.short: dict[tuple[str, str], Values] = {}
        self.long: dict[tuple[str, str], Values] = {}
        self.buckets: dict[tuple[str, str], dict[str, list[tuple[str, float]]]] = {}
        self.kv: dict[tuple[str, str], dict[str, list[tuple[str, str, str]]]] = {}
        self.fail: BaseException | None = None

    def add(self, ns: str, name: str, short: Values, long: Values | None = None) -> None:
        self.short[(ns, name)] = short
        self.long[(ns, name)] = short if long is None else long


class FakeProm:
    """Answers the fleet-wide plan and the per-resource plans of the world's deployments (and of
    ``also``) for the given windows and quantiles."""

    def __init__(self, world: World, also: tuple[tuple[str, str], ...] = (), quantiles: tuple[float, ...] = (0.99,)):
        self.world = world
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self.index: dict[str, tuple[tuple[str, str] | None, str, str]] = {}  # promql -> (scope, window, field)
        for q in quantiles:
            self._learn(None, QueryPlan.build(fleet_matchers(), W, LW, q, by=FLEET_BY))
            for key in {*world.short, *also}:
                self._learn(key, QueryPlan.build(deployment_matchers(*key), W, LW, q))

    def _learn(self, scope: tuple[str, str] | None, plan: QueryPlan) -> None:
        for pq in plan.long:
            self.index[pq.promql] = (scope, "long", pq.field)
        for pq in plan.short:  # pods_reporting is the same query in both windows: asked once, as now
            self.index[pq.promql] = (scope, "short", pq.field)
        for lq in plan.labelled:
            self.index[lq.promql] = (scope, "short", lq.field)

    def custom_query(self, query: str, params: dict[str, Any] | None = None, timeout: Any = None) -> Any:
        with self._lock:
            self.calls.append(query)
        if self.world.fail is not None:
            raise self.world.fail
        scope, window, field = self.index[query]
        keys = [k for k in self.world.short if scope is None or k == scope]
        out = []
        for key in sorted(keys):
            def labels(r: str, key: tuple[str, str] = key, **more: str) -> dict[str, str]:
                base = {NAMESPACE_LABEL: key[0], DEPLOYMENT_LABEL: key[1]} if scope is None else {}
                return {**base, ROLE_LABEL: r, **more}

            if field == "ttft_buckets":
                for r, items in self.world.buckets.get(key, {}).items():
                    out += [_series(v, labels(r, le=le)) for le, v in items]
                continue
            if field == "kv_capacity_tokens":
                for r, items in self.world.kv.get(key, {}).items():
                    out += [_series(1, labels(r, pod=p, num_gpu_blocks=b, block_size=s)) for p, b, s in items]
                continue
            values = (self.world.long if window == "long" else self.world.short)[key]
            for r, v in values.get(field, {}).items():
                out += [_series(x, labels(r)) for x in (v if isinstance(v, list) else [v])]
        return out


def _series(value: Any, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"metric": dict(labels), "value": [NOW.timestamp(), value if isinstance(value, str) else repr(float(value))]}


def sample_world() -> World:
    w = World()
    w.add("prod", "a", full())
    b = full(3.0)
    b = {k: {"aggregated": v["decode"]} for k, v in b.items() if k != "prefix_cache_hit_rate"}  # V0: no prefix
    b["ttft_ms"] = {"aggregated": "NaN"}  # nothing completed in the window
    b["running"] = {"aggregated": [10, 20]}  # two series for one pool: summed, as per resource
    w.add("prod", "b", b)
    w.add("other", "a", {}, long=full(0.5))  # same name, another namespace; only in the long window
    w.add("prod", "dead", {})  # no series at all (its pods not scraped)
    w.buckets[("prod", "a")] = {"decode": TTFT_LE, "prefill": [("0.5", 1.0), ("+Inf", "NaN")]}
    w.kv[("prod", "a")] = {"decode": [("a-0", "1000", "16"), ("a-1", "800", "16")], "prefill": [("p", "None", "16")]}
    return w


def per_resource(prom: FakeProm, ns: str, name: str, now: dt.datetime = NOW, q: float = 0.99) -> Observation:
    return PrometheusCollector("http://prom:9090", client=prom).observe(ns, name, now, W, LW, q)


def test_every_resource_gets_what_the_per_resource_collector_gives() -> None:
    world = sample_world()
    prom = FakeProm(world, also=(("prod", "nobody"),))
    shared = SharedCollector("http://prom:9090", client=prom, max_age_s=15)
    for ns, name in [("prod", "a"), ("prod", "b"), ("other", "a"), ("prod", "dead"), ("prod", "nobody")]:
        got = shared.observe(ns, name, NOW, W, LW, 0.99)
        want = per_resource(prom, ns, name)
        assert got == want, (ns, name)
    assert shared.fetches == 1
    # what the comparison covered
    a = shared.observe("prod", "a", NOW, W, LW, 0.99)
    assert list(a.pools) == ["prefill", "decode"] and a.missing == () and a.pools["decode"].ttft_ms == 875.0
    assert a.pools["decode"].ttft_buckets == ((250.0, 300.0), (500.0, 540.0), (1000.0, 600.0), (float("inf"), 600.0))
    assert a.pools["prefill"].ttft_buckets is None  # a NaN bucket
    assert a.pools["decode"].kv_capacity_tokens == 12800.0 and a.pools["prefill"].kv_capacity_tokens is None
    b = shared.observe("prod", "b", NOW, W, LW, 0.99)
    assert b.pools["aggregated"].ttft_ms is None and b.pools["aggregated"].running == 30.0
    assert any("is NaN for the aggregated pool of prod/b" in n for n in b.missing)
    assert any(n.startswith("prefix_cache_hit_rate: no series") and "prod/b (60 s and 600 s windows)" in n
               for n in b.missing)
    other = shared.observe("other", "a", NOW, W, LW, 0.99)
    assert other.pools == {} and set(other.long_pools) == {"decode", "prefill"}
    assert any("only in the 600 s window" in n for n in other.missing)
    for ns, name in [("prod", "dead"), ("prod", "nobody")]:
        obs = shared.observe(ns, name, NOW, W, LW, 0.99)
        assert obs.error is None and obs.pools == {} and not obs.available
        assert obs.missing == (f"no vLLM series for {ns}/{name} in the last 600 s: are its pods scraped, with the "
                               "pod labels goodput.dev/inference-deployment and goodput.dev/role mapped to "
                               "goodput_dev_inference_deployment and goodput_dev_role?",)


def test_queries_per_tick_do_not_grow_with_resources() -> None:
    sent = {}
    for n in (3, 60):
        world = World()
        for i in range(n):
            world.add("prod", f"d{i}", full(1 + i))
        prom = FakeProm(world)
        shared = SharedCollector("http://prom:9090", client=prom)
        for i in range(n):
            obs = shared.observe("prod", f"d{i}", NOW, W, LW, 0.99)
            assert obs.pools["decode"].request_rate_rps == 5.0 * (1 + i)
        sent[n] = len(prom.calls)
        assert shared.queries_sent == sent[n] and shared.fetches == 1
        per = PrometheusCollector("http://prom:9090", client=prom)
        per.observe("prod", "d0", NOW, W, LW, 0.99)
        assert per.queries_sent == sent[n]  # one tick of the shared collector = one resource's queries
    assert sent[3] == sent[60] == len(QueryPlan.build(fleet_matchers(), W, LW, 0.99, by=FLEET_BY).promqls()) == 42


def test_the_snapshot_is_reused_within_max_age_then_refreshed_and_a_resource_appears() -> None:
    world = World()
    world.add("prod", "a", full())
    prom = FakeProm(world, also=(("prod", "late"),))
    shared = SharedCollector("http://prom:9090", client=prom, max_age_s=15)
    assert shared.observe("prod", "late", NOW, W, LW, 0.99).pools == {}
    world.add("prod", "late", full(2.0))  # its pods come up, and are scraped
    later = NOW + dt.timedelta(seconds=10)
    still = shared.observe("prod", "late", later, W, LW, 0.99)
    assert still.pools == {} and still.time == NOW and shared.fetches == 1  # the tick's answer, taken at NOW
    tick2 = NOW + dt.timedelta(seconds=30)
    obs = shared.observe("prod", "late", tick2, W, LW, 0.99)
    assert shared.fetches == 2 and obs.time == tick2 and obs.pools["decode"].request_rate_rps == 10.0
    assert obs == per_resource(prom, "prod", "late", tick2)
    assert shared.observe("prod", "a", tick2 + dt.timedelta(seconds=15), W, LW, 0.99).time == tick2
    assert shared.fetches == 2
    shared.observe("prod", "a", tick2 - dt.timedelta(seconds=1), W, LW, 0.99)  # a clock that went back
    assert shared.fetches == 3


def test_each_percentile_in_use_is_one_snapshot() -> None:
    world = World()
    world.add("prod", "a", full())
    prom = FakeProm(world, quantiles=(0.99, 0.9))
    shared = SharedCollector("http://prom:9090", client=prom)
    for _ in range(3):
        shared.observe("prod", "a", NOW, W, LW, 0.99)
        shared.observe("prod", "a", NOW, W, LW, 0.9)
    assert shared.fetches == 2
    quantile_queries = [q for q in prom.calls if q.startswith("histogram_quantile(0.9,")]
    assert len(quantile_queries) == 8  # 4 percentile fields x 2 windows
    assert shared.observe("prod", "a", NOW, W, LW, 0.9) == per_resource(prom, "prod", "a", q=0.9)


def test_concurrent_reconciles_share_one_fetch() -> None:
    world = World()
    for i in range(40):
        world.add("prod", f"d{i}", full(1 + i))
    prom = FakeProm(world)
    shared = SharedCollector("http://prom:9090", client=prom)
    results: dict[int, Observation] = {}
    start = threading.Barrier(16)

    def work(k: int) -> None:
        start.wait()
        for i in range(k, 40, 16):
            results[i] = shared.observe("prod", f"d{i}", NOW, W, LW, 0.99)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.fetches == 1 and len(prom.calls) == 42
    assert all(results[i].pools["decode"].request_rate_rps == 5.0 * (1 + i) for i in range(40))


@pytest.mark.parametrize("error", [requests.exceptions.ConnectionError("[Errno 111] Connection refused"),
                                   requests.exceptions.Timeout("Read timed out.")])
def test_a_failing_prometheus_makes_every_resource_unavailable_once_per_tick(error: BaseException) -> None:
    world = sample_world()
    world.fail = error
    prom = FakeProm(world)
    shared = SharedCollector("http://prom:9090", client=prom)
    for ns, name in [("prod", "a"), ("prod", "b"), ("other", "a")]:
        obs = shared.observe(ns, name, NOW, W, LW, 0.99)
        assert not obs.available and obs.pools == {}
        want = per_resource(prom, ns, name)
        assert obs.error is not None and want.error is not None and "http://prom:9090" in obs.error
        # the same error, in the same words (a timeout names the query: here the fleet-wide one)
        assert obs.error.split(" for ")[0] == want.error.split(" for ")[0]
        assert obs.error.split(": ")[-1] == want.error.split(": ")[-1]
        assert dataclasses.replace(obs, error=None) == dataclasses.replace(want, error=None)
    assert shared.fetches == 1 and shared.queries_sent == 1  # the first query failed: nothing else asked
    world.fail = None  # back: the next tick reads it
    assert shared.observe("prod", "a", NOW + dt.timedelta(seconds=30), W, LW, 0.99).available


def test_bad_arguments_are_unavailable_without_a_query() -> None:
    prom = FakeProm(World())
    shared = SharedCollector("http://prom:9090", client=prom)
    assert "invalid namespace/name" in (shared.observe("", "a", NOW).error or "")
    assert "invalid quantile" in (shared.observe("prod", "a", NOW, quantile=1.5).error or "")
    assert "invalid window_s" in (shared.observe("prod", "a", NOW, window_s=-1).error or "")
    assert prom.calls == []
    with pytest.raises(ValueError, match="max_age_s"):
        SharedCollector("http://prom:9090", client=prom, max_age_s=float("nan"))


def test_the_fleet_queries_group_by_namespace_deployment_and_role() -> None:
    plan = QueryPlan.build(fleet_matchers(), W, LW, 0.99, by=FLEET_BY)
    by = f"{NAMESPACE_LABEL}, {DEPLOYMENT_LABEL}, {ROLE_LABEL}"
    sel = f'{DEPLOYMENT_LABEL}!="",{NAMESPACE_LABEL}!="",{ROLE_LABEL}=~"aggregated|prefill|decode"'
    for q in plan.promqls():
        assert sel in q and "by (" in q
        assert f"by ({ROLE_LABEL})" not in q and f"by ({ROLE_LABEL}, le)" not in q, q
        assert f"by ({by}" in q, q
    pods = next(pq.promql for pq in plan.short if pq.field == "pods_reporting")
    assert f"group by ({by}, pod, instance)" in pods  # the namespace once
    per = QueryPlan.build(deployment_matchers("prod", "a"), W, LW, 0.99)
    assert next(pq.promql for pq in per.short if pq.field == "pods_reporting").startswith(
        f"count by ({ROLE_LABEL}) (group by ({ROLE_LABEL}, namespace, pod, instance) (")


def test_the_handler_uses_the_shared_collector_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from goodput.handlers import operator as handlers

    world = World()
    world.add("prod", "a", full())
    prom = FakeProm(world, also=(("prod", "b"),))
    import dataclasses

    settings = dataclasses.replace(handlers.SETTINGS, prometheus_url="http://prom:9090", shared_collector=True)
    monkeypatch.setattr(handlers, "SETTINGS", settings)
    monkeypatch.setattr(handlers, "_shared", {"http://prom:9090": SharedCollector("http://prom:9090", client=prom)})
    per = PrometheusCollector("http://prom:9090", client=prom)
    monkeypatch.setattr(handlers, "_collector", lambda spec, url: per)
    obs = handlers.observe({}, "prod", "a", NOW)
    assert obs is not None and obs.pools["decode"].request_rate_rps == 5.0
    handlers.observe({"slo": {"percentile": 99}}, "prod", "b", NOW)
    assert handlers._shared["http://prom:9090"].fetches == 1 and per.queries_sent == 0
    handlers.observe({"prometheus": {"labelMatchers": {"cluster": "eu"}}}, "prod", "a", NOW)  # own selector
    assert per.queries_sent == 42
    monkeypatch.setattr(handlers, "SETTINGS", dataclasses.replace(settings, shared_collector=False))
    assert handlers.observe({}, "prod", "a", NOW) == obs and per.queries_sent == 84
    monkeypatch.setattr(handlers, "SETTINGS", dataclasses.replace(settings, prometheus_url=None))
    assert handlers.observe({}, "prod", "a", NOW) is None

"""Reading Prometheus without a server: parsing answers, the queries, and every edge case of observe.

The collector is driven by a fake client that answers each query by the PoolMetrics field it is
for; the real-server behaviour (staleness, timeouts, both metric generations) is in
tests/integration/test_prometheus_collector.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL
from goodput.cli.observe import add_observe_parser, cmd_observe, observation_json, observation_text
from goodput.metrics.prometheus import (
    ITL,
    ITL_OLD,
    KV_USAGE,
    KV_USAGE_OLD,
    NAMESPACE_LABEL,
    PREFIX_HITS,
    PREFIX_HITS_OLD,
    PREFIX_QUERIES,
    PoolQuery,
    PrometheusCollector,
    build_labelled_queries,
    build_queries,
    deployment_matchers,
    labelled_values,
)
from goodput.metrics.promql import (
    MalformedResult,
    Matcher,
    Reading,
    combine,
    duration,
    group_by_label,
    parse_selector,
    parse_value,
    parse_vector,
)
from goodput.planner.observation import Observation, PoolMetrics

NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def series(value: Any, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [NOW.timestamp(), value if isinstance(value, str) else repr(float(value))]}


def role(r: str, value: Any) -> dict[str, Any]:
    return series(value, **{PROM_ROLE_LABEL: r})


# ------------------------------------------------------------------------------------------
# parse_vector / parse_value
# ------------------------------------------------------------------------------------------
def test_parse_whole_body_data_and_result_list_alike() -> None:
    result = [series("1.5", a="x"), series("2", a="y")]
    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
    for payload in (body, body["data"], result):
        samples = parse_vector(payload)
        assert [(s.labels["a"], s.value) for s in samples] == [("x", 1.5), ("y", 2.0)]
        assert samples[0].timestamp == NOW.timestamp()


def test_empty_vector_is_no_samples() -> None:
    assert parse_vector([]) == []
    assert parse_vector({"status": "success", "data": {"resultType": "vector", "result": []}}) == []


@pytest.mark.parametrize(("raw", "check"), [
    ("NaN", math.isnan), ("+Inf", lambda v: v == math.inf), ("-Inf", lambda v: v == -math.inf),
    ("Inf", lambda v: v == math.inf), ("1e3", lambda v: v == 1000.0), ("-0.25", lambda v: v == -0.25),
    (".5", lambda v: v == 0.5), (3, lambda v: v == 3.0),
])
def test_values_as_prometheus_encodes_them(raw: Any, check: Callable[[float], bool]) -> None:
    assert check(parse_value(raw))
    assert check(parse_vector([series(raw if isinstance(raw, str) else str(raw))])[0].value)


def test_scalar_results() -> None:
    assert parse_vector({"resultType": "scalar", "result": [1.0, "4"]})[0].value == 4.0
    assert parse_vector([1.0, "4"])[0].value == 4.0  # what custom_query returns for a scalar


@pytest.mark.parametrize("payload", [
    None, "text", 42, {"status": "error", "errorType": "bad_data", "error": "parse error"},
    {"status": "success"}, {"status": "success", "data": []}, {"data": {"result": []}, "status": "success"} | {
        "data": {"resultType": "matrix", "result": []}},
    {"no": "result"}, [1, 2, 3], ["not a series"], [{"metric": {}}],
    [{"metric": {}, "values": [[1, "1"]]}], [{"metric": {}, "value": [1]}], [{"metric": {}, "value": "1"}],
    [{"metric": {}, "value": [1, "one"]}], [{"metric": {}, "value": [1, None]}], [{"metric": {}, "value": [1, True]}],
    [{"metric": {}, "value": ["t", "1"]}], [{"metric": {"a": 1}, "value": [1, "1"]}],
    [{"metric": ["a"], "value": [1, "1"]}], [{"metric": {}, "value": [1, ""]}],
])
def test_malformed_answers_raise_malformed_result(payload: Any) -> None:
    with pytest.raises(MalformedResult):
        parse_vector(payload)


def test_error_body_keeps_prometheus_message() -> None:
    with pytest.raises(MalformedResult, match="bad_data: parse error at char 3"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"})


def test_group_by_label_defaults_absent_label() -> None:
    samples = parse_vector([role("decode", 1), role("decode", 2), series(5)])
    assert group_by_label(samples, PROM_ROLE_LABEL) == {"decode": [1.0, 2.0], "": [5.0]}


# ------------------------------------------------------------------------------------------
# combine: many series, NaN, Inf, none
# ------------------------------------------------------------------------------------------
def test_combine_no_series() -> None:
    assert combine([], "sum") == Reading(None, "no series")


@pytest.mark.parametrize(("values", "problem"), [
    ([math.nan], "NaN"), ([math.inf], "+Inf"), ([-math.inf], "-Inf"),
    ([1.0, math.nan], "NaN in 1 of 2 series"), ([math.inf, -math.inf, 2.0], "+Inf/-Inf in 2 of 3 series"),
])
def test_combine_non_finite_is_none_with_the_reason(values: list[float], problem: str) -> None:
    assert combine(values, "sum") == Reading(None, problem)
    assert combine(values, "max") == Reading(None, problem)


def test_combine_many_series_is_deterministic() -> None:
    values = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3]
    sums = {combine(list(p), "sum").value for p in itertools.permutations(values)}
    assert sums == {math.fsum(values)}  # exact, whatever order the series came in
    assert {combine(list(p), "max").value for p in itertools.permutations(values)} == {1e16}


# ------------------------------------------------------------------------------------------
# matchers, selectors, durations
# ------------------------------------------------------------------------------------------
def test_matcher_escapes_values() -> None:
    assert Matcher("a", "=", 'x"y\\z').render() == 'a="x\\"y\\\\z"'
    with pytest.raises(ValueError, match="label name"):
        Matcher("goodput.dev/role", "=", "x")
    with pytest.raises(ValueError, match="operator"):
        Matcher("a", "==", "x")


@pytest.mark.parametrize(("text", "expected"), [
    ("namespace=prod", [("namespace", "=", "prod")]),
    ("a=b,c!=d, e=~f.*,g!~h", [("a", "=", "b"), ("c", "!=", "d"), ("e", "=~", "f.*"), ("g", "!~", "h")]),
    ('{app="vllm", tier=~"a|b"}', [("app", "=", "vllm"), ("tier", "=~", "a|b")]),
    ('x="a,b",y=\'c"d\'', [("x", "=", "a,b"), ("y", "=", 'c"d')]),
    ("x=", [("x", "=", "")]),
    ('x="q\\"uote"', [("x", "=", 'q"uote')]),
])
def test_parse_selector(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert [(m.label, m.op, m.value) for m in parse_selector(text)] == expected


@pytest.mark.parametrize("text", ["", "{}", "novalue", "a=b,,c=d", "1a=b", "a b=c", 'a="\\q"'])
def test_bad_selectors_say_so(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


def test_duration() -> None:
    assert duration(60) == "60s"
    assert duration(0.5) == "500ms"
    assert duration(1.25) == "1250ms"
    with pytest.raises(ValueError):
        duration(0)


# ------------------------------------------------------------------------------------------
# the queries
# ------------------------------------------------------------------------------------------
MATCHERS = deployment_matchers("prod", "llama-70b")


def _by_field(long: bool = False, window: float = 60) -> dict[str, PoolQuery]:
    return {pq.field: pq for pq in build_queries(MATCHERS, window, 0.99, long=long)}


LABELLED = {"ttft_buckets", "itl_buckets", "kv_capacity_tokens"}


def test_one_query_per_pool_metrics_field() -> None:
    fields = {f for f in PoolMetrics.__dataclass_fields__ if f != "role"}
    assert set(_by_field()) == fields - LABELLED
    assert set(_by_field(long=True)) == fields - LABELLED
    assert {lq.field for lq in build_labelled_queries(MATCHERS, 60)} == LABELLED


def test_labelled_queries_read_buckets_and_the_kv_capacity() -> None:
    q = {lq.field: lq for lq in build_labelled_queries(MATCHERS, 60)}
    assert q["itl_buckets"].promql.startswith(f"sum by ({PROM_ROLE_LABEL}, le) (max without (job) (rate({ITL}_bucket{{")
    assert f"[60s]) or rate({ITL_OLD}_bucket{{" in q["itl_buckets"].promql
    assert "vllm:cache_config_info{" in q["kv_capacity_tokens"].promql
    assert "num_gpu_blocks, block_size" in q["kv_capacity_tokens"].promql

    def s(value: float, **labels: str) -> Any:
        from goodput.metrics.promql import Sample

        return Sample({PROM_ROLE_LABEL: "decode", **labels}, value, 0.0)

    # rates per second x the window: counts; le in seconds -> ms; sorted with +Inf last
    buckets = labelled_values(q["itl_buckets"], [s(1.0, le="+Inf"), s(0.5, le="0.025"), s(0.9, le="0.05")], 60)
    assert buckets == {"decode": ((25.0, 30.0), (50.0, 54.0), (math.inf, 60.0))}
    assert labelled_values(q["itl_buckets"], [s(0.0, le="0.025"), s(0.0, le="+Inf")], 60) == {"decode": None}
    assert labelled_values(q["itl_buckets"], [s(math.nan, le="0.025"), s(1, le="+Inf")], 60) == {"decode": None}
    # the smallest pod's blocks x block size; an engine still profiling says "None"
    info = [s(1, pod="a", num_gpu_blocks="1000", block_size="16"), s(1, pod="b", num_gpu_blocks="900", block_size="16"),
            s(1, pod="c", num_gpu_blocks="None", block_size="16")]
    assert labelled_values(q["kv_capacity_tokens"], info, 60) == {"decode": 14400.0}
    assert labelled_values(q["kv_capacity_tokens"], info[2:], 60) == {"decode": None}


def test_queries_select_the_deployment_and_group_by_role() -> None:
    sel = (f'{NAMESPACE_LABEL}="prod",{PROM_DEPLOYMENT_LABEL}="llama-70b",'
           f'{PROM_ROLE_LABEL}=~"aggregated|prefill|decode"')
    for pq in _by_field().values():
        assert sel in pq.promql
        assert f"by ({PROM_ROLE_LABEL}" in pq.promql


def test_queries_use_vllm_names_and_both_generations() -> None:
    q = {f: pq.promql for f, pq in _by_field().items()}
    assert "rate(vllm:request_success_total{" in q["request_rate_rps"]
    assert "deriv(vllm:num_requests_waiting{" in q["queue_growth_rps"]
    assert "rate(vllm:prompt_tokens_total{" in q["prompt_tokens_tps"]
    assert "rate(vllm:generation_tokens_total{" in q["generation_tokens_tps"]
    assert "vllm:request_prompt_tokens_sum{" in q["input_len_mean"]
    assert "vllm:request_prompt_tokens_count{" in q["input_len_mean"]
    assert "histogram_quantile(0.99, sum by (goodput_dev_role, le)" in q["output_len_p99"]
    assert "vllm:request_generation_tokens_bucket{" in q["output_len_p99"]
    assert "vllm:time_to_first_token_seconds_bucket{" in q["ttft_ms"]
    # both generations, pod by pod: the new name first, so it wins where a pod exports both
    assert f"(rate({ITL}_bucket{{" in q["itl_ms"] and f"[60s]) or rate({ITL_OLD}_bucket{{" in q["itl_ms"]
    assert q["kv_cache_usage"].startswith(f"max by ({PROM_ROLE_LABEL}) ({KV_USAGE}{{")
    assert f"}} or {KV_USAGE_OLD}{{" in q["kv_cache_usage"]
    assert "rate(vllm:num_preemptions_total{" in q["preemptions_rps"]
    assert f"[60s]) or rate({PREFIX_HITS_OLD}{{" in q["prefix_cache_hit_rate"]
    assert q["prefix_cache_hit_rate"].index(PREFIX_HITS) < q["prefix_cache_hit_rate"].index(PREFIX_QUERIES)
    assert "vllm:num_requests_running{" in q["pods_reporting"]
    assert "[60s]" in q["request_rate_rps"]
    for f in ("request_rate_rps", "running", "waiting", "ttft_ms"):
        assert "max without (job)" in q[f]  # duplicate scrape jobs collapse


def test_long_window_averages_gauges_over_time() -> None:
    q = {f: pq.promql for f, pq in _by_field(long=True, window=600).items()}
    for f in ("running", "waiting", "kv_cache_usage"):
        assert q[f].startswith("avg_over_time((") and q[f].endswith(")[600s:10s])")
    assert "[600s]" in q["request_rate_rps"]
    assert not q["pods_reporting"].startswith("avg_over_time")


def test_arrival_dispersion_is_successive_bins_of_completions_over_the_window() -> None:
    q = _by_field(long=True, window=600)["arrival_dispersion"].promql
    # completions per 30 s bin, this bin against the one before, at 30 s steps over the window
    assert "increase(vllm:request_success_total{" in q and "[30s])" in q and "[30s] offset 30s)" in q
    assert q.startswith("(avg_over_time(((") and ") ^ 2)[600s:30s])" in q
    assert "/ (2 * avg_over_time((" in q and q.endswith(")[600s:30s])))")
    assert "max without (job)" in q


# ------------------------------------------------------------------------------------------
# the collector, with a fake client
# ------------------------------------------------------------------------------------------
class FakeClient:
    def __init__(self, answer: Callable[[str], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any] | None, Any]] = []

    def custom_query(self, query: str, params: dict[str, Any] | None = None, timeout: Any = None) -> Any:
        self.calls.append((query, params, timeout))
        result = self.answer(query)
        if isinstance(result, BaseException):
            raise result
        return result


def by_field(short: Mapping[str, list[dict[str, Any]]], long: Mapping[str, list[dict[str, Any]]] | None = None,
             matchers: tuple[Matcher, ...] = MATCHERS) -> Callable[[str], Any]:
    """An answer function: the query's field → its result list (default: no series)."""
    fields = {pq.promql: (True, pq.field) for pq in build_queries(matchers, 600, 0.99, long=True)}
    fields |= {pq.promql: (False, pq.field) for pq in build_queries(matchers, 60, 0.99)}  # shared: now
    fields |= {lq.promql: (False, lq.field) for lq in build_labelled_queries(matchers, 60)}
    long = short if long is None else long

    def answer(query: str) -> Any:
        is_long, field = fields[query]
        return list((long if is_long else short).get(field, []))

    return answer


FULL = {
    "pods_reporting": [role("decode", 2), role("prefill", 1)],
    "request_rate_rps": [role("decode", 5), role("prefill", 5)],
    "queue_growth_rps": [role("decode", -0.5), role("prefill", 0.25)],
    "prompt_tokens_tps": [role("decode", 6000), role("prefill", 6000)],
    "generation_tokens_tps": [role("decode", 1050), role("prefill", 5)],
    "input_len_mean": [role("decode", 1200), role("prefill", 1200)],
    "input_len_p99": [role("decode", 3500), role("prefill", 3500)],
    "output_len_mean": [role("decode", 210), role("prefill", 1)],
    "output_len_p99": [role("decode", 750), role("prefill", 1)],
    "ttft_ms": [role("decode", 0.875), role("prefill", 0.5)],
    "itl_ms": [role("decode", 0.0875)],
    "itl_mean_ms": [role("decode", 0.05)],
    "kv_cache_usage": [role("decode", 0.7), role("prefill", 0.2)],
    "running": [role("decode", 30), role("prefill", 4)],
    "waiting": [role("decode", 5), role("prefill", 2)],
    "preemptions_rps": [role("decode", 0.1), role("prefill", 0)],
    "prefix_cache_hit_rate": [role("decode", 0.2), role("prefill", 0.5)],
    "ttft_mean_ms": [role("decode", 0.4), role("prefill", 0.3)],
    "prefill_time_mean_ms": [role("decode", 0.01), role("prefill", 0.2)],
    "arrival_dispersion": [role("decode", 1.5), role("prefill", 3.0)],
}


def collector(answer: Callable[[str], Any], **kw: Any) -> tuple[PrometheusCollector, FakeClient]:
    client = FakeClient(answer)
    return PrometheusCollector("http://prom:9090", client=client, **kw), client


def test_full_answer_becomes_pools() -> None:
    c, client = collector(by_field(FULL))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is None
    assert list(obs.pools) == ["prefill", "decode"]
    d = obs.pools["decode"]
    assert d == PoolMetrics(role="decode", pods_reporting=2, request_rate_rps=5.0, queue_growth_rps=-0.5,
                            prompt_tokens_tps=6000.0, generation_tokens_tps=1050.0, input_len_mean=1200.0,
                            input_len_p99=3500.0, output_len_mean=210.0, output_len_p99=750.0, ttft_ms=875.0,
                            itl_ms=87.5, itl_mean_ms=50.0, kv_cache_usage=0.7, running=30.0, waiting=5.0,
                            preemptions_rps=0.1,
                            prefix_cache_hit_rate=0.2, ttft_mean_ms=400.0, prefill_time_mean_ms=10.0,
                            arrival_dispersion=1.5)
    assert isinstance(d.pods_reporting, int)
    assert obs.long_pools["decode"] == d
    assert obs.available and obs.serving_pool() is d
    assert d.arrival_rate_rps == 4.5  # a draining queue: 0.5 req/s of the completions came from it
    # prefill has no ITL: said, in both windows, in one sentence
    assert obs.missing == tuple(f"{field}: no series of {ITL} (or {ITL_OLD}) for the prefill pool of "
                                "prod/llama-70b (60 s and 600 s windows)" for field in ("itl_ms", "itl_mean_ms"))
    # every query is evaluated at `now`, with Prometheus' own query timeout, and the client timeout
    # pods_reporting is the same query in both windows: asked once; buckets and KV capacity: short only
    assert len(client.calls) == 2 * 20 - 1 + 3  # 20 fields: the arrival dispersion is the 20th (issue 16)
    assert all(p is not None and p["time"] == f"{NOW.timestamp():.3f}" and p["timeout"] == "5s" and t == 5.0
               for _, p, t in client.calls)


def test_naive_now_is_utc() -> None:
    c, client = collector(by_field(FULL))
    c.observe("prod", "llama-70b", NOW.replace(tzinfo=None))
    assert client.calls[0][1] is not None and client.calls[0][1]["time"] == f"{NOW.timestamp():.3f}"


def test_no_series_at_all_is_no_pools_and_not_available() -> None:
    c, _ = collector(lambda q: [])
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is None and obs.pools == {} and obs.long_pools == {}
    assert not obs.available
    assert len(obs.missing) == 1 and "no vLLM series for prod/llama-70b" in obs.missing[0]
    assert "goodput.dev/role" in obs.missing[0] and PROM_ROLE_LABEL in obs.missing[0]


def test_missing_metric_is_none_with_a_note_naming_metric_and_pool() -> None:
    data = {k: v for k, v in FULL.items() if k != "prefix_cache_hit_rate"}
    c, _ = collector(by_field(data))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.pools["decode"].prefix_cache_hit_rate is None
    notes = [n for n in obs.missing if n.startswith("prefix_cache_hit_rate")]
    assert len(notes) == 2  # one per pool
    assert any("decode pool of prod/llama-70b" in n and PREFIX_HITS in n and "V0" in n for n in notes)


def test_pool_only_in_the_long_window() -> None:
    c, _ = collector(by_field({}, long=FULL))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.pools == {} and set(obs.long_pools) == {"decode", "prefill"}
    assert obs.long_pools["decode"].request_rate_rps == 5.0
    assert obs.long_pools["decode"].pods_reporting is None  # counts the pods live now, in both windows
    assert not obs.available
    assert any("no vLLM series for prod/llama-70b in the last 60 s" in n for n in obs.missing)


@pytest.mark.parametrize(("raw", "word"), [("NaN", "NaN"), ("+Inf", "+Inf"), ("-Inf", "-Inf")])
def test_non_finite_sample_is_none_with_a_note(raw: str, word: str) -> None:
    data = dict(FULL, ttft_ms=[role("decode", raw), role("prefill", 0.5)])
    c, _ = collector(by_field(data))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.pools["decode"].ttft_ms is None and obs.pools["prefill"].ttft_ms == 500.0
    note = next(n for n in obs.missing if n.startswith("ttft_ms"))
    assert f"vllm:time_to_first_token_seconds is {word} for the decode pool of prod/llama-70b" in note


def test_nan_request_rate_makes_the_observation_unavailable_to_plan() -> None:
    data = dict(FULL, request_rate_rps=[role("decode", "NaN")])
    c, _ = collector(by_field(data))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is None and obs.pools["decode"].request_rate_rps is None and not obs.available


def test_many_series_for_one_pool_are_summed_or_maxed_deterministically() -> None:
    data = dict(FULL,
                request_rate_rps=[role("decode", 1.5), role("decode", 2.25), role("decode", 0.25)],
                kv_cache_usage=[role("decode", 0.3), role("decode", 0.9), role("decode", 0.5)],
                ttft_ms=[role("decode", 0.2), role("decode", 0.4)],
                running=[role("decode", 10), role("decode", 20)])
    results = set()
    for perm in itertools.permutations(data["request_rate_rps"]):
        c, _ = collector(by_field(dict(data, request_rate_rps=list(perm))))
        d = c.observe("prod", "llama-70b", NOW).pools["decode"]
        results.add((d.request_rate_rps, d.kv_cache_usage, d.ttft_ms, d.running))
    assert results == {(4.0, 0.9, 400.0, 30.0)}


def test_unknown_roles_are_ignored_with_a_note_and_blank_role_is_aggregated_for_selectors() -> None:
    given = parse_selector("namespace=prod,app=vllm")
    data = {"request_rate_rps": [series(3.0), role("router", 1.0)], "pods_reporting": [series(2)]}
    c, _ = collector(by_field(data, matchers=given))
    obs = c.observe_selector("namespace=prod,app=vllm", NOW)
    assert set(obs.pools) == {"aggregated"}
    assert obs.pools["aggregated"].request_rate_rps == 3.0 and obs.pools["aggregated"].pods_reporting == 2
    assert any("goodput_dev_role='router'" in n and '{namespace="prod",app="vllm"}' in n for n in obs.missing)


def test_blank_and_aggregated_roles_are_one_pool() -> None:
    given = parse_selector("app=vllm")
    data = {"request_rate_rps": [series(3.0), role("aggregated", 1.0)], "kv_cache_usage": [series(0.2),
                                                                                           role("aggregated", 0.6)]}
    c, _ = collector(by_field(data, matchers=given))
    pool = c.observe_selector("app=vllm", NOW).pools["aggregated"]
    assert pool.request_rate_rps == 4.0 and pool.kv_cache_usage == 0.6


def test_selector_replaces_the_deployment_matchers() -> None:
    c, client = collector(lambda q: [])
    c.observe_selector({"app": "vllm"}, NOW)
    assert all('{app="vllm"}' in q and PROM_DEPLOYMENT_LABEL not in q for q, _, _ in client.calls)


def test_extra_matchers_go_into_every_query() -> None:
    c, client = collector(lambda q: [], extra_matchers={"cluster": "eu-1"})
    c.observe("prod", "llama-70b", NOW)
    assert all('cluster="eu-1"' in q for q, _, _ in client.calls)


@pytest.mark.parametrize(("failure", "words"), [
    (requests.exceptions.ReadTimeout("HTTPConnectionPool(host='p', port=1): Read timed out. (read timeout=5)"),
     ["did not answer within 5 s (timeout)", "Read timed out"]),
    (requests.exceptions.ConnectTimeout("connect timed out"), ["timeout"]),
    (requests.exceptions.ConnectionError(
        "HTTPConnectionPool(host='p', port=1): Max retries exceeded with url: /api/v1/query (Caused by "
        "NewConnectionError(\"HTTPConnection(host='p', port=1): Failed to establish a new connection: "
        "[Errno 111] Connection refused\"))"),
     ["is unreachable: Failed to establish a new connection: [Errno 111] Connection refused"]),
    (requests.exceptions.ConnectionError("Max retries exceeded (Caused by ReadTimeoutError('Read timed out.'))"),
     ["(timeout)"]),
    (PrometheusApiClientException(
        "HTTP Status Code 400 (b'{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"parse error\"}')"),
     ["answered HTTP 400: parse error"]),
    (PrometheusApiClientException("HTTP Status Code 503 (b'Service Unavailable')"), ["HTTP 503"]),
    (requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0), ["malformed answer (not JSON"]),
    (KeyError("data"), ["malformed answer (KeyError"]),
    (RuntimeError("boom"), ["failed: RuntimeError: boom"]),
])
def test_source_failures_are_unavailable_never_raised(failure: BaseException, words: list[str]) -> None:
    c, client = collector(lambda q: failure)
    obs = c.observe("prod", "llama-70b", NOW, window_s=30, long_window_s=300)
    assert obs.error is not None and not obs.available
    assert obs.pools == {} and obs.window_s == 30 and obs.long_window_s == 300 and obs.time == NOW
    assert "http://prom:9090" in obs.error
    for w in words:
        assert w in obs.error
    assert len(client.calls) == 1  # the first failure ends the observation


@pytest.mark.parametrize("bad", [{"oops": 1}, [{"metric": {}, "value": [1, "x"]}], "<html>", None, 5])
def test_malformed_result_is_unavailable(bad: Any) -> None:
    c, _ = collector(lambda q: bad)
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is not None and "malformed answer" in obs.error


def test_a_failure_halfway_discards_the_partial_observation() -> None:
    n = itertools.count()
    c, _ = collector(lambda q: [role("decode", 1)] if next(n) < 5 else requests.exceptions.ReadTimeout("slow"))
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is not None and obs.pools == {}


def test_whole_observation_budget() -> None:
    def slow(q: str) -> Any:
        time.sleep(0.02)
        return []

    c, client = collector(slow, timeout_s=1.0, budget_s=0.05)
    obs = c.observe("prod", "llama-70b", NOW)
    assert obs.error is not None and "took longer than 0.05 s" in obs.error and "(timeout)" in obs.error
    assert len(client.calls) < 31
    assert all(t <= 0.05 for _, _, t in client.calls)  # each request gets at most what is left


@pytest.mark.parametrize(("kw", "word"), [
    ({"window_s": 0}, "window_s"), ({"window_s": math.nan}, "window_s"), ({"long_window_s": -1}, "long_window_s"),
    ({"quantile": 1.0}, "quantile"), ({"quantile": 0}, "quantile"), ({"window_s": "60"}, "window_s"),
    ({"now": "2025-01-01"}, "time"),
])
def test_bad_arguments_are_unavailable_not_raised(kw: dict[str, Any], word: str) -> None:
    c, client = collector(by_field(FULL))
    now = kw.pop("now", NOW)
    obs = c.observe("prod", "llama-70b", now, **kw)
    assert obs.error is not None and word in obs.error and client.calls == []


@pytest.mark.parametrize(("namespace", "name"), [("", "llama"), ("prod", ""), (None, "llama")])
def test_empty_namespace_or_name_is_unavailable_not_everything(namespace: Any, name: Any) -> None:
    c, client = collector(by_field(FULL))
    obs = c.observe(namespace, name, NOW)
    assert obs.error is not None and "non-empty" in obs.error and client.calls == []


def test_bad_selector_is_unavailable_not_raised() -> None:
    c, client = collector(by_field(FULL))
    assert "invalid selector" in (c.observe_selector("not a selector", NOW).error or "")
    assert "invalid selector" in (c.observe_selector("", NOW).error or "")
    assert client.calls == []


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        PrometheusCollector("http://p", timeout_s=0)
    with pytest.raises(ValueError):
        PrometheusCollector("http://p", extra_matchers={"bad label": "x"})


# ------------------------------------------------------------------------------------------
# goodput observe
# ------------------------------------------------------------------------------------------
def test_observation_json_is_the_dataclass() -> None:
    c, _ = collector(by_field(FULL))
    obs = c.observe("prod", "llama-70b", NOW)
    data = json.loads(observation_json(obs))
    assert data["time"] == "2025-06-01T12:00:00+00:00"
    assert data["pools"]["decode"]["ttft_ms"] == 875.0 and data["pools"]["prefill"]["itl_ms"] is None
    assert data["error"] is None and isinstance(data["missing"], list)
    assert set(data) == {"time", "window_s", "long_window_s", "pools", "long_pools", "missing", "error"}


def test_observation_text() -> None:
    c, _ = collector(by_field(FULL))
    text = observation_text(c.observe("prod", "llama-70b", NOW), "prod/llama-70b", "http://prom:9090")
    assert "prefill pool" in text and "decode pool" in text and "ttft_ms" in text and "875" in text
    assert "missing:\n  - itl_ms: no series" in text
    down = observation_text(Observation.unavailable(NOW, "Prometheus at x is unreachable"), "a/b", "x")
    assert "unavailable: Prometheus at x is unreachable" in down


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="goodput")
    add_observe_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["observe", *argv])


def test_observe_arguments() -> None:
    a = _args("--prometheus", "http://p", "--name", "llama")
    # namespace None: resolved when it runs, from the kubeconfig context (else "default")
    assert (a.namespace, a.window_seconds, a.selector, a.output, a.quantile) == (None, 60.0, None, "table", 0.99)
    a = _args("--prometheus", "http://p", "--selector", "app=vllm,tier=~'a|b'", "--window-seconds", "30", "--json")
    assert [m.render() for m in a.selector] == ['app="vllm"', 'tier=~"a|b"'] and a.window_seconds == 30.0
    assert a.output == "json"
    a = _args("--prometheus", "http://p", "--name", "x", "--window-s", "45", "--percentile", "95", "-o", "yaml")
    assert (a.window_seconds, a.quantile, a.output) == (45.0, 0.95, "yaml")
    for bad in (["--name", "x", "--selector", "a=b"], [], ["--selector", "a b"], ["--name", "x", "--quantile", "99"],
                ["--name", "x", "--percentile", "0.99"], ["--name", "x", "--percentile", "99", "--quantile", ".9"]):
        with pytest.raises(SystemExit) as exc:
            _args("--prometheus", "http://p", *bad)
        assert exc.value.code == 2


def test_cmd_observe_unreachable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--prometheus", "http://127.0.0.1:1", "--name", "llama", "-n", "prod", "--json")
    assert cmd_observe(args) == 1
    data = json.loads(capsys.readouterr().out)
    assert "unreachable" in data["error"] and data["pools"] == {}


def test_demand_is_completions_plus_queue_growth_either_way() -> None:
    """Requests are conserved: a draining backlog's completions are not demand (issue 12: a pool
    draining after a scale-up read as rising load and scaled up again)."""
    growing = PoolMetrics("aggregated", request_rate_rps=4.0, queue_growth_rps=1.5)
    draining = PoolMetrics("aggregated", request_rate_rps=4.0, queue_growth_rps=-1.5)
    unknown = PoolMetrics("aggregated", request_rate_rps=4.0)
    assert growing.arrival_rate_rps == 5.5
    assert draining.arrival_rate_rps == 2.5
    assert unknown.arrival_rate_rps == 4.0
    assert PoolMetrics("aggregated", request_rate_rps=1.0, queue_growth_rps=-3.0).arrival_rate_rps == 0.0
    assert PoolMetrics("aggregated").arrival_rate_rps is None

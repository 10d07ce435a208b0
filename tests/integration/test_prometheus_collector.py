"""The Prometheus collector against a real Prometheus (Debian's /usr/bin/prometheus) scraping fake vLLM pods.

Each fake pod is an http.server on 127.0.0.1 serving vLLM's exposition text, with counters and
histograms that grow linearly in time, so every rate, mean and percentile is known exactly.
Prometheus finds them through a file_sd targets file carrying the Kubernetes meta labels and
relabels them the usual way. Deployments (namespace prod):

- ``llama``: vLLM >= 0.11 names; decode-0, decode-1, prefill-0
- ``llama-old``: the same pods with the older names (gpu_cache_usage_perc,
  time_per_output_token_seconds, no prefix-cache counters)
- ``llama-dup``: the decode pods of ``llama`` again, scraped by two jobs (duplicate scrapes)
- ``llama-mixed``: halfway through an upgrade: decode-0 exports both generations (the old ones
  with wrong values, so a leak shows), decode-1 only the old ones
- ``churn``: two decode pods, one of which disappears (staleness)

Like the rest of tests/integration these never skip: without a prometheus binary they fail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polling
import pytest

from goodput.api.vocabulary import DEPLOYMENT_LABEL, ROLE_LABEL
from goodput.cli.observe import main as observe_main
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, kubernetes_pod_target
from goodput.metrics.prometheus import PrometheusCollector
from goodput.metrics.shared import SharedCollector
from goodput.planner.observation import Observation, PoolMetrics

WINDOW_S = 10.0
LONG_WINDOW_S = 12.0
wait_for = partial(polling.wait_for, timeout=30.0, interval=0.25)

# vLLM's buckets, and cumulative fractions: p99 falls halfway into the bucket from 0.98 to 1.0.
TOKEN_BUCKETS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
TTFT_BUCKETS: list[float] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                             7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS: list[float] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                            10.0, 20.0, 40.0, 80.0]
PROMPT_CDF: dict[float, float] = {500: 0.5, 1000: 0.9, 2000: 0.98, 5000: 1.0}  # p99 3500
OUTPUT_CDF: dict[float, float] = {100: 0.5, 200: 0.9, 500: 0.98, 1000: 1.0}  # p99 750
TTFT_CDF: dict[float, float] = {0.25: 0.5, 0.5: 0.9, 0.75: 0.98, 1.0: 1.0}  # p99 0.875 s
ITL_CDF: dict[float, float] = {0.025: 0.5, 0.05: 0.9, 0.075: 0.98, 0.1: 1.0}  # p99 0.0875 s
# vllm:request_prefill_time_seconds (scheduled -> first token; both name generations): mean 0.2 s.
PREFILL_BUCKETS: list[float] = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0]
PREFILL_CDF: dict[float, float] = {0.3: 0.9, 0.5: 1.0}
PREFILL_MEAN_S = 0.2
PROMPT_MEAN, OUTPUT_MEAN = 1200.0, 210.0


def _cdf(buckets: list[float], points: dict[float, float]) -> list[tuple[str, float]]:
    out, frac = [], 0.0
    for le in buckets:
        frac = points.get(le, frac)
        out.append((f"{float(le)}", frac))
    return [*out, ("+Inf", 1.0)]


# ------------------------------------------------------------------------------------------
# a fake vLLM pod
# ------------------------------------------------------------------------------------------
@dataclass
class PodSpec:
    request_rate: float  # requests completed per second
    running: float
    waiting: float
    kv: float
    waiting_growth: float = 0.0  # waiting += this per second
    preemption_rate: float = 0.0
    prefix_queries_rate: float = 1000.0
    prefix_hits_rate: float = 0.0


BOGUS_ITL_CDF: dict[float, float] = {0.5: 0.5, 1.0: 1.0}  # what a pod's old-name histogram says in "both"


class FakeVllmPod:
    """names: "new" (vLLM >= 0.11), "old" (older: no prefix counters), "both" (0.9/0.10: old names
    as well, here with deliberately different values)."""

    def __init__(self, spec: PodSpec, *, names: str = "new") -> None:
        assert names in ("new", "old", "both")
        self.spec = spec
        self.names = names
        self.t0 = time.time()
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pod.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def exposition(self) -> str:
        s, el = self.spec, time.time() - self.t0
        lab = 'model_name="m",engine="0"'
        reqs = s.request_rate * el
        lines: list[str] = []

        def metric(name: str, kind: str, value: float, labels: str = lab) -> None:
            lines.append(f"# TYPE {name.removesuffix('_total')} {kind}")
            lines.append(f"{name}{{{labels}}} {value!r}")

        def histogram(name: str, cdf: list[tuple[str, float]], count: float, total: float) -> None:
            lines.append(f"# TYPE {name} histogram")
            lines.extend(f'{name}_bucket{{{lab},le="{le}"}} {frac * count!r}' for le, frac in cdf)
            lines.extend([f"{name}_sum{{{lab}}} {total!r}", f"{name}_count{{{lab}}} {count!r}"])

        metric("vllm:num_requests_running", "gauge", s.running)
        metric("vllm:num_requests_waiting", "gauge", s.waiting + s.waiting_growth * el)
        new, old = self.names in ("new", "both"), self.names in ("old", "both")
        bogus = self.names == "both"
        if new:
            metric("vllm:kv_cache_usage_perc", "gauge", s.kv)
            metric("vllm:prefix_cache_queries_total", "counter", s.prefix_queries_rate * el)
            metric("vllm:prefix_cache_hits_total", "counter", s.prefix_hits_rate * el)
        if old:
            metric("vllm:gpu_cache_usage_perc", "gauge", 0.99 if bogus else s.kv)
        if bogus:
            metric("vllm:gpu_prefix_cache_queries_total", "counter", s.prefix_queries_rate * el)
            metric("vllm:gpu_prefix_cache_hits_total", "counter", 0.9 * s.prefix_queries_rate * el)
        metric("vllm:num_preemptions_total", "counter", s.preemption_rate * el)
        metric("vllm:prompt_tokens_total", "counter", reqs * PROMPT_MEAN)
        metric("vllm:generation_tokens_total", "counter", reqs * OUTPUT_MEAN)
        lines.append("# TYPE vllm:request_success counter")
        lines.append(f'vllm:request_success_total{{{lab},finished_reason="stop"}} {0.75 * reqs!r}')
        lines.append(f'vllm:request_success_total{{{lab},finished_reason="length"}} {0.25 * reqs!r}')
        histogram("vllm:request_prompt_tokens", _cdf(TOKEN_BUCKETS, PROMPT_CDF), reqs, reqs * PROMPT_MEAN)
        histogram("vllm:request_generation_tokens", _cdf(TOKEN_BUCKETS, OUTPUT_CDF), reqs, reqs * OUTPUT_MEAN)
        histogram("vllm:time_to_first_token_seconds", _cdf(TTFT_BUCKETS, TTFT_CDF), reqs, reqs * 0.3)
        histogram("vllm:request_prefill_time_seconds", _cdf(PREFILL_BUCKETS, PREFILL_CDF), reqs,
                  reqs * PREFILL_MEAN_S)
        tokens = reqs * OUTPUT_MEAN
        if new:
            histogram("vllm:inter_token_latency_seconds", _cdf(ITL_BUCKETS, ITL_CDF), tokens, tokens * 0.03)
        if old:
            histogram("vllm:time_per_output_token_seconds", _cdf(ITL_BUCKETS, BOGUS_ITL_CDF if bogus else ITL_CDF),
                      tokens, tokens * 0.03)
        return "\n".join(lines) + "\n"


DECODE_0 = PodSpec(request_rate=3.0, running=20, waiting=4, kv=0.4, preemption_rate=0.1, prefix_hits_rate=300)
DECODE_1 = PodSpec(request_rate=2.0, running=10, waiting=1, kv=0.7, prefix_hits_rate=100)
PREFILL_0 = PodSpec(request_rate=5.0, running=4, waiting=2, kv=0.2, waiting_growth=0.5, prefix_queries_rate=2000,
                    prefix_hits_rate=1000)
CHURN = PodSpec(request_rate=1.0, running=5, waiting=3, kv=0.5)


@dataclass
class Fleet:
    prom: LocalPrometheus
    pods: dict[str, tuple[FakeVllmPod, dict[str, str]]]  # pod name → (server, meta labels)
    dup_pods: tuple[str, ...]

    def targets(self, without: tuple[str, ...] = ()) -> list[tuple[str, dict[str, str]]]:
        return [(pod.address, labels) for name, (pod, labels) in self.pods.items() if name not in without]

    def publish(self, without: tuple[str, ...] = ()) -> None:
        self.prom.set_targets(self.targets(without), job="vllm")
        self.prom.set_targets([(self.pods[n][0].address, self.pods[n][1]) for n in self.dup_pods
                               if n not in without], job="vllm-dup")


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------
def _need_prometheus() -> None:
    if not Path(DEFAULT_BINARY).exists():
        pytest.fail(f"these tests need Prometheus at {DEFAULT_BINARY}: apt-get install prometheus "
                    "(./dev setup installs it in CI); they never skip", pytrace=False)


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in os.environ.get(key, "").split(",") if h]
        monkeypatch.setenv(key, ",".join([*have, "127.0.0.1", "localhost"]))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    _need_prometheus()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    pods: dict[str, tuple[FakeVllmPod, dict[str, str]]] = {}

    def add(deployment: str, name: str, role: str, spec: PodSpec, names: str = "new") -> None:
        labels = kubernetes_pod_target("prod", name, {DEPLOYMENT_LABEL: deployment, ROLE_LABEL: role,
                                                      "app.kubernetes.io/name": "vllm"})
        pods[name] = (FakeVllmPod(spec, names=names), labels)

    for deployment, names in (("llama", "new"), ("llama-old", "old")):
        add(deployment, f"{deployment}-decode-0", "decode", DECODE_0, names)
        add(deployment, f"{deployment}-decode-1", "decode", DECODE_1, names)
        add(deployment, f"{deployment}-prefill-0", "prefill", PREFILL_0, names)
    add("llama-mixed", "llama-mixed-decode-0", "decode", DECODE_0, "both")
    add("llama-mixed", "llama-mixed-decode-1", "decode", DECODE_1, "old")
    add("llama-dup", "llama-dup-decode-0", "decode", DECODE_0)
    add("llama-dup", "llama-dup-decode-1", "decode", DECODE_1)
    add("churn", "churn-decode-0", "decode", CHURN)
    add("churn", "churn-decode-1", "decode", CHURN)
    prom = LocalPrometheus(tmp_path_factory.mktemp("prometheus"), scrape_interval_s=1, jobs=("vllm", "vllm-dup"))
    fl = Fleet(prom, pods, dup_pods=("llama-dup-decode-0", "llama-dup-decode-1"))
    try:
        fl.publish()  # before start: discovered at once
        with prom:
            n = len(pods) + len(fl.dup_pods)
            wait_for(f"{n} targets up", lambda: _up(prom) >= n)
            time.sleep(LONG_WINDOW_S + 1.5)  # whole windows of samples, from every pod
            yield fl
    finally:
        for pod, _ in pods.values():
            pod.close()


def _up(prom: LocalPrometheus) -> int:
    result = prom.query("count(up == 1)")
    return int(float(result[0]["value"][1])) if result else 0


def observe(prom: LocalPrometheus, name: str, **kw: Any) -> Observation:
    kw = {"window_s": WINDOW_S, "long_window_s": LONG_WINDOW_S, **kw}
    t0 = time.monotonic()
    obs = PrometheusCollector(prom.url, timeout_s=5).observe("prod", name, dt.datetime.now(dt.UTC), **kw)
    assert time.monotonic() - t0 < 5, "one observation of a local Prometheus takes milliseconds"
    return obs


def close(actual: float | None, expected: float, rel: float = 0.1, abs_: float = 1e-9) -> bool:
    return actual is not None and actual == pytest.approx(expected, rel=rel, abs=abs_)


def check_llama_pools(obs: Observation) -> None:
    assert obs.error is None, obs.error
    assert list(obs.pools) == ["prefill", "decode"] and obs.available
    d, p = obs.pools["decode"], obs.pools["prefill"]
    assert d.pods_reporting == 2 and p.pods_reporting == 1
    assert close(d.request_rate_rps, 5.0), d
    assert close(p.request_rate_rps, 5.0), p
    assert close(d.prompt_tokens_tps, 5.0 * PROMPT_MEAN)
    assert close(d.generation_tokens_tps, 5.0 * OUTPUT_MEAN)
    assert close(d.input_len_mean, PROMPT_MEAN, rel=0.01) and close(d.output_len_mean, OUTPUT_MEAN, rel=0.01)
    assert close(d.input_len_p99, 3500, rel=0.02) and close(d.output_len_p99, 750, rel=0.02)
    assert close(d.ttft_ms, 875, rel=0.02), d.ttft_ms
    assert close(d.itl_ms, 87.5, rel=0.02), d.itl_ms
    assert d.kv_cache_usage == pytest.approx(0.7) and p.kv_cache_usage == pytest.approx(0.2)  # max over pods
    assert d.running == 30 and d.waiting == 5  # sums over pods
    assert close(d.preemptions_rps, 0.1, rel=0.15)
    assert d.queue_growth_rps is not None and abs(d.queue_growth_rps) < 0.01
    assert close(p.queue_growth_rps, 0.5, rel=0.1)  # the prefill queue grows by 0.5/s
    assert p.waiting is not None and p.waiting > 2
    assert d.arrival_rate_rps == d.request_rate_rps
    # the long window: gauges averaged over time, same constants; rates present
    ld = obs.long_pools["decode"]
    assert ld.kv_cache_usage == pytest.approx(0.7) and ld.running == pytest.approx(30) and ld.waiting == 5
    assert ld.request_rate_rps is not None and ld.request_rate_rps > 0
    assert close(ld.ttft_ms, 875, rel=0.02)


# ------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------
def test_new_metric_names(fleet: Fleet) -> None:
    obs = observe(fleet.prom, "llama")
    check_llama_pools(obs)
    assert close(obs.pools["decode"].prefix_cache_hit_rate, 400 / 2000, rel=0.02)
    assert close(obs.pools["prefill"].prefix_cache_hit_rate, 0.5, rel=0.02)
    assert obs.missing == (), obs.missing
    assert close(obs.pools["decode"].prefill_time_mean_ms, PREFILL_MEAN_S * 1000.0, rel=0.02)


def test_old_metric_names(fleet: Fleet) -> None:
    obs = observe(fleet.prom, "llama-old")
    check_llama_pools(obs)  # gpu_cache_usage_perc and time_per_output_token_seconds stand in
    for pool in (*obs.pools.values(), *obs.long_pools.values()):
        assert pool.prefix_cache_hit_rate is None
    assert len(obs.missing) == 2, obs.missing  # one per pool, both windows in one sentence
    for note, role in zip(sorted(obs.missing), ("decode", "prefill"), strict=True):
        assert note.startswith("prefix_cache_hit_rate: no series of vllm:prefix_cache_hits_total")
        assert f"the {role} pool of prod/llama-old" in note and "10 s and 12 s windows" in note


def test_both_generations_pod_by_pod(fleet: Fleet) -> None:
    """Mid-upgrade: the new name wins on the pod that exports both, the old one serves the other pod."""
    d = observe(fleet.prom, "llama-mixed").pools["decode"]
    assert d.pods_reporting == 2 and close(d.request_rate_rps, 5.0)
    assert d.kv_cache_usage == pytest.approx(0.7)  # max(0.4 new of pod 0, 0.7 old of pod 1), not the bogus 0.99
    assert close(d.itl_ms, 87.5, rel=0.02), d.itl_ms  # neither histogram of pod 0's old name (p99 ~ 1 s)
    assert close(d.prefix_cache_hit_rate, 0.3, rel=0.02)  # pod 0's new counters only (its old ones say 0.9)


def test_duplicate_scrape_jobs_count_once(fleet: Fleet) -> None:
    assert len(fleet.prom.query('vllm:num_requests_running{goodput_dev_inference_deployment="llama-dup"}')) == 4
    obs = observe(fleet.prom, "llama-dup")
    d = obs.pools["decode"]
    assert d.pods_reporting == 2 and d.running == 30 and d.waiting == 5
    assert close(d.request_rate_rps, 5.0) and close(d.ttft_ms, 875, rel=0.02)
    assert d.kv_cache_usage == pytest.approx(0.7)


def test_unknown_deployment_is_no_data_not_zero(fleet: Fleet) -> None:
    obs = observe(fleet.prom, "nobody")
    assert obs.error is None and obs.pools == {} and not obs.available
    assert len(obs.missing) == 1 and "no vLLM series for prod/nobody" in obs.missing[0]


def test_shared_collector_equals_the_per_resource_collector(fleet: Fleet) -> None:
    """Issue 19: one fleet-wide answer per tick, split per deployment, gives every deployment exactly
    the Observation its own queries give (new names, old names, mid-upgrade, duplicate scrapes, a
    deployment with no series), field by field and note by note, for 42 queries in all."""
    # 3 s in the past: every scrape up to then is in the TSDB, so both read the same samples
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3)
    names = ["llama", "llama-old", "llama-mixed", "llama-dup", "churn", "nobody"]
    shared = SharedCollector(fleet.prom.url, timeout_s=5, max_age_s=15)
    got = {name: shared.observe("prod", name, now, WINDOW_S, LONG_WINDOW_S, 0.99) for name in names}
    assert shared.fetches == 1 and shared.queries_sent == 42
    per = PrometheusCollector(fleet.prom.url, timeout_s=5)
    for name in names:
        want = per.observe("prod", name, now, WINDOW_S, LONG_WINDOW_S, 0.99)
        assert got[name].error is None
        for field in dataclasses.fields(Observation):
            assert getattr(got[name], field.name) == getattr(want, field.name), (name, field.name)
        assert got[name] == want
    assert per.queries_sent == 42 * len(names)
    check_llama_pools(got["llama"])
    assert got["llama-dup"].pools["decode"].pods_reporting == 2  # the duplicate scrape job counted once
    assert len(got["llama-old"].missing) == 2 and not got["nobody"].available
    assert got["llama"].pools["decode"].ttft_buckets is not None  # the labelled answers too
    # another percentile is another snapshot, equal again
    p90 = shared.observe("prod", "llama", now, WINDOW_S, LONG_WINDOW_S, 0.9)
    assert shared.fetches == 2 and p90 == per.observe("prod", "llama", now, WINDOW_S, LONG_WINDOW_S, 0.9)


def test_selector_and_cli(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    c = PrometheusCollector(fleet.prom.url)
    obs = c.observe_selector('pod=~"llama-decode-.*"', dt.datetime.now(dt.UTC), WINDOW_S, LONG_WINDOW_S)
    assert obs.error is None and set(obs.pools) == {"decode"} and obs.pools["decode"].pods_reporting == 2
    assert observe_main(["--prometheus", fleet.prom.url, "--name", "llama", "-n", "prod", "--window-seconds",
                         str(WINDOW_S), "--long-window-seconds", str(LONG_WINDOW_S), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["error"] is None and data["pools"]["decode"]["pods_reporting"] == 2
    assert set(data["pools"]["decode"]) == set(PoolMetrics.__dataclass_fields__)
    assert observe_main(["--prometheus", fleet.prom.url, "--selector", "namespace=prod,goodput_dev_role=prefill",
                         "--window-seconds", str(WINDOW_S)]) == 0
    text = capsys.readouterr().out
    assert "prefill pool" in text and "request_rate_rps" in text and "decode pool" not in text


def churn_decode(fleet: Fleet, condition: Callable[[PoolMetrics], bool]) -> PoolMetrics | None:
    pool = observe(fleet.prom, "churn").pools["decode"]
    return pool if condition(pool) else None


def test_a_pod_that_disappears_drops_out(fleet: Fleet) -> None:
    before = observe(fleet.prom, "churn").pools["decode"]
    assert before.pods_reporting == 2 and before.waiting == 6 and close(before.request_rate_rps, 2.0)
    fleet.publish(without=("churn-decode-1",))
    t_removed = time.monotonic()
    try:
        # gauges: the staleness marker removes the pod from instant queries at once ...
        gone = wait_for("the pod's gauges to go stale",
                        lambda: churn_decode(fleet, lambda p: p.pods_reporting == 1), timeout=20)
        assert gone.waiting == 3 and gone.running == 5 and gone.kv_cache_usage == pytest.approx(0.5)
        # ... while rate() still counts the work it did inside the window
        assert gone.request_rate_rps is not None and gone.request_rate_rps > 1.3, gone
        # counters: it drops out once the window has passed its last sample
        after = wait_for("the pod's rates to leave the window",
                         lambda: churn_decode(fleet, lambda p: (p.request_rate_rps or 9.0) < 1.15),
                         timeout=WINDOW_S + 10)
        assert close(after.request_rate_rps, 1.0, rel=0.15) and after.pods_reporting == 1
        assert time.monotonic() - t_removed < 30
    finally:
        fleet.publish()


# ------------------------------------------------------------------------------------------
# Prometheus failing
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPrometheus, FakeVllmPod]]:
    """A second Prometheus scraping one pod, for outage tests (each leaves it running)."""
    _need_prometheus()
    pod = FakeVllmPod(CHURN)
    prom = LocalPrometheus(tmp_path_factory.mktemp("lone"), scrape_interval_s=1)
    prom.set_targets([(pod.address, kubernetes_pod_target("ops", "solo-0", {DEPLOYMENT_LABEL: "solo",
                                                                            ROLE_LABEL: "aggregated"}))])
    try:
        with prom:
            wait_for("the pod scraped twice", lambda: prom.query("count_over_time(vllm:num_requests_running[1m]) > 1"))
            yield prom, pod
    finally:
        pod.close()


def _observe_lone(prom: LocalPrometheus, timeout_s: float = 5.0) -> tuple[Observation, float]:
    t0 = time.monotonic()
    obs = PrometheusCollector(prom.url, timeout_s=timeout_s).observe("ops", "solo", dt.datetime.now(dt.UTC),
                                                                     window_s=WINDOW_S, long_window_s=LONG_WINDOW_S)
    return obs, time.monotonic() - t0


def test_prometheus_stopped_then_restarted(lone: tuple[LocalPrometheus, FakeVllmPod]) -> None:
    prom, _ = lone
    obs, _ = _observe_lone(prom)
    assert obs.error is None and obs.pools["aggregated"].pods_reporting == 1
    assert obs.pools["aggregated"].role == "aggregated" and obs.available
    samples_before = float(prom.query("count_over_time(vllm:num_requests_running[1h])")[0]["value"][1])
    url = prom.url
    prom.stop()
    obs, took = _observe_lone(prom)
    assert obs.error is not None and "unreachable" in obs.error and url in obs.error
    assert "Connection refused" in obs.error
    assert not obs.available and obs.pools == {} and took < 2  # no retries, no back-off
    prom.start()  # same port, same TSDB
    assert prom.url == url
    assert float(prom.query("count_over_time(vllm:num_requests_running[1h])")[0]["value"][1]) >= samples_before
    obs, _ = _observe_lone(prom)
    assert obs.error is None and "aggregated" in obs.long_pools


def test_prometheus_hung_times_out(lone: tuple[LocalPrometheus, FakeVllmPod]) -> None:
    prom, _ = lone
    if not prom.running():  # the test before failed halfway
        prom.start()
    prom.pause()  # SIGSTOP: connections are accepted, nothing answers
    try:
        obs, took = _observe_lone(prom, timeout_s=1.0)
    finally:
        prom.resume()
    assert obs.error is not None and "timeout" in obs.error and "within 1 s" in obs.error, obs.error
    assert not obs.available and 0.9 < took < 3
    obs, _ = _observe_lone(prom)
    assert obs.error is None


class _BadServer:
    """Answers every request with a fixed status and body."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.calls += 1
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "body", "words"), [
    (503, b"Service Unavailable", "answered HTTP 503: Service Unavailable"),
    (500, b"oops", "answered HTTP 500"),
    (422, b'{"status":"error","errorType":"execution","error":"query timed out in expression evaluation"}',
     "answered HTTP 422: query timed out in expression evaluation"),
    (200, b"<html>not json</html>", "malformed answer (not JSON"),
    (200, b'{"status":"success"}', "malformed answer (KeyError"),
    (200, b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}',
     "malformed answer (a sample value is not a number"),
    (200, b'{"status":"success","data":{"resultType":"vector","result":{"a":1}}}', "malformed answer"),
])
def test_http_errors_and_malformed_answers(status: int, body: bytes, words: str) -> None:
    server = _BadServer(status, body)
    try:
        t0 = time.monotonic()
        obs = PrometheusCollector(server.url, timeout_s=2).observe("prod", "llama", dt.datetime.now(dt.UTC))
        took = time.monotonic() - t0
    finally:
        server.close()
    assert obs.error is not None and words in obs.error and server.url in obs.error, obs.error
    assert server.calls == 1 and took < 1.5  # no retries on 5xx

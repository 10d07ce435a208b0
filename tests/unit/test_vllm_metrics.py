"""The emulated /metrics text of a vLLM replica (goodput.engine.vllm_metrics).

The reference is prometheus_client itself: a registry holding the families exactly as vLLM 0.11's
``vllm/v1/metrics/loggers.py`` registers them (names, HELP texts, label names, buckets), fed the
same observations, must write the same text byte for byte.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from goodput.engine import vllm_metrics as vm
from goodput.engine.replica import EngineReplica
from goodput.model.architecture import get_model
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel

MODEL = "meta-llama/Llama-3.1-70B-Instruct"
MAX_MODEL_LEN = 32768
LABELS = ["model_name", "engine"]

# vLLM 0.11, vllm/v1/metrics/loggers.py
TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
        80.0, 160.0, 640.0, 2560.0]
ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
           960.0, 1920.0, 7680.0]
ITERATION: list[float] = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TOKENS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]  # build_1_2_5_buckets(32768)

MODERN = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_params_max_tokens": "histogram",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:cache_config_info": "gauge",
}
RENAMED = {  # modern -> legacy (V1 engine before 0.9.2)
    "vllm:kv_cache_usage_perc": "vllm:gpu_cache_usage_perc",
    "vllm:prefix_cache_queries": "vllm:gpu_prefix_cache_queries",
    "vllm:prefix_cache_hits": "vllm:gpu_prefix_cache_hits",
    "vllm:inter_token_latency_seconds": "vllm:time_per_output_token_seconds",
}
BUCKETS: dict[str, list[float]] = {
    "vllm:request_prompt_tokens": TOKENS,
    "vllm:request_generation_tokens": TOKENS,
    "vllm:iteration_tokens_total": ITERATION,
    "vllm:request_max_num_generation_tokens": TOKENS,
    "vllm:request_params_n": [1, 2, 5, 10, 20],
    "vllm:request_params_max_tokens": TOKENS,
    "vllm:time_to_first_token_seconds": TTFT,
    "vllm:inter_token_latency_seconds": ITL,
    "vllm:time_per_output_token_seconds": ITL,
    "vllm:e2e_request_latency_seconds": LATENCY,
    "vllm:request_queue_time_seconds": LATENCY,
    "vllm:request_inference_time_seconds": LATENCY,
    "vllm:request_prefill_time_seconds": LATENCY,
    "vllm:request_decode_time_seconds": LATENCY,
}
# ReplicaStats attribute of each histogram family
HIST_FIELDS = {
    "vllm:request_prompt_tokens": "request_prompt_tokens",
    "vllm:request_generation_tokens": "request_generation_tokens",
    "vllm:iteration_tokens_total": "iteration_tokens",
    "vllm:request_max_num_generation_tokens": "request_max_num_generation_tokens",
    "vllm:request_params_n": "request_params_n",
    "vllm:request_params_max_tokens": "request_params_max_tokens",
    "vllm:time_to_first_token_seconds": "time_to_first_token",
    "vllm:inter_token_latency_seconds": "inter_token_latency",
    "vllm:time_per_output_token_seconds": "inter_token_latency",
    "vllm:e2e_request_latency_seconds": "e2e_request_latency",
    "vllm:request_queue_time_seconds": "request_queue_time",
    "vllm:request_inference_time_seconds": "request_inference_time",
    "vllm:request_prefill_time_seconds": "request_prefill_time",
    "vllm:request_decode_time_seconds": "request_decode_time",
}
DOCS = {  # HELP texts, verbatim from vLLM 0.11
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "vllm:prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "vllm:num_preemptions": "Cumulative number of preemption from the engine.",
    "vllm:prompt_tokens": "Number of prefill tokens processed.",
    "vllm:generation_tokens": "Number of generation tokens processed.",
    "vllm:request_success": "Count of successfully processed requests.",
    "vllm:request_prompt_tokens": "Number of prefill tokens processed.",
    "vllm:request_generation_tokens": "Number of generation tokens processed.",
    "vllm:iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "vllm:request_max_num_generation_tokens": "Histogram of maximum number of requested generation tokens.",
    "vllm:request_params_n": "Histogram of the n request parameter.",
    "vllm:request_params_max_tokens": "Histogram of the max_tokens request parameter.",
    "vllm:time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "vllm:inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "vllm:e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "vllm:request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "vllm:request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "vllm:request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "vllm:request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "vllm:cache_config_info": "Information of the LLMEngine CacheConfig",
    # legacy (0.8.x-0.10.x)
    "vllm:gpu_cache_usage_perc": "GPU KV-cache usage. 1 means 100 percent usage.",
    "vllm:gpu_prefix_cache_queries": "GPU prefix cache queries, in terms of number of queried tokens.",
    "vllm:gpu_prefix_cache_hits": "GPU prefix cache hits, in terms of number of cached tokens.",
    "vllm:time_per_output_token_seconds": "Histogram of time per output token in seconds.",
}
GAUGES: dict[str, float] = {"running": 7, "waiting": 3, "kv_usage": 0.4375}


def filled_stats(seed: int = 0) -> vm.ReplicaStats:
    rng = np.random.default_rng(seed)
    s = vm.ReplicaStats(prompt_tokens=123456, generation_tokens=7890, preemptions=4, prefix_cache_queries=150000,
                        prefix_cache_hits=26544)
    s.success = {"stop": 40, "length": 2}
    for name, attr in HIST_FIELDS.items():
        hist = getattr(s, attr)
        seconds = name.endswith("_seconds")
        values = rng.lognormal(-1.0, 1.5, 60) if seconds else np.round(rng.lognormal(6.0, 1.5, 60))
        if attr == "inter_token_latency" and hist.count:
            continue  # shared by two names
        for v in values:
            hist.observe(float(v))
        hist.observe(float(BUCKETS[name][3]))  # exactly on a bound: le is inclusive
        hist.observe_many(np.array([0.02, 0.02, 3.0]), 2.0)
        if name in ("vllm:request_prompt_tokens", "vllm:request_params_max_tokens"):
            hist.observe(1e6)  # beyond max_model_len: only in +Inf
    return s


def reference_text(stats: vm.ReplicaStats, legacy: bool = False, cache: Mapping[str, str] | None = None) -> str:
    """prometheus_client's own exposition of vLLM's families holding the same data."""
    reg = CollectorRegistry()
    lv = [MODEL, "0"]

    def name(n: str) -> str:
        return RENAMED.get(n, n) if legacy else n

    Gauge("vllm:num_requests_running", DOCS["vllm:num_requests_running"], LABELS, registry=reg) \
        .labels(*lv).set(GAUGES["running"])
    Gauge("vllm:num_requests_waiting", DOCS["vllm:num_requests_waiting"], LABELS, registry=reg) \
        .labels(*lv).set(GAUGES["waiting"])
    Gauge(name("vllm:kv_cache_usage_perc"), DOCS[name("vllm:kv_cache_usage_perc")], LABELS, registry=reg) \
        .labels(*lv).set(GAUGES["kv_usage"])
    for n, value in (("vllm:prefix_cache_queries", stats.prefix_cache_queries),
                     ("vllm:prefix_cache_hits", stats.prefix_cache_hits),
                     ("vllm:num_preemptions", stats.preemptions),
                     ("vllm:prompt_tokens", stats.prompt_tokens),
                     ("vllm:generation_tokens", stats.generation_tokens)):
        Counter(name(n), DOCS[name(n)], LABELS, registry=reg).labels(*lv).inc(value)
    success = Counter("vllm:request_success", DOCS["vllm:request_success"], [*LABELS, "finished_reason"],
                      registry=reg)
    for reason in ("stop", "length", "abort"):
        success.labels(MODEL, "0", reason).inc(stats.success.get(reason, 0))
    for n, attr in HIST_FIELDS.items():
        if n == ("vllm:inter_token_latency_seconds" if legacy else "vllm:time_per_output_token_seconds"):
            continue
        h = Histogram(n, DOCS[n], LABELS, buckets=BUCKETS[n], registry=reg).labels(*lv)
        hist = getattr(stats, attr)
        # Replay the stored observations: each bucket's count at a value inside the bucket. The
        # sum is then set to the stored one (observing is the only public way to fill buckets).
        for i, c in enumerate(hist.counts):
            bound = hist.bounds[i] if i < len(hist.bounds) else math.inf
            for _ in range(int(c)):
                h.observe(bound if bound < math.inf else 1e12)
        h._sum.set(hist.sum)
    info = dict(cache) if cache is not None else vm.default_cache_config()
    if not legacy:
        info["engine"] = "0"
    Gauge("vllm:cache_config_info", DOCS["vllm:cache_config_info"], list(info), registry=reg).labels(**info).set(1)
    return generate_latest(reg).decode()


def ours(stats: vm.ReplicaStats, **kw: Any) -> str:
    kw.setdefault("generation", "0.11")  # the prometheus_client reference below registers 0.11's families
    return vm.exposition(stats, running=int(GAUGES["running"]), waiting=int(GAUGES["waiting"]),
                         kv_usage=GAUGES["kv_usage"], model_name=MODEL, max_model_len=MAX_MODEL_LEN, **kw)


def drop_created(text: str) -> str:
    keep = []
    for line in text.splitlines():
        metric = line.split(" ")[2] if line.startswith("#") else re.split(r"[{ ]", line)[0]
        if not metric.endswith("_created"):
            keep.append(line)
    return "\n".join(keep) + "\n"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


# ---------------------------------------------------------------------------------------------
def test_identical_to_prometheus_client_for_vllm_families() -> None:
    stats = filled_stats()
    assert ours(stats) == drop_created(reference_text(stats))


def test_legacy_names_identical_to_prometheus_client() -> None:
    stats = filled_stats(1)
    assert ours(stats, legacy_names=True) == drop_created(reference_text(stats, legacy=True))


def test_created_gauges_as_prometheus_client_writes_them() -> None:
    stats = filled_stats(2)
    ref = re.sub(r"(_created\{[^}]*\}) \S+", r"\1 1.7e+09", reference_text(stats))
    assert ours(stats, created_s=1.7e9) == ref
    created = [f for f in families(ours(stats, created_s=1.7e9)) if f.endswith("_created")]
    assert len(created) == 5 + 1 + 13  # counters, request_success, histograms


def test_parses_with_the_documented_names_types_and_labels() -> None:
    fams = families(ours(filled_stats()))
    assert {n: f.type for n, f in fams.items()} == MODERN
    for n, f in fams.items():
        for sample in f.samples:
            labels = sample.labels
            if n == "vllm:cache_config_info":
                assert "model_name" not in labels and labels["engine"] == "0"
                assert {"block_size", "num_gpu_blocks", "cache_dtype", "enable_prefix_caching",
                        "gpu_memory_utilization"} <= set(labels)
                continue
            extra = set(labels) - {"model_name", "engine"}
            assert labels["model_name"] == MODEL and labels["engine"] == "0"
            if sample.name.endswith("_bucket"):
                assert extra == {"le"}
            elif n == "vllm:request_success":
                assert extra == {"finished_reason"}
            else:
                assert extra == set()
    reasons = [s.labels["finished_reason"] for s in fams["vllm:request_success"].samples]
    assert reasons == ["stop", "length", "abort"]


def test_histogram_buckets_are_vllms_and_cumulative() -> None:
    stats = filled_stats()
    fams = families(ours(stats))
    for n, bounds in BUCKETS.items():
        if n not in fams:
            continue
        samples = fams[n].samples
        buckets = [s for s in samples if s.name == n + "_bucket"]
        les = [float(s.labels["le"]) for s in buckets]
        assert les == [float(b) for b in bounds] + [math.inf], n
        counts = [s.value for s in buckets]
        assert counts == sorted(counts), n
        count = next(s.value for s in samples if s.name == n + "_count")
        total = next(s.value for s in samples if s.name == n + "_sum")
        hist = getattr(stats, HIST_FIELDS[n])
        assert counts[-1] == count == hist.count and total == pytest.approx(hist.sum)
    # An observation exactly on a bound counts in that bucket (le is "less or equal").
    h = vm.Histogram([0.1, 0.2])
    h.observe(0.1)
    assert h.cumulative() == [(0.1, 1.0), (0.2, 1.0), (math.inf, 1.0)]


def test_token_buckets_follow_max_model_len() -> None:
    assert vm.build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert vm.build_1_2_5_buckets(131072)[-1] == 100000
    stats = filled_stats()
    for max_len, last in ((2048, "2000.0"), (131072, "100000.0"), (2_000_000, "2e+06")):
        fam = families(vm.exposition(stats, running=0, waiting=0, kv_usage=0.0, model_name="m",
                                     max_model_len=max_len))["vllm:request_prompt_tokens"]
        les = [s.labels["le"] for s in fam.samples if s.name.endswith("_bucket")]
        assert les[-2:] == [last, "+Inf"]


def test_legacy_switch_renames_only_the_renamed_families() -> None:
    modern = families(ours(filled_stats()))
    legacy = families(ours(filled_stats(), legacy_names=True))
    assert set(legacy) == {RENAMED.get(n, n) for n in modern}
    assert not set(RENAMED) & set(legacy)
    assert legacy["vllm:gpu_cache_usage_perc"].samples[0].value == GAUGES["kv_usage"]
    info = legacy["vllm:cache_config_info"].samples[0].labels
    assert "engine" not in info


def test_deprecated_alias_carries_the_same_itl_observations() -> None:
    fams = families(ours(filled_stats(), deprecated_aliases=True))
    assert set(fams) == set(MODERN) | {"vllm:time_per_output_token_seconds"}
    tpot = [(s.name.replace("time_per_output_token", "inter_token_latency"), s.labels, s.value)
            for s in fams["vllm:time_per_output_token_seconds"].samples]
    itl = [(s.name, s.labels, s.value) for s in fams["vllm:inter_token_latency_seconds"].samples]
    assert tpot == itl


def test_numbers_and_labels_are_formatted_like_prometheus_client() -> None:
    for v in (0.0, 1.0, 3.0, 0.025, 2560.0, 1e5, 1e6, 1.7e9, 123456789.5, 1e-7, math.inf, -math.inf):
        assert vm.go_float(v) == floatToGoString(v)  # type: ignore[no-untyped-call]
    assert vm.go_float(math.nan) == "NaN"
    text = vm.exposition(vm.ReplicaStats(), running=0, waiting=0, kv_usage=0.0, model_name='we"ird\\name\n',
                         max_model_len=1000)
    running = families(text)["vllm:num_requests_running"].samples[0]
    assert running.labels["model_name"] == 'we"ird\\name\n'


def test_engine_replica_metrics_reflect_its_state() -> None:
    r = ReplicaModel(get_model("llama-3.1-70b"), get_accelerator("h100-sxm-80gb"), "fp8", 2, "fp8")
    e = EngineReplica(r, rng=np.random.default_rng(0), noise_cv=0.05)
    for i in range(30):
        e.submit(i, 0.1 * i, 1000 + 10 * i, 100, cached_tokens=100)
    done = e.advance(3.0)
    fams = families(e.metrics_text("llama", engine=0))
    value = {n: f.samples for n, f in fams.items()}
    assert value["vllm:num_requests_running"][0].value == e.running > 0
    assert value["vllm:num_requests_waiting"][0].value == e.waiting
    assert value["vllm:kv_cache_usage_perc"][0].value == pytest.approx(e.kv_usage)
    assert value["vllm:prefix_cache_hits"][0].value == e.stats.prefix_cache_hits > 0
    succ = {s.labels["finished_reason"]: s.value for s in value["vllm:request_success"]}
    assert succ == {"stop": len(done), "length": 0.0, "abort": 0.0, "error": 0.0, "repetition": 0.0}
    ttft_count = next(s.value for s in value["vllm:time_to_first_token_seconds"] if s.name.endswith("_count"))
    assert ttft_count == e.stats.time_to_first_token.count >= len(done)
    info = value["vllm:cache_config_info"][0].labels
    assert info["num_gpu_blocks"] == str(e.total_blocks) and info["block_size"] == "16"
    assert info["cache_dtype"] == "fp8"


def test_engine_replica_0_32_families_reflect_its_state() -> None:
    """The families vLLM 0.32 added carry the replica's state: prompt tokens split by source,
    waiting by reason, per-request TPOT / preemptions / prefill KV computed, the KV size."""
    r = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1, "auto")
    e = EngineReplica(r, rng=np.random.default_rng(0), noise_cv=0.0)
    for i in range(40):
        e.submit(i, 0.05 * i, 800, 50, cached_tokens=200)
    done = e.advance(60.0)
    assert len(done) == 40
    value = {n: f.samples for n, f in families(e.metrics_text("m")).items()}
    source = {s.labels["source"]: s.value for s in value["vllm:prompt_tokens_by_source"]}
    assert source == {"local_compute": 40 * 600, "local_cache_hit": 40 * 200, "external_kv_transfer": 0}
    assert sum(source.values()) == value["vllm:prompt_tokens"][0].value
    assert value["vllm:prompt_tokens_cached"][0].value == 40 * 200
    by_reason = {s.labels["reason"]: s.value for s in value["vllm:num_requests_waiting_by_reason"]}
    assert sum(by_reason.values()) == value["vllm:num_requests_waiting"][0].value
    def hist(name: str, suffix: str) -> float:
        return next(s.value for s in value[name] if s.name.endswith(suffix))
    assert hist("vllm:request_prefill_kv_computed_tokens", "_sum") == 40 * 600
    tpot = hist("vllm:request_time_per_output_token_seconds", "_sum") / 40
    assert tpot == pytest.approx(np.mean([f.itl_mean_s for f in done]), rel=1e-6)
    assert hist("vllm:request_num_preemptions", "_count") == 40
    info = value["vllm:cache_config_info"][0].labels
    assert int(info["kv_cache_size_tokens"]) == e.total_blocks * 16
    assert "engine" in info and "_block_size_resolved" in info
    decode = EngineReplica(r, rng=np.random.default_rng(0), noise_cv=0.0, role="decode")
    assert "vllm:num_requests_kv_fetch_by_stage" in decode.metrics_text("m")
    assert "vllm:num_requests_kv_fetch_by_stage" not in e.metrics_text("m")


def test_unknown_generation_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.32, 0\.11, 0\.8"):
        ours(vm.ReplicaStats(), generation="0.10")


def test_observe_each_is_bit_identical_to_observing_one_by_one() -> None:
    """The engine records per-request histograms in bulk when they are read: the counts and the
    sum must be exactly what observing each value in turn gives (a sequential sum, not pairwise)."""
    from goodput.engine.vllm_metrics import REQUEST_LATENCY_BUCKETS, TOKEN_BUCKETS_STORED
    from goodput.engine.vllm_metrics import Histogram as EngineHistogram

    rng = np.random.default_rng(5)
    for bounds, values in ((REQUEST_LATENCY_BUCKETS, rng.lognormal(0.0, 2.0, 5000)),
                           (TOKEN_BUCKETS_STORED, np.round(rng.lognormal(6.0, 1.5, 5000))),
                           (REQUEST_LATENCY_BUCKETS, np.array([0.0, 0.3, 0.3, 1e9]))):
        one = EngineHistogram(bounds)
        one.observe(0.125)
        for v in values.tolist():
            one.observe(v)
        for parts in (7, 400):  # batches large enough for numpy, and small ones
            bulk = EngineHistogram(bounds)
            bulk.observe(0.125)
            for part in np.array_split(values, parts):
                bulk.observe_each(part)
            assert (bulk.counts, bulk.sum, bulk.count) == (one.counts, one.sum, one.count)

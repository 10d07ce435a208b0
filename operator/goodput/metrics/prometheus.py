"""Read an InferenceDeployment's live load and latency from Prometheus, using vLLM's own metrics.

    collector = PrometheusCollector("http://prometheus.monitoring:9090")
    obs = collector.observe("prod", "llama-70b", now=datetime.now(UTC))   # never raises

Which series
------------
Pods are selected by their labels as Prometheus stores them after the usual Kubernetes
relabeling (``labelmap`` of ``__meta_kubernetes_pod_label_(.+)``, which turns the pod label
``goodput.dev/role`` into ``goodput_dev_role``; the namespace into ``namespace``; the pod name into
``pod``). With the Prometheus Operator that is a PodMonitor with ``podTargetLabels:
[goodput.dev/inference-deployment, goodput.dev/role]``. Each query is summed over the pods of a
pool, grouped by role: ``{namespace="prod", goodput_dev_inference_deployment="llama-70b",
goodput_dev_role=~"aggregated|prefill|decode"}``. With `observe_selector` any label matchers
replace the namespace/name ones; series without a role label then count as ``aggregated``.

The metrics (vLLM ≥ 0.11, V1 engine) and how several pods are combined
---------------------------------------------------------------------
==========================  =========================================================  ==========
field                       PromQL over the window W (S = the selector)                 pods
==========================  =========================================================  ==========
request_rate_rps            rate(vllm:request_success_total[W])                          sum
queue_growth_rps            deriv(vllm:num_requests_waiting[W])                          sum
                            + deriv(vllm:num_requests_running[W])
prompt/generation_tokens    rate(vllm:prompt_tokens_total / generation_tokens_total)     sum
input/output_len_mean       rate(vllm:request_{prompt,generation}_tokens_sum) / _count   ratio of sums
input/output_len_p99        histogram_quantile over request_{prompt,generation}_tokens   pooled buckets
ttft_ms, itl_ms             histogram_quantile(q) of time_to_first_token_seconds,        pooled buckets
                            inter_token_latency_seconds (or time_per_output_token_seconds)
kv_cache_usage              vllm:kv_cache_usage_perc (or gpu_cache_usage_perc)           max
running, waiting            vllm:num_requests_running / num_requests_waiting             sum
preemptions_rps             rate(vllm:num_preemptions_total)                             sum
prefix_cache_hit_rate       rate(prefix_cache_hits_total) / rate(prefix_cache_queries_total)
                            (or the gpu_prefix_cache_* counters of vLLM 0.7-0.10)        ratio of sums
pods_reporting              pods with a live vllm:num_requests_running series            count
ttft_mean_ms,               rate(..._sum) / rate(..._count) of time_to_first_token_      ratio of sums
prefill_time_mean_ms        seconds and request_prefill_time_seconds (same name in both)
ttft_buckets, itl_buckets   rate(..._bucket[W]) by le, x W (short window only)           sum per le
kv_capacity_tokens          num_gpu_blocks x block_size labels of vllm:cache_config_info  min
arrival_dispersion          E[(n - n offset 30s)^2] / (2 E[n]), n = increase(             max
                            request_success_total[30s]), a [W:30s] subquery
==========================  =========================================================  ==========

Both generations of names work, pod by pod: ``new{S} or old{S}`` (and the same of their rates)
keeps, for each pod, the series of the new name where the pod exports it and the old one where
it does not (``or`` matches series on their labels, not their names). vLLM 0.9/0.10 export both,
and the new one wins; a pool halfway through an upgrade is read whole. vLLM's V0 engine has no
prefix-cache counters: the hit rate is then None with a `missing` note. In the long window the
gauges (running, waiting, KV usage) are averaged over time (a subquery of the per-pool sum/max, so
pods replaced during the window are not double counted); in the short window they are the value
now.

Edge cases, decided
-------------------
- **No series** for a metric of a pool → that field is None and `missing` names the metric and
  the pool. A pool appears when any of its series does; no series at all for the deployment →
  no pools and one note (so `Observation.available` is False: no data is not zero load). The arrival
  dispersion is the exception: a refinement that needs two 30 s bins of history, absent without a
  note (the planner then plans for Poisson arrivals and its reason says so).
- **NaN or ±Inf** (histogram_quantile with no observations in the window, 0/0 when nothing
  completed) → None and a note naming the value.
- **Several series where one is expected.** Duplicate scrape jobs are collapsed in PromQL
  (``max without (job)``: series that differ only in ``job`` are the same pod counted twice); the
  per-pool aggregate is then one series per role. Should the answer still hold several series
  for one role, they are combined deterministically (`promql.combine`): the exact sum for counts
  and rates, the max for KV usage, latencies, means and ratios (the conservative reading).
- **Pods that are gone.** Gauges: when a target disappears Prometheus writes staleness markers,
  so its running/waiting/KV series vanish from instant queries at once (after at most the
  5-minute lookback if Prometheus itself missed the disappearance). Counters are only read
  through rate()/deriv() over the window, so a gone pod still contributes the work it did inside
  the window and drops out once the window has passed it. pods_reporting counts live series only.
- **Prometheus failing**: unreachable, slower than ``timeout_s`` per query (or than
  ``budget_s`` for the whole observation), an HTTP error, a malformed body → the whole
  observation is `Observation.unavailable(now, error=...)` with a message naming the URL and
  the cause. Nothing raises out of `observe`; no retries (the next observation is the retry).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from goodput.api.vocabulary import DEPLOYMENT_LABEL, PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL, ROLE_LABEL
from goodput.metrics.promql import (
    Combine,
    MalformedResult,
    Matcher,
    Reading,
    Sample,
    combine,
    duration,
    equality_matchers,
    group_by_label,
    parse_selector,
    parse_vector,
    render_matchers,
)
from goodput.planner.burst import DISPERSION_BIN_S
from goodput.planner.observation import ROLES, Observation, PoolMetrics

log = logging.getLogger(__name__)

# Pod labels as the operator sets them on vLLM pods, and as Prometheus stores them after relabeling.
NAMESPACE_LABEL = "namespace"
POD_LABEL = "pod"
INSTANCE_LABEL = "instance"
JOB_LABEL = "job"  # series differing only in this label are duplicate scrapes of one pod

# vLLM metric names (V1 engine, vLLM >= 0.11), and the older names used as a fallback.
REQUEST_SUCCESS = "vllm:request_success_total"
REQUESTS_WAITING = "vllm:num_requests_waiting"
REQUESTS_RUNNING = "vllm:num_requests_running"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"  # histogram
REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"  # histogram
TTFT = "vllm:time_to_first_token_seconds"  # histogram
ITL = "vllm:inter_token_latency_seconds"  # histogram
ITL_OLD = "vllm:time_per_output_token_seconds"  # histogram, deprecated in 0.11
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # deprecated in 0.9
PREEMPTIONS = "vllm:num_preemptions_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_QUERIES_OLD = "vllm:gpu_prefix_cache_queries_total"  # vLLM 0.7-0.10
PREFIX_HITS_OLD = "vllm:gpu_prefix_cache_hits_total"
PREFILL_TIME = "vllm:request_prefill_time_seconds"  # histogram: scheduled -> first token (both generations)
CACHE_CONFIG_INFO = "vllm:cache_config_info"  # gauge 1, the CacheConfig as labels (num_gpu_blocks, block_size)

DEFAULT_TIMEOUT_S = 5.0
BUDGET_FACTOR = 6.0  # default whole-observation limit: this many per-query timeouts


class _Client(Protocol):
    def custom_query(self, query: str, params: dict[str, Any] | None = None, timeout: Any = None) -> Any: ...


class _Unavailable(Exception):
    """The source failed: the observation is `Observation.unavailable` with this message."""


@dataclass(frozen=True)
class PoolQuery:
    """One PoolMetrics field: the PromQL, the metric(s) it reads (for notes), how to combine."""

    field: str
    promql: str
    metric: str
    how: Combine
    scale: float = 1.0
    hint: str = ""  # appended to a "no series" note
    # A refinement with a stated fallback, not a metric of vLLM's: its absence is no `missing` note
    # (arrival dispersion needs two 30 s bins of history; without it the planner says it plans for Poisson).
    optional: bool = False


# ------------------------------------------------------------------------------------------
# the queries (pure: strings from matchers)
# ------------------------------------------------------------------------------------------
def build_queries(matchers: Sequence[Matcher], window_s: float, quantile: float,
                  long: bool = False, by: Sequence[str] = (PROM_ROLE_LABEL,)) -> list[PoolQuery]:
    """The PromQL for every PoolMetrics field over one window, grouped by role (``by``: the
    grouping labels, the role last; the shared collector groups by namespace, deployment and
    role with a selector matching every deployment, so one answer serves them all)."""
    sel = render_matchers(matchers)
    w = duration(window_s)
    step = duration(max(1.0, window_s / 60.0))
    r = _grouping(by)
    q = repr(float(quantile))

    def dedup(expr: str) -> str:
        return f"max without ({JOB_LABEL}) ({expr})"

    def rates(*metrics: str) -> str:
        # per pod: the first name it exports (``or`` matches series on their labels, not their name)
        return " or ".join(f"rate({m}{{{sel}}}[{w}])" for m in metrics)

    def rate_sum(*metrics: str) -> str:
        return f"sum by ({r}) ({dedup(rates(*metrics))})"

    def ratio(num: str, den: str) -> str:
        return f"({rate_sum(num)} / {rate_sum(den)})"

    def quantile_of(*hists: str) -> str:
        buckets = rates(*(f"{h}_bucket" for h in hists))
        return f"histogram_quantile({q}, sum by ({r}, le) ({dedup(buckets)}))"

    def gauge(expr_now: str) -> str:
        # now: the per-pool value at the evaluation time; long: its average over the window
        return f"avg_over_time(({expr_now})[{w}:{step}])" if long else expr_now

    def gauge_sum(metric: str) -> str:
        return gauge(f"sum by ({r}) ({dedup(f'{metric}{{{sel}}}')})")

    # Completions per 30 s bin (two scrapes), this bin and the one before, at 30 s steps over the
    # window: the successive-difference variance over the mean (goodput.planner.burst.dispersion_index).
    bin_s = duration(DISPERSION_BIN_S)

    def count_in_bin(offset: str) -> str:
        return f"sum by ({r}) ({dedup(f'increase({REQUEST_SUCCESS}{{{sel}}}[{bin_s}]{offset})')})"

    dispersion = (f"(avg_over_time((({count_in_bin('')} - {count_in_bin(f' offset {bin_s}')}) ^ 2)[{w}:{bin_s}]) "
                  f"/ (2 * avg_over_time(({count_in_bin('')})[{w}:{bin_s}])))")
    pods = (f"count by ({r}) (group by ({_grouping(by, NAMESPACE_LABEL, POD_LABEL, INSTANCE_LABEL)}) "
            f"({REQUESTS_RUNNING}{{{sel}}}))")
    kv = gauge(f"max by ({r}) ({KV_USAGE}{{{sel}}} or {KV_USAGE_OLD}{{{sel}}})")
    prefix = (f"({rate_sum(PREFIX_HITS, PREFIX_HITS_OLD)} / "
              f"{rate_sum(PREFIX_QUERIES, PREFIX_QUERIES_OLD)})")
    return [
        PoolQuery("pods_reporting", pods, REQUESTS_RUNNING, "sum",
                  hint=" (no vLLM pod of this pool is being scraped now)"),
        PoolQuery("request_rate_rps", rate_sum(REQUEST_SUCCESS), REQUEST_SUCCESS, "sum"),
        # Requests in the system (running + waiting) grow at arrivals minus completions: deriv is
        # linear, so the sum of the two gauges' derivatives is the growth of their sum.
        PoolQuery("queue_growth_rps",
                  f"(sum by ({r}) ({dedup(f'deriv({REQUESTS_WAITING}{{{sel}}}[{w}])')}) + "
                  f"sum by ({r}) ({dedup(f'deriv({REQUESTS_RUNNING}{{{sel}}}[{w}])')}))",
                  f"{REQUESTS_WAITING} and {REQUESTS_RUNNING}", "sum"),
        PoolQuery("prompt_tokens_tps", rate_sum(PROMPT_TOKENS), PROMPT_TOKENS, "sum"),
        PoolQuery("generation_tokens_tps", rate_sum(GENERATION_TOKENS), GENERATION_TOKENS, "sum"),
        PoolQuery("input_len_mean", ratio(f"{REQUEST_PROMPT_TOKENS}_sum", f"{REQUEST_PROMPT_TOKENS}_count"),
                  REQUEST_PROMPT_TOKENS, "max"),
        PoolQuery("input_len_p99", quantile_of(REQUEST_PROMPT_TOKENS), REQUEST_PROMPT_TOKENS, "max"),
        PoolQuery("output_len_mean",
                  ratio(f"{REQUEST_GENERATION_TOKENS}_sum", f"{REQUEST_GENERATION_TOKENS}_count"),
                  REQUEST_GENERATION_TOKENS, "max"),
        PoolQuery("output_len_p99", quantile_of(REQUEST_GENERATION_TOKENS), REQUEST_GENERATION_TOKENS, "max"),
        PoolQuery("ttft_ms", quantile_of(TTFT), TTFT, "max", scale=1000.0),
        PoolQuery("itl_ms", quantile_of(ITL, ITL_OLD), f"{ITL} (or {ITL_OLD})", "max", scale=1000.0),
        PoolQuery("itl_mean_ms", f"({rate_sum(f'{ITL}_sum', f'{ITL_OLD}_sum')} / "
                  f"{rate_sum(f'{ITL}_count', f'{ITL_OLD}_count')})", f"{ITL} (or {ITL_OLD})", "max", scale=1000.0),
        PoolQuery("ttft_mean_ms", f"({rate_sum(f'{TTFT}_sum')} / {rate_sum(f'{TTFT}_count')})", TTFT, "max",
                  scale=1000.0),
        PoolQuery("prefill_time_mean_ms", f"({rate_sum(f'{PREFILL_TIME}_sum')} / {rate_sum(f'{PREFILL_TIME}_count')})",
                  PREFILL_TIME, "max", scale=1000.0),
        PoolQuery("kv_cache_usage", kv, f"{KV_USAGE} (or {KV_USAGE_OLD})", "max"),
        PoolQuery("running", gauge_sum(REQUESTS_RUNNING), REQUESTS_RUNNING, "sum"),
        PoolQuery("waiting", gauge_sum(REQUESTS_WAITING), REQUESTS_WAITING, "sum"),
        PoolQuery("preemptions_rps", rate_sum(PREEMPTIONS), PREEMPTIONS, "sum"),
        PoolQuery("arrival_dispersion", dispersion, REQUEST_SUCCESS, "max", optional=True),
        PoolQuery("prefix_cache_hit_rate", prefix,
                  f"{PREFIX_HITS}/{PREFIX_QUERIES} (or {PREFIX_HITS_OLD}/{PREFIX_QUERIES_OLD})", "max",
                  hint=" (vLLM's V0 engine exports no prefix-cache counters)"),
    ]


@dataclass(frozen=True)
class LabelledQuery:
    """A PoolMetrics field that needs label values, not one number per role: a histogram's buckets
    (``le``) or vllm:cache_config_info's configuration labels. Asked over the short window only."""

    field: str
    promql: str
    metric: str
    labels: tuple[str, ...]  # grouped by the role and these


def build_labelled_queries(matchers: Sequence[Matcher], window_s: float,
                           by: Sequence[str] = (PROM_ROLE_LABEL,)) -> list[LabelledQuery]:
    """The TTFT and ITL buckets (rates per ``le``, both name generations pod by pod) and the KV
    capacity each pod's engine allocated (``by`` as in `build_queries`)."""
    sel = render_matchers(matchers)
    w = duration(window_s)
    r = _grouping(by)

    def buckets(*hists: str) -> str:
        rates = " or ".join(f"rate({h}_bucket{{{sel}}}[{w}])" for h in hists)
        return f"sum by ({r}, le) (max without ({JOB_LABEL}) ({rates}))"

    info = (f"group by ({_grouping(by, POD_LABEL, 'num_gpu_blocks', 'block_size')}) "
            f"({CACHE_CONFIG_INFO}{{{sel}}})")
    return [LabelledQuery("ttft_buckets", buckets(TTFT), TTFT, ("le",)),
            LabelledQuery("itl_buckets", buckets(ITL, ITL_OLD), f"{ITL} (or {ITL_OLD})", ("le",)),
            LabelledQuery("kv_capacity_tokens", info, CACHE_CONFIG_INFO, ("num_gpu_blocks", "block_size"))]


def _grouping(by: Sequence[str], *more: str) -> str:
    """``by`` and ``more`` as a PromQL grouping list, each label once, in order."""
    return ", ".join(dict.fromkeys((*by, *more)))


@dataclass(frozen=True)
class QueryPlan:
    """Every query of one observation: the fields over the short and the long window, and the
    labelled ones (short window). `promqls` lists each distinct query once, in the order asked."""

    short: tuple[PoolQuery, ...]
    long: tuple[PoolQuery, ...]
    labelled: tuple[LabelledQuery, ...]

    @classmethod
    def build(cls, matchers: Sequence[Matcher], window_s: float, long_window_s: float, quantile: float,
              by: Sequence[str] = (PROM_ROLE_LABEL,)) -> QueryPlan:
        return cls(tuple(build_queries(matchers, window_s, quantile, long=False, by=by)),
                   tuple(build_queries(matchers, long_window_s, quantile, long=True, by=by)),
                   tuple(build_labelled_queries(matchers, window_s, by=by)))

    def promqls(self) -> list[str]:
        asked = [q.promql for q in (*self.short, *self.long)] + [q.promql for q in self.labelled]
        return list(dict.fromkeys(asked))


def assemble(plan: QueryPlan, answer: Callable[[str], Sequence[Sample]], target: str, now: dt.datetime,
             window_s: float, long_window_s: float, blank_role: str | None) -> Observation:
    """The Observation from the answers to `plan`'s queries (``answer(promql)``: the samples of
    one deployment, grouped by role). Pure: the per-resource and the shared collector both end here."""
    notes = _Notes(target)
    windows = {}
    for long, span, queries in ((False, window_s, plan.short), (True, long_window_s, plan.long)):
        results: dict[str, dict[str, Reading]] = {}  # role -> field -> reading
        for pq in queries:
            per_role: dict[str, list[float]] = {}
            for role, values in sorted(group_by_label(answer(pq.promql), PROM_ROLE_LABEL).items()):
                role_name = _role(role, blank_role, notes)
                if role_name is not None:
                    per_role.setdefault(role_name, []).extend(values)
            for role_name, values in per_role.items():
                results.setdefault(role_name, {})[pq.field] = combine(values, pq.how)
        windows[long] = _pools(results, queries, span, notes)
    windows[False] = _with_labelled(windows[False], plan.labelled, answer, window_s, blank_role, notes)
    if not windows[False] and not windows[True]:
        notes.add_raw(f"no vLLM series for {target} in the last {_fmt_s(long_window_s)}: are its pods "
                      f"scraped, with the pod labels {DEPLOYMENT_LABEL} and {ROLE_LABEL} mapped "
                      f"to {PROM_DEPLOYMENT_LABEL} and {PROM_ROLE_LABEL}?")
    elif not windows[False]:
        notes.add_raw(f"no vLLM series for {target} in the last {_fmt_s(window_s)} (only in the "
                      f"{_fmt_s(long_window_s)} window)")
    return Observation(time=now, window_s=window_s, long_window_s=long_window_s, pools=windows[False],
                       long_pools=windows[True], missing=notes.render())


def _with_labelled(pools: dict[str, PoolMetrics], labelled: Sequence[LabelledQuery],
                   answer: Callable[[str], Sequence[Sample]], window_s: float, blank_role: str | None,
                   notes: _Notes) -> dict[str, PoolMetrics]:
    """The short window's pools with their buckets and KV capacity. A pool without these keeps
    None (the planner then does without): they refine calibration, the plan does not need them."""
    out = dict(pools)
    for lq in labelled:
        samples = [Sample({**x.labels,
                           PROM_ROLE_LABEL: _role(x.labels.get(PROM_ROLE_LABEL, ""), blank_role, notes) or ""},
                          x.value, x.timestamp) for x in answer(lq.promql)]
        for role, value in labelled_values(lq, samples, window_s).items():
            if role in out and value is not None:
                out[role] = dataclasses.replace(out[role], **{lq.field: value})
    return out


def labelled_values(lq: LabelledQuery, samples: Sequence[Sample], window_s: float) -> dict[str, Any]:
    """role -> the field's value from one labelled answer. Buckets: cumulative counts over the
    window by upper bound in ms (+Inf last), None when nothing was observed or a value is not
    finite. KV capacity: the smallest num_gpu_blocks x block_size of the pool's pods (an engine
    still profiling reports num_gpu_blocks="None": skipped)."""
    per_role: dict[str, list[Sample]] = {}
    for sample in samples:
        per_role.setdefault(sample.labels.get(PROM_ROLE_LABEL, ""), []).append(sample)
    out: dict[str, Any] = {}
    for role, items in per_role.items():
        if lq.field == "kv_capacity_tokens":
            tokens = [blocks * size for x in items
                      if (blocks := _label_number(x, "num_gpu_blocks")) and (size := _label_number(x, "block_size"))]
            out[role] = float(min(tokens)) if tokens else None
            continue
        pairs = [(_label_number(x, "le"), x.value * window_s) for x in items]
        if any(le is None or not math.isfinite(v) for le, v in pairs):
            out[role] = None
            continue
        ordered = sorted((float(le) * 1000.0, v) for le, v in pairs if le is not None)
        out[role] = tuple(ordered) if ordered and ordered[-1][0] == math.inf and ordered[-1][1] > 0 else None
    return out


def _label_number(sample: Sample, label: str) -> float | None:
    try:
        value = float(sample.labels.get(label, ""))
    except ValueError:
        return None
    return value if value == math.inf or (math.isfinite(value) and value > 0) else None


def deployment_matchers(namespace: str, name: str,
                        extra: Mapping[str, str] | Iterable[Matcher] = ()) -> tuple[Matcher, ...]:
    """The matchers for the vLLM pods of one InferenceDeployment (all roles)."""
    extra_m = equality_matchers(extra) if isinstance(extra, Mapping) else tuple(extra)
    return (Matcher(NAMESPACE_LABEL, "=", namespace), Matcher(PROM_DEPLOYMENT_LABEL, "=", name),
            Matcher(PROM_ROLE_LABEL, "=~", "|".join(ROLES)), *extra_m)


# ------------------------------------------------------------------------------------------
# the collector (I/O)
# ------------------------------------------------------------------------------------------
class PrometheusCollector:
    """Reads `Observation`s from one Prometheus server. Safe to reuse; not thread-safe.

    ``timeout_s`` limits each HTTP request (and is passed to Prometheus as the query timeout);
    ``budget_s`` (default 6 × timeout_s) limits one whole observation. ``extra_matchers`` are
    ``label=value`` matchers added to every query (e.g. ``{"cluster": "eu-1"}``). ``client``
    replaces the PrometheusConnect (tests).
    """

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 extra_matchers: Mapping[str, str] | None = None, *, budget_s: float | None = None,
                 disable_ssl: bool = False, headers: Mapping[str, str] | None = None,
                 client: _Client | None = None) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.budget_s = float(budget_s) if budget_s is not None else BUDGET_FACTOR * self.timeout_s
        self.extra_matchers = equality_matchers(extra_matchers or {})  # validates the label names
        self.queries_sent = 0  # HTTP queries asked so far (tests and benchmarks count them)
        self._client: _Client = client if client is not None else PrometheusConnect(
            url=self.url, disable_ssl=disable_ssl, headers=dict(headers) if headers else None,
            # no retries: a dead or stalled server fails this observation fast; the next one retries
            retry=Retry(total=0, read=False, status_forcelist=()))

    # -- public -------------------------------------------------------------------------------
    def observe(self, namespace: str, name: str, now: dt.datetime, window_s: float = 60,
                long_window_s: float = 600, quantile: float = 0.99) -> Observation:
        """The pools of InferenceDeployment ``namespace/name``. Never raises."""
        try:
            if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
                # an empty value would match series *without* the label: anything at all
                raise ValueError("both must be non-empty strings")
            matchers = deployment_matchers(namespace, name, self.extra_matchers)
        except Exception as exc:
            return Observation.unavailable(now, f"invalid namespace/name {namespace!r}/{name!r}: {exc}",
                                           _num(window_s, 60.0), _num(long_window_s, 600.0))
        return self._observe(matchers, f"{namespace}/{name}", now, window_s, long_window_s, quantile,
                             blank_role=None)

    def observe_selector(self, selector: str | Mapping[str, str] | Sequence[Matcher], now: dt.datetime,
                         window_s: float = 60, long_window_s: float = 600,
                         quantile: float = 0.99) -> Observation:
        """The pools of the vLLM pods matching arbitrary label matchers (``k=v,k2=~re``), instead
        of namespace/name. Series without a role label count as the aggregated pool. Never raises."""
        try:
            if isinstance(selector, str):
                given: tuple[Matcher, ...] = parse_selector(selector)
            elif isinstance(selector, Mapping):
                given = equality_matchers(selector)
            else:
                given = tuple(selector)
            if not given:
                raise ValueError("the selector is empty")
        except Exception as exc:
            return Observation.unavailable(now, f"invalid selector {selector!r}: {exc}",
                                           _num(window_s, 60.0), _num(long_window_s, 600.0))
        matchers = (*given, *self.extra_matchers)
        return self._observe(matchers, "{" + render_matchers(given) + "}", now, window_s, long_window_s, quantile,
                             blank_role="aggregated")

    def pod_in_flight(self, namespace: str, name: str, role: str, now: dt.datetime) -> dict[str, float] | None:
        """Requests running plus waiting now, per pod of one pool (the pods that should leave a
        scale-down first are those with the fewest). None when Prometheus cannot say; a pod that
        reports no series is absent. Never raises."""
        try:
            matchers = (Matcher(NAMESPACE_LABEL, "=", namespace), Matcher(PROM_DEPLOYMENT_LABEL, "=", name),
                        Matcher(PROM_ROLE_LABEL, "=", role), *self.extra_matchers)
            sel = render_matchers(matchers)
            promql = (f"max by ({POD_LABEL}) ({REQUESTS_RUNNING}{{{sel}}}) + "
                      f"max by ({POD_LABEL}) ({REQUESTS_WAITING}{{{sel}}})")
            samples = self._query(promql, _unix(now), time.monotonic() + self.timeout_s)
        except Exception as exc:  # _Unavailable or a surprise: the caller lets Kubernetes choose
            log.info("per-pod load of %s/%s %s unavailable: %s", namespace, name, role, exc)
            return None
        return {s.labels[POD_LABEL]: s.value for s in samples if POD_LABEL in s.labels and math.isfinite(s.value)}

    # -- internals ------------------------------------------------------------------------------
    def _observe(self, matchers: Sequence[Matcher], target: str, now: dt.datetime, window_s: float,
                 long_window_s: float, quantile: float, blank_role: str | None) -> Observation:
        w_s, lw_s = _num(window_s, 60.0), _num(long_window_s, 600.0)
        try:
            problem = _check_args(window_s, long_window_s, quantile, now)
            if problem:
                return Observation.unavailable(now, problem, w_s, lw_s)
            deadline = time.monotonic() + self.budget_s
            plan = QueryPlan.build(matchers, float(window_s), float(long_window_s), quantile)
            answers = self.fetch(plan, _unix(now), deadline)  # a query the same in both windows is asked once
            return assemble(plan, answers.__getitem__, target, now, w_s, lw_s, blank_role)
        except _Unavailable as exc:
            return Observation.unavailable(now, str(exc), w_s, lw_s)
        except Exception as exc:  # a bug or a surprise: still never raise into the operator
            log.exception("reading Prometheus failed unexpectedly")
            return Observation.unavailable(now, f"reading Prometheus at {self.url} failed: "
                                                f"{type(exc).__name__}: {exc}", w_s, lw_s)

    def fetch(self, plan: QueryPlan, at: float, deadline: float) -> dict[str, list[Sample]]:
        """Every query of `plan` at unix time ``at``, one after the other: promql -> samples.
        Raises _Unavailable on the first that fails."""
        return {promql: self._query(promql, at, deadline) for promql in plan.promqls()}

    def _query(self, promql: str, at: float, deadline: float) -> list[Sample]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Unavailable(f"Prometheus at {self.url} took longer than {self.budget_s:g} s for one "
                               f"observation (timeout); is it overloaded?")
        timeout = min(self.timeout_s, left)
        params = {"time": f"{at:.3f}", "timeout": duration(max(timeout, 0.001))}
        short = promql if len(promql) <= 160 else promql[:157] + "..."
        self.queries_sent += 1
        try:
            raw = self._client.custom_query(promql, params=params, timeout=timeout)
        except requests.exceptions.Timeout as exc:
            raise _Unavailable(f"Prometheus at {self.url} did not answer within {timeout:g} s (timeout) "
                               f"for {short}: {_reason(exc)}") from None
        except requests.exceptions.JSONDecodeError as exc:
            raise _Unavailable(f"Prometheus at {self.url} sent a malformed answer (not JSON: {exc}) "
                               f"for {short}") from None
        except requests.exceptions.ConnectionError as exc:
            reason = _reason(exc)
            if "timed out" in reason.lower():
                raise _Unavailable(f"Prometheus at {self.url} did not answer within {timeout:g} s (timeout) "
                                   f"for {short}: {reason}") from None
            raise _Unavailable(f"Prometheus at {self.url} is unreachable: {reason}") from None
        except requests.exceptions.RequestException as exc:
            raise _Unavailable(f"request to Prometheus at {self.url} failed: {_reason(exc)}") from None
        except PrometheusApiClientException as exc:
            raise _Unavailable(f"Prometheus at {self.url} answered {_http_error(str(exc))} for {short}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # valid JSON, wrong shape
            raise _Unavailable(f"Prometheus at {self.url} sent a malformed answer ({type(exc).__name__}: "
                               f"{exc}) for {short}") from None
        try:
            return parse_vector(raw)
        except MalformedResult as exc:
            raise _Unavailable(f"Prometheus at {self.url} sent a malformed answer ({exc}) for {short}") from None


def _pools(results: Mapping[str, Mapping[str, Reading]], queries: Sequence[PoolQuery], window_s: float,
           notes: _Notes) -> dict[str, PoolMetrics]:
    pools = {}
    for role in sorted(results, key=lambda r: ROLES.index(r) if r in ROLES else len(ROLES)):
        readings = results[role]
        values: dict[str, Any] = {}
        for pq in queries:
            reading = readings.get(pq.field, Reading(None, "no series"))
            if reading.value is None:
                if not pq.optional:
                    notes.add(role, pq, reading.problem or "no series", window_s)
                continue
            value = reading.value * pq.scale
            values[pq.field] = round(value) if pq.field == "pods_reporting" else value
        pools[role] = PoolMetrics(role=role, **values)
    return pools


class _Notes:
    """`missing` sentences, one per (pool, field, problem), naming every window it applies to."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._items: dict[tuple[str, str, str], tuple[PoolQuery, list[float]]] = {}
        self._raw: list[str] = []

    def add(self, role: str, pq: PoolQuery, problem: str, window_s: float) -> None:
        key = (role, pq.field, problem)
        entry = self._items.setdefault(key, (pq, []))
        if window_s not in entry[1]:
            entry[1].append(window_s)

    def add_raw(self, sentence: str) -> None:
        if sentence not in self._raw:
            self._raw.append(sentence)

    def render(self) -> tuple[str, ...]:
        out = list(self._raw)
        for (role, field, problem), (pq, spans) in self._items.items():
            windows = " and ".join(_fmt_s(s) for s in sorted(spans))
            windows += " windows" if len(spans) > 1 else " window"
            where = f"the {role} pool of {self.target}"
            if problem == "no series":
                out.append(f"{field}: no series of {pq.metric} for {where} ({windows}){pq.hint}")
            else:
                out.append(f"{field}: {pq.metric} is {problem} for {where} ({windows}); nothing observed "
                           "in the window, taken as unknown")
        return tuple(out)


def _role(value: str, blank_role: str | None, notes: _Notes) -> str | None:
    if value in ROLES:
        return value
    if value == "" and blank_role is not None:
        return blank_role
    notes.add_raw(f"series with {PROM_ROLE_LABEL}={value!r} for {notes.target} ignored: the role must be one of "
                  f"{', '.join(ROLES)}")
    return None


def _check_args(window_s: Any, long_window_s: Any, quantile: Any, now: Any) -> str | None:
    for label, v in (("window_s", window_s), ("long_window_s", long_window_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0.001):
            return f"invalid {label} {v!r}: it must be a positive number of seconds"
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not (0 < quantile < 1):
        return f"invalid quantile {quantile!r}: it must be between 0 and 1 (0.99 for p99)"
    if not isinstance(now, dt.datetime):
        return f"invalid time {now!r}: it must be a datetime"
    return None


def _num(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _unix(now: dt.datetime) -> float:
    """A naive datetime is taken as UTC (the operator's clock is UTC)."""
    return (now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)).timestamp()


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def _reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error, not its whole repr chain:
    'Failed to establish a new connection: [Errno 111] Connection refused', 'Read timed out.'."""
    text = str(exc)
    m = re.search(r"Caused by \w+\((.*?)\)\)?\s*$", text, re.S)
    if m:
        text = m.group(1).strip().strip("\"'")
    text = re.sub(r"^\S*Connection(?:Pool)?\([^)]*\):\s*", "", text)
    text = re.sub(r"^<[^>]*>:\s*", "", text).strip() or str(exc)
    return text if len(text) <= 300 else text[:297] + "..."


def _http_error(text: str) -> str:
    """'HTTP Status Code 400 (b'{"status":"error","errorType":"bad_data","error":"..."}')' → 'HTTP 400: ...'."""
    m = re.match(r"HTTP Status Code (\d+) \((.*)\)$", text, re.S)
    if not m:
        return text[:300]
    code, body = m.groups()
    if len(body) >= 3 and body[0] == "b" and body[1] == body[-1] and body[1] in "'\"":
        body = body[2:-1]  # the repr of the bytes
    err = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', body)
    detail = err.group(1) if err else body
    detail = detail if len(detail) <= 240 else detail[:237] + "..."
    return f"HTTP {code}: {detail}"


"""Scaling policies: the operator's planner and the baselines it is compared with.

Each policy is asked every ``interval_s`` of simulated time for the replicas of every pool and
sees only what its real counterpart sees. Sources of every rule: docs/simulator.md.

* ``goodput``: **the operator's planner itself**, `goodput.planner.autoscale.autoscale`, called
  through its module (so that a test can watch the call) with the same `PlannerInput` the
  operator's reconcile builds: an `Observation` from the simulated vLLM metrics over the
  operator's windows (60 s / 600 s, `goodput.sim.metrics`), every pool's replicas and ready pods,
  the replicas it asked for last time, its own `AutoscalerState` carried from call to call, the
  spec it would run with and the shape the fleet runs. Every 30 s, the operator's default
  reconcile timer.
* ``hpa``: a Kubernetes HorizontalPodAutoscaler (autoscaling/v2, default behavior) per pool on a
  Pods metric: vllm:num_requests_running (or vllm:kv_cache_usage_perc) per pod against a target,
  by default the level a one-replica load test of the world's engine gives (`goodput.sim.loadtest`).
* ``keda-queue``: KEDA's Prometheus scaler on ``sum(vllm:num_requests_waiting)`` with threshold 5,
  metricType AverageValue (the vLLM production-stack tutorial), i.e. an HPA external metric.
* ``dynamo``: NVIDIA Dynamo's SLA planner (throughput-based, constant load predictor), its profile
  taken from the same capacity model (`ReplicaModel`) the simulated engines run on.
* ``static-peak``: the capacity model's replicas for the trace's peak, once.
* ``oracle``: clairvoyant: every interval, the capacity model's replicas for the load that will
  arrive in it, ready at once (no cold start), removed at once (no stabilization).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from goodput.planner import autoscale as autoscale_module
from goodput.planner.autoscale import AutoscaleResult, AutoscalerState, PlannerInput
from goodput.planner.observation import Observation, PoolObservation
from goodput.sim.fleet import Completion, Fleet, PodSample
from goodput.sim.metrics import observe

if TYPE_CHECKING:
    from goodput.sim.simulate import Setup

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HPA_TOLERANCE = 0.1
HPA_SYNC_S = 15.0
HPA_SCALE_DOWN_WINDOW_S = 300.0
HPA_SCALE_UP_WINDOW_S = 0.0
KEDA_THRESHOLD = 5.0
DYNAMO_GRID = 100
# Dynamo's planner defaults (components/src/dynamo/planner defaults: throughput_adjustment_interval
# 180 s, min_endpoint 1). Its max_gpu_budget default (8) is a demo value a user raises to the
# fleet's size: here it is the cap every policy shares.
DYNAMO_ADJUSTMENT_INTERVAL_S = 180.0


def sim_time(t: float) -> dt.datetime:
    """The wall-clock time a simulated second stands for (what the planner is given as `now`)."""
    return EPOCH + dt.timedelta(seconds=t)


class Policy:
    """Decides the replicas of every pool, every ``interval_s``."""

    name = ""
    cold_start = True  # new replicas serve only after the cold start

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.interval_s = setup.config.interval_s
        self.notes: list[str] = []

    def initial(self) -> dict[str, int]:
        """The fleet at t = 0 (warm). Reactive policies start where the capacity model puts the
        first minute of the trace, as if they had been running before it."""
        return dict(self.setup.start_replicas)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------
# goodput: the operator's planner
# ------------------------------------------------------------------------------------------
class GoodputPolicy(Policy):
    name = "goodput"
    calibrate = True

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.state = AutoscalerState()
        self.results: list[AutoscaleResult] = []

    def initial(self) -> dict[str, int]:
        """The fleet the operator creates for the spec: its own first plan, from the hints (the
        opening's rate) with no metrics yet, so with what the planner holds before any evidence
        (spec.scaling.uncalibratedMargin). The state carries on from it, as status would."""
        start = super().initial()
        inputs = PlannerInput(self.setup.spec, self.setup.resolved, None, {}, {}, self.state, sim_time(0.0),
                              shape=self.setup.running_shape())
        result = autoscale_module.autoscale(inputs)
        self.state = AutoscalerState.from_status(result.state.to_status())
        planned = {d.role: d.target for d in result.pools}
        return {role: planned.get(role, n) for role, n in start.items()}

    def observation(self, t: float, fleet: Fleet) -> Observation:
        cfg = self.setup.config
        # Prometheus as of the last scrape that is metrics_age_s old (the same age for every policy).
        obs = observe(fleet.history, t - cfg.metrics_age_s, sim_time(t), cfg.window_s, cfg.long_window_s,
                      self.setup.spec.slo.percentile / 100.0, self.setup.max_model_len)
        if self.calibrate:
            return obs
        # Withhold what calibration reads (ITL, prefill time, TTFT buckets, KV capacity).
        pools = {role: dataclasses.replace(pm, itl_mean_ms=None, prefill_time_mean_ms=None, ttft_buckets=None,
                                           kv_capacity_tokens=None)
                 for role, pm in obs.pools.items()}
        return dataclasses.replace(obs, pools=pools)

    def planner_input(self, t: float, fleet: Fleet) -> PlannerInput:
        """What the operator's reconcile would give the planner for this fleet: the metrics, each
        pool's replicas and ready pods (the simulated cluster has room for every pod: none pending),
        the replicas last decided, the planner's own state, and the shape the fleet runs."""
        current = {role: fleet.count(role) for role in fleet.pools}
        pods = {role: PoolObservation(current[role], fleet.ready_count(role)) for role in fleet.pools}
        return PlannerInput(self.setup.spec, self.setup.resolved, self.observation(t, fleet), pods, current,
                            self.state, sim_time(t), shape=self.setup.running_shape())

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        inputs = self.planner_input(t, fleet)
        current = dict(inputs.current)
        # The operator's own planner entry point, called through its module (a test watches the call).
        result = autoscale_module.autoscale(inputs)
        # Through status, as the operator keeps it between reconciles (and across a restart).
        self.state = AutoscalerState.from_status(result.state.to_status())
        self.results.append(result)
        targets = {d.role: d.target for d in result.pools if d.role in fleet.pools}
        if set(targets) != set(fleet.pools):
            self.notes.append(f"t={t:.0f}s: the planner planned {sorted(targets)}, "
                              f"the fleet runs {sorted(fleet.pools)}")
        return {role: targets.get(role, current[role]) for role in fleet.pools}


class GoodputNoCalibrationPolicy(GoodputPolicy):
    """Diagnostic, not a policy of the product: the same planner with its calibration kept at the
    shipped model (what the terms calibrate from is withheld from the Observation; the SLO feedback
    on the ITL percentile still acts)."""

    name = "goodput-nocal"
    calibrate = False


# ------------------------------------------------------------------------------------------
# Kubernetes HPA (and KEDA, which drives an HPA)
# ------------------------------------------------------------------------------------------
def plain_metric_replicas(values: list[float], missing: int, current: int, target: float,
                          tolerance: float = HPA_TOLERANCE) -> int | None:
    """The HPA replica calculator for a Pods metric (``calcPlainMetricReplicas`` of
    kubernetes/pkg/controller/podautoscaler/replica_calculator.go): ``values`` of the pods with
    metrics, ``missing`` pods without (not yet serving). None when no pod has metrics (the HPA
    then changes nothing)."""
    if not values:
        return None
    ratio = float(np.mean(values)) / target
    if missing == 0:
        if abs(ratio - 1.0) <= tolerance:
            return current
        return math.ceil(ratio * len(values))
    # Missing pods: as at the target on a scale-down, as idle on a scale-up.
    filled = values + [target if ratio < 1.0 else 0.0] * missing
    new_ratio = float(np.mean(filled)) / target
    if abs(new_ratio - 1.0) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current
    new = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and new > current) or (new_ratio > 1.0 and new < current):
        return current
    return new


def external_average_replicas(total: float, current: int, target: float, tolerance: float = HPA_TOLERANCE) -> int:
    """The HPA replica calculator for an External metric with an AverageValue target
    (``GetExternalPerPodMetricReplicas``): ceil(total / target) unless within tolerance."""
    ratio = total / (target * max(current, 1))
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(total / target)


@dataclass
class HPABehavior:
    """autoscaling/v2 defaults: scale up by max(100%, 4 pods) per 15 s with no stabilization,
    scale down by up to 100% per 15 s after a 300 s stabilization window."""

    min_replicas: int = 1
    max_replicas: int = 10000
    up_window_s: float = HPA_SCALE_UP_WINDOW_S
    down_window_s: float = HPA_SCALE_DOWN_WINDOW_S
    recommendations: list[tuple[float, int]] = field(default_factory=list)

    def normalize(self, desired: int, current: int, t: float) -> int:
        # stabilizeRecommendationWithBehaviors: up to the lowest of the up window, down to the
        # highest of the down window (recommendations strictly after the cutoff).
        up = down = desired
        for ts, rec in self.recommendations:
            if ts > t - self.up_window_s:
                up = min(up, rec)
            if ts > t - self.down_window_s:
                down = max(down, rec)
        stabilized = min(max(current, up), down)
        self.recommendations.append((t, desired))
        keep = t - max(self.up_window_s, self.down_window_s)
        self.recommendations = [(ts, r) for ts, r in self.recommendations if ts > keep]
        # convertDesiredReplicasWithBehaviorRate: the period (15 s) equals the sync period, so the
        # replicas at the period's start are the current ones.
        up_limit = max(math.ceil(current * 2.0), current + 4)
        down_limit = 0  # 100% per 15 s
        limited = min(max(stabilized, down_limit), up_limit)
        return min(max(limited, self.min_replicas), self.max_replicas)


def _behaviors(setup: Setup) -> dict[str, HPABehavior]:
    """One HPA per pool, as if it had been running before the trace: its recommendation history
    holds the starting replicas (so it does not scale down before its 300 s window has passed)."""
    return {role: HPABehavior(max_replicas=setup.max_replicas, recommendations=[(0.0, n)])
            for role, n in setup.start_replicas.items()}


def _running(e: PodSample) -> float:
    return e.running


def _kv(e: PodSample) -> float:
    return e.kv_usage


def _waiting(e: PodSample) -> float:
    return e.waiting


class HPAPolicy(Policy):
    name = "hpa"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.interval_s = setup.config.hpa_sync_s
        self.behavior = _behaviors(setup)
        self.targets = {role: setup.hpa_target(role) for role in setup.pools}
        self.metric = setup.config.hpa_metric
        self.age_s = setup.config.metrics_age_s

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        out: dict[str, int] = {}
        for role in fleet.pools:
            current = fleet.count(role)
            gauge: Callable[[PodSample], float] = _kv if self.metric == "kv" and role != "prefill" else _running
            # Through Prometheus and a metrics adapter: the pods' last scrapes, not the live engines.
            values, missing = fleet.pod_gauges(role, gauge, self.age_s)
            desired = plain_metric_replicas(values, missing, current, self.targets[role])
            if desired is None:
                out[role] = current
                continue
            out[role] = self.behavior[role].normalize(desired, current, t)
        return out


class KedaQueuePolicy(Policy):
    """The vLLM production-stack tutorial's ScaledObject: one Prometheus trigger on
    ``sum(vllm:num_requests_waiting)``, threshold 5 (AverageValue), read as of the last scrape; the
    HPA it drives has the default behavior; maxReplicaCount is the cap every policy shares."""

    name = "keda-queue"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.interval_s = setup.config.hpa_sync_s
        self.threshold = setup.config.keda_threshold
        self.behavior = _behaviors(setup)
        self.age_s = setup.config.metrics_age_s

    def desired(self, role: str, current: int, fleet: Fleet) -> int:
        total = fleet.pool_gauge_sum(role, _waiting, self.age_s)
        return external_average_replicas(total, current, self.threshold)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        out: dict[str, int] = {}
        for role in fleet.pools:
            current = fleet.count(role)
            out[role] = self.behavior[role].normalize(self.desired(role, current, fleet), current, t)
        return out


class KedaQueueRunningPolicy(KedaQueuePolicy):
    """The same ScaledObject with a second trigger, ``sum(vllm:num_requests_running)`` against the
    HPA's per-pod target (AverageValue): with several triggers the HPA takes the largest of their
    replica counts, so a pool whose queue is empty but whose batches are full still grows."""

    name = "keda-queue-running"

    def desired(self, role: str, current: int, fleet: Fleet) -> int:
        queue = super().desired(role, current, fleet)
        running = fleet.pool_gauge_sum(role, _running, self.age_s)
        return max(queue, external_average_replicas(running, current, self.setup.hpa_target(role)))


# ------------------------------------------------------------------------------------------
# NVIDIA Dynamo SLA planner
# ------------------------------------------------------------------------------------------
class DynamoProfile:
    """Dynamo's pre-deployment profile of one engine, from the capacity model instead of a sweep:
    prefill TTFT and tokens/s per GPU of one prompt alone (the profiler's batch-1 TTFT); decode ITL
    and tokens/s per GPU over a grid of KV-cache loads (``perf_interpolation.DecodeInterpolator``)."""

    def __init__(self, setup: Setup, role: str) -> None:
        pool = setup.pools[role]
        self.model = pool.engine_model  # Dynamo profiles the real engine: the world's, not the belief
        self.tp = pool.tp
        self.max_kv = float(self.model.kv_capacity_tokens)
        self.max_seqs = float(self.model.max_num_seqs)

    def prefill_ttft_s(self, isl: float) -> float:
        return float(self.model.prefill_s(1.0, max(isl, 1.0)))

    def prefill_thpt_per_gpu(self, isl: float) -> float:
        isl = max(isl, 1.0)
        return isl / self.prefill_ttft_s(isl) / self.tp

    def decode_itl_s(self, concurrency: float, context: float) -> float:
        n = max(concurrency, 1.0)
        return float(self.model.step_time_s(n, n * max(context, 1.0)))

    def best_decode_thpt_per_gpu(self, itl_s: float, context: float) -> float:
        """``find_best_throughput_per_gpu``: from the highest KV load down, the first whose ITL
        meets the target; its output tokens/s per GPU."""
        context = max(context, 1.0)
        for x in np.linspace(0.0, 1.0, DYNAMO_GRID)[::-1]:
            n = min(max(float(x) * self.max_kv / context, 1.0), self.max_seqs)
            itl = self.decode_itl_s(n, context)
            if itl <= itl_s:
                return n / itl / self.tp
        return 1.0 / self.decode_itl_s(1.0, context) / self.tp

    def best_agg_rps(self, isl: float, osl: float, ttft_s: float, itl_s: float, hit_rate: float = 0.0) -> float:
        """``AggRegressionModel.find_best_engine_agg_rps`` with the engine's own step time in place
        of its online regression: for each decode batch ``bs`` up to the smallest of the KV cache
        (``max_kv / (isl + osl/2)``), --max-num-seqs and the prefill/decode balance point
        (``isl' / (max_num_batched_tokens - bs) <= osl``, isl' the prompt after prefix hits), a
        step of ``bs`` decodes plus ``bs * isl' / osl`` prefill tokens is the ITL, and the chunks of
        one more prompt behind the prefill of that step are the TTFT; the largest batch before
        either misses its target gives ``bs / (osl * step)`` requests/s (Little's law)."""
        isl, osl = max(isl, 1.0), max(osl, 1.0)
        budget = float(self.model.max_num_batched_tokens)
        hit = min(max(hit_rate, 0.0), 1.0)
        effective_isl = isl * (1.0 - hit)
        context = isl + osl / 2.0
        kv_cap = max(1, int(self.max_kv / context))
        hard_cap = min(kv_cap, int(self.max_seqs), int(budget) - 1)
        balance = math.floor(budget - effective_isl / osl)
        bs = np.arange(1, max(1, min(hard_cap, balance)) + 1, dtype=np.float64)
        decode_kv = bs * context
        step = self._mixed_step_s(bs, decode_kv, np.minimum(bs * effective_isl / osl, budget), effective_isl)
        # TTFT: the queued prompt tokens (one step's worth) and the new prompt, after prefix hits, in chunks.
        ahead = (np.minimum(bs * isl / osl, budget) + isl) * (1.0 - hit)
        full = np.floor(ahead / budget)
        ttft = full * self._mixed_step_s(bs, decode_kv, np.full_like(bs, budget), effective_isl) \
            + self._mixed_step_s(bs, decode_kv, ahead - full * budget, effective_isl)
        ok = (step <= itl_s) & (ttft <= ttft_s)
        first_miss = int(np.argmin(ok)) if not ok.all() else bs.size
        if first_miss == 0:  # "Agg SLA unreachable at batch_size=1"
            return float(1.0 / (osl * step[0]))
        k = first_miss - 1
        return float(bs[k] / (osl * step[k]))

    def _mixed_step_s(self, decodes: npt.NDArray[np.float64], decode_kv: npt.NDArray[np.float64],
                      prefill_tokens: npt.NDArray[np.float64], prompt: float) -> npt.NDArray[np.float64]:
        """One step of decodes plus a prefill chunk (its attention pairs as a chunk of a prompt's
        middle; one prompt completing per ``prompt`` tokens)."""
        prompt = max(prompt, 1.0)
        pairs = prefill_tokens * (prompt + 1.0) / 2.0
        return np.asarray(self.model.step_time_s(decodes, decode_kv, prefill_tokens, pairs, prefill_tokens / prompt),
                          dtype=np.float64)


class DynamoPolicy(Policy):
    """``planner_core`` throughput-based scaling every ``throughput_adjustment_interval`` (180 s
    by default, `SimConfig.dynamo_interval_s`): frontend metrics of the last interval (request
    count, mean ISL/OSL, mean TTFT/ITL, mean request duration), a constant (last-value) predictor,
    then

    * disaggregated: correction factors, and
      ``prefill = ceil(num_req * isl / interval * min(1, p_corr) / (prefill tokens/s per GPU * GPUs))``,
      ``decode = ceil(num_req * osl / interval / (best decode tokens/s per GPU at ITL/d_corr * GPUs))``;
    * aggregated: the native path, ``ceil(demand_rps / engine_rps)`` with ``engine_rps`` from
      ``find_best_engine_agg_rps`` (`DynamoProfile.best_agg_rps`), discounted by the router's
      realised prefix-hit rate;

    at least 1 each. The Kubernetes connector ignores a scaling while the graph deployment is not
    ready ("Deployment ... is not ready, ignoring this scaling"): here, while any replica of any
    pool is still starting."""

    name = "dynamo"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.interval_s = setup.config.dynamo_interval_s
        self.mode = "disaggregated" if "prefill" in setup.pools else "aggregated"
        self.prefill = DynamoProfile(setup, "prefill" if self.mode == "disaggregated" else "aggregated")
        self.decode = DynamoProfile(setup, "decode" if self.mode == "disaggregated" else "aggregated")
        self.itl_target_s = setup.spec.slo.itl_ms / 1000.0
        self.ttft_target_s = setup.spec.slo.ttft_ms / 1000.0
        self.correction = setup.config.dynamo_correction
        self.p_corr = 1.0
        self.d_corr = 1.0
        self._seen = 0
        self._tokens_seen = (0, 0)
        self.ignored = 0
        self.last: tuple[float, float, float] | None = None

    def _hit_rate(self, fleet: Fleet) -> float:
        """The router's prefix-hit rate over the last interval (cached / prompt tokens routed)."""
        prompt0, cached0 = self._tokens_seen
        self._tokens_seen = (fleet.entry_prompt_tokens, fleet.entry_cached_tokens)
        prompt = fleet.entry_prompt_tokens - prompt0
        return (fleet.entry_cached_tokens - cached0) / prompt if prompt > 0 else 0.0

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        current = {role: fleet.count(role) for role in fleet.pools}
        new = fleet.completions[self._seen:]
        self._seen = len(fleet.completions)
        hit_rate = self._hit_rate(fleet)
        if t < 2.0 * self.interval_s - 1e-9:
            # The first interval's frontend counts only requests that arrived and finished since
            # the trace began (a start-up artefact of the replay, not the steady traffic it stands for).
            return current
        if not new:  # "Metrics contain None or NaN values (no active requests), skipping adjustment"
            return current
        num_req = float(len(new))
        isl = float(np.mean([c.prompt for c in new]))
        osl = float(np.mean([c.output for c in new]))
        self.last = (num_req, isl, osl)  # the constant predictor: the next interval looks like this one
        if self.mode == "disaggregated":
            targets = self._disaggregated(new, num_req, isl, osl, fleet)
        else:
            engine_rps = self.decode.best_agg_rps(isl, osl, self.ttft_target_s, self.itl_target_s, hit_rate)
            targets = {"aggregated": math.ceil(num_req / self.interval_s / engine_rps - 1e-9)}
        cap = self.setup.max_replicas
        targets = {role: min(max(n, 1), cap) for role, n in targets.items()}
        if targets != current and any(fleet.ready_count(r) < fleet.count(r) for r in fleet.pools):
            self.ignored += 1
            if self.ignored == 1:
                self.notes.append(f"t={t:.0f}s: the deployment is not ready, ignoring this scaling "
                                  "(as Dynamo's Kubernetes connector)")
            return current
        return targets

    def _disaggregated(self, new: list[Completion], num_req: float, isl: float, osl: float,
                       fleet: Fleet) -> dict[str, int]:
        interval = self.interval_s
        context = isl + osl / 2.0
        if self.correction:
            ttft = float(np.mean([c.ttft_s for c in new]))
            itl_n = sum(c.itl_count for c in new)
            itl = sum(c.itl_s * c.itl_count for c in new) / itl_n if itl_n else float("nan")
            duration = float(np.mean([c.e2e_s for c in new]))
            self.p_corr = ttft / self.prefill.prefill_ttft_s(isl)
            decoders = max(fleet.ready_count("decode"), 1)
            expect_itl = self.decode.decode_itl_s(num_req / decoders * duration / interval, context)
            if math.isfinite(itl) and expect_itl > 0:
                self.d_corr = itl / expect_itl
        p_tokens_s = num_req * isl / interval * min(1.0, self.p_corr)
        p_engines = p_tokens_s / (self.prefill.prefill_thpt_per_gpu(isl) * self.prefill.tp)
        corrected_itl = self.itl_target_s / self.d_corr if self.d_corr > 0 else self.itl_target_s
        d_thpt = self.decode.best_decode_thpt_per_gpu(corrected_itl, context)
        d_engines = num_req * osl / interval / (d_thpt * self.decode.tp)
        return {"prefill": math.ceil(p_engines), "decode": math.ceil(d_engines)}


# ------------------------------------------------------------------------------------------
# static and clairvoyant
# ------------------------------------------------------------------------------------------
class StaticPeakPolicy(Policy):
    name = "static-peak"

    def initial(self) -> dict[str, int]:
        return dict(self.setup.peak_replicas)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        return dict(self.setup.peak_replicas)


class OraclePolicy(Policy):
    """Knows the arrivals of the next interval; sizes for them with ``per_replica_rps`` (default:
    the capacity model evaluated on the world's engines); its replicas serve at once and it
    scales down at once. ``extra``: replicas added (or removed, when negative) per pool and
    interval index, found by `simulate.run_oracle` by replaying the trace, at least 1 per pool."""

    name = "oracle"
    cold_start = False

    def __init__(self, setup: Setup, extra: dict[str, dict[int, int]] | None = None,
                 per_replica_rps: dict[str, float] | None = None) -> None:
        super().__init__(setup)
        self.extra = extra or {}
        self.per_replica_rps = per_replica_rps or {role: setup.world_goodput_rps(role) for role in setup.targets}

    def base(self, t: float) -> dict[str, int]:
        """Replicas per pool for the arrivals of the interval from ``t``, before ``extra``."""
        rate = self.setup.trace.rate_in(t, t + self.interval_s)
        cap = self.setup.max_replicas
        return {role: min(max(math.ceil(rate / g - 1e-9), 1), cap) if g > 0 else cap
                for role, g in self.per_replica_rps.items()}

    def _for(self, t: float) -> dict[str, int]:
        k = round(t / self.interval_s)
        return {role: max(n + self.extra.get(role, {}).get(k, 0), 1) for role, n in self.base(t).items()}

    def initial(self) -> dict[str, int]:
        return self._for(0.0)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        return self._for(t)


POLICIES: dict[str, type[Policy]] = {
    "goodput": GoodputPolicy,
    "hpa": HPAPolicy,
    "keda-queue": KedaQueuePolicy,
    "keda-queue-running": KedaQueueRunningPolicy,
    "dynamo": DynamoPolicy,
    "static-peak": StaticPeakPolicy,
    "oracle": OraclePolicy,
}
# Diagnostics the benchmark may run beside the policies (not part of `--policy all`).
DIAGNOSTICS: dict[str, type[Policy]] = {"goodput-nocal": GoodputNoCalibrationPolicy}

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
  Pods metric: vllm:num_requests_running (or vllm:kv_cache_usage_perc) per pod against a target.
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

from goodput.engine.replica import EngineReplica
from goodput.planner import autoscale as autoscale_module
from goodput.planner.autoscale import AutoscaleResult, AutoscalerState, PlannerInput
from goodput.planner.observation import Observation, PoolObservation
from goodput.sim.fleet import Fleet
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

    def observation(self, t: float, fleet: Fleet) -> Observation:
        cfg = self.setup.config
        obs = observe(fleet.history, t, sim_time(t), cfg.window_s, cfg.long_window_s,
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


def _running(e: EngineReplica) -> float:
    return float(e.running)


def _kv(e: EngineReplica) -> float:
    return float(e.kv_usage)


def _waiting(e: EngineReplica) -> float:
    return float(e.waiting)


class HPAPolicy(Policy):
    name = "hpa"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.interval_s = setup.config.hpa_sync_s
        self.behavior = _behaviors(setup)
        self.targets = setup.hpa_targets
        self.metric = setup.config.hpa_metric

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        out: dict[str, int] = {}
        for role in fleet.pools:
            current = fleet.count(role)
            gauge: Callable[[EngineReplica], float] = _kv if self.metric == "kv" and role != "prefill" else _running
            values, missing = fleet.pod_gauges(role, gauge)
            desired = plain_metric_replicas(values, missing, current, self.targets[role])
            if desired is None:
                out[role] = current
                continue
            out[role] = self.behavior[role].normalize(desired, current, t)
        return out


class KedaQueuePolicy(Policy):
    name = "keda-queue"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.interval_s = setup.config.hpa_sync_s
        self.threshold = setup.config.keda_threshold
        self.behavior = _behaviors(setup)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        out: dict[str, int] = {}
        for role in fleet.pools:
            current = fleet.count(role)
            total = fleet.pool_gauge_sum(role, _waiting)
            desired = external_average_replicas(total, current, self.threshold)
            out[role] = self.behavior[role].normalize(desired, current, t)
        return out


# ------------------------------------------------------------------------------------------
# NVIDIA Dynamo SLA planner
# ------------------------------------------------------------------------------------------
class DynamoProfile:
    """Dynamo's pre-deployment profile of one engine, from the capacity model instead of a sweep:
    prefill TTFT and tokens/s per GPU of one prompt alone (the profiler's batch-1 TTFT); decode ITL
    and tokens/s per GPU over a grid of KV-cache loads (``perf_interpolation.DecodeInterpolator``)."""

    def __init__(self, setup: Setup, role: str) -> None:
        pool = setup.pools[role]
        self.model = pool.model
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


class DynamoPolicy(Policy):
    """``planner_core.Planner.make_adjustments`` every adjustment interval: frontend metrics of the
    last interval (request count, mean ISL/OSL, mean TTFT/ITL, mean request duration), correction
    factors, a constant (last-value) predictor, then

        prefill = ceil(num_req * isl / interval * min(1, p_corr) / (prefill tokens/s per GPU * GPUs))
        decode  = ceil(num_req * osl / interval / (best decode tokens/s per GPU at ITL/d_corr * GPUs))

    at least 1 each. Dynamo's throughput planner is for disaggregated deployments only; for an
    aggregated pool the two fractional engine counts are added (one engine time-shares both)."""

    name = "dynamo"

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.mode = "disaggregated" if "prefill" in setup.pools else "aggregated"
        self.prefill = DynamoProfile(setup, "prefill" if self.mode == "disaggregated" else "aggregated")
        self.decode = DynamoProfile(setup, "decode" if self.mode == "disaggregated" else "aggregated")
        self.itl_target_s = setup.spec.slo.itl_ms / 1000.0
        self.correction = setup.config.dynamo_correction
        self.p_corr = 1.0
        self.d_corr = 1.0
        self._seen = 0
        self.last: tuple[float, float, float] | None = None

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        current = {role: fleet.count(role) for role in fleet.pools}
        new = fleet.completions[self._seen:]
        self._seen = len(fleet.completions)
        interval = self.interval_s
        if t < 2.0 * interval - 1e-9:
            # The first interval's frontend counts only requests that arrived and finished since
            # the trace began (a start-up artefact of the replay, not the steady traffic it stands for).
            return current
        if not new:  # "Metrics contain None or NaN values (no active requests), skipping adjustment"
            return current
        num_req = float(len(new))
        isl = float(np.mean([c.prompt for c in new]))
        osl = float(np.mean([c.output for c in new]))
        ttft = float(np.mean([c.ttft_s for c in new]))
        itl_n = sum(c.itl_count for c in new)
        itl = sum(c.itl_s * c.itl_count for c in new) / itl_n if itl_n else float("nan")
        duration = float(np.mean([c.e2e_s for c in new]))
        context = isl + osl / 2.0
        if self.correction:
            self.p_corr = ttft / self.prefill.prefill_ttft_s(isl)
            decoders = max(fleet.ready_count("decode" if self.mode == "disaggregated" else "aggregated"), 1)
            expect_itl = self.decode.decode_itl_s(num_req / decoders * duration / interval, context)
            if math.isfinite(itl) and expect_itl > 0:
                self.d_corr = itl / expect_itl
        # Constant predictor: the next interval looks like the last one.
        next_req, next_isl, next_osl = num_req, isl, osl
        self.last = (next_req, next_isl, next_osl)
        p_tokens_s = next_req * next_isl / interval * min(1.0, self.p_corr)
        p_engines = p_tokens_s / (self.prefill.prefill_thpt_per_gpu(next_isl) * self.prefill.tp)
        corrected_itl = self.itl_target_s / self.d_corr if self.d_corr > 0 else self.itl_target_s
        d_tokens_s = next_req * next_osl / interval
        d_thpt = self.decode.best_decode_thpt_per_gpu(corrected_itl, next_isl + next_osl / 2.0)
        d_engines = d_tokens_s / (d_thpt * self.decode.tp)
        cap = self.setup.max_replicas
        if self.mode == "disaggregated":
            return {"prefill": min(max(math.ceil(p_engines), 1), cap),
                    "decode": min(max(math.ceil(d_engines), 1), cap)}
        return {"aggregated": min(max(math.ceil(p_engines + d_engines), 1), cap)}


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
    """Knows the arrivals of the next interval; sizes for them with the capacity model; its
    replicas serve at once and it scales down at once. ``extra``: replicas added per pool and
    interval index, found by `simulate.run_oracle` where the capacity model's count missed the
    SLOs in simulation (so that the oracle is the per-interval minimum that meets them)."""

    name = "oracle"
    cold_start = False

    def __init__(self, setup: Setup, extra: dict[str, dict[int, int]] | None = None) -> None:
        super().__init__(setup)
        self.extra = extra or {}

    def _for(self, t: float) -> dict[str, int]:
        counts = self.setup.replicas_for(self.setup.trace.rate_in(t, t + self.interval_s))
        k = round(t / self.interval_s)
        return {role: n + self.extra.get(role, {}).get(k, 0) for role, n in counts.items()}

    def initial(self) -> dict[str, int]:
        return self._for(0.0)

    def decide(self, t: float, fleet: Fleet) -> dict[str, int]:
        return self._for(t)


POLICIES: dict[str, type[Policy]] = {
    "goodput": GoodputPolicy,
    "hpa": HPAPolicy,
    "keda-queue": KedaQueuePolicy,
    "dynamo": DynamoPolicy,
    "static-peak": StaticPeakPolicy,
    "oracle": OraclePolicy,
}
# Diagnostics the benchmark may run beside the policies (not part of `--policy all`).
DIAGNOSTICS: dict[str, type[Policy]] = {"goodput-nocal": GoodputNoCalibrationPolicy}

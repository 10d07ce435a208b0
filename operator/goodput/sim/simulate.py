"""Replay a trace against a simulated fleet under each scaling policy and compare what they cost.

Pure: no I/O, no clock (a ``clock`` callable may be passed to time the runs; ``progress`` is
called with the policy's name and the fraction of the trace done).

Set-up (`prepare`), the same for every policy
---------------------------------------------
* The spec the operator would run with: model, GPU, precision, SLOs and mode from the caller;
  workload hints from the trace (mean and p99 prompt/output lengths, the first minute's rate);
  ``model.maxModelLen`` the trace's longest request rounded up to 1024; cold start as given;
  minReplicas 1 and maxReplicas 10000 per pool; every other scaling field at its default.
* The fleet's engine configuration: the operator's recommendation (`recommend`) for the trace's
  peak rate (the highest arrival rate over the operator's 60 s window, sliding by the decision
  interval): its mode, and per pool its TP, --max-num-batched-tokens and --max-num-seqs. The
  goodput policy's spec then pins that mode (and that TP when all pools share it), so that its
  later recommendations are counts for this same fleet. Every policy runs this configuration.
* The capacity model's replicas for a rate (static-peak, oracle, the common start): per pool
  ``max(1, ceil(rate / goodput per replica))`` with the per-replica goodput of that plan.

Run (`run_policy`)
------------------
From t = 0 the fleet holds ``policy.initial()`` replicas, warm. Events in time order: arrivals
(routed in batches of ``route_quantum_s``, each with its exact arrival time), scrapes every
``scrape_s`` (15 s), the policy's decisions every ``interval_s`` (30 s; HPA and KEDA at the HPA
sync period, 15 s), replicas becoming ready, clients' deadlines (``client_timeout_s`` after an
unfinished request's arrival: it is abandoned). A decision's new replicas serve ``cold_start_s``
later (the oracle's at once); removed ones drain. After the last arrival the fleet drains with
the replicas it has (at most ``drain_limit_s``); GPU-hours count until the last arrival.

Results (`summarize`)
---------------------
attainment = requests with TTFT <= the TTFT target and mean inter-token latency <= the ITL target
(one-token outputs have no ITL) over all requests of the trace (rejected and unfinished ones
count as misses, and so do requests abandoned by their clients, see ``SimConfig.client_timeout_s``);
TTFT and ITL percentiles over finished requests (ITL: each request's mean
inter-token latency); GPU-hours, their cost at the GPU's price, scaling actions (changes of a
pool's replica count), and GPU-hours relative to the oracle's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.engine.world import World
from goodput.model.errors import CapacityModelError
from goodput.model.goodput import ReplicaCapacity, aggregated_capacity, decode_capacity, prefill_capacity
from goodput.model.replica import ReplicaModel
from goodput.model.workload import Workload
from goodput.planner.autoscale import RunningShape
from goodput.planner.recommend import (
    PoolTarget,
    Recommendation,
    ResolvedSpec,
    hinted_workload,
    max_model_len,
    recommend,
    resolve,
)
from goodput.sim.fleet import ABANDONED, DONE, PENDING, REJECTED, Fleet, PoolConfig, ReplicaLife
from goodput.sim.loadtest import LoadTest, LoadTestInputs, load_test
from goodput.sim.policies import DIAGNOSTICS, POLICIES, OraclePolicy, Policy
from goodput.sim.trace import Trace

POLICY_NAMES = tuple(POLICIES)
MAX_REPLICAS = 10000
DEFAULT_MAX_REPLICAS = 100  # the CRD's default maxReplicas: every policy's cap per pool (or 2x the peak's)
LOGNORMAL_P99_CAP = 14.9  # a lognormal's p99 / mean cannot exceed 14.97


@dataclass(frozen=True)
class SimConfig:
    interval_s: float = 30.0  # goodput (the operator's reconcile timer), oracle
    hpa_sync_s: float = 15.0  # HPA (and KEDA) sync period
    dynamo_interval_s: float = 180.0  # Dynamo's throughput_adjustment_interval default
    scrape_s: float = 15.0
    # Age of the scraped gauges the HPA/KEDA read (through Prometheus and an adapter): the last
    # scrape at least one scrape interval old.
    metrics_age_s: float = 15.0
    window_s: float = 60.0  # the operator's windows
    long_window_s: float = 600.0
    seed: int = 0
    noise_cv: float = 0.05
    hpa_metric: str = "running"  # running | kv
    # The aggregated/decode HPA's target as given; default: a one-replica load test of the world's
    # engine (`goodput.sim.loadtest`), times hpa_target_scale (a user tuning it, and the benchmark's sweep).
    hpa_target: float | None = None
    hpa_target_scale: float = 1.0
    keda_threshold: float = 5.0
    dynamo_correction: bool = True
    route_quantum_s: float = 0.02
    drain_limit_s: float = 1800.0
    # Clients give up on a request not finished this long after its arrival (the OpenAI Python
    # client's default timeout is 600 s); 0: they never do. The same for every policy.
    client_timeout_s: float = 600.0


@dataclass(frozen=True)
class Setup:
    spec: InferenceDeploymentSpec  # what the goodput policy's operator runs with (mode/TP pinned)
    resolved: ResolvedSpec
    plan: Recommendation  # at the trace's peak: the fleet's engines
    pools: dict[str, PoolConfig]
    targets: dict[str, PoolTarget]
    capacity: dict[str, ReplicaCapacity]
    workload: Workload
    trace: Trace
    config: SimConfig
    peak_rate: float
    peak_at_s: float
    cold_start_s: float
    price: float
    max_model_len: int
    max_replicas: int = MAX_REPLICAS
    hpa_targets: dict[str, float] = field(default_factory=dict)  # measured on first use (`hpa_target`)
    hpa_load_tests: dict[str, LoadTest] = field(default_factory=dict)
    start_replicas: dict[str, int] = field(default_factory=dict)
    peak_replicas: dict[str, int] = field(default_factory=dict)
    world: World = field(default_factory=World)  # the engines the fleet runs (the planner keeps its belief)
    world_capacity: dict[str, ReplicaCapacity] = field(default_factory=dict)  # of the world's engines

    def running_shape(self) -> RunningShape:
        """What the fleet runs, as the operator reads it back from its status: the mode, each
        pool's TP and engine arguments (the fleet's engines are built from the same plan)."""
        return RunningShape(self.plan.mode, {role: p.tp for role, p in self.pools.items()},
                            {role: (p.model.max_num_batched_tokens, p.model.max_num_seqs)
                             for role, p in self.pools.items()})

    def world_goodput_rps(self, role: str) -> float:
        """Per-replica goodput of the world's engine: the plan's, times the ratio of the capacity
        model evaluated on the world's engine to the model evaluated on the belief."""
        g = self.targets[role].goodput_rps
        belief, world = self.capacity.get(role), self.world_capacity.get(role)
        if belief is None or world is None or belief.goodput_rps <= 0:
            return g
        return g * world.goodput_rps / belief.goodput_rps

    def hpa_target(self, role: str) -> float:
        """The HPA's target for a pool's per-pod metric: ``hpa_target`` as given (aggregated and
        decode pools), else what a one-replica load test of the world's engine gives (measured on
        first use: it costs a few replays of one engine), times ``hpa_target_scale``."""
        if role not in self.hpa_targets:
            cfg = self.config
            if cfg.hpa_target is not None and role != "prefill":
                self.hpa_targets[role] = cfg.hpa_target
            else:
                self.hpa_targets[role] = self.hpa_load_test(role).target(cfg.hpa_metric) * cfg.hpa_target_scale
        return self.hpa_targets[role]

    def hpa_load_test(self, role: str) -> LoadTest:
        """One replica of the pool, as a user load-tests the real engine (the world's)."""
        if role not in self.hpa_load_tests:
            slo = self.spec.slo
            inputs = LoadTestInputs(self.pools[role], self.trace, slo.ttft_ms / 1000.0, slo.itl_ms / 1000.0,
                                    slo.percentile / 100.0, self.config.seed, self.config.noise_cv)
            self.hpa_load_tests[role] = load_test(inputs, self.world_goodput_rps(role))
        return self.hpa_load_tests[role]

    def replicas_for(self, rate: float, in_world: bool = False) -> dict[str, int]:
        """The capacity model's replicas per pool for a request rate: ``max(1, ceil(rate / goodput
        per replica))`` with the per-replica goodput of the fleet's plan (``in_world``: of the
        world's engines)."""
        out = {}
        for role, p in self.targets.items():
            g = self.world_goodput_rps(role) if in_world else p.goodput_rps
            need = math.ceil(rate / g - 1e-9) if g > 0 else self.max_replicas
            out[role] = min(max(need, 1), self.max_replicas)
        return out


def build_spec(model: str | None, gpu: str, precision: str, ttft_ms: float, itl_ms: float, *,
               kv_dtype: str = "auto", mode: str = "auto", cold_start_s: float = 180.0, percentile: float = 99.0,
               price_per_gpu_hour: float | None = None,
               architecture: dict[str, Any] | None = None,
               uncalibrated_margin: float | None = None, standby_replicas: int = 0) -> InferenceDeploymentSpec:
    """An InferenceDeploymentSpec from command-line style arguments (validated by the API models);
    ``architecture``: spec.model.architecture (with its huggingFaceName) for a model not in the catalog."""
    if architecture is not None:
        arch = dict(architecture)
        model_doc: dict[str, Any] = {"huggingFaceName": arch.pop("huggingFaceName"), "architecture": arch}
    else:
        model_doc = {"id": model}
    data: dict[str, Any] = {
        "model": model_doc,
        "accelerator": {"gpu": gpu},
        "precision": {"weights": precision, "kvCache": kv_dtype},
        "slo": {"ttftMs": ttft_ms, "itlMs": itl_ms, "percentile": percentile},
        "mode": mode,
        "scaling": {"coldStartSeconds": round(cold_start_s)},
    }
    if price_per_gpu_hour is not None:
        data["accelerator"]["pricePerGpuHour"] = price_per_gpu_hour
    if uncalibrated_margin is not None:  # default: the CRD's
        data["scaling"]["uncalibratedMargin"] = uncalibrated_margin
    if standby_replicas:  # every pool's spec.scaling.<pool>.standbyReplicas
        for pool in ("aggregated", "prefill", "decode"):
            data["scaling"][pool] = {"standbyReplicas": standby_replicas}
    try:
        return InferenceDeploymentSpec.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError
        raise CapacityModelError(f"invalid deployment: {exc}") from None


def _hint(mean: float, p99: float) -> dict[str, float]:
    mean = max(mean, 1.0)
    return {"mean": mean, "p99": min(max(p99, mean), mean * LOGNORMAL_P99_CAP)}


def _capacities(pools: dict[str, PoolConfig], w: Workload, spec: InferenceDeploymentSpec,
                in_world: bool = False) -> dict[str, ReplicaCapacity]:
    """The capacity model per pool, evaluated on the belief's engines (``in_world``: the world's)."""
    from goodput.model.workload import SLO

    slo = SLO(spec.slo.ttft_ms, spec.slo.itl_ms, spec.slo.percentile)

    def model(role: str) -> ReplicaModel:
        return pools[role].engine_model if in_world else pools[role].model

    out: dict[str, ReplicaCapacity] = {}
    if "aggregated" in pools:
        out["aggregated"] = aggregated_capacity(model("aggregated"), w, slo)
    if "decode" in pools:
        out["decode"] = decode_capacity(model("decode"), w, slo)
    if "prefill" in pools:
        step = out["decode"].at_goodput.step_ms / 1000.0 if "decode" in out else 0.0
        out["prefill"] = prefill_capacity(model("prefill"), w, slo, step)
    return out


def prepare(spec: InferenceDeploymentSpec, trace: Trace, config: SimConfig | None = None,
            cold_start_s: float | None = None, name: str = "simulate", world: World | None = None) -> Setup:
    """Everything the policies share: the operator's spec for this trace, the fleet's engines
    (``world``: how they differ from the planner's belief; default: they are the belief)."""
    config = config or SimConfig()
    world = world or World()
    if not len(trace):
        raise CapacityModelError("the trace has no requests")
    prompts = trace.prompts.astype(np.float64)
    outputs = trace.outputs.astype(np.float64)
    longest = int(np.max(trace.prompts + trace.outputs))
    # The trace starts mid-stream: the service was running before its first request. Every policy
    # starts from the fleet that serves the trace's opening, the highest 60 s rate within the first
    # cold start (the load no policy could have reacted to), and the operator's hint says the same.
    opening_s = float(cold_start_s if cold_start_s is not None else spec.scaling.cold_start_seconds)
    first_rate = max(trace.rate_in(s, s + config.window_s)
                     for s in np.arange(0.0, max(opening_s, config.interval_s), config.interval_s))
    hints = {
        "requestRate": round(first_rate, 6),
        "inputTokens": _hint(float(prompts.mean()), float(np.quantile(prompts, 0.99))),
        "outputTokens": _hint(float(outputs.mean()), float(np.quantile(outputs, 0.99))),
    }
    pool_bounds = {"minReplicas": 1, "maxReplicas": MAX_REPLICAS}  # capped below once the peak is known
    data = spec.model_dump(by_alias=True, exclude_none=True)
    data["workload"] = {**data.get("workload", {}), **hints}
    data["model"]["maxModelLen"] = spec.model.max_model_len or max(1024, math.ceil(longest / 1024) * 1024)
    # The replica bounds are the simulation's; a pool's other settings (standbyReplicas) are the spec's.
    data["scaling"].update({pool: {**data["scaling"].get(pool, {}), **pool_bounds}
                            for pool in ("aggregated", "prefill", "decode")})
    if cold_start_s is not None:
        data["scaling"]["coldStartSeconds"] = round(cold_start_s)
    try:
        full = InferenceDeploymentSpec.model_validate(data)
    except ValueError as exc:
        raise CapacityModelError(f"invalid deployment: {exc}") from None
    resolved = resolve(full, name)
    peak, peak_at = trace.peak_rate(config.window_s, config.interval_s)
    workload = hinted_workload(full)
    rec = recommend(full, resolved, workload.with_rate(max(peak, 1e-6)))
    if rec.limited:
        raise CapacityModelError(f"the capacity model cannot serve the trace's peak: {rec.limited}")

    # Pin the mode (and a shared TP) so the operator's later plans are counts for this fleet, and
    # give every pool the cap all policies share.
    cap = max(DEFAULT_MAX_REPLICAS, 2 * max(p.replicas for p in rec.pools))
    pinned = full.model_dump(by_alias=True, exclude_none=True)
    pinned["mode"] = rec.mode
    for role in ("aggregated", "prefill", "decode"):
        pinned["scaling"][role]["maxReplicas"] = cap
    tps = {p.tp for p in rec.pools}
    if len(tps) == 1 and full.scaling.tensor_parallel is None:
        pinned["scaling"]["tensorParallel"] = tps.pop()
    pinned_spec = InferenceDeploymentSpec.model_validate(pinned)
    pinned_resolved = resolve(pinned_spec, name)

    length = max_model_len(full)
    pools: dict[str, PoolConfig] = {}
    targets: dict[str, PoolTarget] = {}
    for p in rec.pools:
        model = ReplicaModel(resolved.arch, resolved.gpu, resolved.precision, p.tp, resolved.kv_cache_dtype,
                             max_num_seqs=p.max_num_seqs,
                             max_num_batched_tokens=max(p.max_num_batched_tokens, p.max_num_seqs))
        pools[p.role] = PoolConfig(p.role, p.tp, model, length, world.engine_model(model))
        targets[p.role] = p
    capacity = _capacities(pools, workload, full)
    world_capacity = capacity if world.is_belief else _capacities(pools, workload, full, in_world=True)
    cold = float(full.scaling.cold_start_seconds)
    setup = Setup(pinned_spec, pinned_resolved, rec, pools, targets, capacity, workload, trace, config, peak, peak_at,
                  cold, resolved.gpu.usd_per_gpu_hour, length, max_replicas=cap, world=world,
                  world_capacity=world_capacity)
    setup.start_replicas.update(setup.replicas_for(first_rate))
    setup.peak_replicas.update(setup.replicas_for(peak))
    return setup


# ------------------------------------------------------------------------------------------
# one policy
# ------------------------------------------------------------------------------------------
@dataclass
class PolicyRun:
    """What one policy did (compact: per-request outcomes, not the fleet)."""

    name: str
    ttft_s: npt.NDArray[np.float64]  # per request, NaN unless finished
    itl_s: npt.NDArray[np.float64]  # per request: mean inter-token latency
    status: npt.NDArray[np.int8]  # PENDING (unfinished), DONE, REJECTED, ABANDONED (the client gave up)
    gpu_hours: float
    scaling_actions: int
    timeline: list[dict[str, Any]]
    decisions: int
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)
    replicas: list[ReplicaLife] = field(default_factory=list)  # every replica's creation, readiness, removal
    handoff_s: npt.NDArray[np.float64] | None = None  # per request: KV at the decode pool (disaggregated)
    prefix_hit_rate: float = 0.0  # realised: cached / prompt tokens routed to the entry pool

    @property
    def unfinished(self) -> int:
        return int(np.count_nonzero(self.status == PENDING))

    @property
    def abandoned(self) -> int:
        return int(np.count_nonzero(self.status == ABANDONED))


Progress = Callable[[str, float], None]


class GaveUp(Exception):
    """A replay stopped early: its ``give_up`` callback said the outcome it was run for is decided."""


def run_policy(setup: Setup, policy: Policy, progress: Progress | None = None,
               clock: Callable[[], float] | None = None,
               give_up: Callable[[Fleet], bool] | None = None) -> PolicyRun:
    """Replay the trace under ``policy``. ``give_up`` is asked at every scrape; when it says so
    the replay stops and raises `GaveUp` (the oracle's search drops a candidate that can no longer
    meet the goal)."""
    cfg = setup.config
    trace = setup.trace
    times = trace.times
    n = len(trace)
    end = trace.span_s
    started = clock() if clock else None
    fleet = Fleet(setup.pools, trace, cfg.seed, cfg.noise_cv, cfg.client_timeout_s)
    fleet.stop_gpu_clock(end)
    for role, count in policy.initial().items():
        fleet.set_replicas(role, count, 0.0)
    cold = setup.cold_start_s if policy.cold_start else 0.0
    scrape_k = 0
    decide_k = 1
    i = 0
    actions = 0
    decisions = 0
    timeline: list[dict[str, Any]] = []
    keep_s = cfg.long_window_s + 2.0 * cfg.scrape_s
    last_report = -1.0
    last_scrape_i = 0
    while True:
        t_arrival = float(times[i]) if i < n else math.inf
        t_scrape = scrape_k * cfg.scrape_s
        t_decide = decide_k * policy.interval_s
        t = min(t_arrival, t_scrape, t_decide, fleet.next_ready_s(), fleet.next_deadline_s())
        if t > end:
            break
        fleet.advance(t)
        if t >= t_scrape:
            fleet.scrape()
            fleet.trim_history(keep_s)
            span = cfg.scrape_s if scrape_k else 1.0
            timeline.append({"t": t, "rate_rps": (i - last_scrape_i) / span,
                             "replicas": {r: fleet.count(r) for r in fleet.pools},
                             "ready": {r: fleet.ready_count(r) for r in fleet.pools},
                             "gpus": fleet.allocated_gpus()})
            last_scrape_i = i
            scrape_k += 1
            if give_up is not None and give_up(fleet):
                raise GaveUp(policy.name)
        if t >= t_decide:
            targets = policy.decide(t, fleet)
            decisions += 1
            for role, count in targets.items():
                if fleet.set_replicas(role, max(int(count), 0), cold):
                    actions += 1
            decide_k += 1
        if i < n and times[i] <= t:
            j = max(int(np.searchsorted(times, t + cfg.route_quantum_s, side="left")), i + 1)
            fleet.submit_arrivals(i, j)
            i = j
        if progress is not None and end > 0 and t - last_report >= end / 100.0:
            last_report = t
            progress(policy.name, min(t / end, 1.0))
    fleet.advance(max(end, fleet.now))
    limit = end + cfg.drain_limit_s
    while fleet.busy() and fleet.now < limit:
        fleet.advance(min(fleet.now + 10.0, limit, max(fleet.next_deadline_s(), fleet.now)))
    if progress is not None:
        progress(policy.name, 1.0)
    wall = clock() - started if clock and started is not None else None
    return PolicyRun(policy.name, fleet.ttft_s, fleet.itl_s, fleet.status, fleet.gpu_seconds / 3600.0, actions,
                     timeline, decisions, wall, list(policy.notes), list(fleet.log),
                     fleet.handoff_s if fleet.mode == "disaggregated" else None, fleet.prefix_hit_rate)


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------
def _pct(values: npt.NDArray[np.float64], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000.0, 1) if values.size else None


def attainment_mask(run: PolicyRun, setup: Setup) -> npt.NDArray[np.bool_]:
    """Requests that finished with TTFT and mean ITL within their targets."""
    return _within_slo(run.status, run.ttft_s, run.itl_s, setup)


def _within_slo(status: npt.NDArray[np.int8], ttft_s: npt.NDArray[np.float64], itl_s: npt.NDArray[np.float64],
                setup: Setup) -> npt.NDArray[np.bool_]:
    slo = setup.spec.slo
    single = setup.trace.outputs <= 1
    with np.errstate(invalid="ignore"):
        ok_ttft = ttft_s * 1000.0 <= slo.ttft_ms
        ok_itl = single | (itl_s * 1000.0 <= slo.itl_ms)
    return np.asarray((status == DONE) & ok_ttft & ok_itl, dtype=np.bool_)


def summarize(run: PolicyRun, setup: Setup, oracle_gpu_hours: float | None,
              reference_gpu_hours: float | None = None) -> dict[str, Any]:
    """The figures of one policy (the keys of ``--json``'s ``policies`` entries)."""
    f = run
    n = len(setup.trace)
    done = f.status == DONE
    ttft = f.ttft_s[done]
    with_itl = done & (setup.trace.outputs > 1)
    itl = f.itl_s[with_itl]
    ok = attainment_mask(run, setup)
    ratio = run.gpu_hours / oracle_gpu_hours if oracle_gpu_hours else None
    return {
        "attainment": round(float(np.count_nonzero(ok)) / n, 5) if n else None,
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p99_ms": _pct(ttft, 99),
        "itl_p50_ms": _pct(itl, 50),
        "itl_p99_ms": _pct(itl, 99),
        "gpu_hours": round(run.gpu_hours, 4),
        "cost_usd": round(run.gpu_hours * setup.price, 2),
        "scaling_actions": run.scaling_actions,
        "gpu_hours_vs_oracle": round(ratio, 4) if ratio is not None else None,
        "gpu_hours_vs_reference": round(run.gpu_hours / reference_gpu_hours, 4) if reference_gpu_hours else None,
    }


def details(run: PolicyRun) -> dict[str, Any]:
    """What the table adds to the summary: rejected, unfinished and abandoned requests, peak replicas."""
    peak: dict[str, int] = {}
    for row in run.timeline:
        for role, count in row["replicas"].items():
            peak[role] = max(peak.get(role, 0), int(count))
    return {"rejected": int(np.count_nonzero(run.status == REJECTED)), "unfinished": run.unfinished,
            "abandoned": run.abandoned,
            "peak_replicas": peak, "decisions": run.decisions,
            "wall_s": round(run.wall_s, 2) if run.wall_s is not None else None, "notes": run.notes[:5]}


@dataclass
class Simulation:
    setup: Setup
    runs: dict[str, PolicyRun]

    @property
    def oracle_gpu_hours(self) -> float | None:
        run = self.runs.get("oracle")
        return run.gpu_hours if run is not None else None

    def reference(self) -> tuple[str, float] | None:
        """The cheapest of the runs that meet the SLO percentile, the oracle among them: every
        ratio's reference (a policy that beats the oracle is the better bound)."""
        goal = self.setup.spec.slo.percentile / 100.0
        n = len(self.setup.trace)
        meeting = [(run.gpu_hours, name) for name, run in self.runs.items()
                   if n and np.count_nonzero(attainment_mask(run, self.setup)) >= goal * n]
        if not meeting:
            return None
        gpu_hours, name = min(meeting)
        return name, gpu_hours

    def report(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"policies": {...}, "trace": {...}, "config": {...}}`` (the ``--json`` object)."""
        names = list(names) if names is not None else list(self.runs)
        s = self.setup
        ref = self.reference()
        policies = {name: summarize(self.runs[name], s, self.oracle_gpu_hours, ref[1] if ref else None)
                    for name in names}
        trace = s.trace.summary()
        trace["peak_rate_rps"] = round(s.peak_rate, 4)
        trace["peak_window_start_s"] = round(s.peak_at_s, 1)
        cfg = s.config
        config = {
            "model": s.resolved.arch.model_id,
            "gpu": s.resolved.gpu.gpu_id,
            "precision": s.resolved.precision,
            "kv_cache_dtype": s.resolved.kv_cache_dtype,
            "slo": {"ttft_ms": s.spec.slo.ttft_ms, "itl_ms": s.spec.slo.itl_ms, "percentile": s.spec.slo.percentile},
            "mode": s.plan.mode,
            "pools": {role: {"tp": p.tp, "max_num_batched_tokens": p.max_num_batched_tokens,
                             "max_num_seqs": p.max_num_seqs, "goodput_rps_per_replica": round(p.goodput_rps, 4),
                             "replicas_at_peak": s.peak_replicas[role], "replicas_at_start": s.start_replicas[role],
                             # Measured only when a policy used it (hpa, keda-queue-running).
                             "hpa_target": round(s.hpa_targets[role], 4) if role in s.hpa_targets else None,
                             "hpa_load_test": s.hpa_load_tests[role].describe() if role in s.hpa_load_tests
                             else None}
                      for role, p in s.targets.items()},
            "world": {**s.world.describe(),
                      "goodput_rps_per_replica": {role: round(s.world_goodput_rps(role), 4) for role in s.targets}},
            "reference": {"policy": ref[0], "gpu_hours": round(ref[1], 4)} if ref else None,
            "max_model_len": s.max_model_len,
            "max_replicas_per_pool": s.max_replicas,
            "usd_per_gpu_hour": s.price,
            "cold_start_s": s.cold_start_s,
            "interval_s": cfg.interval_s,
            "hpa_sync_s": cfg.hpa_sync_s,
            "dynamo_interval_s": cfg.dynamo_interval_s,
            "metrics_age_s": cfg.metrics_age_s,
            "scrape_s": cfg.scrape_s,
            "windows_s": [cfg.window_s, cfg.long_window_s],
            "hpa_metric": cfg.hpa_metric,
            "hpa_target_scale": cfg.hpa_target_scale,
            "keda_threshold": cfg.keda_threshold,
            "client_timeout_s": cfg.client_timeout_s,
            "seed": cfg.seed,
            "noise_cv": cfg.noise_cv,
            "details": {name: details(self.runs[name]) for name in names},
        }
        return {"policies": policies, "trace": trace, "config": config}


# The oracle's search, in replays of the trace: at most this many upward refinements, steps of the
# per-replica capacity it assumes (x1.15 each) and downward passes.
ORACLE_ROUNDS = 6
ORACLE_SCALE_STEP = 1.15
ORACLE_SCALE_STEPS = 3
ORACLE_DOWN_PASSES = 2
Extra = dict[str, dict[int, int]]


def oracle_rps(setup: Setup, hit_rate: float = 0.0) -> dict[str, float]:
    """Per-replica goodput of the world's engines, with a realised prefix-hit rate: the plan's
    goodput times the capacity model on the world's engines over the model on the belief's."""
    if hit_rate < 0.01:
        return {role: setup.world_goodput_rps(role) for role in setup.targets}
    w = dataclasses.replace(setup.workload, prefix_cache_hit_rate=min(hit_rate, 0.95))
    with_hits = _capacities(setup.pools, w, setup.spec, in_world=True)
    out = {}
    for role, p in setup.targets.items():
        belief = setup.capacity[role].goodput_rps
        out[role] = p.goodput_rps * with_hits[role].goodput_rps / belief if belief > 0 else p.goodput_rps
    return out


def caused_misses(run: PolicyRun, setup: Setup) -> dict[str, npt.NDArray[np.bool_]]:
    """Per pool, the requests whose SLO miss it caused. Aggregated: every miss. Disaggregated: a
    TTFT miss is prefill's when the KV reached the decode pool too late already (or never), else
    decode's (it waited for decode admission); an ITL miss is decode's."""
    slo = setup.spec.slo
    ok = attainment_mask(run, setup)
    if "aggregated" in setup.pools or run.handoff_s is None:
        return {role: ~ok for role in setup.pools}
    with np.errstate(invalid="ignore"):
        ok_ttft = (run.status == DONE) & (run.ttft_s * 1000.0 <= slo.ttft_ms)
        upstream_ok = (run.handoff_s - setup.trace.times) * 1000.0 <= slo.ttft_ms
    prefill = ~ok_ttft & ~upstream_ok
    return {"prefill": prefill, "decode": ~ok & ~prefill}


class _OracleSearch:
    """Replays the trace with per-interval replica counts, keeping the cheapest that meets the goal."""

    def __init__(self, setup: Setup, progress: Progress | None) -> None:
        self.setup = setup
        self.goal = setup.spec.slo.percentile / 100.0
        self.k_of = np.floor(setup.trace.times / setup.config.interval_s).astype(np.int64)
        self.n_k = np.bincount(self.k_of)
        self.progress = progress
        self.replays = 0
        self.best: PolicyRun | None = None

    def run(self, rps: dict[str, float], extra: Extra) -> PolicyRun:
        run = run_policy(self.setup, OraclePolicy(self.setup, extra, rps), self.progress)
        self._count(run)
        return run

    def trial(self, rps: dict[str, float], extra: Extra) -> PolicyRun | None:
        """A candidate that is kept only if it meets the goal: its replay stops (None) as soon as
        the requests already missed make the goal unreachable, for the rest would change nothing."""
        try:
            run = run_policy(self.setup, OraclePolicy(self.setup, extra, rps), self.progress,
                             give_up=self.cannot_meet)
        except GaveUp:
            self.progress = None
            self.replays += 1
            return None
        self._count(run)
        return run

    def _count(self, run: PolicyRun) -> None:
        self.progress = None  # progress is shown for the first replay only
        self.replays += 1
        if self.meets(run) and (self.best is None or run.gpu_hours < self.best.gpu_hours):
            self.best = run

    def meets(self, run: PolicyRun) -> bool:
        ok = attainment_mask(run, self.setup)
        return bool(ok.size and np.count_nonzero(ok) >= self.goal * ok.size)

    def cannot_meet(self, fleet: Fleet) -> bool:
        """Whether the requests rejected, abandoned by their clients or finished outside the SLOs
        (each a miss for good) already exceed what the goal allows (every other request counted as
        met: the most the replay could still reach)."""
        status = fleet.status
        missed = np.count_nonzero((status == REJECTED) | (status == ABANDONED)) + np.count_nonzero(
            (status == DONE) & ~_within_slo(status, fleet.ttft_s, fleet.itl_s, self.setup))
        return bool(status.size - missed < self.goal * status.size)

    def per_interval(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        return np.bincount(self.k_of, weights=mask, minlength=self.n_k.size).astype(np.float64)

    def refine_up(self, run: PolicyRun, extra: Extra) -> bool:
        """One replica more, per interval that falls short, in the pool that caused its misses."""
        misses = caused_misses(run, self.setup)
        bad = self.per_interval(~attainment_mask(run, self.setup))
        allowed = (1.0 - self.goal) * self.n_k
        by_role = {role: self.per_interval(m) for role, m in misses.items()}
        changed = False
        for k in np.flatnonzero((self.n_k > 0) & (bad > allowed)).tolist():
            roles = [r for r, v in by_role.items() if v[k] > allowed[k]] or [max(by_role, key=lambda r: by_role[r][k])]
            for role in roles:
                extra[role][k] = extra[role].get(k, 0) + 1
                changed = True
        return changed

    def refine_down(self, run: PolicyRun, extra: Extra) -> Extra:
        """One replica fewer in every pool, in every interval whose requests all met the SLOs."""
        bad = self.per_interval(~attainment_mask(run, self.setup))
        out = {role: dict(e) for role, e in extra.items()}
        for k in np.flatnonzero((self.n_k > 0) & (bad == 0)).tolist():
            for role in out:
                out[role][k] = out[role].get(k, 0) - 1
        return out


def run_oracle(setup: Setup, progress: Progress | None = None, clock: Callable[[], float] | None = None,
               rounds: int = ORACLE_ROUNDS) -> PolicyRun:
    """The clairvoyant per-interval minimum that meets the SLOs, found by replaying the trace:

    1. the capacity model's count on the **world's** engines for each interval's arrivals, then with
       the prefix-hit rate that replay realised;
    2. while that meets the goal, a per-replica capacity x1.15 (up to 3 steps): the model's count
       may be pessimistic, and a bound must not inherit that;
    3. while it misses, one replica more for each interval that falls short, in the pool that caused
       its misses (`caused_misses`), up to ``rounds`` times;
    4. one replica fewer in every interval whose requests all met the SLOs, kept if the goal still holds.

    The cheapest replay that meets the goal is the oracle; its notes say how it was found."""
    started = clock() if clock else None
    search = _OracleSearch(setup, progress)
    extra: Extra = {role: {} for role in setup.pools}
    rps = oracle_rps(setup)
    run = search.run(rps, extra)
    hit_rate = run.prefix_hit_rate
    if hit_rate >= 0.01:
        rps = oracle_rps(setup, hit_rate)
        run = search.run(rps, extra)
    scale = 1.0
    for _ in range(ORACLE_SCALE_STEPS):
        if not search.meets(run):
            break
        trial = search.trial({r: g * scale * ORACLE_SCALE_STEP for r, g in rps.items()}, extra)
        if trial is None or not search.meets(trial):
            break
        scale *= ORACLE_SCALE_STEP
        run = trial
    rps = {r: g * scale for r, g in rps.items()}
    added = 0
    for _ in range(rounds):
        if search.meets(run) or not search.refine_up(run, extra):
            break
        added += 1
        run = search.run(rps, extra)
    for _ in range(ORACLE_DOWN_PASSES):
        if not search.meets(run):
            break
        fewer = search.refine_down(run, extra)
        trial = search.trial(rps, fewer)
        if trial is None or not search.meets(trial):
            break
        extra, run = fewer, trial
    best = search.best or run
    best.notes.append(f"{search.replays} replays: the world's capacity model x{scale:.2f} per replica"
                      f"{f' with the realised {hit_rate:.0%} prefix hits' if hit_rate >= 0.01 else ''}, "
                      f"{added} upward round(s), then downward passes"
                      + ("" if search.best is not None else "; no replay met the goal: not a bound"))
    if clock is not None and started is not None:
        best.wall_s = clock() - started
    return best


def run_named(setup: Setup, name: str, progress: Progress | None = None,
              clock: Callable[[], float] | None = None) -> PolicyRun:
    """One policy by name (the oracle with its refinement)."""
    if name == "oracle":
        return run_oracle(setup, progress, clock)
    return run_policy(setup, make_policy(name, setup), progress, clock)


def simulate(setup: Setup, names: Sequence[str], progress: Progress | None = None,
             clock: Callable[[], float] | None = None) -> Simulation:
    """Run the named policies (and the oracle, the reference for GPU-hours) on the same trace."""
    order = policy_order(names)
    measure_shared(setup, order)
    runs = {name: run_named(setup, name, progress, clock) for name in order}
    return Simulation(setup, runs)


HPA_TARGET_USERS = ("hpa", "keda-queue-running")


def measure_shared(setup: Setup, order: Sequence[str]) -> None:
    """Measure what several policies share once, before they run (in other processes, perhaps):
    the HPA's load-tested targets, when a policy that uses them is in ``order``."""
    if any(name in HPA_TARGET_USERS for name in order):
        for role in setup.pools:
            setup.hpa_target(role)


def policy_order(names: Sequence[str]) -> list[str]:
    """The policies to run for a request: those named ("all": every policy), then the oracle."""
    expanded: list[str] = []
    for name in names:
        expanded += list(POLICIES) if name == "all" else [name]
    unknown = [n for n in expanded if n not in POLICIES and n not in DIAGNOSTICS]
    if unknown:
        raise CapacityModelError(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}, all")
    order = list(dict.fromkeys(expanded))
    if "oracle" not in order:
        order.append("oracle")
    return order


def longest_first(names: Sequence[str]) -> list[str]:
    """The order to start policies in parallel: the oracle's search (several replays) first."""
    return sorted(names, key=lambda name: name != "oracle")


def make_policy(name: str, setup: Setup) -> Policy:
    return (POLICIES.get(name) or DIAGNOSTICS[name])(setup)

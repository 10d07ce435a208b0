"""A fleet of simulated vLLM replicas (`goodput.engine.replica.EngineReplica`) behind a router.

Pure: no I/O, no clock; time is what `Fleet.advance` is told.

* **Pools.** One pool per role: ``aggregated``, or ``prefill`` and ``decode`` (disaggregated).
  Every replica of a pool runs the same engine configuration (TP, --max-num-seqs,
  --max-num-batched-tokens, --max-model-len): policies decide only how many replicas. Its
  engines run the world's model (`PoolConfig.engine_model`, see `goodput.engine.world`), which
  may differ from the planner's belief (`PoolConfig.model`).
* **Router.** Least loaded: each request goes to the ready, non-draining replica of the entry pool
  (aggregated, or prefill) with the fewest requests outstanding (submitted, not yet returned),
  ties broken round-robin. In disaggregated mode a prefill replica's hand-off goes the same way
  to a decode replica, arriving at ``finish + kv_transfer_s`` (the engine's KV transfer time). A
  pool with no ready replica holds requests in the router until one is ready.
* **Prefix cache** (traces with block hashes, i.e. Mooncake): each entry-pool replica keeps an LRU
  set of the 512-token blocks it has seen, as many as its KV cache holds (``kv_capacity_tokens //
  512``). A request's cached tokens are 512 x the longest prefix of its ``hash_ids`` present on the
  replica it is routed to (per replica, not fleet-wide: a least-loaded router does not follow
  prefixes), at most prompt - 1 (vLLM recomputes the last token; the engine caps it).
* **Scaling.** `set_replicas` adds replicas that serve ``cold_start_s`` later (they hold their
  GPUs meanwhile) and removes replicas at once, in Kubernetes ReplicaSet order (not yet ready
  first, then the most recently created). A removed replica **drains**: no new requests, it
  finishes what it holds (nothing is re-routed or lost) and frees its GPUs when its last request
  ends. GPU time is counted from creation to that moment.
* **Clients that give up** (``client_timeout_s`` > 0): a request not finished within the timeout
  of its arrival is **abandoned** at that instant: taken out of the router's queue, or aborted in
  the engine that holds it (`EngineReplica.abort`: its batch slot and KV blocks are freed at the
  engine's next step boundary). A request that finishes later than its deadline (within the
  20 ms routing quantum) or whose KV would reach the decode pool after it is abandoned too.
  Abandoned requests are misses; 0 means clients never give up.
* **Per-request record**: TTFT from the trace arrival to the first token (router wait, prefill,
  KV transfer and first decode step included), the mean inter-token latency over the request's
  later tokens, the finish time. A request the engine refuses (longer than --max-model-len or
  the KV cache) is ``rejected``.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from goodput.engine.replica import EngineReplica, Finished, as_role
from goodput.model.replica import ReplicaModel
from goodput.sim.metrics import LAYOUT, Snapshot, Vec, stats_vector
from goodput.sim.trace import MOONCAKE_BLOCK_TOKENS, Trace

PENDING, DONE, REJECTED, ABANDONED = 0, 1, 2, 3
SAMPLES_KEPT = 8  # per pod: enough for a metrics age of a few scrape intervals


@dataclass(frozen=True)
class PodSample:
    """One scrape of one pod's vLLM gauges."""

    t: float
    running: float
    waiting: float
    kv_usage: float


@dataclass(frozen=True)
class PoolConfig:
    role: str  # aggregated, prefill, decode
    tp: int
    model: ReplicaModel  # the planner's belief about this pool's engine
    max_model_len: int
    world_model: ReplicaModel | None = None  # the engine the fleet runs (None: the belief)

    @property
    def engine_model(self) -> ReplicaModel:
        return self.world_model if self.world_model is not None else self.model


@dataclass(eq=False)
class Replica:
    index: int
    role: str
    tp: int
    engine: EngineReplica
    created_s: float
    ready_s: float
    draining: bool = False
    drain_s: float = 0.0
    outstanding: int = 0
    last_finish_s: float = 0.0
    cache: OrderedDict[int, None] | None = None
    cache_blocks: int = 0
    # (scrape time, running, waiting, KV usage): what Prometheus holds of this pod, newest last.
    samples: deque[PodSample] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))

    def ready(self, t: float) -> bool:
        return self.ready_s <= t

    @property
    def idle(self) -> bool:
        return self.outstanding == 0 and self.engine.idle


@dataclass
class ReplicaLife:
    """When a replica was created, served from, and was removed (None: kept to the end)."""

    role: str
    created_s: float
    ready_s: float
    removed_s: float | None = None


@dataclass
class Completion:
    """One request finished (the frontend's view: what Dynamo's planner reads)."""

    finish_s: float
    ttft_s: float
    itl_s: float
    itl_count: int
    e2e_s: float
    prompt: int
    output: int


@dataclass
class Fleet:
    pools: dict[str, PoolConfig]
    trace: Trace
    seed: int = 0
    noise_cv: float = 0.05
    client_timeout_s: float = 0.0  # 0: clients never give up
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.trace)
        self.mode = "disaggregated" if "prefill" in self.pools else "aggregated"
        self.entry_role = "prefill" if self.mode == "disaggregated" else "aggregated"
        self.ttft_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.itl_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.finish_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        # Disaggregated: when a request's KV reached the decode pool (NaN otherwise), to tell a
        # TTFT lost in prefill from one lost waiting for decode admission.
        self.handoff_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.status: npt.NDArray[np.int8] = np.zeros(n, dtype=np.int8)
        self.completions: list[Completion] = []
        self.now = 0.0
        self.gpu_seconds = 0.0
        self._gpu_t = 0.0
        self._made = 0
        self._rr = 0
        self._queues: dict[str, deque[tuple[int, float]]] = {r: deque() for r in self.pools}
        self._retired: dict[str, Vec] = {r: np.zeros(LAYOUT.size) for r in self.pools}
        self.history: dict[str, list[Snapshot]] = {r: [] for r in self.pools}
        self.log: list[ReplicaLife] = []  # indexed by Replica.index
        self.handoffs = 0
        # Prompt tokens routed to the entry pool and the part its prefix caches held (the
        # realised prefix-hit rate, which Dynamo's planner and the oracle size with).
        self.entry_prompt_tokens = 0
        self.entry_cached_tokens = 0
        self._arrival = self.trace.times
        self._prompts = self.trace.prompts
        self._outputs = self.trace.outputs
        self._hashes = self.trace.hash_ids
        self._gpu_stop = math.inf
        # Client timeouts: where each submitted request is (its replica; absent while it waits in
        # the router), how many arrivals were submitted, and the first one not yet past its deadline.
        self.abandoned = 0
        self._where: dict[int, Replica] = {}
        self._submitted = 0
        self._expire_i = 0

    # ------------------------------------------------------------------------------------------
    # views
    # ------------------------------------------------------------------------------------------
    def members(self, role: str) -> list[Replica]:
        """Replicas of a pool that count as its replicas (not draining)."""
        return [r for r in self.replicas if r.role == role and not r.draining]

    def count(self, role: str) -> int:
        return len(self.members(role))

    def ready_count(self, role: str) -> int:
        return sum(1 for r in self.members(role) if r.ready(self.now))

    def allocated_gpus(self) -> int:
        return sum(r.tp for r in self.replicas)

    def next_ready_s(self) -> float:
        return min((r.ready_s for r in self.replicas if r.ready_s > self.now), default=math.inf)

    def stop_gpu_clock(self, t: float) -> None:
        """GPU time is counted until ``t`` (the end of the trace), not during the final drain."""
        self._gpu_stop = t

    # ------------------------------------------------------------------------------------------
    # scaling
    # ------------------------------------------------------------------------------------------
    def set_replicas(self, role: str, n: int, cold_start_s: float) -> int:
        """Grow or shrink a pool to ``n`` replicas now; returns the change."""
        t = self.now
        pool = self.pools[role]
        members = self.members(role)
        change = n - len(members)
        for _ in range(max(change, 0)):
            rng = np.random.default_rng([self.seed, self._made])
            engine = EngineReplica(pool.engine_model, role=as_role(role), rng=rng, noise_cv=self.noise_cv,
                                   ready_at_s=t + cold_start_s, max_model_len=pool.max_model_len)
            engine.advance(t)
            rep = Replica(self._made, role, pool.tp, engine, t, t + cold_start_s, last_finish_s=t)
            if self._hashes is not None and role != "decode":
                rep.cache = OrderedDict()
                rep.cache_blocks = max(1, engine.kv_capacity_tokens // MOONCAKE_BLOCK_TOKENS)
            self._made += 1
            self.replicas.append(rep)
            self.log.append(ReplicaLife(role, t, t + cold_start_s))
        if change < 0:
            # ReplicaSet scale-down order: not ready before ready, then the newest first.
            victims = sorted(members, key=lambda r: (r.ready(t), -r.created_s, -r.index))[:-change]
            for rep in victims:
                rep.draining = True
                rep.drain_s = t
                self.log[rep.index].removed_s = t
            self._reap()
        if change > 0:
            self._flush(role)
        return change

    def _reap(self) -> None:
        """Drop draining replicas with nothing left; their GPUs are free since their last request."""
        keep = []
        for rep in self.replicas:
            if rep.draining and rep.idle:
                end = max(rep.drain_s, rep.last_finish_s)
                self.gpu_seconds -= rep.tp * max(min(self._gpu_t, self._gpu_stop) - min(end, self._gpu_stop), 0.0)
                self._retired[rep.role] += stats_vector(rep.engine.stats)
            else:
                keep.append(rep)
        self.replicas = keep

    # ------------------------------------------------------------------------------------------
    # time
    # ------------------------------------------------------------------------------------------
    def _count_gpus(self, t: float) -> None:
        hi = min(t, self._gpu_stop)
        lo = min(self._gpu_t, self._gpu_stop)
        if hi > lo:
            self.gpu_seconds += self.allocated_gpus() * (hi - lo)
        self._gpu_t = t

    def advance(self, t: float) -> None:
        """Run every replica to ``t``: entry pools first, then hand-offs, then decode."""
        if t < self.now:
            raise ValueError(f"time goes forward: at {self.now}, asked for {t}")
        self._count_gpus(t)
        handoffs: list[tuple[float, Finished]] = []
        for rep in self.replicas:
            if rep.role != "decode":
                if t < rep.engine.quiet_until:  # nothing happens in it by t: what advance(t) would do
                    rep.engine.now = t
                    continue
                for f in rep.engine.advance(t):
                    self._finished(rep, f, handoffs)
        if handoffs:
            handoffs.sort(key=lambda h: h[0])
            for at, f in handoffs:
                self._route(int(f.request_id), "decode", at)
        for rep in self.replicas:
            if rep.role == "decode":
                if t < rep.engine.quiet_until:
                    rep.engine.now = t
                    continue
                for f in rep.engine.advance(t):
                    self._finished(rep, f, handoffs)
        self.now = t
        if self.client_timeout_s > 0.0:
            self._expire(t)
        for role in self.pools:
            if self._queues[role]:
                self._flush(role)
        if any(r.draining for r in self.replicas):
            self._reap()

    def _finished(self, rep: Replica, f: Finished, handoffs: list[tuple[float, Finished]]) -> None:
        rep.outstanding -= 1
        rep.last_finish_s = max(rep.last_finish_s, f.finish_s)
        i = int(f.request_id)
        if self.client_timeout_s > 0.0:
            self._where.pop(i, None)
            done_s = f.finish_s + f.kv_transfer_s if f.handoff else f.finish_s
            if done_s > self.deadline_s(i):  # the client left before this reached it
                self._give_up(i)
                return
        if f.handoff:
            self.handoffs += 1
            handoffs.append((f.finish_s + f.kv_transfer_s, f))
            self.handoff_s[i] = f.finish_s + f.kv_transfer_s
            return
        arrival = float(self._arrival[i])
        ttft = f.first_token_s - arrival
        self.ttft_s[i] = ttft
        self.itl_s[i] = f.itl_mean_s
        self.finish_s[i] = f.finish_s
        self.status[i] = DONE
        self.completions.append(Completion(f.finish_s, ttft, f.itl_mean_s, f.itl_count, f.finish_s - arrival,
                                           int(self._prompts[i]), int(self._outputs[i])))

    # ------------------------------------------------------------------------------------------
    # routing
    # ------------------------------------------------------------------------------------------
    def submit_arrivals(self, i0: int, i1: int) -> None:
        """Route trace requests i0..i1-1 (arriving at or after now) to the entry pool."""
        for i in range(i0, i1):
            self._route(i, self.entry_role, float(self._arrival[i]))
        self._submitted = max(self._submitted, i1)

    def _pick(self, role: str) -> Replica | None:
        t = self.now
        self._rr += 1
        cands = [r for r in self.replicas if r.role == role and not r.draining and r.ready_s <= t]
        if not cands:
            return None
        # The least outstanding, ties to the first at or after the round-robin position (cyclic):
        # the minimum of (outstanding, (j - rr) % n), found by list operations.
        loads = [r.outstanding for r in cands]
        low = min(loads)
        try:
            return cands[loads.index(low, self._rr % len(cands))]
        except ValueError:
            return cands[loads.index(low)]

    def _route(self, i: int, role: str, at: float) -> None:
        rep = self._pick(role)
        if rep is None:
            self._queues[role].append((i, at))
            return
        self._submit(rep, i, max(at, rep.engine.now))

    def _flush(self, role: str) -> None:
        queue = self._queues[role]
        while queue:
            if self.status[queue[0][0]] != PENDING:  # abandoned while it waited here
                queue.popleft()
                continue
            rep = self._pick(role)
            if rep is None:
                return
            i, at = queue.popleft()
            self._submit(rep, i, max(at, rep.engine.now))

    def _submit(self, rep: Replica, i: int, at: float) -> None:
        cached = 0
        if rep.cache is not None and self._hashes is not None:
            cached = self._prefix_hit(rep, self._hashes[i])
        if rep.role != "decode":
            self.entry_prompt_tokens += int(self._prompts[i])
            self.entry_cached_tokens += cached
        if rep.engine.submit(i, at, int(self._prompts[i]), int(self._outputs[i]), cached):
            rep.outstanding += 1
            if self.client_timeout_s > 0.0:
                self._where[i] = rep
        else:
            self.status[i] = REJECTED

    @staticmethod
    def _prefix_hit(rep: Replica, ids: tuple[int, ...]) -> int:
        cache = rep.cache
        assert cache is not None
        hit = 0
        for h in ids:
            if h not in cache:
                break
            hit += 1
        for h in ids:
            if h in cache:
                cache.move_to_end(h)
            else:
                cache[h] = None
        while len(cache) > rep.cache_blocks:
            cache.popitem(last=False)
        return hit * MOONCAKE_BLOCK_TOKENS

    # ------------------------------------------------------------------------------------------
    # clients that give up
    # ------------------------------------------------------------------------------------------
    def deadline_s(self, i: int) -> float:
        """When the client of request ``i`` gives up (inf when clients never do)."""
        if self.client_timeout_s <= 0.0:
            return math.inf
        return float(self._arrival[i]) + self.client_timeout_s

    def next_deadline_s(self) -> float:
        """The earliest deadline of a submitted request not yet finished (deadlines are in arrival
        order, so one pointer over the arrivals finds it)."""
        if self.client_timeout_s <= 0.0:
            return math.inf
        p = self._expire_i
        while p < self._submitted and self.status[p] != PENDING:
            p += 1
        self._expire_i = p
        return self.deadline_s(p) if p < self._submitted else math.inf

    def _expire(self, t: float) -> None:
        """Abandon every unfinished request whose deadline is ``t`` or earlier."""
        p = self._expire_i
        while p < self._submitted and self.deadline_s(p) <= t:
            if self.status[p] == PENDING:
                self._abandon(p, t)
            p += 1
        self._expire_i = p

    def _abandon(self, i: int, t: float) -> None:
        rep = self._where.pop(i, None)
        if rep is not None:
            if not rep.engine.abort(i):
                # Finished inside the engine but not reported yet: `_finished` judges it against
                # the deadline when its engine next advances.
                self._where[i] = rep
                return
            rep.outstanding -= 1
            rep.last_finish_s = max(rep.last_finish_s, t)
        # Not in an engine: waiting in a router queue, skipped there (`_flush`).
        self._give_up(i)

    def _give_up(self, i: int) -> None:
        self.status[i] = ABANDONED
        self.abandoned += 1

    # ------------------------------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------------------------------
    def scrape(self) -> None:
        """Record one Snapshot per pool at ``now``."""
        t = self.now
        for role in self.pools:
            vec = self._retired[role].copy()
            running = waiting = 0.0
            kv: float | None = None
            kv_tokens: float | None = None
            pods = 0
            for rep in self.replicas:
                if rep.role != role:
                    continue
                vec += stats_vector(rep.engine.stats)
                if rep.ready(t):
                    pods += 1
                    running += rep.engine.running
                    waiting += rep.engine.waiting
                    usage = rep.engine.kv_usage
                    kv = usage if kv is None else max(kv, usage)
                    rep.samples.append(PodSample(t, float(rep.engine.running), float(rep.engine.waiting),
                                                 float(usage)))
                    tokens = float(rep.engine.kv_capacity_tokens)
                    kv_tokens = tokens if kv_tokens is None else min(kv_tokens, tokens)
            self.history[role].append(Snapshot(t, vec, running, waiting, kv, pods, kv_tokens))

    def trim_history(self, keep_s: float) -> None:
        """Forget snapshots older than ``keep_s`` (one older than that is kept as a window base)."""
        for hist in self.history.values():
            cut = 0
            while cut + 1 < len(hist) and hist[cut + 1].t < self.now - keep_s:
                cut += 1
            if cut:
                del hist[:cut]

    def pod_gauges(self, role: str, gauge: Callable[[PodSample], float],
                   age_s: float = 0.0) -> tuple[list[float], int]:
        """(a gauge of every pool member as scraped at least ``age_s`` ago, number of members with
        no such scrape yet): what an HPA reads from a Pods metric through a metrics adapter
        (terminating pods are ignored by the HPA). ``age_s`` 0: the live engines."""
        values: list[float] = []
        missing = 0
        for rep in self.members(role):
            sample = self._sample(rep, age_s)
            if sample is None:
                missing += 1
            else:
                values.append(float(gauge(sample)))
        return values, missing

    def pool_gauge_sum(self, role: str, gauge: Callable[[PodSample], float], age_s: float = 0.0) -> float:
        """A gauge summed over every replica of the pool with a scrape at least ``age_s`` old
        (draining ones included): ``sum(metric)`` in PromQL, as of that scrape."""
        total = 0.0
        for rep in self.replicas:
            if rep.role == role:
                sample = self._sample(rep, age_s)
                total += float(gauge(sample)) if sample is not None else 0.0
        return total

    def _sample(self, rep: Replica, age_s: float) -> PodSample | None:
        if age_s <= 0.0:
            if not rep.ready(self.now):
                return None
            e = rep.engine
            return PodSample(self.now, float(e.running), float(e.waiting), float(e.kv_usage))
        cutoff = self.now - age_s + 1e-9
        for sample in reversed(rep.samples):
            if sample.t <= cutoff:
                return sample
        return None

    def unfinished(self) -> int:
        return int(np.count_nonzero(self.status == PENDING))

    @property
    def prefix_hit_rate(self) -> float:
        """Cached / prompt tokens over every request routed to the entry pool so far."""
        return self.entry_cached_tokens / self.entry_prompt_tokens if self.entry_prompt_tokens else 0.0

    def busy(self) -> bool:
        return any(q for q in self._queues.values()) or any(not r.idle for r in self.replicas)



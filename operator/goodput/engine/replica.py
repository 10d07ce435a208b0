"""A discrete-time emulator of ONE vLLM replica (V1 engine): continuous batching, chunked
prefill, paged KV cache with recompute preemption, cold start, and the prefill / decode roles of
a disaggregated deployment. Pure: no I/O, no wall clock; time is whatever ``advance`` is told.

Scheduler (as ``vllm/v1/core/sched/scheduler.py``, FCFS policy)
----------------------------------------------------------------
Each engine step, at the time the previous one ends:

1. RUNNING requests, in admission order, each get ``min(tokens not yet computed, budget left)``
   tokens: one for a decode, a chunk for a prompt still in prefill. ``budget`` starts at
   ``max_num_batched_tokens``. KV blocks of 16 tokens are allocated for the tokens scheduled; when
   none are free, the most recently admitted running request is preempted (recompute: its blocks
   are freed, its computed tokens forgotten, it goes to the FRONT of the waiting queue, counted in
   ``preemptions``), repeatedly, until the allocation fits or the request preempted itself.
2. Unless something was preempted in this step, WAITING requests are admitted first come first
   served while a sequence slot (``max_num_seqs``), token budget and KV blocks for their first
   chunk remain; the head of the queue that does not fit blocks the ones behind it.
3. The step takes ``model.step_time_s(decodes, their context, prompt tokens, their attention
   pairs, prompts completing)`` times a lognormal factor of mean 1 and coefficient of variation
   ``noise_cv``. At its end every request whose tokens are all computed samples one token; a
   request finishes when it has its ``output_tokens`` and frees its blocks.

A request's first token is sampled by the step that completes its prompt (TTFT); every later
token is one inter-token latency (ITL) after the previous one. After a preemption the request
recomputes prompt plus generated tokens (no prefix-cache reuse of its own freed blocks).
Prefix-cache hits (``cached_tokens``, at most prompt - 1, as vLLM recomputes the last token) are
not computed but hold KV blocks. Requests longer than the KV cache or ``max_model_len`` are refused
by ``submit`` (returns False), as vLLM's server refuses them.

Roles: "prefill" computes prompts only and hands each request off when its first token is sampled
(``Finished.handoff``, ``Finished.kv_transfer_s = model.kv_transfer_s(prompt)``, blocks freed at
once). "decode" admits requests whose KV was computed elsewhere: admission allocates blocks for
the prompt and the request starts decoding (its first step is one token of context ``prompt``,
which samples its first token here). A fleet simulator submits to the decode replica at the
prefill's ``finish_s + kv_transfer_s`` and adds the upstream time to the decode replica's TTFT.

Aborts: ``abort(request_id)`` drops a request whose client went away. Waiting (or not yet
arrived), it leaves the queue at once; running, it leaves the batch at the next step boundary
(a step in flight completes, as vLLM's engine core applies aborts between steps) and its KV
blocks are freed then. It is never reported as finished.

Time: ``submit`` every request that arrives before ``until_s``, then ``advance(until_s)``. A step
starts when the previous one ends (or at the first arrival once idle, never before
``ready_at_s``); its composition is fixed when it starts, its tokens appear when it ends. A step
that has started but not ended by ``until_s`` stays in flight and completes in a later call.
Results do not depend on how the timeline is cut into ``advance`` calls: noise factors are drawn
in fixed blocks and consumed one per step, in step order.

The hot loop, and its shortcuts
-------------------------------
The general step above costs a Python loop over the running batch. Most steps of a busy replica
are pure decode steps of an unchanged batch, so when every running request is decoding, no
waiting request can be admitted (queue empty, or ``max_num_seqs``, budget or KV blocks refuse its
head) and the batch fits the budget, the emulator runs the next k such steps in one numpy pass:
k is bounded by the first request to finish, by the KV blocks left (each request needs one block
per 16 steps, so 16 * (free blocks // batch) + the smallest free slack of a last block is safe),
by the next arrival (no step may start at or after it) and by ``until_s`` (every step must end by
it). Step j's time is ``step_time_s(n, S + n*j)`` (the context grows by one token per request per
step) times its own noise factor, so the jump reproduces the step-by-step timeline exactly; the
only thing it changes is cost. It records per-request ITL as sum / max / count and the ITL
histogram in bulk. A plan survives across ``advance`` calls (an arrival submitted meanwhile cuts
it at the first step that would start after it) and its steps are applied lazily, when a later
call passes the plan's end or a counter is read, so a router that advances every replica to
every arrival pays O(log k) per call. The one visible difference from stepping one at a time:
between two ``advance`` calls inside a plan, ``kv_usage`` counts a decode step's new KV block from
the end of that step rather than its start (at most one block per request, once per 16 steps).
Timelines (every step's start and end) are bit-identical to the step-by-step path; float sums
derived from them (ITL means, histogram sums) agree to rounding.

The general step's own shortcut: a lockstep cohort
---------------------------------------------------
A step that must go through the general path (a prompt chunk in it, an admission, a plan cut by
an arrival) still changes every decoding request alike. Requests that sampled a token at the end
of the last step form a cohort (`_Lockstep`) that is stepped as aggregates (count, total context,
the step at which each finishes, the step at which each needs its next KV block) plus a log of
the gaps; a member's own fields are brought up to date only when it finishes (or, aborted,
leaves the batch at a step boundary: it is settled and dropped from the aggregates), by adding
the logged gaps in step order. A general step costs O(requests not in the cohort) instead of
O(running batch), which matters for a decode pool's batch of hundreds. When a step would not give
every running request its tokens (token budget or KV blocks short, so order and preemption
decide), the cohort is dissolved first and the step runs one request at a time. Unlike the
planned runs this shortcut changes nothing at all: results are bit-identical with it off
(``_LOCKSTEP = False``), which a test checks.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from goodput.engine.vllm_metrics import ReplicaStats, cache_config_0_32, default_cache_config, exposition
from goodput.model.replica import ReplicaModel

Role = Literal["aggregated", "prefill", "decode"]


def as_role(role: str) -> Role:
    """A pool role as the engine's type: prefill, decode, or (anything else) aggregated."""
    if role == "prefill":
        return "prefill"
    if role == "decode":
        return "decode"
    return "aggregated"
RequestId = str | int

BLOCK_SIZE = 16
_NOISE_BLOCK = 4096  # noise factors are drawn in blocks of this size (same sequence however consumed)
_MAX_JUMP = 1024  # longest run of decode steps planned in one numpy pass
_MIN_JUMP = 3  # shorter runs go through the general step (cheaper than a numpy pass)
_LOCKSTEP = True  # step decoding requests as a cohort (see _Lockstep); False: one by one (same results)
_LOG_ENTRIES = 4096  # the cohort's log is applied to every member and emptied at this length
_VLLM_CACHE_DTYPE = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp8": "fp8"}


@dataclass(frozen=True, slots=True)
class Finished:
    """A request that left the replica: completed, or (role "prefill") handed off after prefill."""

    request_id: RequestId
    arrival_s: float
    scheduled_s: float  # first admitted to the running batch
    first_token_s: float
    finish_s: float
    ttft_s: float  # first_token_s - arrival_s
    queue_s: float  # scheduled_s - arrival_s
    e2e_s: float  # finish_s - arrival_s
    prompt_tokens: int
    output_tokens: int  # tokens generated on this replica
    cached_tokens: int
    itl_mean_s: float  # over this request's inter-token gaps (0 when it produced one token)
    itl_max_s: float
    itl_count: int
    preempted: int  # times this request was preempted
    handoff: bool = False
    kv_transfer_s: float = 0.0
    finish_reason: str = "stop"


class _Req:
    __slots__ = ("aborted", "admitted", "arrival", "blocks", "cached", "computed", "done", "first_s", "gen",
                 "itl_max", "itl_n", "itl_sum", "last_s", "lock", "lock_tokens", "out", "preempted", "prompt",
                 "rid", "sched_s", "seq")

    def __init__(self, rid: RequestId, arrival: float, prompt: int, out: int, cached: int) -> None:
        self.rid = rid
        self.arrival = arrival
        self.prompt = prompt
        self.out = out
        self.cached = cached
        self.computed = 0  # tokens whose KV is computed (or cached / transferred)
        self.gen = 0  # output tokens sampled
        self.blocks = 0  # KV blocks held
        self.admitted = 0  # times admitted from the waiting queue
        self.preempted = 0
        self.sched_s = -1.0
        self.first_s = -1.0
        self.last_s = -1.0
        self.itl_sum = 0.0
        self.itl_max = 0.0
        self.itl_n = 0
        self.done = False
        self.aborted = False  # the client went away (see EngineReplica.abort)
        self.seq = 0  # order in the running batch (admissions get increasing numbers)
        self.lock = -1  # in the lockstep cohort: the first log entry not yet applied to it; else -1
        self.lock_tokens = 0  # the cohort's token count when it was last brought up to date


class _Lockstep:
    """The running requests that decode in lockstep, brought up to date only when needed.

    A member sampled a token at the end of the last step and decodes one token in every step
    until it finishes, so every step changes all members alike: one more token, the same gap
    added to each one's ITL sum. The cohort keeps what the step-time model and the scheduler need
    as aggregates (how many, their total context, when each finishes, when each needs its next KV
    block) and a log of the gaps; a member's own fields are brought up to date (`settle`) when it
    leaves, by adding the logged gaps one at a time in step order: the same float operations the
    request-by-request loop does, so identical results at O(1) per step instead of O(batch)."""

    __slots__ = ("adds", "context", "finishes", "last_end", "last_seq", "maxes", "n", "phase", "tokens")

    def __init__(self) -> None:
        self.n = 0  # members
        self.context = 0  # sum over members of prompt + generated tokens: the KV their next decode reads
        # Members by the cohort token count (mod BLOCK_SIZE) at which they need a new KV block.
        self.phase = [0] * BLOCK_SIZE
        self.finishes: list[tuple[int, int, _Req]] = []  # heap: (token count at which it finishes, seq, member)
        self.tokens = 0  # tokens each member has gained in the cohort's steps, since the engine started
        self.adds: list[float] = []  # per logged step (or planned run): what each member adds to its ITL sum
        self.maxes: list[float] = []  # per logged entry: the longest inter-token gap in it
        self.last_end = 0.0  # end of the last logged entry (every member's last token)
        self.last_seq = -1  # no member is later than this in the running batch (an upper bound)

    def join(self, req: _Req) -> None:
        """``req`` sampled at the end of the last step and decodes next: it steps with the cohort."""
        req.lock = len(self.adds)
        req.lock_tokens = self.tokens
        self.last_seq = max(self.last_seq, req.seq)
        self.n += 1
        self.context += req.computed + 1
        self.phase[(self.tokens - req.computed) % BLOCK_SIZE] += 1
        heapq.heappush(self.finishes, (self.tokens + req.out - req.gen, req.seq, req))

    def step(self, add: float, worst: float, m: int, end: float) -> None:
        """Every member decodes ``m`` tokens ending at ``end``: its ITL sum grows by ``add``, its
        longest gap is at least ``worst``."""
        self.adds.append(add)
        self.maxes.append(worst)
        self.tokens += m
        self.context += self.n * m
        self.last_end = end

    def crossings(self, m: int) -> int:
        """KV blocks the members allocate over the next ``m`` steps (one each per 16 tokens)."""
        t0 = self.tokens
        if m == 1:
            return self.phase[t0 % BLOCK_SIZE]
        total = 0
        for key, count in enumerate(self.phase):
            if count:
                d = (key - t0) % BLOCK_SIZE
                if d < m:
                    total += count * (1 + (m - 1 - d) // BLOCK_SIZE)
        return total

    def slack(self) -> int:
        """The fewest tokens any member can still add to its last KV block (BLOCK_SIZE if none)."""
        t0 = self.tokens
        phase = self.phase
        for d in range(BLOCK_SIZE):
            if phase[(t0 + d) % BLOCK_SIZE]:
                return d
        return BLOCK_SIZE

    def steps_to_finish(self) -> int:
        """Steps until the first member has all its tokens (a large number if none)."""
        return self.finishes[0][0] - self.tokens if self.finishes else 1 << 30

    def settle(self, req: _Req) -> None:
        """Apply the logged steps to a member's own fields (in step order, as the step loop would)."""
        d = self.tokens - req.lock_tokens
        if d:
            k = req.lock
            total = req.itl_sum
            for add in self.adds[k:]:
                total += add
            req.itl_sum = total
            worst = max(self.maxes[k:])
            if worst > req.itl_max:
                req.itl_max = worst
            req.itl_n += d
            req.gen += d
            req.computed += d
            req.blocks = -(-req.computed // BLOCK_SIZE)
            req.last_s = self.last_end
        req.lock = len(self.adds)
        req.lock_tokens = self.tokens

    def finished(self) -> list[_Req]:
        """The members that have all their tokens now, settled and out of the cohort, in running order."""
        done: list[_Req] = []
        heap = self.finishes
        while heap and heap[0][0] <= self.tokens:
            req = heapq.heappop(heap)[2]
            self.settle(req)
            req.lock = -1
            req.done = True
            self.n -= 1
            self.context -= req.computed + 1
            self.phase[(self.tokens - req.computed) % BLOCK_SIZE] -= 1
            done.append(req)
        if not self.n:
            self.adds.clear()
            self.maxes.clear()
            self.last_seq = -1
        return done

    def leave(self, reqs: list[_Req]) -> None:
        """Members that leave before they finish (aborted): settled (their KV blocks up to date)
        and dropped from the aggregates and the finishes heap."""
        for req in reqs:
            self.settle(req)
            req.lock = -1
            self.n -= 1
            self.context -= req.computed + 1
            self.phase[(self.tokens - req.computed) % BLOCK_SIZE] -= 1
        # Every other entry of the heap is a member still (`finished` pops those that finish).
        self.finishes = [entry for entry in self.finishes if entry[2].lock >= 0]
        heapq.heapify(self.finishes)
        if not self.n:
            self.adds.clear()
            self.maxes.clear()
            self.last_seq = -1

    def dissolve(self, running: list[_Req]) -> None:
        """Settle every member and empty the cohort (the step loop takes over)."""
        for req in running:
            if req.lock >= 0:
                self.settle(req)
                req.lock = -1
        self.n = 0
        self.context = 0
        self.last_seq = -1
        self.phase = [0] * BLOCK_SIZE
        self.finishes.clear()
        self.adds.clear()
        self.maxes.clear()

    def compact(self, running: list[_Req]) -> None:
        """Settle every member and forget the log (it would otherwise grow with the run)."""
        for req in running:
            if req.lock >= 0:
                self.settle(req)
                req.lock = 0
        self.adds.clear()
        self.maxes.clear()


# A step's composition, as the step-time model takes it: decodes, the sum of their context, prompt
# tokens, their (query, key) attention pairs, prompts completing in the step.
_Mix = tuple[int, int, int, float, int]


def _by_seq(a: list[_Req], b: list[_Req]) -> list[_Req]:
    """Two lists of requests in running order, merged in running order."""
    if not b:
        return a
    if not a:
        return b
    return sorted(a + b, key=lambda req: req.seq)


class EngineReplica:
    """One vLLM replica driven by an external clock. See the module docstring for the semantics."""

    def __init__(
        self,
        model: ReplicaModel,
        role: Role = "aggregated",
        rng: np.random.Generator | None = None,
        noise_cv: float = 0.05,
        ready_at_s: float = 0.0,
        *,
        max_model_len: int | None = None,
    ) -> None:
        if role not in ("aggregated", "prefill", "decode"):
            raise ValueError(f"role must be aggregated, prefill or decode, got {role!r}")
        if not noise_cv >= 0.0:
            raise ValueError("noise_cv must be >= 0")
        self.model = model
        self.role: Role = role
        self.ready_at_s = float(ready_at_s)
        self.total_blocks = int(model.kv_capacity_tokens // BLOCK_SIZE)
        if self.total_blocks < 1:
            raise ValueError("the model leaves no KV cache: the replica cannot serve")
        self.max_model_len = int(max_model_len) if max_model_len else self.total_blocks * BLOCK_SIZE
        self.max_num_seqs = int(model.max_num_seqs)
        self.max_num_batched_tokens = int(model.max_num_batched_tokens)
        self._step_time = model.step_time_fn()  # step_time_s, bit-identical, memoized per token count
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._sigma = math.sqrt(math.log1p(noise_cv**2))
        self._noise = np.ones(0)
        self._noise_list: list[float] = []
        self._noise_i = 0
        self._arange = np.arange(_MAX_JUMP, dtype=np.float64)

        self._pending: deque[_Req] = deque()  # submitted, arrival still ahead of the engine
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        # The running batch is the lockstep cohort (see _Lockstep) plus the others ("solo",
        # stepped one by one), both in running order.
        self._lock = _Lockstep()
        self._solo: list[_Req] = []
        self._seq = 0
        self._free = self.total_blocks
        self._clock = 0.0  # end of the last completed step
        self.now = 0.0  # the latest time advanced to
        self._inflight: list[_Req] | None = None  # the step in flight: its solo requests that sample a token
        self._inflight_lock = False  # whether the cohort steps in it
        self._inflight_start = 0.0
        self._inflight_end = 0.0
        self._inflight_running = 0
        self._inflight_used = 0
        # A planned run of pure decode steps (see _try_plan): their end times and durations and the
        # start of the first; those that have ended by ``now`` are applied when the run ends or a
        # counter is read (_plan_passed).
        self._plan_ends: npt.NDArray[np.float64] | None = None
        self._plan_gaps: npt.NDArray[np.float64] = np.ones(0)
        self._plan_t0 = 0.0
        # The plan's end times as Python floats (bisect is cheaper than a numpy search for one
        # value) and the index in them of _plan_ends[0].
        self._plan_ends_l: list[float] = []
        self._plan_off = 0
        self._early: list[Finished] = []  # finished while a counter was read; returned by advance
        self._live: dict[RequestId, _Req] = {}  # submitted and not yet finished, for abort
        self._doomed = False  # an aborted request is still in the running batch (freed at the next step)
        self.aborted = 0
        # Nothing starts or ends before this time: advance(t) for an earlier t only sets ``now``
        # to t, so a fleet that advances every replica to every arrival may do just that itself.
        # Reset by anything that changes the state (submit, abort, counters read mid-plan).
        self.quiet_until = -math.inf
        self._unrecorded: list[_Req] = []  # finished, not yet in the per-request histograms

        self._stats = ReplicaStats()
        self.rejected = 0
        self._steps = 0
        self._jumped_steps = 0
        self._busy_s = 0.0
        self._running_seconds = 0.0
        self._kv_seconds = 0.0

    # ------------------------------------------------------------------------------------------
    # Gauges
    # ------------------------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        arrived = 0
        for req in self._pending:
            if req.arrival > self.now:
                break
            arrived += 1
        return len(self._waiting) + arrived

    @property
    def kv_usage(self) -> float:
        self._sync()
        return (self.total_blocks - self._free) / self.total_blocks

    # --- counters (applied lazily while a decode plan runs: reading them brings them up to date)
    @property
    def stats(self) -> ReplicaStats:
        """vLLM's counters and histograms of this replica (see ``goodput.engine.vllm_metrics``)."""
        self._sync()
        self._record_finished()
        return self._stats

    @property
    def steps(self) -> int:
        """Engine steps completed."""
        self._sync()
        return self._steps

    @property
    def jumped_steps(self) -> int:
        """Completed steps that ran inside planned decode runs (a subset of ``steps``)."""
        self._sync()
        return self._jumped_steps

    @property
    def busy_s(self) -> float:
        """Time spent in engine steps."""
        self._sync()
        return self._busy_s

    @property
    def running_seconds(self) -> float:
        """Integral of the running batch over time (divide by a duration for the mean batch)."""
        self._sync()
        return self._running_seconds

    @property
    def kv_seconds(self) -> float:
        """Integral of kv_usage over time."""
        self._sync()
        return self._kv_seconds

    @property
    def kv_capacity_tokens(self) -> int:
        return self.total_blocks * BLOCK_SIZE

    @property
    def idle(self) -> bool:
        return not (self._running or self._waiting or self._pending or self._inflight is not None)

    def _sync(self) -> None:
        """Apply the planned decode steps that have ended by ``now``."""
        if self._plan_ends is not None:
            passed = self._plan_passed()
            if passed:
                self.quiet_until = -math.inf
                self._apply_plan(passed, self._early)

    def _plan_passed(self) -> int:
        """How many planned steps have ended by ``now``."""
        assert self._plan_ends is not None
        lo = self._plan_off
        return bisect.bisect_right(self._plan_ends_l, self.now, lo, lo + self._plan_ends.size) - lo

    # ------------------------------------------------------------------------------------------
    # Input
    # ------------------------------------------------------------------------------------------
    def submit(self, request_id: RequestId, arrival_s: float, prompt_tokens: int, output_tokens: int,
               cached_tokens: int = 0) -> bool:
        """Queue a request arriving at ``arrival_s``. False (and counted in ``rejected``) when it
        can never fit: longer than ``max_model_len`` or than the whole KV cache."""
        prompt = int(prompt_tokens)
        out = int(output_tokens)
        if prompt < 1 or out < 1:
            raise ValueError("a request needs at least one prompt token and one output token")
        kept = prompt + 1 if self.role == "prefill" else prompt + out
        if kept > self.max_model_len or -(-kept // BLOCK_SIZE) > self.total_blocks:
            self.rejected += 1
            return False
        cached = 0 if self.role == "decode" else max(0, min(int(cached_tokens), prompt - 1))
        req = _Req(request_id, float(arrival_s), prompt, out, cached)
        self._live[request_id] = req
        self.quiet_until = -math.inf
        pending = self._pending
        if not pending or pending[-1].arrival <= req.arrival:
            pending.append(req)
        else:  # out of order: keep the pending queue sorted by arrival
            i = len(pending)
            while i > 0 and pending[i - 1].arrival > req.arrival:
                i -= 1
            pending.insert(i, req)
        ends = self._plan_ends
        if ends is not None and ends.size > 1:
            lo = self._plan_off
            hi = lo + ends.size - 1  # the last step's start is the one before's end
            if req.arrival < self._plan_ends_l[hi - 1]:
                # No planned step may start at or after an arrival (it would admit the request);
                # steps that have already started stay.
                started = self._plan_passed() + 1
                keep = max(1 + bisect.bisect_left(self._plan_ends_l, req.arrival, lo, hi) - lo, started)
                self._plan_ends = ends[:keep]
                self._plan_gaps = self._plan_gaps[:keep]
        return True

    def abort(self, request_id: RequestId) -> bool:
        """The client went away (vLLM aborts a request whose connection closes): drop the request.

        Not yet arrived or waiting: removed now. Running: it leaves the batch at the next step
        boundary and its KV blocks are freed then (a step already started completes, as vLLM's
        engine core handles aborts between steps); planned decode steps that would start after
        now are cut, so no later step carries it. An aborted request is never reported by
        ``advance`` and is not counted in the success counters. False when the request is not
        here (finished, possibly not yet reported, or never submitted)."""
        req = self._live.pop(request_id, None)
        if req is None:
            return False
        req.aborted = True
        self.aborted += 1
        self.quiet_until = -math.inf
        for queue in (self._waiting, self._pending):
            # Requests expire oldest first and the queues are in arrival order: found near the front.
            try:
                queue.remove(req)
                return True
            except ValueError:
                pass
        self._doomed = True
        ends = self._plan_ends
        if ends is not None:
            if ends.size > 1:
                # As for an arrival: keep the planned steps that started by now (a step that starts
                # when the last one passed ended, at or before now, has started).
                lo = self._plan_off
                hi = lo + ends.size - 1  # the last step's start is the one before's end
                started = self._plan_passed() + 1
                keep = max(1 + bisect.bisect_left(self._plan_ends_l, self.now, lo, hi) - lo, started)
                if keep < ends.size:
                    self._plan_ends = ends[:keep]
                    self._plan_gaps = self._plan_gaps[:keep]
        elif self._inflight is None:
            self._purge()  # between steps: freed at once
        return True

    def _purge(self) -> None:
        """Drop aborted requests from the running batch and free their blocks (a step boundary).
        Members of the lockstep cohort are settled and leave it first (its aggregates drop them)."""
        gone = [req for req in self._running if req.aborted]
        if gone:
            members = [req for req in gone if req.lock >= 0]
            if members:
                self._lock.leave(members)
            for req in gone:
                self._free += req.blocks
                req.blocks = 0
            self._running = [req for req in self._running if not req.aborted]
            self._solo = [req for req in self._solo if not req.aborted]
        self._doomed = False

    # ------------------------------------------------------------------------------------------
    # Time
    # ------------------------------------------------------------------------------------------
    def advance(self, until_s: float) -> list[Finished]:
        """Run every engine step that ends by ``until_s``; return the requests finished meanwhile."""
        until = float(until_s)
        if until < self.now:
            raise ValueError(f"time goes forward: advanced to {self.now}, asked for {until}")
        out, self._early = self._early, []
        if until < self.quiet_until:
            self.now = until
            return out
        empty_at = math.nan
        while True:  # every exit says until when the engine stays as it is (_quiet_until)
            if self._plan_ends is not None:
                last = self._plan_off + self._plan_ends.size - 1
                if until < self._plan_ends_l[last]:
                    # Its last step is still in flight: the steps ended by now are applied when it
                    # ends, or when a counter is read (_sync), nothing shows them before.
                    self.quiet_until = self._plan_ends_l[last]
                    break
                self._apply_plan(self._plan_ends.size, out)
                continue
            if self._inflight is not None:
                if self._inflight_end > until:
                    self.quiet_until = self._inflight_end
                    break
                self._complete(out)
                continue
            t = self._clock if self._clock > self.ready_at_s else self.ready_at_s
            if self._doomed:
                self._purge()
            if not self._running and not self._waiting:
                if not self._pending:
                    self.quiet_until = math.inf
                    break
                if self._pending[0].arrival > t:
                    t = self._pending[0].arrival
            if t >= until:
                self.quiet_until = t
                break
            pending = self._pending
            while pending and pending[0].arrival <= t:
                self._waiting.append(pending.popleft())
            if self._try_plan(t):
                continue
            if not self._schedule(t):
                # Only preemptions happened; the next step admits the preempted. Twice in a row at
                # the same time would mean nothing can ever run: refuse to spin.
                if empty_at == t:
                    raise RuntimeError("scheduler made no progress")
                empty_at = t
                self._clock = t
        self.now = until
        return out

    # --- noise --------------------------------------------------------------------------------
    def _refill(self, needed: int) -> None:
        rest = self._noise[self._noise_i:]
        blocks = [rest]
        have = rest.size
        while have < needed:
            if self._sigma > 0.0:
                block = self._rng.lognormal(-self._sigma**2 / 2.0, self._sigma, _NOISE_BLOCK)
            else:
                block = np.ones(_NOISE_BLOCK)
            blocks.append(block)
            have += _NOISE_BLOCK
        self._noise = np.concatenate(blocks)
        self._noise_list = self._noise.tolist()
        self._noise_i = 0

    # --- the general step ---------------------------------------------------------------------
    def _schedule(self, t: float) -> bool:
        """Compose the next step from ``t`` (running requests, then admissions) and start it;
        False when nothing could be scheduled (only preemptions happened)."""
        sampling: list[_Req] = []  # the solo requests that sample a token at the step's end
        lock = self._lock
        if lock.n and not self._lockstep_fits():
            lock.dissolve(self._running)  # the step loop decides who gets what, and who is preempted
            self._solo = list(self._running)
        admitted_from = len(self._running)
        if lock.n:
            budget, mix = self._schedule_lockstep(sampling)
            preempted = False
        else:
            budget, preempted, mix = self._schedule_running(sampling)
        if not preempted:
            mix = self._admit(t, budget, sampling, mix)
        if lock.n:
            self._solo.extend(self._running[admitted_from:])
        else:
            self._solo = list(self._running)  # after preemptions, too
        dec_n, dec_ctx, pf_tokens, pf_pairs, pf_seqs = mix
        if not (dec_n or pf_tokens):
            return False
        if self._noise_i >= len(self._noise_list):
            self._refill(1)
        factor = self._noise_list[self._noise_i]
        self._noise_i += 1
        dt = float(self._step_time(float(dec_n), float(dec_ctx), float(pf_tokens), pf_pairs, float(pf_seqs)))
        self._inflight = sampling
        self._inflight_lock = lock.n > 0
        self._inflight_start = t
        self._inflight_end = t + dt * factor
        self._inflight_running = len(self._running)
        self._inflight_used = self.total_blocks - self._free
        return True

    def _lockstep_fits(self) -> bool:
        """Whether the cohort can step as one: every request up to its last member (in running
        order) gets all its tokens, so that each member gets its one (the requests after it get
        what the budget leaves, in order, as the step loop gives it), and no request's KV blocks
        run short (no preemption)."""
        lock = self._lock
        budget = self.max_num_batched_tokens - lock.n
        need = lock.crossings(1)
        for req in self._solo:
            c0 = req.computed
            n = req.prompt + req.gen - c0
            if n <= 0:
                continue
            if n > budget:
                if req.seq < lock.last_seq:
                    return False  # the step loop would give it budget that a member after it needs
                if budget <= 0:
                    break
                n = budget
            budget -= n
            need += -(-(c0 + n) // BLOCK_SIZE) - req.blocks
        return need <= self._free

    def _schedule_lockstep(self, sampling: list[_Req]) -> tuple[int, _Mix]:
        """Step 1 of the scheduler when `_lockstep_fits`: the cohort's members decode one token
        each, the solo requests get their tokens in running order from the budget left (as in
        `_schedule_running`). Returns the budget left and the step's composition."""
        lock = self._lock
        budget = self.max_num_batched_tokens - lock.n
        free = self._free - lock.crossings(1)
        dec_n = lock.n
        dec_ctx = lock.context
        pf_tokens = pf_seqs = 0
        pf_pairs = 0.0
        for req in self._solo:
            if budget <= 0:
                break
            c0 = req.computed
            total = req.prompt + req.gen
            n = total - c0
            if n > budget:
                n = budget
            if n <= 0:
                continue
            need = -(-(c0 + n) // BLOCK_SIZE) - req.blocks
            if need > 0:
                req.blocks += need
                free -= need
            req.computed = c0 + n
            if n == 1 and c0 + 1 == total:
                dec_n += 1
                dec_ctx += total
                sampling.append(req)
            else:
                pf_tokens += n
                pf_pairs += n * c0 + n * (n + 1) / 2.0
                if c0 + n == total:
                    pf_seqs += 1
                    sampling.append(req)
            budget -= n
        self._free = free
        return budget, (dec_n, dec_ctx, pf_tokens, pf_pairs, pf_seqs)

    def _schedule_running(self, sampling: list[_Req]) -> tuple[int, bool, _Mix]:
        """Step 1 of the scheduler: every running request, in order, gets its tokens while the
        budget lasts, preempting from the back when KV blocks run out. Returns the budget left,
        whether anything was preempted, and the step's composition so far (see `_Mix`)."""
        budget = self.max_num_batched_tokens
        free = self._free
        running = self._running
        dec_n = dec_ctx = pf_tokens = pf_seqs = 0
        pf_pairs = 0.0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            c0 = req.computed
            total = req.prompt + req.gen
            n = total - c0
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            need = -(-(c0 + n) // BLOCK_SIZE) - req.blocks
            if need > free:
                free, fits = self._preempt_for(req, need, free)
                preempted = True
                if not fits:
                    break
            if need > 0:
                req.blocks += need
                free -= need
            req.computed = c0 + n
            # Classified as the step-time model counts it (a decode: one token completing its sequence).
            if n == 1 and c0 + 1 == total:
                dec_n += 1
                dec_ctx += total
                sampling.append(req)
            else:
                pf_tokens += n
                pf_pairs += n * c0 + n * (n + 1) / 2.0
                if c0 + n == total:
                    pf_seqs += 1
                    sampling.append(req)
            budget -= n
            i += 1
        self._free = free
        return budget, preempted, (dec_n, dec_ctx, pf_tokens, pf_pairs, pf_seqs)

    def _preempt_for(self, req: _Req, need: int, free: int) -> tuple[int, bool]:
        """Preempt running requests from the back until ``need`` blocks are free, or ``req`` itself
        was preempted; returns the free blocks and whether ``req`` still runs."""
        running = self._running
        while need > free:
            victim = running.pop()
            free += victim.blocks
            victim.blocks = 0
            victim.computed = 0
            victim.preempted += 1
            self._stats.preemptions += 1
            self._waiting.appendleft(victim)
            if victim is req:
                return free, False
        return free, True

    def _admit(self, t: float, budget: int, sampling: list[_Req], mix: _Mix) -> _Mix:
        """Step 2 of the scheduler: admit waiting requests first come first served while a sequence
        slot, the token budget and KV blocks for their first chunk remain; returns the composition."""
        dec_n, dec_ctx, pf_tokens, pf_pairs, pf_seqs = mix
        free = self._free
        running = self._running
        waiting = self._waiting
        stats = self._stats
        decode_role = self.role == "decode"
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            req = waiting[0]
            if req.admitted:
                c0 = 0  # recompute after preemption
            elif decode_role:
                c0 = req.prompt - 1  # KV transferred; the last prompt token is the first input
            else:
                c0 = req.cached
            total = req.prompt + req.gen
            n = total - c0
            if n > budget:
                n = budget
            need = -(-(c0 + n) // BLOCK_SIZE)
            if need > free:
                break
            waiting.popleft()
            stats.prefix_cache_queries += total
            if not req.admitted and not decode_role:
                stats.prefix_cache_hits += c0
            elif not req.admitted:
                stats.prompt_tokens_external += c0  # vLLM 0.32's prompt_tokens_by_source
            req.admitted += 1
            if req.sched_s < 0.0:
                req.sched_s = t
            req.blocks = need
            free -= need
            req.computed = c0 + n
            req.seq = self._seq
            self._seq += 1
            running.append(req)
            if n == 1 and c0 + 1 == total:
                dec_n += 1
                dec_ctx += total
                sampling.append(req)
            else:
                pf_tokens += n
                pf_pairs += n * c0 + n * (n + 1) / 2.0
                if c0 + n == total:
                    pf_seqs += 1
                    sampling.append(req)
            budget -= n
        self._free = free
        return dec_n, dec_ctx, pf_tokens, pf_pairs, pf_seqs

    def _complete(self, out: list[Finished]) -> None:
        sampling = self._inflight
        assert sampling is not None
        start = self._inflight_start
        end = self._inflight_end
        dt = end - start
        self._inflight = None
        self._clock = end
        self._steps += 1
        self._busy_s += dt
        self._running_seconds += self._inflight_running * dt
        self._kv_seconds += self._inflight_used / self.total_blocks * dt
        stats = self._stats
        itl_hist = stats.inter_token_latency
        first_prompt = 0
        same_gap = 0
        done: list[_Req] = []
        prefill_role = self.role == "prefill"
        for req in sampling:  # in running order (a prompt chunk that does not complete it samples nothing)
            req.gen += 1
            if req.gen == 1:
                req.first_s = end
                first_prompt += req.prompt
                stats.time_to_first_token.observe(end - req.arrival)
            else:
                gap = end - req.last_s
                if req.last_s == start:
                    same_gap += 1
                else:
                    itl_hist.observe(gap)
                req.itl_sum += gap
                req.itl_n += 1
                if gap > req.itl_max:
                    req.itl_max = gap
            req.last_s = end
            if req.gen >= req.out or prefill_role:
                req.done = True
                done.append(req)
        sampled = len(sampling)
        if self._inflight_lock:
            lock = self._lock
            same_gap += lock.n  # each member's gap is end - start (it sampled at the step's start)
            sampled += lock.n
            lock.step(dt, dt, 1, end)
            done = _by_seq(done, lock.finished())
        if same_gap:
            itl_hist.observe(dt, same_gap)
        stats.prompt_tokens += first_prompt
        stats.generation_tokens += sampled
        if sampled:
            stats.iteration_tokens.observe(first_prompt + sampled)
        self._join_lockstep(sampling)
        if done:
            self._finish_done(end, done, out)

    def _join_lockstep(self, sampled: list[_Req]) -> None:
        """Solo requests that sampled at the end of the last step and decode next join the cohort."""
        if not _LOCKSTEP:
            return
        joined = False
        lock = self._lock
        for req in sampled:
            if not req.done:
                lock.join(req)
                joined = True
        if joined:
            self._solo = [req for req in self._solo if req.lock < 0]
        if len(lock.adds) >= _LOG_ENTRIES:
            lock.compact(self._running)

    # --- the shortcut: a planned run of identical decode steps -------------------------------
    def _try_plan(self, t: float) -> bool:
        """Plan the next k pure decode steps in one numpy pass, if the batch allows it (see the
        module docstring); ``advance`` then applies them as time passes them."""
        running = self._running
        n = len(running)
        if n == 0 or n > self.max_num_batched_tokens:
            return False
        if self._waiting and self._head_admissible(n):
            return False
        lock = self._lock
        context = lock.context
        k_finish = min(_MAX_JUMP, lock.steps_to_finish())
        slack = lock.slack()
        for req in self._solo:
            c = req.computed
            if req.gen == 0 or c + 1 != req.prompt + req.gen:
                return False
            context += c + 1
            left = req.out - req.gen
            if left < k_finish:
                k_finish = left
            s = req.blocks * BLOCK_SIZE - c
            if s < slack:
                slack = s
        k = min(k_finish, BLOCK_SIZE * (self._free // n) + slack)
        arrival = self._pending[0].arrival if self._pending else math.inf
        if arrival < math.inf:
            # Enough steps to pass the next arrival (noise factors rarely fall below 0.6).
            step0 = float(self._step_time(float(n), float(context)))
            reach = (arrival - t) / (0.6 * step0) + 2.0 if step0 > 0.0 else math.inf
            if reach < k:
                k = int(reach)
        if k < _MIN_JUMP:
            return False
        if self._noise_i + k > self._noise.size:
            self._refill(k)
        factors = self._noise[self._noise_i:self._noise_i + k]
        ctx = self._arange[:k] * n + context
        dts = np.asarray(self._step_time(float(n), ctx), dtype=np.float64) * factors
        # Sequential sums from t: the same float operations as one step at a time.
        times = np.cumsum(np.concatenate(([t], dts)))
        ends = times[1:]
        if arrival < math.inf:  # no step may start at or after the next arrival
            k = min(k, 1 + int(np.searchsorted(ends, arrival, side="left")))
        self._plan_ends = ends[:k]
        self._plan_gaps = np.diff(times[:k + 1])
        self._plan_t0 = t
        self._plan_ends_l = self._plan_ends.tolist()
        self._plan_off = 0
        return True

    def _apply_plan(self, m: int, out: list[Finished]) -> None:
        """Apply the first m planned steps (all of them ended); keep the rest planned."""
        ends = self._plan_ends
        assert ends is not None and 0 < m <= ends.size
        t0 = self._plan_t0
        self._commit_jump(t0, len(self._running), m, self._plan_gaps[:m], ends[:m], out)
        if m == ends.size:
            self._plan_ends = None
        else:
            self._plan_ends = ends[m:]
            self._plan_gaps = self._plan_gaps[m:]
            self._plan_t0 = float(ends[m - 1])
            self._plan_off += m

    def _head_admissible(self, n_running: int) -> bool:
        """Could the next step admit the waiting queue's head (before the decodes take blocks)?"""
        if n_running >= self.max_num_seqs or n_running >= self.max_num_batched_tokens:
            return False
        req = self._waiting[0]
        c0 = 0 if req.admitted else (req.prompt - 1 if self.role == "decode" else req.cached)
        n = min(req.prompt + req.gen - c0, self.max_num_batched_tokens - n_running)
        return -(-(c0 + n) // BLOCK_SIZE) <= self._free

    def _commit_jump(self, t: float, n: int, m: int, gaps: npt.NDArray[np.float64],
                     ends: npt.NDArray[np.float64], out: list[Finished]) -> None:
        """Apply m decode steps of the whole batch; ``gaps`` are their m durations."""
        self._noise_i += m
        end = float(ends[m - 1])
        first_end = float(ends[0])
        first_dt = float(gaps[0])
        rest_max = float(gaps[1:].max()) if m > 1 else 0.0
        used_before = self.total_blocks - self._free
        free = self._free
        same_gap = 0
        done: list[_Req] = []
        itl_hist = self._stats.inter_token_latency
        solo = self._solo
        for req in solo:
            c = req.computed + m
            req.computed = c
            req.gen += m
            blocks = -(-c // BLOCK_SIZE)
            free -= blocks - req.blocks
            req.blocks = blocks
            gap = first_end - req.last_s
            if req.last_s == t:
                same_gap += 1
            else:
                itl_hist.observe(gap)
            worst = gap if gap > rest_max else rest_max
            if worst > req.itl_max:
                req.itl_max = worst
            req.itl_sum += end - req.last_s
            req.itl_n += m
            req.last_s = end
            if req.gen >= req.out:
                req.done = True
                done.append(req)
        lock = self._lock
        if lock.n:
            # Every member sampled at t: the loop above with last_s == t, for all of them at once.
            free -= lock.crossings(m)
            same_gap += lock.n
            gap = first_end - t
            lock.step(end - t, gap if gap > rest_max else rest_max, m, end)
            done = _by_seq(done, lock.finished())
        self._free = free
        if same_gap:
            itl_hist.observe(first_dt, same_gap)
        if m > 1:
            itl_hist.observe_many(gaps[1:], n)
        stats = self._stats
        stats.generation_tokens += n * m
        stats.iteration_tokens.observe(n, m)
        span = end - t
        self._busy_s += span
        self._running_seconds += n * span
        # KV usage grows about linearly across the jump.
        self._kv_seconds += (used_before + self.total_blocks - free) / 2.0 / self.total_blocks * span
        self._steps += m
        self._jumped_steps += m
        self._clock = end
        self._join_lockstep(solo)
        if done:
            self._finish_done(end, done, out)

    # --- leaving ------------------------------------------------------------------------------
    def _finish_done(self, end: float, done: list[_Req], out: list[Finished]) -> None:
        """Release the requests that completed at ``end`` (``done``, in running order)."""
        self._running = [req for req in self._running if not req.done]
        self._solo = [req for req in self._solo if not req.done]
        for req in done:
            self._free += req.blocks
            req.blocks = 0
        if self._doomed:  # an aborted request's client is gone: its blocks are free, nothing to report
            done = [req for req in done if not req.aborted]
            if not done:
                return
        self._unrecorded += done
        handoff = self.role == "prefill"
        reason = "length" if handoff else "stop"
        self._stats.success[reason] = self._stats.success.get(reason, 0.0) + len(done)
        live = self._live
        for req in done:
            live.pop(req.rid, None)
            out.append(Finished(
                request_id=req.rid,
                arrival_s=req.arrival,
                scheduled_s=req.sched_s,
                first_token_s=req.first_s,
                finish_s=end,
                ttft_s=req.first_s - req.arrival,
                queue_s=req.sched_s - req.arrival,
                e2e_s=end - req.arrival,
                prompt_tokens=req.prompt,
                output_tokens=req.gen,
                cached_tokens=req.cached,
                itl_mean_s=req.itl_sum / req.itl_n if req.itl_n else 0.0,
                itl_max_s=req.itl_max,
                itl_count=req.itl_n,
                preempted=req.preempted,
                handoff=handoff,
                kv_transfer_s=float(self.model.kv_transfer_s(float(req.prompt))) if handoff else 0.0,
                finish_reason=reason,
            ))

    def _record_finished(self) -> None:
        """The per-request histograms of the requests finished since the last read, observed in
        finishing order (deferred from `_finish_done`: one numpy pass per histogram when they are
        read, at a scrape, instead of fourteen observations per request; the same counts and sums)."""
        reqs = self._unrecorded
        if not reqs:
            return
        self._unrecorded = []
        f64 = np.float64
        end = np.array([r.last_s for r in reqs], dtype=f64)  # each sampled its last token at its finish
        arrival = np.array([r.arrival for r in reqs], dtype=f64)
        sched = np.array([r.sched_s for r in reqs], dtype=f64)
        first = np.array([r.first_s for r in reqs], dtype=f64)
        prompt = np.array([r.prompt for r in reqs], dtype=f64)
        gen = np.array([r.gen for r in reqs], dtype=f64)
        handoff = self.role == "prefill"
        external = prompt - 1.0 if self.role == "decode" else np.array([r.cached for r in reqs], dtype=f64)
        s = self._stats
        s.e2e_request_latency.observe_each(end - arrival)
        s.request_queue_time.observe_each(sched - arrival)
        s.request_prefill_time.observe_each(first - sched)
        s.request_decode_time.observe_each(end - first)
        s.request_inference_time.observe_each(end - sched)
        s.request_prompt_tokens.observe_each(prompt)
        s.request_generation_tokens.observe_each(gen)
        s.request_max_num_generation_tokens.observe_each(gen)  # n = 1: its only sequence
        s.request_params_n.observe_each(np.ones(len(reqs)))
        s.request_params_max_tokens.observe_each(
            np.ones(len(reqs)) if handoff else np.array([r.out for r in reqs], dtype=f64))
        # vLLM 0.32: decode time over the tokens after the first; preemptions; prefill KV computed
        per_token = np.where(gen > 1.0, (end - first) / np.maximum(gen - 1.0, 1.0), 0.0)
        s.request_time_per_output_token.observe_each(per_token)
        s.request_num_preemptions.observe_each(np.array([r.preempted for r in reqs], dtype=f64))
        s.request_prefill_kv_computed_tokens.observe_each(np.maximum(prompt - external, 0.0))

    # ------------------------------------------------------------------------------------------
    # Metrics
    # ------------------------------------------------------------------------------------------
    def metrics_text(self, model_name: str, engine: int | str = 0, *, generation: str = "0.32",
                     legacy_names: bool = False, deprecated_aliases: bool = False,
                     created_s: float | None = None) -> str:
        """This replica's ``/metrics`` text now, as vLLM ``generation`` writes it (see
        ``goodput.engine.vllm_metrics``)."""
        gpu_util = self.model.eff.gpu_memory_utilization
        dtype = _VLLM_CACHE_DTYPE.get(self.model.kv_cache_dtype, self.model.kv_cache_dtype)
        if generation == "0.32" and not legacy_names:
            cache = cache_config_0_32(block_size=BLOCK_SIZE, gpu_memory_utilization=gpu_util, cache_dtype=dtype,
                                      num_gpu_blocks=self.total_blocks, max_model_len=self.max_model_len)
        else:
            cache = default_cache_config(block_size=BLOCK_SIZE, gpu_memory_utilization=gpu_util, cache_dtype=dtype,
                                         num_gpu_blocks=self.total_blocks)
        return exposition(self.stats, running=self.running, waiting=self.waiting, kv_usage=self.kv_usage,
                          model_name=model_name, max_model_len=self.max_model_len, engine=engine,
                          cache_config=cache, generation=generation, legacy_names=legacy_names,
                          deprecated_aliases=deprecated_aliases, kv_consumer=self.role == "decode",
                          created_s=created_s)

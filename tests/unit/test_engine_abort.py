"""Aborts (clients that give up) in the engine's fast paths: the lockstep cohort, planned decode
runs and ``quiet_until``.

An aborted request leaves the running batch at the next step boundary and frees its KV blocks
then; a member of the lockstep cohort is settled and leaves the cohort's aggregates (count,
context, phases, finishes). Nothing of it may change a result: the cohort, stepping one request at
a time, and a caller that skips ``advance`` until ``quiet_until`` all give the same bits, aborts
included; an aborted request is never reported or counted as a success; every block is free
again once the replica is idle."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_engine import _everything, big, chunky, engine, small, trace

import goodput.engine.replica as engine_module
from goodput.engine.replica import EngineReplica, Finished

Request = tuple[int, float, int, int]


def replay_with_deadlines(e: EngineReplica, reqs: list[Request], until: float, slice_s: float, timeout_s: float,
                          skip_quiet: bool = False) -> tuple[list[Finished], list[Any]]:
    """As a fleet drives a replica: submit what arrives, advance to each slice's end, then abort
    every request not reported within ``timeout_s`` of its arrival. ``skip_quiet``: as `Fleet.advance`,
    only set ``now`` while the engine says nothing happens before ``quiet_until``. Returns the
    finished requests and the gauges read along the way."""
    done: list[Finished] = []
    reported: set[int] = set()
    refused: set[int] = set()
    by_deadline = sorted(range(len(reqs)), key=lambda j: reqs[j][1] + timeout_s)
    submitted = p = 0
    gauges: list[Any] = []
    for k, t in enumerate(np.arange(slice_s, until + slice_s, slice_s)):
        t = min(float(t), until)
        while submitted < len(reqs) and reqs[submitted][1] < t:
            if not e.submit(*reqs[submitted]):
                refused.add(submitted)
            submitted += 1
        if skip_quiet and t < e.quiet_until:
            e.now = t
        else:
            got = e.advance(t)
            done += got
            reported.update(int(f.request_id) for f in got)
        while p < len(by_deadline) and reqs[by_deadline[p]][1] + timeout_s <= t:
            j = by_deadline[p]
            p += 1
            if j < submitted and j not in reported and j not in refused:
                aborted = e.abort(reqs[j][0])
                assert aborted or j in {int(f.request_id) for f in e._early}  # else: finished, not yet reported
        gauges.append((e.running, e.waiting))
        if k % 37 == 0:
            gauges.append(e.kv_usage)  # a counter read mid-plan applies the passed steps early
    return done, gauges


CASES = [
    # (replica, role, req/s, slice, client timeout)
    (big, "aggregated", 3.0, 0.037, 8.0),  # chunked prefills beside a large decode batch
    (big, "aggregated", 6.0, 0.05, 5.0),  # overloaded: most clients give up, many while decoding
    (lambda: small(64), "aggregated", 1.5, 0.5, 20.0),  # a KV cache that fills: preemptions
    (lambda: chunky(512), "aggregated", 3.0, 0.037, 6.0),  # prompt chunks beside the cohort
    (big, "decode", 8.0, 0.05, 3.0),  # a decode pool: admissions cut every planned run
    (big, "prefill", 6.0, 0.02, 0.5),
]


@pytest.mark.parametrize(("model", "role", "rate", "slice_s", "timeout_s"), CASES)
def test_aborts_give_the_same_bits_in_the_cohort_one_by_one_and_skipping_quiet_calls(
        monkeypatch: pytest.MonkeyPatch, model: Any, role: str, rate: float, slice_s: float, timeout_s: float) -> None:
    reqs = trace(rate, 120.0, seed=11)
    left_cohort = []
    leave = engine_module._Lockstep.leave

    def counting_leave(self: Any, members: list[Any]) -> None:
        left_cohort.extend(members)
        leave(self, members)

    monkeypatch.setattr(engine_module._Lockstep, "leave", counting_leave)
    fast = engine(model(), seed=3, cv=0.05, role=role)
    done, gauges = replay_with_deadlines(fast, reqs, 900.0, slice_s, timeout_s)
    a = (_everything(fast, done), gauges, fast.aborted)
    members_aborted = len(left_cohort)

    skipper = engine(model(), seed=3, cv=0.05, role=role)
    done_s, gauges_s = replay_with_deadlines(skipper, reqs, 900.0, slice_s, timeout_s, skip_quiet=True)
    assert (_everything(skipper, done_s), gauges_s, skipper.aborted) == a

    monkeypatch.setattr(engine_module, "_LOCKSTEP", False)
    slow = engine(model(), seed=3, cv=0.05, role=role)
    done_o, gauges_o = replay_with_deadlines(slow, reqs, 900.0, slice_s, timeout_s)
    assert (_everything(slow, done_o), gauges_o, slow.aborted) == a

    # Invariants: every block free again, an aborted request never reported nor counted.
    assert fast.idle and fast.kv_usage == 0.0 and fast.running == 0
    assert fast.aborted > 0
    if role != "prefill":
        assert members_aborted > 0  # some left the lockstep cohort
    ids = [int(f.request_id) for f in done]
    assert len(ids) == len(set(ids))
    assert len(ids) + fast.aborted + fast.rejected == len(reqs)
    assert sum(fast.stats.success.values()) == len(ids)
    assert fast.stats.e2e_request_latency.count == len(ids)
    assert not fast._live  # nothing is left to abort


def test_aborting_a_cohort_member_between_steps_is_as_if_it_finished_there() -> None:
    """Aborted at a step boundary (nothing in flight), a decoding member leaves the batch at once,
    with its blocks: for every other request that is what its finishing at that step would do. So
    a replay where it asks for exactly the tokens it had gives the others the same timeline."""
    reqs = trace(3.0, 60.0, seed=5)
    times = [float(t) for t in np.arange(0.05, 20.0, 0.05)]

    def driver(e: EngineReplica, reqs: list[Request]) -> Callable[[list[float]], list[Finished]]:
        """Advance ``e`` to each time, submitting what arrives before it."""
        submitted = 0

        def to(times: list[float]) -> list[Finished]:
            nonlocal submitted
            done: list[Finished] = []
            for t in times:
                while submitted < len(reqs) and reqs[submitted][1] < t:
                    e.submit(*reqs[submitted])
                    submitted += 1
                done += e.advance(t)
            return done

        return to

    a = engine(big(), seed=3, cv=0.05)
    drive_a = driver(a, reqs)
    done_a = drive_a(times)
    boundary = a.quiet_until  # the end of the step (or planned run) in flight at 20 s
    done_a += drive_a([boundary])
    assert a._inflight is None and a._plan_ends is None  # between steps
    member = next(r for r in a._running if r.lock >= 0 and r.out - r.gen > 50)
    x = int(member.rid)
    free_before = a._free
    assert a.abort(x)
    assert member.lock < 0 and a._lock.n == sum(r.lock >= 0 for r in a._running)
    assert a._free == free_before + -(-member.computed // engine_module.BLOCK_SIZE)  # freed at once
    assert member not in a._running and a.quiet_until == -math.inf
    tokens = member.gen
    assert 1 < tokens < member.out
    later = [float(t) for t in np.arange(boundary + 0.05, 900.0, 0.05)]
    done_a += drive_a(later)

    cut = [(rid, arr, p, tokens if rid == x else o) for rid, arr, p, o in reqs]
    b = engine(big(), seed=3, cv=0.05)
    done_b = driver(b, cut)([*times, boundary, *later])
    finished_x = [f for f in done_b if f.request_id == x]
    assert len(finished_x) == 1 and finished_x[0].finish_s == boundary  # it finished at that boundary
    others_a = sorted(done_a, key=lambda f: f.request_id)
    others_b = sorted((f for f in done_b if f.request_id != x), key=lambda f: f.request_id)
    assert x not in {f.request_id for f in done_a}
    assert len(others_a) == len(others_b) == len(reqs) - 1
    for fa, fb in zip(others_a, others_b, strict=True):
        # The timeline is exact; ITL sums may take another planned-run cut (the same to rounding).
        assert (fa.request_id, fa.scheduled_s, fa.first_token_s, fa.finish_s, fa.output_tokens, fa.itl_count,
                fa.preempted) == (fb.request_id, fb.scheduled_s, fb.first_token_s, fb.finish_s, fb.output_tokens,
                                  fb.itl_count, fb.preempted)
        assert fa.itl_mean_s == pytest.approx(fb.itl_mean_s, rel=1e-12)
        assert fa.itl_max_s == pytest.approx(fb.itl_max_s, rel=1e-12)
    assert a.steps == b.steps and a.busy_s == pytest.approx(b.busy_s, rel=1e-12)
    assert a.idle and b.idle and a.kv_usage == b.kv_usage == 0.0
    assert a.stats.success["stop"] == len(reqs) - 1 and b.stats.success["stop"] == len(reqs)


def test_aborts_of_waiting_and_pending_requests() -> None:
    """One sequence slot: A runs, B and C wait for it, D has not arrived. B and D are aborted:
    they leave their queues at once, hold nothing, and A and C are served as if B and D had never
    been sent."""
    def run(abort: bool) -> tuple[EngineReplica, list[Finished]]:
        e = engine(small(max_num_seqs=1), seed=2, cv=0.05)
        e.submit("A", 0.0, 300, 400)
        if abort:
            e.submit("B", 0.0, 300, 50)
        e.submit("C", 0.0, 200, 30)
        if abort:
            e.submit("D", 30.0, 100, 10)
        done = e.advance(1.0)
        if abort:
            assert e.running == 1 and e.waiting == 2
            assert e.abort("B")  # waiting
            assert e.waiting == 1 and e.quiet_until == -math.inf
            done += e.advance(2.0)
            assert e.abort("D")  # submitted, not yet arrived
            assert not e.abort("D") and not e.abort("never-submitted")
            assert e.aborted == 2
        done += e.advance(200.0)
        return e, done

    plain, expected = run(False)
    e, done = run(True)
    assert [f.request_id for f in done] == ["A", "C"]
    for fa, fb in zip(done, expected, strict=True):
        assert (fa.scheduled_s, fa.first_token_s, fa.finish_s, fa.itl_count) == \
            (fb.scheduled_s, fb.first_token_s, fb.finish_s, fb.itl_count)
        assert fa.itl_mean_s == pytest.approx(fb.itl_mean_s, rel=1e-12)
    assert e.steps == plain.steps and e.idle and e.kv_usage == 0.0
    assert sum(e.stats.success.values()) == 2 and e.stats.request_queue_time.count == 2
    assert not e.abort("A")  # finished and reported: nothing to abort


def test_an_abort_during_a_planned_run_cuts_it_after_the_step_in_flight() -> None:
    """Planned decode steps that start after the abort are cut; the step in flight completes with
    the aborted request, whose blocks are freed when it ends."""
    e = engine(big(), seed=1, cv=0.05)
    for k in range(6):
        e.submit(k, 0.0, 500, 600)
    e.advance(2.0)
    assert e._plan_ends is not None and e._lock.n + len(e._solo) == 6
    planned_end = e.quiet_until
    assert e.abort(3)
    assert e.quiet_until == -math.inf and e.running == 6  # still in the batch until the step ends
    e.advance(2.0)
    assert e.quiet_until < planned_end  # the plan now ends with the step in flight at 2 s
    step_end = e.quiet_until
    e.advance(step_end)
    assert e.running == 5  # left at that step boundary
    done = e.advance(300.0)
    assert sorted(int(f.request_id) for f in done) == [0, 1, 2, 4, 5]
    assert all(f.output_tokens == 600 for f in done)
    assert e.idle and e.kv_usage == 0.0 and e._lock.n == 0 and not e._lock.finishes

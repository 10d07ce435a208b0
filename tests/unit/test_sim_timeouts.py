"""Clients that give up: a request not finished within ``client_timeout_s`` of its arrival is
abandoned, wherever it is (router queue, engine queue, running batch, on its way to the decode
pool); it frees what it held and is a miss. ``client_timeout_s = 0``: clients never give up, the
figures are those of the fleet without the mechanism.

Known answers from the arithmetic of small fleets: a replica that is not ready before every
deadline passes serves nothing; a slot freed by an abort admits the next request at the next step;
a replica that sheds its backlog serves a late request at once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_sim_replay import BASE, _bursty_trace, _cli, _fingerprint, _trace_file, even_trace, setup_for

from goodput.engine.replica import EngineReplica
from goodput.model.architecture import get_model
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.sim.fleet import ABANDONED, DONE, Fleet
from goodput.sim.simulate import SimConfig, build_spec, make_policy, prepare, run_policy, simulate, summarize
from goodput.sim.trace import Trace


def _engine(max_num_seqs: int = 256) -> EngineReplica:
    model = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1,
                         max_num_seqs=max_num_seqs, max_num_batched_tokens=8192)
    return EngineReplica(model, rng=np.random.default_rng(0), noise_cv=0.0)


# ------------------------------------------------------------------------------------------
# the engine: abort
# ------------------------------------------------------------------------------------------
def test_an_aborted_running_request_frees_its_slot_for_the_next() -> None:
    first_token: dict[bool, float] = {}
    for abort in (False, True):
        engine = _engine(max_num_seqs=1)  # one slot: B waits for A
        engine.submit("A", 0.0, 100, 2000)
        engine.submit("B", 0.0, 100, 10)
        done = engine.advance(1.0)
        if abort:
            assert engine.abort("A")
        done += engine.advance(100.0)
        assert engine.idle and engine.kv_usage == 0.0  # every block is free again
        by_id = {f.request_id: f for f in done}
        assert set(by_id) == ({"B"} if abort else {"A", "B"})  # an aborted request is never reported
        first_token[abort] = by_id["B"].first_token_s
    # A's 2000 decode steps (several ms each) were B's wait; aborted at 1 s, B starts a step later.
    assert first_token[False] > 5.0
    assert 1.0 < first_token[True] < 1.1


def test_an_abort_inside_a_planned_decode_run_shrinks_the_batch() -> None:
    engine = _engine()
    for k in range(4):
        engine.submit(k, 0.0, 200, 400)
    engine.advance(1.0)
    assert engine.jumped_steps > 0 and engine.running == 4  # a planned run of decode steps is under way
    used_before = engine.kv_usage
    assert engine.abort(2)
    engine.advance(1.05)  # past the step in flight at the abort: the batch is 3
    assert engine.running == 3 and engine.kv_usage < used_before
    done = engine.advance(100.0)
    assert sorted(f.request_id for f in done) == [0, 1, 3]
    assert all(f.output_tokens == 400 for f in done)
    assert engine.kv_usage == 0.0 and engine.aborted == 1


def test_abort_of_a_waiting_or_unknown_request() -> None:
    engine = _engine()
    engine.submit("late", 5.0, 100, 10)  # not arrived yet at t = 1
    engine.advance(1.0)
    assert engine.abort("late")
    assert engine.advance(10.0) == [] and engine.steps == 0 and engine.idle
    assert not engine.abort("late") and not engine.abort("never-submitted")


# ------------------------------------------------------------------------------------------
# the fleet: wherever the request is, it is abandoned at its deadline
# ------------------------------------------------------------------------------------------
def _drive(fleet: Fleet, until_s: float, i: int = 0) -> int:
    """The event loop of `run_policy` without a policy: arrivals, readiness, clients' deadlines,
    from arrival ``i`` on; returns the next arrival not yet submitted."""
    times = fleet.trace.times
    while True:
        t_arrival = float(times[i]) if i < len(times) else math.inf
        t = min(t_arrival, fleet.next_ready_s(), fleet.next_deadline_s(), until_s)
        fleet.advance(t)
        if i < len(times) and times[i] <= t:
            j = int(np.searchsorted(times, t, side="right"))
            fleet.submit_arrivals(i, j)
            i = j
        if t >= until_s:
            return i


def _fleet(trace: Trace, mode: str, timeout_s: float) -> Fleet:
    """A fleet of the engines the operator picks for 5 req/s (TP1 A100s), whatever ``trace`` is."""
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode=mode, cold_start_s=60.0)
    setup = prepare(spec, even_trace([(60.0, 5.0)]))
    assert all(pool.tp == 1 for pool in setup.pools.values())
    return Fleet(setup.pools, trace, client_timeout_s=timeout_s)


@pytest.mark.parametrize(("where", "mode", "starting"), [
    # The entry pool is still starting (ready at 100 s): requests wait in the router.
    ("router queue", "aggregated", {"aggregated": 100.0}),
    # Prefill serves; the decode pool starts at 100 s: the KV hand-offs wait in the router for it.
    ("on the way to decode", "disaggregated", {"prefill": 0.0, "decode": 100.0}),
])
def test_requests_waiting_for_a_replica_are_abandoned_at_their_deadline(
        where: str, mode: str, starting: dict[str, float]) -> None:
    trace = even_trace([(60.0, 1.0)])  # arrivals at 0..59 s: every deadline (+30 s) passes before 100 s
    fleet = _fleet(trace, mode, timeout_s=30.0)
    for role, cold_start_s in starting.items():
        fleet.set_replicas(role, 1, cold_start_s)
    submitted = _drive(fleet, 95.0)  # the last deadline: 59 + 30 s
    assert fleet.abandoned == len(trace), where
    assert np.all(fleet.status == ABANDONED)
    _drive(fleet, 400.0, submitted)  # the replica that comes up finds nothing to do
    assert not fleet.busy() and all(r.engine.steps == 0 for r in fleet.replicas if r.role != "prefill")
    if mode == "disaggregated":
        assert np.all(np.isfinite(fleet.handoff_s))  # they were prefilled, then waited for decode


def test_a_replica_that_sheds_its_backlog_serves_a_late_request_at_once() -> None:
    # 40 s at 60 req/s on one replica that finishes about 12 req/s flat out: a backlog of
    # thousands, minutes of work; one more request at 200 s.
    trace = even_trace([(40.0, 60.0)], tail_request_at=200.0)
    late = len(trace) - 1
    ttft: dict[float, float] = {}
    for timeout_s in (0.0, 10.0):
        fleet = _fleet(trace, "aggregated", timeout_s)
        fleet.set_replicas("aggregated", 1, 0.0)
        _drive(fleet, 3000.0)
        ttft[timeout_s] = float(fleet.ttft_s[late])
        if timeout_s:
            assert fleet.abandoned > 0.5 * len(trace)
            engine_aborts = sum(r.engine.aborted for r in fleet.replicas)
            assert engine_aborts == fleet.abandoned  # every one was in the engine (queued or running)
            done = fleet.status == DONE
            # Nothing counts as served after its client left (the router's 20 ms quantum aside).
            assert np.all(fleet.finish_s[done] - trace.times[done] <= timeout_s)
        else:
            assert fleet.abandoned == 0 and np.all(fleet.status == DONE)
    assert ttft[10.0] < 1.0  # the abandoned backlog is gone: the late request meets its SLO
    assert ttft[0.0] > 10.0  # clients that never give up: it waits behind the whole backlog


# ------------------------------------------------------------------------------------------
# results: misses, counted apart; 0 is the old behaviour
# ------------------------------------------------------------------------------------------
def test_abandoned_requests_are_misses_and_counted_apart() -> None:
    setup = setup_for(even_trace([(120.0, 12.0)]))
    overloaded = prepare(setup.spec, setup.trace, SimConfig(client_timeout_s=20.0))
    # One replica whatever the load: the policy that never scales.
    policy = make_policy("static-peak", overloaded)
    policy.setup.peak_replicas.update({"aggregated": 1})
    run = run_policy(overloaded, policy)
    figures = summarize(run, overloaded, None)
    n = len(overloaded.trace)
    assert run.abandoned > 0
    assert figures["attainment"] <= (n - run.abandoned) / n
    assert run.unfinished == 0  # every client left or was served: nothing is left hanging


@pytest.mark.parametrize("policy", ["static-peak", "keda-queue", "goodput"])
def test_no_timeout_reproduces_clients_that_never_give_up(policy: str) -> None:
    # A healthy fleet: nobody waits anywhere near 600 s, so the default changes nothing, and a
    # timeout too long to fire is the same run as no timeout at all (0).
    trace = even_trace([(120.0, 3.0), (120.0, 9.0)])
    figures = []
    for timeout_s in (0.0, 600.0, 1e9):
        setup = prepare(setup_for(trace).spec, trace, SimConfig(client_timeout_s=timeout_s))
        run = run_policy(setup, make_policy(policy, setup))
        assert run.abandoned == 0
        figures.append((summarize(run, setup, None), run.timeline, run.ttft_s.tolist(), run.itl_s.tolist()))
    assert figures[0] == figures[1] == figures[2]


def test_cli_flag_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
                 "--client-timeout-s", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["client_timeout_s"] == 0.0
    assert out["config"]["details"]["static-peak"]["abandoned"] == 0
    assert _cli(["simulate", "--trace", str(_trace_file(tmp_path)), *BASE, "--policy", "static-peak",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["client_timeout_s"] == 600.0
    with pytest.raises(SystemExit) as info:  # argparse: usage and the reason, exit 2
        _cli(["simulate", "--trace", "x", *BASE, "--client-timeout-s", "-1"])
    assert info.value.code == 2


# ------------------------------------------------------------------------------------------
# aborts in the engine's fast paths (lockstep cohort, planned runs, quiet replicas skipped)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["aggregated", "disaggregated"])
def test_clients_that_give_up_replay_to_the_same_bits_and_free_every_block(mode: str) -> None:
    """Clients that give up within seconds of a burst (aborts while requests wait, prefill, go
    to the decode pool and decode in the lockstep cohort): two replays give the same bits, and
    when the fleet has drained every replica is idle with all its KV blocks free."""
    spec = build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode=mode, cold_start_s=60.0)
    trace = _bursty_trace()
    config = SimConfig(client_timeout_s=4.0)
    names = ["goodput", "hpa", "static-peak"]
    first = simulate(prepare(spec, trace, config), names)
    again = simulate(prepare(spec, trace, config), names)
    assert _fingerprint(first) == _fingerprint(again)
    assert first.report()["policies"] == again.report()["policies"]
    assert sum(run.abandoned for run in first.runs.values()) > 0
    for run in first.runs.values():
        assert run.unfinished == 0

    setup = prepare(spec, trace, config)
    fleets: list[Fleet] = []

    def keep(fleet: Fleet) -> bool:  # run_policy asks at every scrape: a look at its fleet
        fleets.append(fleet)
        return False

    run = run_policy(setup, make_policy("hpa", setup), give_up=keep)
    fleet = fleets[-1]
    assert run.abandoned > 0 and sum(r.engine.aborted for r in fleet.replicas) > 0
    assert not fleet.busy()
    for rep in fleet.replicas:
        engine = rep.engine
        assert engine.idle and engine.running == 0 and engine.kv_usage == 0.0, (rep.role, rep.index)
    assert run.ttft_s.tobytes() == first.runs["hpa"].ttft_s.tobytes()

"""The vLLM replica emulator (goodput.engine.replica): scheduler semantics, timing against the
capacity model, determinism, and the planned decode runs being exact."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import goodput.engine.replica as engine_module
from goodput.engine.replica import BLOCK_SIZE, EngineReplica, Finished
from goodput.model.architecture import get_model
from goodput.model.goodput import evaluate_aggregated
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel
from goodput.model.workload import SLO, LengthDistribution, Workload

ROOT = Path(__file__).resolve().parents[2]


def big() -> ReplicaModel:
    """Llama-3.1-70B FP8 on two H100s: 470k KV tokens, ~18 ms decode, ~100 ms for 1200 tokens."""
    return ReplicaModel(get_model("llama-3.1-70b"), get_accelerator("h100-sxm-80gb"), "fp8", 2, "fp8")


def small(max_num_seqs: int = 256) -> ReplicaModel:
    """Llama-3.1-8B on one L4: about 36k KV tokens, so a few long requests fill the cache."""
    return ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("l4-24gb"), "bf16", 1, max_num_seqs=max_num_seqs)


def chunky(max_num_batched_tokens: int) -> ReplicaModel:
    """The big replica with a small token budget: most prompts take several chunks."""
    return ReplicaModel(get_model("llama-3.1-70b"), get_accelerator("h100-sxm-80gb"), "fp8", 2, "fp8",
                        max_num_seqs=min(256, max_num_batched_tokens),
                        max_num_batched_tokens=max_num_batched_tokens)


def engine(model: ReplicaModel, seed: int = 0, cv: float = 0.0, **kw: Any) -> EngineReplica:
    return EngineReplica(model, rng=np.random.default_rng(seed), noise_cv=cv, **kw)


WORKLOAD = Workload(1.0, LengthDistribution.lognormal(1200, 4100), LengthDistribution.lognormal(210, 600))


def trace(rate: float, horizon: float, seed: int, w: Workload = WORKLOAD) -> list[tuple[int, float, int, int]]:
    """Poisson arrivals; lengths drawn from the workload's own representative points."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate * horizon))
    arrivals = np.sort(rng.uniform(0.0, horizon, n))
    pw = w.input_len.weights / w.input_len.weights.sum()
    ow = w.output_len.weights / w.output_len.weights.sum()
    prompts = np.maximum(np.round(rng.choice(w.input_len.values, n, p=pw)), 1).astype(int)
    outputs = np.maximum(np.round(rng.choice(w.output_len.values, n, p=ow)), 1).astype(int)
    return [(i, float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(n)]


def replay(e: EngineReplica, reqs: list[tuple[int, float, int, int]], until: float,
           slice_s: float | None = None) -> list[Finished]:
    if slice_s is None:
        for r in reqs:
            e.submit(*r)
        return e.advance(until)
    done: list[Finished] = []
    i = 0
    for t in np.arange(slice_s, until + slice_s, slice_s):
        t = min(float(t), until)
        while i < len(reqs) and reqs[i][1] < t:
            e.submit(*reqs[i])
            i += 1
        done += e.advance(t)
    return done


def mean_itl(done: list[Finished]) -> float:
    return sum(f.itl_mean_s * f.itl_count for f in done) / sum(f.itl_count for f in done)


# ---------------------------------------------------------------------------------------------
# Light load: the model's own step times
# ---------------------------------------------------------------------------------------------
def test_single_request_ttft_is_prefill_and_itl_is_decode_step() -> None:
    r = big()
    e = engine(r)
    assert e.submit("a", 1.0, 1200, 100)
    [f] = e.advance(60.0)
    assert f.ttft_s == pytest.approx(float(r.prefill_s(1.0, 1200.0)), rel=1e-12)
    assert f.queue_s == 0.0 and f.scheduled_s == 1.0
    # Token g (g >= 2) is one decode step reading 1200 + g - 1 tokens of context.
    expected = np.mean([float(r.decode_step_s(1.0, 1200.0 + g - 1)) for g in range(2, 101)])
    assert f.itl_mean_s == pytest.approx(expected, rel=1e-9)
    assert f.itl_count == 99 and f.output_tokens == 100 and f.preempted == 0
    assert f.e2e_s == pytest.approx(f.ttft_s + 99 * f.itl_mean_s, rel=1e-9)
    assert e.idle and e.running == 0 and e.kv_usage == 0.0


def test_lightly_loaded_replica_with_noise() -> None:
    r = big()
    e = engine(r, seed=3, cv=0.05)
    for i in range(20):  # 20 s apart: never more than one request at a time
        e.submit(i, 20.0 * i, 1000, 200)
    done = e.advance(500.0)
    assert len(done) == 20
    ttft = np.array([f.ttft_s for f in done])
    assert np.median(ttft) == pytest.approx(float(r.prefill_s(1.0, 1000.0)), rel=0.05)
    assert mean_itl(done) == pytest.approx(float(r.decode_step_s(1.0, 1100.0)), rel=0.02)
    assert all(f.queue_s == 0.0 for f in done)


# ---------------------------------------------------------------------------------------------
# Overload, KV exhaustion, cold start, chunked prefill
# ---------------------------------------------------------------------------------------------
def test_overload_grows_queue_and_ttft_without_bound() -> None:
    r = big()
    e = engine(r, seed=1, cv=0.05)
    reqs = [(i, 0.05 * i, 1200, 100) for i in range(1200)]  # 20 req/s; prefill alone caps ~10/s
    for q in reqs:
        e.submit(*q)
    waiting = []
    done: list[Finished] = []
    for t in (15.0, 30.0, 45.0, 60.0):
        done += e.advance(t)
        waiting.append(e.waiting)
        assert 0.0 <= e.kv_usage <= 1.0
    assert waiting == sorted(waiting) and waiting[-1] > 200 and waiting[-1] > 3 * waiting[0]
    done += e.advance(1000.0)
    assert len(done) == 1200
    by_arrival = sorted(done, key=lambda f: f.arrival_s)
    early = np.median([f.ttft_s for f in by_arrival[:100]])
    late = np.median([f.ttft_s for f in by_arrival[-100:]])
    assert late > 10 * early and late > 30.0
    assert np.median([f.queue_s for f in by_arrival[-100:]]) > 30.0


def test_kv_exhaustion_preempts_the_most_recently_admitted() -> None:
    r = small()
    e = engine(r)
    total_tokens = e.kv_capacity_tokens
    assert 2 * total_tokens < 40 * 2000  # 40 requests of 2000 tokens cannot all fit
    for i in range(40):
        e.submit(i, 0.0, 500, 1500)
    done: list[Finished] = []
    peak = 0.0
    for t in np.arange(1.0, 3000.0, 1.0):
        done += e.advance(float(t))
        peak = max(peak, e.kv_usage)
        assert e.kv_usage <= 1.0
        if e.idle:
            break
    assert len(done) == 40 and all(f.output_tokens == 1500 for f in done)
    assert e.stats.preemptions > 0 and peak > 0.95
    assert sum(f.preempted for f in done) == e.stats.preemptions
    preempted = {f.request_id for f in done if f.preempted}
    kept = {f.request_id for f in done if not f.preempted}
    # All admitted in id order at t=0; the victims are always the latest admitted.
    assert min(preempted) > max(kept)  # type: ignore[operator]
    # Prompt tokens are counted once per request, recomputation notwithstanding.
    assert e.stats.prompt_tokens == 40 * 500
    # A preempted request's next token comes after its recompute: a large gap.
    victim = next(f for f in done if f.preempted)
    assert victim.itl_max_s > 10 * victim.itl_mean_s


def test_cold_start_serves_nothing_before_ready() -> None:
    r = big()
    e = engine(r, ready_at_s=30.0)
    e.submit(1, 0.0, 1000, 20)
    e.submit(2, 10.0, 1000, 20)
    assert e.advance(29.9) == []
    assert e.steps == 0 and e.running == 0 and e.waiting == 2 and e.kv_usage == 0.0
    done = e.advance(100.0)
    assert [f.request_id for f in done] == [1, 2]
    assert all(f.scheduled_s == 30.0 for f in done)
    assert done[0].queue_s == 30.0 and done[1].queue_s == 20.0
    assert done[0].ttft_s > 30.0


def test_chunked_prefill_takes_several_steps() -> None:
    r = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1,
                     max_num_batched_tokens=512)
    e = engine(r)
    e.submit("long", 0.0, 2000, 5)
    chunks = [(0, 512), (512, 512), (1024, 512), (1536, 464)]
    expected = sum(float(r.step_time_s(0.0, 0.0, n, n * c0 + n * (n + 1) / 2.0, 1.0 if c0 + n == 2000 else 0.0))
                   for c0, n in chunks)
    e.advance(expected * 0.999)
    assert e.stats.time_to_first_token.count == 0 and e.steps == 3
    [f] = e.advance(10.0)
    assert f.ttft_s == pytest.approx(expected, rel=1e-12)
    assert f.ttft_s > 3 * float(r.prefill_s(1.0, 512.0))


def test_chunks_share_steps_with_decodes() -> None:
    r = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1,
                     max_num_batched_tokens=512)
    e = engine(r)
    e.submit("decoder", 0.0, 100, 400)
    e.submit("long", 1.0, 5000, 5)  # ten 512-token chunks while "decoder" keeps decoding
    done = {f.request_id: f for f in e.advance(60.0)}
    dec = done["decoder"]
    # Every decode token during the long prefill waited for a step carrying a 511-token chunk.
    chunk_step = float(r.step_time_s(1.0, 200.0, 511.0, 511 * 2500.0, 0.0))
    assert dec.itl_max_s == pytest.approx(chunk_step, rel=0.1)
    assert dec.itl_max_s > 2 * float(r.decode_step_s(1.0, 200.0))
    assert done["long"].ttft_s > 9 * float(r.prefill_s(1.0, 500.0))


def test_prefix_cache_hits_are_not_computed() -> None:
    r = big()
    e = engine(r)
    e.submit(1, 0.0, 1200, 2, cached_tokens=1000)
    [f] = e.advance(10.0)
    assert f.ttft_s == pytest.approx(float(r.step_time_s(0.0, 0.0, 200.0, 200 * 1000 + 200 * 201 / 2.0, 1.0)),
                                     rel=1e-12)
    assert e.stats.prefix_cache_queries == 1200 and e.stats.prefix_cache_hits == 1000
    e.submit(2, 20.0, 64, 2, cached_tokens=64)  # a full hit still recomputes the last token
    e.advance(30.0)
    assert e.stats.prefix_cache_hits == 1063


def test_max_num_seqs_caps_the_batch() -> None:
    e = engine(small(max_num_seqs=4))
    for i in range(10):
        e.submit(i, 0.0, 100, 50)
    e.advance(0.5)
    assert e.running == 4 and e.waiting == 6
    done = e.advance(300.0)
    assert len(done) == 10
    assert [f.request_id for f in sorted(done, key=lambda f: f.scheduled_s)][:4] == [0, 1, 2, 3]


def test_refuses_requests_that_can_never_fit() -> None:
    e = engine(small(), max_model_len=4096)
    assert not e.submit(1, 0.0, 4000, 200)
    assert e.submit(2, 0.0, 3000, 1000)
    assert e.rejected == 1
    with pytest.raises(ValueError):
        e.submit(3, 0.0, 0, 10)


def test_time_only_goes_forward() -> None:
    e = engine(big())
    e.advance(10.0)
    with pytest.raises(ValueError):
        e.advance(5.0)


# ---------------------------------------------------------------------------------------------
# Disaggregated roles
# ---------------------------------------------------------------------------------------------
def test_prefill_role_hands_off_after_the_prompt() -> None:
    r = big()
    e = engine(r, role="prefill")
    e.submit("p", 0.0, 1200, 300)
    [f] = e.advance(10.0)
    assert f.handoff and f.output_tokens == 1 and f.finish_reason == "length"
    assert f.ttft_s == pytest.approx(float(r.prefill_s(1.0, 1200.0)), rel=1e-12)
    assert f.finish_s == f.first_token_s
    assert f.kv_transfer_s == pytest.approx(float(r.kv_transfer_s(1200.0)))
    assert e.kv_usage == 0.0 and e.stats.generation_tokens == 1


def test_decode_role_only_allocates_kv() -> None:
    r = big()
    e = engine(r, role="decode")
    e.submit("d", 0.0, 1200, 50, cached_tokens=500)
    e.advance(0.001)  # inside the first step: the prompt's KV is allocated, nothing computed
    assert e.running == 1 and e.kv_usage == pytest.approx(math.ceil(1200 / BLOCK_SIZE) / e.total_blocks)
    [f] = e.advance(10.0)
    assert f.ttft_s == pytest.approx(float(r.decode_step_s(1.0, 1200.0)), rel=1e-12)
    assert f.output_tokens == 50 and not f.handoff and f.cached_tokens == 0
    assert e.stats.prefix_cache_hits == 0


# ---------------------------------------------------------------------------------------------
# Against the analytic model
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.5, 2.0, 4.0])
def test_steady_state_agrees_with_the_analytic_model(rate: float) -> None:
    r = big()
    horizon = 1200.0
    e = engine(r, seed=7, cv=0.05)
    done = replay(e, trace(rate, horizon, seed=11), horizon)
    point = evaluate_aggregated(r, WORKLOAD, SLO(2000, 60, 50), np.array([rate]))[0]
    assert point.ok
    batch = e.running_seconds / horizon
    assert batch == pytest.approx(point.batch, rel=0.15)
    assert mean_itl(done) == pytest.approx(point.step_ms / 1e3, rel=0.15)
    assert len(done) / horizon == pytest.approx(rate, rel=0.15)


# ---------------------------------------------------------------------------------------------
# Determinism and exactness of the planned decode runs
# ---------------------------------------------------------------------------------------------
def test_deterministic_for_a_seed() -> None:
    reqs = trace(2.0, 300.0, seed=5)
    runs = []
    for seed in (9, 9, 10):
        e = engine(big(), seed=seed, cv=0.1)
        runs.append((replay(e, reqs, 400.0), e.metrics_text("m")))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


def test_timeline_does_not_depend_on_how_time_is_sliced() -> None:
    reqs = trace(3.0, 200.0, seed=2)
    whole = engine(big(), seed=4, cv=0.05)
    sliced = engine(big(), seed=4, cv=0.05)
    a = sorted(replay(whole, reqs, 300.0), key=lambda f: f.request_id)
    b = sorted(replay(sliced, reqs, 300.0, slice_s=0.037), key=lambda f: f.request_id)
    assert len(a) == len(b) == len(reqs)
    for x, y in zip(a, b, strict=True):
        assert (x.scheduled_s, x.first_token_s, x.finish_s, x.itl_count) == \
            (y.scheduled_s, y.first_token_s, y.finish_s, y.itl_count)
    assert whole.steps == sliced.steps


def test_planned_decode_runs_equal_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = trace(2.0, 200.0, seed=8)
    fast = engine(big(), seed=1, cv=0.05)
    a = sorted(replay(fast, reqs, 300.0), key=lambda f: f.request_id)
    monkeypatch.setattr(engine_module, "_MIN_JUMP", 10**9)  # every step through the general path
    slow = engine(big(), seed=1, cv=0.05)
    b = sorted(replay(slow, reqs, 300.0), key=lambda f: f.request_id)
    assert fast.jumped_steps > 0.9 * fast.steps and slow.jumped_steps == 0
    assert fast.steps == slow.steps
    for x, y in zip(a, b, strict=True):
        assert x.first_token_s == pytest.approx(y.first_token_s, rel=1e-12)
        assert x.finish_s == pytest.approx(y.finish_s, rel=1e-12)
        assert x.itl_max_s == pytest.approx(y.itl_max_s, rel=1e-9)
        assert x.itl_count == y.itl_count
    for name in ("inter_token_latency", "time_to_first_token", "e2e_request_latency", "iteration_tokens"):
        ha, hb = getattr(fast.stats, name), getattr(slow.stats, name)
        assert ha.counts == hb.counts and ha.sum == pytest.approx(hb.sum, rel=1e-9)


def _everything(e: EngineReplica, done: list[Finished]) -> tuple[Any, ...]:
    """Every output of a replay, bit for bit: the requests, the counters, the histograms."""
    hists = tuple((name, h.counts, h.sum, h.count) for name, h in vars(e.stats).items() if hasattr(h, "counts"))
    return (sorted(done, key=lambda f: f.request_id), e.steps, e.jumped_steps, e.busy_s, e.running_seconds,
            e.kv_seconds, e.stats.preemptions, e.stats.generation_tokens, e.stats.prompt_tokens, hists)


@pytest.mark.parametrize(("model", "role", "rate", "slice_s"), [
    (big, "aggregated", 3.0, None),  # chunked prefills beside a large decode batch
    (big, "aggregated", 3.0, 0.037),  # many short advance calls, as the fleet's router makes them
    (lambda: small(64), "aggregated", 1.5, 0.5),  # a KV cache that fills: preemptions and recompute
    (lambda: chunky(512), "aggregated", 3.0, 0.037),  # prompt chunks that take what the decodes leave
    (lambda: chunky(96), "aggregated", 1.0, 0.1),  # a budget the decodes alone can exhaust
    (big, "decode", 8.0, 0.05),  # a disaggregated decode pool: admissions cut every planned run
    (big, "prefill", 3.0, None),
])
def test_lockstep_cohort_is_bit_identical_to_one_by_one(monkeypatch: pytest.MonkeyPatch, model: Any, role: str,
                                                        rate: float, slice_s: float | None) -> None:
    """Decoding requests stepped as a cohort (applied lazily) give exactly what stepping each
    request in each step gives: the same floats, not merely close ones."""
    reqs = trace(rate, 200.0, seed=11)
    fast = engine(model(), seed=3, cv=0.05, role=role)
    a = _everything(fast, replay(fast, reqs, 600.0, slice_s=slice_s))
    monkeypatch.setattr(engine_module, "_LOCKSTEP", False)
    slow = engine(model(), seed=3, cv=0.05, role=role)
    b = _everything(slow, replay(slow, reqs, 600.0, slice_s=slice_s))
    assert a == b
    if role != "prefill":
        assert fast.jumped_steps > 0


def test_counters_agree_with_finished_requests() -> None:
    e = engine(big(), seed=2, cv=0.05)
    reqs = trace(2.0, 300.0, seed=3)
    done = replay(e, reqs, 600.0)
    s = e.stats
    assert e.idle and len(done) == len(reqs)
    assert s.success == {"stop": len(done)}
    assert s.prompt_tokens == sum(f.prompt_tokens for f in done)
    assert s.generation_tokens == sum(f.output_tokens for f in done)
    assert s.time_to_first_token.count == len(done)
    assert s.time_to_first_token.sum == pytest.approx(sum(f.ttft_s for f in done))
    assert s.inter_token_latency.count == sum(f.itl_count for f in done)
    assert s.inter_token_latency.sum == pytest.approx(sum(f.itl_mean_s * f.itl_count for f in done))
    assert s.e2e_request_latency.sum == pytest.approx(sum(f.e2e_s for f in done))
    assert s.request_queue_time.sum == pytest.approx(sum(f.queue_s for f in done))
    assert s.iteration_tokens.count == e.steps  # every step here samples at least one token
    assert e.busy_s <= 600.0 and e.kv_seconds <= e.busy_s


def test_engine_package_does_no_io() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from check_imports import FORBIDDEN_EXTERNAL, IO_PACKAGES
    finally:
        sys.path.pop(0)
    for path in sorted((ROOT / "operator" / "goodput" / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                assert not any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_EXTERNAL), (path, name)
                assert name.split(".")[:2] not in [["goodput", p] for p in IO_PACKAGES], (path, name)
                assert name not in ("time", "datetime", "os", "io", "pathlib", "random"), (path, name)

"""One planner entry point: the operator's reconcile and the simulator's goodput policy call the
same `goodput.planner.autoscale.autoscale` with the same inputs, and get the same decisions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

import goodput.planner.autoscale as autoscale_module
from goodput.planner.autoscale import PlannerInput
from goodput.planner.observation import Observation, PoolObservation
from goodput.render import reconcile as reconcile_module
from goodput.sim.policies import GoodputPolicy, sim_time
from goodput.sim.simulate import build_spec, prepare, run_policy
from goodput.sim.trace import parse_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def trace(seconds: float, rate: float) -> Any:
    return parse_trace([HEADER] + [f"{k / rate:.4f},1500,150" for k in range(int(seconds * rate))], name="even")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[PlannerInput, autoscale_module.AutoscaleResult]]:
    real = autoscale_module.autoscale
    seen: list[tuple[PlannerInput, autoscale_module.AutoscaleResult]] = []

    def spy(inputs: PlannerInput) -> autoscale_module.AutoscaleResult:
        result = real(inputs)
        seen.append((inputs, result))
        return result

    monkeypatch.setattr(autoscale_module, "autoscale", spy)
    return seen


def test_both_callers_go_through_the_planner_module(calls: list[Any]) -> None:
    # The reconcile and the policy look the function up on the module at call time (no private copy).
    assert "autoscale" not in vars(reconcile_module)
    setup = prepare(build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                               cold_start_s=60), trace(150.0, 5.0))
    run = run_policy(setup, GoodputPolicy(setup))
    # The fleet the operator creates (no metrics yet), then every 30 s: at 30, 60, 90 and 120 s of the 150 s trace.
    assert len(calls) == 1 + run.decisions == 5
    assert calls[0][0].observation is None and calls[0][0].current == {}
    calls = calls[1:]
    for inputs, _ in calls:
        assert isinstance(inputs.observation, Observation) and inputs.observation.available
        assert inputs.spec is setup.spec and inputs.shape == setup.running_shape()
        assert set(inputs.pods) == {"aggregated"}
    # The state the planner returned is what it is given next time, through status as in the operator.
    assert calls[1][0].state.to_status() == calls[0][1].state.to_status()
    assert calls[1][0].state.recommendations


def operator_object(inputs: PlannerInput, setup: Any) -> dict[str, Any]:
    """The InferenceDeployment as the operator would have it at the policy's decision: the same spec,
    the plan the fleet runs (replicas, TP, engine arguments) and the planner's state in status."""
    p = setup.plan.pools[0]
    n = inputs.current["aggregated"]
    plan = {"mode": "aggregated", "tensorParallel": p.tp, "aggregatedReplicas": n, "decodeReplicas": n,
            "gpus": n * p.tp, "costPerHour": round(n * p.tp * setup.resolved.gpu.usd_per_gpu_hour, 2),
            "engineArgs": {role: {"maxNumBatchedTokens": a, "maxNumSeqs": s}
                           for role, (a, s) in inputs.shape.engine_args.items()}}
    return {"metadata": {"name": "simulate", "namespace": "sim", "uid": "u", "generation": 1},
            "spec": setup.spec.model_dump(by_alias=True, exclude_none=True),
            "status": {"observedGeneration": 1, "plan": plan, "autoscaler": inputs.state.to_status()}}


def test_reconcile_and_policy_give_the_planner_the_same_inputs(calls: list[Any]) -> None:
    setup = prepare(build_spec("llama-3.1-8b", "a100-sxm-80gb", "bf16", 1000, 40, mode="aggregated",
                               cold_start_s=60), trace(400.0, 8.0))
    captured: list[PlannerInput] = []

    class Capturing(GoodputPolicy):
        def decide(self, t: float, fleet: Any) -> dict[str, int]:
            if t >= 300.0 and not captured:
                captured.append(self.planner_input(t, fleet))
            return super().decide(t, fleet)

    run_policy(setup, Capturing(setup))
    sim_inputs = captured[0]
    t = (sim_inputs.now - sim_time(0.0)).total_seconds()
    sim_result = next(result for inputs, result in calls if inputs.now == sim_inputs.now)
    calls.clear()

    obj = operator_object(sim_inputs, setup)
    pods = {role: PoolObservation(o.replicas, o.ready_replicas) for role, o in sim_inputs.pods.items()}
    reconcile_module.reconcile(obj, pods, sim_time(t), sim_inputs.observation)
    (op_inputs, op_result), = calls
    # Same inputs: the spec, the metrics, the pods, the replicas, the shape, the clock, the state.
    for name in ("spec", "observation", "current", "now", "spec_changed", "shape"):
        assert getattr(op_inputs, name) == getattr(sim_inputs, name), name
    assert dict(op_inputs.pods) == dict(sim_inputs.pods)
    assert op_inputs.state.to_status() == sim_inputs.state.to_status()
    assert dataclasses.replace(op_inputs.resolved, served_model_name="") == \
        dataclasses.replace(sim_inputs.resolved, served_model_name="")
    # Same decisions.
    assert op_result.pools == sim_result.pools
    assert op_result.state.to_status() == sim_result.state.to_status()
    assert sim_inputs.now == dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=t)

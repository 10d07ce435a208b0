"""Which replicas leave a scale-down, and how Kubernetes is told. Pure.

A Deployment that drops replicas lets its ReplicaSet delete pods, and among Running and Ready
pods the ReplicaSet deletes those with the lowest ``controller.kubernetes.io/pod-deletion-cost``
first (Kubernetes >= 1.22, beta and on by default). Left to itself it picks by age and node
spread, and the pod it deletes may be the one holding the most requests. The operator instead
chooses the pods with the fewest requests in flight (vLLM's running plus waiting, per pod) and
writes the costs before it lowers ``replicas``:

- leaving pods get ``LEAVING_COST`` minus nothing else: all of them lower than any staying pod;
- staying pods get their in-flight count (>= 0), so a later, unmarked scale-down still prefers
  the idler ones, and a mark left by an earlier scale-down that was reversed is overwritten.

Pods already terminating, or not yet Running and Ready, are deleted first by the ReplicaSet
anyway (it ranks them before any cost), so they count among the leaving pods without a mark.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEAVING_COST = -1000


@dataclass(frozen=True)
class PodState:
    name: str
    ready: bool  # Running and Ready
    terminating: bool
    created: float  # epoch seconds


@dataclass(frozen=True)
class ScaleDownPlan:
    leaving: tuple[str, ...]
    costs: Mapping[str, int]  # pod -> deletion cost to write
    reason: str


def plan_scale_down(pods: Sequence[PodState], target: int, in_flight: Mapping[str, float] | None) -> ScaleDownPlan:
    """The pods that leave when the pool goes to ``target`` replicas, and the costs that make the
    ReplicaSet pick exactly those. Without per-pod load (``in_flight`` None) nothing is marked."""
    live = [p for p in pods if not p.terminating]
    # Not-ready pods go first without a mark (the ReplicaSet ranks them before any cost).
    unready = [p for p in live if not p.ready]
    ready = [p for p in live if p.ready]
    excess = len(live) - target
    if excess <= 0:
        return ScaleDownPlan((), {}, "no pod leaves")
    if in_flight is None:
        return ScaleDownPlan((), {}, "no per-pod load from Prometheus: Kubernetes chooses which pods leave")
    leave_ready = max(0, excess - len(unready))
    # Fewest requests in flight first; on a tie the youngest (its cache is the coldest).
    ranked = sorted(ready, key=lambda p: (in_flight.get(p.name, 0.0), -p.created, p.name))
    leaving = ranked[:leave_ready]
    costs = {p.name: LEAVING_COST for p in leaving}
    costs.update({p.name: int(min(in_flight.get(p.name, 0.0), 1_000_000)) for p in ranked[leave_ready:]})
    names = tuple(p.name for p in [*unready[:excess], *leaving])
    loads = ", ".join(f"{p.name} ({in_flight.get(p.name, 0.0):g} in flight)" for p in leaving)
    return ScaleDownPlan(names, costs, f"leaving: {loads or 'pods not ready yet'}")

"""The planner's safety steps: what holds replicas whatever the capacity model asks.

Pure. Each step takes the pool decisions so far and returns them, changed only where it applies,
with a reason code and a sentence. `goodput.planner.autoscale.autoscale` runs them in this order:

1. **outage hold** (`outage_hold`): metrics were seen once and are unavailable now: every pool
   keeps its replicas, and the hold is what the stabilization window remembers for this moment
   (the plan made meanwhile from the spec's hints would let the first reading after the outage
   scale down at once).
2. **settling** (`settling_hold`): metrics are back (or new) since less than one short window:
   ``rate()`` over a window that starts in the gap reads low, so nothing scales down yet.
3. **capacity cap** (`capacity_caps`): a pool with pods the scheduler cannot place is not raised
   further (more Pending pods add nothing); scaling down, and first plans or mode changes, are left
   alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from goodput.api.vocabulary import Reason
from goodput.planner.observation import Observation, PoolObservation

if TYPE_CHECKING:
    from goodput.planner.stabilize import PoolDecision


def outage_hold(decisions: Sequence[PoolDecision], message: str) -> list[PoolDecision]:
    """Every running pool holds its replicas."""
    return [dataclasses.replace(d, target=d.current, reason=Reason.HOLD,
                                message=f"{d.role} holds {d.current}: {message}")
            if d.current > 0 else d for d in decisions]


def held_recommendations(recorded: Mapping[str, int], current: Mapping[str, int]) -> dict[str, int]:
    """This moment's entry of the stabilization history during an outage: the held replicas."""
    return {role: current.get(role, n) for role, n in recorded.items()}


def settling(available_since: dt.datetime | None, observation: Observation | None, now: dt.datetime) -> bool:
    """Metrics are available, but since less than one short window."""
    if observation is None or not observation.available:
        return False
    if available_since is None:
        return True
    return (now - available_since).total_seconds() < observation.window_s


def settling_hold(decisions: Sequence[PoolDecision], window_s: float) -> list[PoolDecision]:
    """No metric-driven scale-down while metrics settle (a person's spec edit still applies)."""
    out = []
    for d in decisions:
        if d.target < d.current and d.reason in (Reason.SCALE_DOWN, Reason.RATE_LIMITED):
            d = dataclasses.replace(d, target=d.current, reason=Reason.HOLD,
                                    message=f"{d.role} stays at {d.current}: the model asks {d.recommended}, but "
                                            f"metrics came back less than {window_s:g} s ago and the window still "
                                            "spans the gap")
        out.append(d)
    return out


def capacity_caps(decisions: Sequence[PoolDecision], pods: Mapping[str, PoolObservation]) -> dict[str, int]:
    """Pools that would be raised while some of their pods cannot be scheduled: role -> the
    replicas they keep."""
    return {d.role: d.current for d in decisions
            if d.target > d.current > 0 and (seen := pods.get(d.role)) is not None and seen.pending_replicas > 0}


def capacity_cap(decisions: Sequence[PoolDecision], pods: Mapping[str, PoolObservation]) -> list[PoolDecision]:
    caps = capacity_caps(decisions, pods)
    return [dataclasses.replace(d, target=caps[d.role], reason=Reason.CAPACITY_LIMITED,
                                message=f"{d.role} stays at {caps[d.role]}: the plan asks {d.target}, but pods of "
                                        "this pool cannot be scheduled")
            if d.role in caps else d for d in decisions]

"""The operator's words on the wire: condition types, reasons, event types, labels and annotations.

Every string the runtime writes into an InferenceDeployment's status, an Event, a pod's labels or
annotations, or a Prometheus query, and every string it compares against one of those, is named
here once. Pure: no I/O, no imports of goodput's. The values are the wire format (CRD status,
Events, dashboards, the tests and docs check them byte for byte): never change one, add a new one.

The names are plain ``str`` constants grouped in namespaces (not ``enum.StrEnum``): they pass
through YAML dumpers, JSON encoders and the Kubernetes client exactly as the literals did.
"""

from __future__ import annotations

import re
from typing import Final

# --- the API group --------------------------------------------------------------------------

GROUP: Final = "goodput.dev"


# --- status conditions ----------------------------------------------------------------------

class ConditionType:
    """``status.conditions[].type``."""

    READY: Final = "Ready"
    METRICS_AVAILABLE: Final = "MetricsAvailable"
    SCALING_ACTIVE: Final = "ScalingActive"
    SCALING_LIMITED: Final = "ScalingLimited"
    SLO_AT_RISK: Final = "SLOAtRisk"
    DEGRADED: Final = "Degraded"


# The order the conditions are listed in status.
CONDITION_ORDER: Final = (ConditionType.READY, ConditionType.METRICS_AVAILABLE, ConditionType.SCALING_ACTIVE,
                          ConditionType.SCALING_LIMITED, ConditionType.SLO_AT_RISK, ConditionType.DEGRADED)


class ConditionStatus:
    """``status.conditions[].status``."""

    TRUE: Final = "True"
    FALSE: Final = "False"
    UNKNOWN: Final = "Unknown"


class Reason:
    """Reasons: a pool decision's (``status.decisions[].reason``), a condition's, or an Event's."""

    # A pool's decision (the planner).
    SCALE_UP: Final = "ScaleUp"
    SCALE_DOWN: Final = "ScaleDown"
    SLO_MISS: Final = "SLOMiss"
    EMERGENCY: Final = "Emergency"
    RATE_LIMITED: Final = "RateLimited"
    STABILIZING: Final = "Stabilizing"
    WITHIN_TOLERANCE: Final = "WithinTolerance"
    HOLD: Final = "Hold"
    SPEC_CHANGED: Final = "SpecChanged"
    CAPACITY_LIMITED: Final = "CapacityLimited"
    # A change of the fleet's shape (the reconcile's decisions and Events).
    INITIAL: Final = "Initial"
    RECONFIGURE: Final = "Reconfigure"
    MODE_CHANGE: Final = "ModeChange"
    # Conditions and Events.
    INVALID_SPEC: Final = "InvalidSpec"
    SPEC_VALID: Final = "SpecValid"
    PAUSED: Final = "Paused"
    DRY_RUN: Final = "DryRun"
    PLANNED: Final = "Planned"
    NO_METRICS_SOURCE: Final = "NoMetricsSource"
    METRICS_AVAILABLE: Final = "MetricsAvailable"
    METRICS_UNAVAILABLE: Final = "MetricsUnavailable"
    INSUFFICIENT_CAPACITY: Final = "InsufficientCapacity"
    BUDGET_OR_BOUNDS: Final = "BudgetOrBounds"
    RATE_OR_BOUNDS: Final = "RateOrBounds"
    WITHIN_LIMITS: Final = "WithinLimits"
    ALL_REPLICAS_READY: Final = "AllReplicasReady"
    REPLICAS_NOT_READY: Final = "ReplicasNotReady"
    SLO_UNATTAINABLE: Final = "SLOUnattainable"
    SLO_AT_RISK: Final = "SLOAtRisk"
    WITHIN_SLO: Final = "WithinSLO"
    DEPLOYMENT_RESTORED: Final = "DeploymentRestored"
    REPLICAS_RESTORED: Final = "ReplicasRestored"


class EventType:
    """A Kubernetes Event's ``type``."""

    NORMAL: Final = "Normal"
    WARNING: Final = "Warning"


# --- pool roles (the values of ROLE_LABEL) --------------------------------------------------

class Role:
    AGGREGATED: Final = "aggregated"
    PREFILL: Final = "prefill"
    DECODE: Final = "decode"
    ROUTER: Final = "router"


# The roles of vLLM pools (the router is not one).
VLLM_ROLES: Final = (Role.AGGREGATED, Role.PREFILL, Role.DECODE)


# --- Kubernetes labels and annotations ------------------------------------------------------

# On every object the operator renders: which InferenceDeployment owns it, and which pool it is.
DEPLOYMENT_LABEL: Final = "goodput.dev/inference-deployment"
ROLE_LABEL: Final = "goodput.dev/role"
# On a pool's pod template: its tensor-parallel degree (the emulator reads it).
TP_ANNOTATION: Final = "goodput.dev/tensor-parallel"
# Kubernetes' own: the ReplicaSet deletes the pods with the lowest cost first on a scale-down.
DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"


# --- Prometheus label names -----------------------------------------------------------------

def prometheus_label_name(kubernetes_label: str) -> str:
    """A pod label's name as Prometheus' Kubernetes SD stores it: each character outside
    ``[a-zA-Z0-9_]`` becomes ``_`` (``goodput.dev/role`` -> ``goodput_dev_role``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", kubernetes_label)


PROM_DEPLOYMENT_LABEL: Final = prometheus_label_name(DEPLOYMENT_LABEL)  # goodput_dev_inference_deployment
PROM_ROLE_LABEL: Final = prometheus_label_name(ROLE_LABEL)  # goodput_dev_role

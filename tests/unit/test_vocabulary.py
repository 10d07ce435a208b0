"""The vocabulary's values are the wire format: pinned here byte for byte."""

from goodput.api import vocabulary as v


def test_labels_and_annotations_on_the_wire() -> None:
    assert v.DEPLOYMENT_LABEL == "goodput.dev/inference-deployment"
    assert v.ROLE_LABEL == "goodput.dev/role"
    assert v.TP_ANNOTATION == "goodput.dev/tensor-parallel"
    assert v.DELETION_COST_ANNOTATION == "controller.kubernetes.io/pod-deletion-cost"


def test_prometheus_label_names_are_the_kubernetes_sd_sanitised_pod_labels() -> None:
    assert v.prometheus_label_name("goodput.dev/role") == "goodput_dev_role"
    assert v.prometheus_label_name("app.kubernetes.io/name-x") == "app_kubernetes_io_name_x"
    assert v.PROM_ROLE_LABEL == "goodput_dev_role"
    assert v.PROM_DEPLOYMENT_LABEL == "goodput_dev_inference_deployment"


def test_condition_types_in_status_order() -> None:
    assert v.CONDITION_ORDER == ("Ready", "MetricsAvailable", "ScalingActive", "ScalingLimited", "SLOAtRisk",
                                 "Degraded")


def test_reasons_are_plain_distinct_strings() -> None:
    reasons = {k: getattr(v.Reason, k) for k in dir(v.Reason) if k.isupper()}
    assert all(type(r) is str for r in reasons.values())
    assert len(set(reasons.values())) == len(reasons)
    assert {"ScaleUp", "ScaleDown", "Initial", "SLOMiss", "Emergency", "RateLimited", "Stabilizing", "WithinTolerance",
            "Hold", "SpecChanged", "Reconfigure", "ModeChange", "InvalidSpec", "Paused", "DryRun",
            "InsufficientCapacity", "ReplicasRestored", "CapacityLimited"} <= set(reasons.values())

"""The CRD is generated from the pydantic models, and the committed file matches them."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from goodput.api.crd import PRINTER_COLUMNS, crd, crd_yaml
from goodput.api.v1alpha1 import InferenceDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "inferencedeployments.goodput.dev.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), (
        "crds/ drifted from goodput.api: run `goodput crd -o crds/inferencedeployments.goodput.dev.yaml`")


def _walk(node: object, path: str = "") -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        if "type" in node or "properties" in node:
            out.append((path, node))
        for key, value in node.items():
            out += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _walk(value, f"{path}[{i}]")
    return out


def test_schema_is_structural() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith(".properties") or ".x-kubernetes-validations" in path:
            continue
        assert "$ref" not in node and "anyOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert node.get("type") == "object", path


def test_names_scope_and_columns() -> None:
    c = crd()
    names = c["spec"]["names"]
    assert (c["spec"]["group"], names["plural"], names["kind"], names["shortNames"]) == (
        "goodput.dev", "inferencedeployments", "InferenceDeployment", ["infd"])
    assert c["spec"]["scope"] == "Namespaced"
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [col["name"] for col in PRINTER_COLUMNS] == [
        "Mode", "Prefill", "Decode", "GPUs", "$/h", "TTFT p99", "ITL p99", "Ready", "Age"]


def test_cel_rules_present() -> None:
    text = yaml.safe_dump(crd())
    for message in ("minReplicas must be <= maxReplicas", "model needs either id", "p99 must be >= mean"):
        assert message in text


BASE = {"model": {"id": "llama-3.1-8b"}, "accelerator": {"gpu": "h100-sxm-80gb"}, "slo": {"ttftMs": 1000, "itlMs": 40}}


def test_defaults_fill_in() -> None:
    spec = InferenceDeploymentSpec.model_validate(BASE)
    assert spec.mode == "auto" and spec.precision.weights == "bf16" and spec.slo.percentile == 99
    assert spec.scaling.scale_down_stabilization_seconds == 300 and spec.template.port == 8000


@pytest.mark.parametrize("patch, fragment", [
    ({"slo": {"ttftMs": -1, "itlMs": 40}}, "greater than 0"),
    ({"mode": "sideways"}, "mode"),
    ({"unknownField": 1}, "Extra inputs are not permitted"),
    ({"precision": {"weights": "fp3"}}, "weights"),
])
def test_models_reject_bad_specs(patch: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        InferenceDeploymentSpec.model_validate({**BASE, **patch})
    assert fragment in str(exc.value)


def test_committed_field_reference_matches_the_models() -> None:
    from goodput.api.crd import reference_markdown

    assert (ROOT / "docs" / "crd-reference.md").read_text(encoding="utf-8") == reference_markdown(), (
        "docs/crd-reference.md drifted: run `goodput crd --reference -o docs/crd-reference.md`")

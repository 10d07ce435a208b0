"""The CRD is generated from the pydantic models, and the committed file matches them."""

import json
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
        "crds/ drifted from goodput.api: run `goodput crd --output-file crds/inferencedeployments.goodput.dev.yaml`")


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
        "Model", "GPU", "Mode", "Prefill", "Decode", "GPUs", "Ready", "$/h", "TTFT ms (SLO pct)",
        "ITL ms (SLO pct)", "Age"]
    assert [col["name"] for col in PRINTER_COLUMNS if col.get("priority") == 1] == [
        "$/h", "TTFT ms (SLO pct)", "ITL ms (SLO pct)"]  # -o wide


def test_conditions_are_a_map_keyed_by_type_with_rfc3339_times() -> None:
    status = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


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


# Inline architectures the capacity model cannot compute with. tests/integration/test_fuzz_specs.py
# found the first two crashing it (division by zero; the root of a negative step time); admission
# rejects them now (CEL), and the models reject them too, for objects admitted before the rules.
MOE = {"paramsTotalB": 47, "paramsActiveB": 13, "layers": 32, "hiddenSize": 4096, "attentionHeads": 32,
       "kvHeads": 8, "ffnSize": 14336, "vocabSize": 32000, "experts": 8, "expertsPerToken": 2}


@pytest.mark.parametrize("change, fragment", [
    ({"expertsPerToken": 8}, "expertsPerToken must be less than experts"),
    ({"paramsTotalB": 0.5, "paramsActiveB": 0.1, "hiddenSize": 2048}, "must exceed the embedding parameters"),
    ({"paramsTotalB": 0.5, "paramsActiveB": None, "experts": None, "expertsPerToken": None, "vocabSize": 196544,
      "hiddenSize": 8192}, "must exceed the embedding parameters"),
    ({"kvHeads": 64}, "kvHeads must not exceed attentionHeads"),
    ({"hiddenSize": 16, "vocabSize": 100}, "hiddenSize must be at least attentionHeads"),
])
def test_inconsistent_inline_architectures_are_rejected(change: dict, fragment: str) -> None:
    arch = {k: v for k, v in {**MOE, **change}.items() if v is not None}
    spec = {**BASE, "model": {"architecture": arch, "huggingFaceName": "acme/x"}}
    with pytest.raises(ValidationError) as exc:
        InferenceDeploymentSpec.model_validate(spec)
    assert fragment in str(exc.value)
    assert fragment in json.dumps(crd(), ensure_ascii=False), "the same rule is checked at admission (CEL)"


def test_consistent_inline_architectures_pass() -> None:
    InferenceDeploymentSpec.model_validate({**BASE, "model": {"architecture": MOE, "huggingFaceName": "acme/x"}})
    tied = {**MOE, "tiedEmbeddings": True, "paramsActiveB": 0.27, "paramsTotalB": 0.3, "experts": None,
            "expertsPerToken": None, "hiddenSize": 4096, "vocabSize": 32000}  # 0.131 B embeddings, tied
    arch = {k: v for k, v in tied.items() if v is not None}
    InferenceDeploymentSpec.model_validate({**BASE, "model": {"architecture": arch, "huggingFaceName": "acme/x"}})


def test_new_cel_rules_present() -> None:
    text = json.dumps(crd(), ensure_ascii=False)
    for message in ("expertsPerToken must be less than experts", "must exceed the embedding parameters",
                    "kvHeads must not exceed attentionHeads", "hiddenSize must be at least attentionHeads",
                    "a custom accelerator needs pricePerGpuHour"):
        assert message in text

"""Generate the CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12 ($defs/$ref, anyOf-with-null, numeric exclusiveMinimum);
Kubernetes wants a *structural* OpenAPI v3 schema (everything inlined, a type on every node,
boolean exclusiveMinimum, no null). `to_structural` converts one into the other, keeping
descriptions, defaults, bounds, enums, patterns and the CEL rules (x-kubernetes-validations).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from goodput.api.v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    InferenceDeploymentSpec,
    InferenceDeploymentStatus,
)
from goodput.api.vocabulary import ConditionType

_KEEP = {
    "type", "properties", "required", "items", "additionalProperties", "enum", "minimum", "maximum",
    "minLength", "maxLength", "pattern", "description", "default", "maxItems", "minItems", "format",
}

# `kubectl get infd` shows what runs and whether it is Ready; `-o wide` (priority 1) adds cost and the
# predicted latencies. The latency headers say "SLO pct": they are at spec.slo.percentile, not always p99.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.id",
     "description": "Catalog model id (empty for an inline architecture)"},
    {"name": "GPU", "type": "string", "jsonPath": ".spec.accelerator.gpu"},
    {"name": "Mode", "type": "string", "jsonPath": ".status.plan.mode"},
    {"name": "Prefill", "type": "integer", "jsonPath": ".status.plan.prefillReplicas"},
    {"name": "Decode", "type": "integer", "jsonPath": ".status.plan.decodeReplicas",
     "description": "Decoding replicas: the decode pool, or the aggregated pool"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.plan.gpus"},
    {"name": "Ready", "type": "string",
     "jsonPath": f'.status.conditions[?(@.type=="{ConditionType.READY}")].status'},
    {"name": "$/h", "type": "number", "jsonPath": ".status.plan.costPerHour", "priority": 1},
    {"name": "TTFT ms (SLO pct)", "type": "number", "jsonPath": ".status.plan.predictedTtftMs", "priority": 1,
     "description": "Predicted TTFT at spec.slo.percentile, ms"},
    {"name": "ITL ms (SLO pct)", "type": "number", "jsonPath": ".status.plan.predictedItlMs", "priority": 1,
     "description": "Predicted inter-token latency at spec.slo.percentile, ms"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = to_structural(target, defs)
        merged.update({k: v for k, v in node.items() if k in ("description", "default")})
        return merged
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {options} in a structural schema")
        # Siblings of anyOf (description, default, extensions) apply to the one real option.
        merged_node = {**options[0], **{k: v for k, v in node.items() if k != "title"}}
        if merged_node.get("default", 0) is None:
            del merged_node["default"]
        return to_structural(merged_node, defs)
    out: dict[str, Any] = {}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            out[flag] = node.pop(bound)
            out[bound] = True
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    for key, value in node.items():
        if key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
    if "properties" in out:
        out["type"] = "object"
        out["properties"] = {k: to_structural(v, defs) for k, v in out["properties"].items()}
        for prop_name, prop in out["properties"].items():
            # An all-optional nested object gets a default of its own fields' defaults, so the
            # apiserver fills them in. The default must hold them itself: the apiserver checks
            # defaults against the schema and its CEL rules, which may read those fields.
            if (prop_name not in out.get("required", []) and prop.get("type") == "object"
                    and "properties" in prop and not prop.get("required") and "default" not in prop):
                prop["default"] = _defaults(prop)
    if "items" in out:
        out["items"] = to_structural(out["items"], defs)
    if isinstance(out.get("additionalProperties"), dict):
        ap = out["additionalProperties"]
        if ap:
            out["additionalProperties"] = to_structural(ap, defs)
        else:
            del out["additionalProperties"]
            preserve = True
    elif out.get("additionalProperties") is False:
        # Structural schemas may not say so: the apiserver prunes unknown fields, and kubectl's
        # strict field validation (its default) rejects them with a message naming the field.
        del out["additionalProperties"]
    elif out.get("additionalProperties") is True:
        del out["additionalProperties"]
        preserve = True
    if preserve:
        if out.get("type") == "array":
            out["items"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            out["type"] = "object"
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out:
        raise ValueError(f"schema node without a type: {node}")
    return out


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    return {name: copy.deepcopy(prop["default"]) for name, prop in schema.get("properties", {}).items()
            if "default" in prop}


class _PlainDumper(yaml.SafeDumper):
    """No YAML anchors and aliases: every reader (kubectl, helm, GitOps diffs) sees plain values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _schema(model: type[InferenceDeploymentSpec] | type[InferenceDeploymentStatus]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return to_structural(raw, defs)


def crd() -> dict[str, Any]:
    spec = _schema(InferenceDeploymentSpec)
    spec["description"] = "What to serve, on which GPUs, within which latency SLOs and budget."
    status = _schema(InferenceDeploymentStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps its bookkeeping here
    status["description"] = "What the operator decided and observed, and why."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "goodput-operator"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": ["goodput"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "An LLM inference service sized by goodput-operator.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `goodput crd` from operator/goodput/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.dump(crd(), Dumper=_PlainDumper, sort_keys=False, width=120)


def _reference_rows(schema: dict[str, Any], prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        kind = prop.get("type", "")
        if kind == "array":
            kind = f"[]{prop.get('items', {}).get('type', 'object')}"
        bounds = []
        if "enum" in prop:
            bounds.append(" \\| ".join(str(v) for v in prop["enum"]))
        if "minimum" in prop:
            bounds.append((">" if prop.get("exclusiveMinimum") else "≥") + str(prop["minimum"]))
        if "maximum" in prop:
            bounds.append(("<" if prop.get("exclusiveMaximum") else "≤") + str(prop["maximum"]))
        default = "required" if name in required else (
            "" if "default" not in prop or prop["default"] == {} else f"`{json.dumps(prop['default'])}`")
        rules = "; ".join(r["message"] for r in prop.get("x-kubernetes-validations", []))
        text = " ".join(x for x in (prop.get("description", ""), ("Rules: " + rules) if rules else "") if x)
        rows.append((f"`{path}`", f"{kind} {' '.join(bounds)}".strip(), default, text))
        if prop.get("type") == "object" and "properties" in prop:
            _reference_rows(prop, path, rows)


def reference_markdown() -> str:
    """The field reference of spec, generated from the same schema the apiserver enforces."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rows: list[tuple[str, str, str, str]] = []
    _reference_rows(spec, "spec", rows)
    lines = [
        "<!-- Generated by `goodput crd --reference` from operator/goodput/api/v1alpha1.py. Do not edit. -->",
        "# InferenceDeployment (goodput.dev/v1alpha1) field reference",
        "",
        "Every field of `spec`, with its type, bounds and default, as the apiserver enforces them at admission.",
        "",
        "| field | type and bounds | default | meaning |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"

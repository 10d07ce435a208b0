"""The status write as a merge-patch diff (goodput.render.patch), checked against RFC 7386's own
application rule (`apply_merge_patch`, written from the RFC's pseudocode): applying the diff to the
old status gives the new one, and equal statuses give no write."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from goodput.render.patch import apply_merge_patch, merge_patch, status_patch

scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.text(max_size=3))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abcd"), inner, max_size=4)), max_leaves=12)
objects = st.dictionaries(st.sampled_from("abcdef"), json_values, max_size=5)


@settings(max_examples=300, deadline=None, database=None)
@given(objects, objects)
def test_the_diff_applied_to_the_old_status_gives_the_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = merge_patch(old, new)
    assert apply_merge_patch(old, patch) == new
    assert (patch == {}) == (old == new)


@settings(deadline=None, database=None)
@given(objects)
def test_an_unchanged_status_is_no_write(status: dict[str, Any]) -> None:
    assert status_patch(json.loads(json.dumps(status)), status) is None


def test_only_what_changed_goes_out_and_removed_keys_become_null() -> None:
    old = {"observedGeneration": 3, "plan": {"aggregatedReplicas": 2, "gpus": 2, "reason": "x"},
           "conditions": [{"type": "Ready", "status": "True"}], "autoscaler": {"burst": {"levels": [1]}}}
    new = {"observedGeneration": 3, "plan": {"aggregatedReplicas": 3, "gpus": 3, "reason": "x"},
           "conditions": [{"type": "Ready", "status": "True"}], "autoscaler": {}}
    assert status_patch(old, new) == {"status": {"plan": {"aggregatedReplicas": 3, "gpus": 3},
                                                 "autoscaler": {"burst": None}}}


def test_lists_go_whole_and_numbers_compare_by_value() -> None:
    old = {"decisions": [{"reason": "Initial"}], "plan": {"costPerHour": 2}}
    new = {"decisions": [{"reason": "Initial"}, {"reason": "ScaleUp"}], "plan": {"costPerHour": 2.0}}
    assert status_patch(old, new) == {"status": {"decisions": new["decisions"]}}


def test_a_none_in_the_decided_status_is_no_value_not_a_change() -> None:
    stored = {"plan": {"gpus": 2}}  # the apiserver keeps no nulls
    assert status_patch(stored, {"plan": {"gpus": 2, "predictedTtftMs": None}}) is None
    assert status_patch(None, {"plan": {"gpus": 2}}) == {"status": {"plan": {"gpus": 2}}}

"""The operator's first reconcile of an InferenceDeployment, offline: what `goodput render` prints
and what the demo and tests apply in place of a running operator. Pure: the clock is an argument."""

from __future__ import annotations

import datetime as dt
from typing import Any

from goodput.api.v1alpha1 import KIND, InferenceDeployment
from goodput.render.reconcile import reconcile
from goodput.render.vllm import RenderConfig


class RenderError(Exception):
    """Bad input: one line, exit 2."""


def first_reconcile(manifest: dict[str, Any], now: dt.datetime, namespace: str | None = None,
                    uid: str | None = None, config: RenderConfig | None = None,
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(objects, status) of the operator's first reconcile of ``manifest`` at ``now``: a fresh
    resource, no live metrics, planned from ``spec.workload``. Without ``uid`` the objects carry no
    ownerReferences (the garbage collector deletes objects whose owner does not exist)."""
    try:
        parsed = InferenceDeployment.model_validate(manifest)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise RenderError(f"not a valid {KIND}: {' '.join(first[:3])}") from None
    meta = dict(parsed.metadata)
    name = meta.get("name")
    if not name:
        raise RenderError(f"the {KIND} needs metadata.name")
    obj = {"metadata": {"name": name, "namespace": namespace or meta.get("namespace") or "default",
                        "uid": uid or "", "generation": 1},
           "spec": manifest.get("spec") or {}}
    outcome = reconcile(obj, {}, now, None, config or RenderConfig())
    objects = [_without_owner(o) for o in outcome.apply] if not uid else outcome.apply
    return objects, outcome.status


def _without_owner(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}
    return {**obj, "metadata": meta}

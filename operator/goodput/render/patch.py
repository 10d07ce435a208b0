"""The status write as a diff: an RFC 7386 JSON merge patch from what the object holds to what
the reconcile decided, and no write at all when they are the same.

Writing the whole status each tick costs an apiserver write and an etcd revision per resource per
period even when nothing changed, and a merge patch of the whole status cannot remove a key that
the new status no longer has (a merge patch deletes only keys it sets to null). The diff does
both: unchanged fields are left out, removed keys become null, lists (conditions, decisions) are
replaced whole, as merge patches treat them.
"""

from __future__ import annotations

from typing import Any


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns the JSON object ``old`` into ``new``; ``{}`` when they are equal.

    Objects are diffed key by key (a key only in ``old`` maps to None: removed); any other value
    that differs is replaced whole. Numbers compare by value, so the apiserver's 2 for our 2.0 is
    no change."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any] | None:
    """The body of the status write (``{"status": diff}``), or None when the object already holds
    ``desired``. A None inside ``desired`` means "no value": it is left out, as the apiserver
    prunes it, so that it does not read as a change on every tick."""
    diff = merge_patch(current or {}, _without_nulls(desired))
    return {"status": diff} if diff else None


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """The receiver's side of RFC 7386 (section 2), as the apiserver applies a merge patch: for
    checking `merge_patch` against the RFC, and for in-memory stand-ins of the apiserver in tests."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value

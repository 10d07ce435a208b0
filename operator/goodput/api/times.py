"""The one time format of the operator's status (and of the planner's memory kept in it): UTC,
second resolution, RFC 3339 with a Z, as Kubernetes writes its own condition and event times."""

from __future__ import annotations

import datetime as dt
from typing import Any

STATUS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def status_time(t: dt.datetime) -> str:
    """``2026-12-07T19:20:00Z``: what status holds for ``t`` (fractions of a second dropped)."""
    return t.astimezone(dt.UTC).strftime(STATUS_TIME_FORMAT)


def parse_status_time(text: str) -> dt.datetime:
    """The time ``status_time`` wrote; ValueError for anything else."""
    return dt.datetime.strptime(text, STATUS_TIME_FORMAT).replace(tzinfo=dt.UTC)


def read_status_time(value: Any) -> dt.datetime | None:
    """Any RFC 3339 time a status may hold (one written by an older operator, with fractions or an
    offset, included), in UTC; None for anything else. For status read back, which a person or a
    tool may have edited."""
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone(dt.UTC) if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)

"""PromQL helpers with no I/O: label matchers, selectors, and parsing of instant-query results.

Everything here takes and returns plain data, so every edge case of a Prometheus answer (no
series, NaN, ±Inf, several series where one was expected, a malformed body) is unit-testable
without a server. `goodput.metrics.prometheus` does the HTTP.

The answer of `GET /api/v1/query` is ``{"status": "success", "data": {"resultType": "vector",
"result": [{"metric": {labels}, "value": [unix_time, "1.5"]}, ...]}}``; sample values are strings,
with ``"NaN"``, ``"+Inf"`` and ``"-Inf"`` for the non-finite ones. `parse_vector` accepts that whole
body, its ``data`` or just the ``result`` list (which is what `PrometheusConnect.custom_query`
returns).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MATCH_OPS = ("=", "!=", "=~", "!~")
Combine = Literal["sum", "max"]


class MalformedResult(ValueError):
    """The body is not a Prometheus instant-query result (or says the query failed)."""


# ------------------------------------------------------------------------------------------
# label matchers
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Matcher:
    """One PromQL label matcher, e.g. ``namespace="prod"`` or ``pod=~"llama-.*"``."""

    label: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if not LABEL_NAME.match(self.label):
            raise ValueError(f"{self.label!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if self.op not in MATCH_OPS:
            raise ValueError(f"{self.op!r} is not a label-matcher operator (one of {', '.join(MATCH_OPS)})")

    def render(self) -> str:
        # A JSON string literal is a valid PromQL string literal (same escapes: \" \\ \n \uXXXX).
        return f"{self.label}{self.op}{json.dumps(self.value)}"


def equality_matchers(labels: Mapping[str, str]) -> tuple[Matcher, ...]:
    """``{"a": "x"}`` → ``(Matcher("a", "=", "x"),)``, in the order given."""
    return tuple(Matcher(k, "=", v) for k, v in labels.items())


def render_matchers(matchers: Iterable[Matcher]) -> str:
    """The inside of ``{...}``: matchers joined by commas."""
    return ",".join(m.render() for m in matchers)


_SELECTOR_ITEM = re.compile(
    r"""\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,]*?)\s*(?:,|$)""")


def parse_selector(text: str) -> tuple[Matcher, ...]:
    """``k=v,k2!=v2,k3=~"a|b"`` (the braces are optional) → matchers.

    Values may be bare (no commas then) or quoted with ``"`` or ``'`` (PromQL escapes inside).
    Raises ValueError with a message naming the part that did not parse.
    """
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1].strip()
    if not body:
        raise ValueError("the selector is empty: give label matchers like namespace=prod,app=vllm")
    out: list[Matcher] = []
    pos = 0
    while pos < len(body):
        m = _SELECTOR_ITEM.match(body, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot parse the selector at {body[pos:]!r}: expected label=value, label!=value, "
                             "label=~regex or label!~regex, separated by commas")
        raw = m.group("value")
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
        value = _unquote(raw) if quoted else raw
        out.append(Matcher(m.group("label"), m.group("op"), value))
        pos = m.end()
    return tuple(out)


def _unquote(raw: str) -> str:
    inner = raw[1:-1]
    if raw[0] == "'":
        inner = inner.replace("\\'", "'").replace('"', '\\"')
    try:
        value = json.loads(f'"{inner}"')
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad escape in the quoted value {raw}: {exc.msg}") from None
    assert isinstance(value, str)
    return value


def duration(seconds: float) -> str:
    """A PromQL range duration: 60 → ``60s``, 0.5 → ``500ms``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"a range must be positive, got {seconds} s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# ------------------------------------------------------------------------------------------
# instant-query results
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float  # may be NaN or ±Inf: Prometheus sends those
    timestamp: float


def parse_value(raw: Any) -> float:
    """A sample value as Prometheus encodes it ("1.5", "NaN", "+Inf", "-Inf") → float."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise MalformedResult(f"a sample value must be a string, got {type(raw).__name__} {raw!r}")
    if isinstance(raw, str):
        text = raw.strip()
        if text.lower() not in ("nan", "inf", "+inf", "-inf") and not re.fullmatch(
                r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text):
            raise MalformedResult(f"a sample value is not a number: {raw!r}")
        return float(text)
    return float(raw)


def _pair(raw: Any, where: str) -> tuple[float, float]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise MalformedResult(f"{where}: a sample must be [time, \"value\"], got {raw!r:.120}")
    ts, val = raw
    if isinstance(ts, bool) or not isinstance(ts, (int, float, str)):
        raise MalformedResult(f"{where}: a sample time must be a number, got {ts!r:.60}")
    try:
        t = float(ts)
    except ValueError:
        raise MalformedResult(f"{where}: a sample time must be a number, got {ts!r:.60}") from None
    return t, parse_value(val)


def parse_vector(payload: Any) -> list[Sample]:
    """The samples of an instant-query answer: the whole body, its ``data``, or its ``result`` list.

    An empty vector is ``[]`` (no series: the caller decides what that means). A scalar result
    becomes one sample with no labels. Raises MalformedResult for anything else, including a body
    with ``"status": "error"`` (its message is kept) and a range (matrix) result.
    """
    result: Any = payload
    if isinstance(payload, Mapping):
        if "status" in payload:
            if payload.get("status") != "success":
                kind = payload.get("errorType") or "error"
                message = str(payload.get("error") or repr(payload))
                raise MalformedResult(f"Prometheus answered {kind}: {message[:300]}")
            payload = payload.get("data")
            if not isinstance(payload, Mapping):
                raise MalformedResult("the answer has no 'data' object")
        if "result" not in payload:
            raise MalformedResult(f"the answer has no 'result': {payload!r:.200}")
        kind = payload.get("resultType", "vector")
        result = payload["result"]
        if kind == "scalar":
            t, v = _pair(result, "scalar")
            return [Sample({}, v, t)]
        if kind != "vector":
            raise MalformedResult(f"expected an instant vector, got a {kind!r} result")
    if not isinstance(result, list):
        raise MalformedResult(f"expected a list of series, got {type(result).__name__} {result!r:.120}")
    # A bare scalar result as custom_query returns it: [time, "value"].
    if len(result) == 2 and not isinstance(result[0], (Mapping, list)) and isinstance(result[1], str):
        t, v = _pair(result, "scalar")
        return [Sample({}, v, t)]
    samples = []
    for i, item in enumerate(result):
        if not isinstance(item, Mapping):
            raise MalformedResult(f"series {i}: expected an object with 'metric' and 'value', got {item!r:.120}")
        labels = item.get("metric", {})
        if not isinstance(labels, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise MalformedResult(f"series {i}: 'metric' must map label names to strings, got {labels!r:.120}")
        if "value" not in item:
            what = "a range vector ('values')" if "values" in item else "no 'value'"
            raise MalformedResult(f"series {i}: expected an instant sample, got {what}")
        t, v = _pair(item["value"], f"series {i}")
        samples.append(Sample(dict(labels), v, t))
    return samples


def group_by_label(samples: Iterable[Sample], label: str, default: str = "") -> dict[str, list[float]]:
    """Sample values keyed by one label's value (``default`` where the label is absent)."""
    out: dict[str, list[float]] = {}
    for s in samples:
        out.setdefault(s.labels.get(label, default), []).append(s.value)
    return out


def describe_non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


@dataclass(frozen=True)
class Reading:
    """One number made from zero or more samples, or None and why not."""

    value: float | None
    problem: str | None = None  # "no series" / "NaN" / "+Inf" ...: completes "… is <problem>"


def combine(values: Sequence[float], how: Combine) -> Reading:
    """Several samples where one value is wanted, reduced deterministically.

    - no samples → None, "no series";
    - any sample NaN or ±Inf → None, naming it (a sum or max with an unknown part is unknown);
    - otherwise the exact sum (math.fsum: independent of the series order) or the max.
    """
    if not values:
        return Reading(None, "no series")
    bad = sorted({describe_non_finite(v) for v in values if not math.isfinite(v)})
    if bad:
        n_bad = sum(1 for v in values if not math.isfinite(v))
        many = f" in {n_bad} of {len(values)} series" if len(values) > 1 else ""
        return Reading(None, f"{'/'.join(bad)}{many}")
    if how == "sum":
        return Reading(math.fsum(values))
    if how == "max":
        return Reading(max(values))
    raise ValueError(f"unknown combine {how!r}")

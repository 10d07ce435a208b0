"""Request traces for the simulator: pure readers over lines of text, and the summary of a trace.

Formats
-------
* **Azure** (Azure/AzurePublicDataset, the Splitwise traces): CSV with the header
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` (columns in any order, others ignored). TIMESTAMP is
  ``2023-11-16 18:15:46.6805900`` (any number of fractional digits, 7 in the public files; taken as
  UTC) or a plain number of seconds.
* **Mooncake** (kvcache-ai/Mooncake, FAST'25): JSON Lines, one object per request with
  ``timestamp`` (milliseconds), ``input_length``, ``output_length`` and ``hash_ids``: the ids of the
  prompt's consecutive 512-token blocks, equal ids meaning equal prefixes (used for prefix-cache
  hits, see `goodput.sim.fleet`).

``detect_format`` tells them apart by the first non-blank line (``{`` opens a JSON object). Every
error names the line: ``NAME:LINE: what is wrong``, LINE counting physical lines from 1 (the
header included, blank lines included). Requests are sorted by time (stably) and times are made
relative to the first request. A zero output length (Mooncake has some) is served as one token,
as a request generates at least one.

``scale_rate(trace, x)`` compresses time x-fold: the same requests, x times the request rate, in
1/x of the time (load changes x times faster too). ``replicate_rate(trace, x)`` keeps the time axis
and superposes x independently shifted copies instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from goodput.model.errors import CapacityModelError

Format = Literal["azure", "mooncake"]
FORMATS: tuple[str, ...] = ("auto", "azure", "mooncake")
MOONCAKE_BLOCK_TOKENS = 512
# The most tokens one request may have: the CRD's bound on a length (workload.*Length.p99), far above
# any model's context; a larger count is a broken file, and would overflow the int64 arrays.
MAX_REQUEST_TOKENS = 10_000_000
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

# Public traces shipped in the package (see data/SOURCES.md): usable by name wherever a trace is.
BUNDLED_TRACES = {"azure-conv": "azure-conv.csv", "azure-code": "azure-code.csv"}


def trace_path(name_or_path: str) -> Path:
    """The file of a bundled trace, or the path as given."""
    if name_or_path in BUNDLED_TRACES:
        return Path(__file__).resolve().parents[1] / "data" / "traces" / BUNDLED_TRACES[name_or_path]
    return Path(name_or_path)


_STAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*(?:Z|[+-]00:?00)?")


class TraceError(CapacityModelError):
    """A trace that cannot be read; the message names the line."""


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival: seconds from the first, prompt and output tokens, and (Mooncake)
    the prompt's 512-token block hashes."""

    times: npt.NDArray[np.float64]
    prompts: npt.NDArray[np.int64]
    outputs: npt.NDArray[np.int64]
    hash_ids: tuple[tuple[int, ...], ...] | None = None
    name: str = "trace"
    format: str = "azure"
    rate_scale: float = 1.0

    def __post_init__(self) -> None:
        n = self.times.size
        if self.prompts.size != n or self.outputs.size != n or (self.hash_ids is not None and len(self.hash_ids) != n):
            raise TraceError(f"{self.name}: times, prompt and output lengths (and hash ids) must be as many")

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def span_s(self) -> float:
        return float(self.times[-1]) if self.times.size else 0.0

    def rate_in(self, t0: float, t1: float) -> float:
        """Arrivals per second in [t0, t1)."""
        if t1 <= t0:
            return 0.0
        lo, hi = np.searchsorted(self.times, [t0, t1], side="left")
        return float(hi - lo) / (t1 - t0)

    def peak_rate(self, window_s: float, step_s: float) -> tuple[float, float]:
        """The highest arrival rate over a window of ``window_s`` sliding by ``step_s``: (rate, start)."""
        if not len(self):
            return 0.0, 0.0
        best, at = 0.0, 0.0
        start = 0.0
        while True:
            r = self.rate_in(start, start + window_s)
            if r > best:
                best, at = r, start
            if start + window_s >= self.span_s:
                break
            start += step_s
        return best, at

    def summary(self) -> dict[str, float | int | str]:
        p = self.prompts.astype(np.float64)
        o = self.outputs.astype(np.float64)
        span = self.span_s
        out: dict[str, float | int | str] = {
            "name": self.name, "format": self.format, "requests": len(self), "rate_scale": self.rate_scale,
            "duration_s": round(span, 3), "mean_rate_rps": round(len(self) / span, 4) if span > 0 else 0.0,
            "input_len_mean": round(float(p.mean()), 1) if p.size else 0.0,
            "input_len_p99": round(float(np.quantile(p, 0.99)), 1) if p.size else 0.0,
            "input_len_max": int(p.max()) if p.size else 0,
            "output_len_mean": round(float(o.mean()), 1) if o.size else 0.0,
            "output_len_p99": round(float(np.quantile(o, 0.99)), 1) if o.size else 0.0,
            "output_len_max": int(o.max()) if o.size else 0,
        }
        if self.hash_ids is not None:
            out["fleet_prefix_hit_rate"] = round(fleet_prefix_hit_rate(self), 4)
        return out


def scale_rate(trace: Trace, factor: float) -> Trace:
    """The same requests with time compressed ``factor``-fold (``factor`` times the request rate)."""
    if not (math.isfinite(factor) and factor > 0):
        raise TraceError(f"the rate scale must be a positive number, got {factor}")
    return Trace(trace.times / factor, trace.prompts, trace.outputs, trace.hash_ids, trace.name, trace.format,
                 trace.rate_scale * factor)


# The most requests a replicated trace may hold: about 10 GB of simulator state and hours of run time.
# Beyond it, compress the trace instead (--rate-scale-mode compress keeps the request count).
MAX_REPLICATED_REQUESTS = 20_000_000

# Copies of the trace are shifted by up to this much: arrivals within a minute become
# independent across copies (as different users' are) while the load curve over the hour keeps
# its shape (smoothed by at most a minute).
REPLICATE_SHIFT_S = 60.0


def replicate_rate(trace: Trace, factor: float, seed: int = 0, shift_s: float = REPLICATE_SHIFT_S) -> Trace:
    """``factor`` times the request rate on the trace's own time axis: the superposition of
    ``factor`` copies of the trace (the last one thinned to the fraction of ``factor``), each shifted
    by its own uniform random offset in [0, ``shift_s``) and wrapped around the trace's span, as
    ``factor`` times as many independent users would arrive. The load curve keeps its shape and its
    duration; the requests (and the simulation's cost) are ``factor`` times as many. Copies keep
    their request's lengths and block hashes (so copies of a request share its prefix).

    Not copies placed next to their original: that makes every arrival a clump of ``factor``
    requests within one inter-arrival gap, ``factor`` times burstier at every time scale than the
    trace (the index of dispersion of counts in 1 s windows goes from 1.4 to 10 for the conversation
    trace at x8; superposed copies keep it near 3)."""
    if not (math.isfinite(factor) and factor > 0):
        raise TraceError(f"the rate scale must be a positive number, got {factor}")
    n = len(trace)
    if n * factor > MAX_REPLICATED_REQUESTS:
        raise TraceError(f"a rate scale of {factor:g} replicates {n:,} requests into {n * factor:,.0f}, more than the "
                         f"simulator's {MAX_REPLICATED_REQUESTS:,}; lower --rate-scale, use a shorter trace, or "
                         "--rate-scale-mode compress")
    rng = np.random.default_rng(seed)
    span = max(trace.span_s, 1e-9)
    times: list[npt.NDArray[np.float64]] = []
    idx: list[npt.NDArray[np.int64]] = []
    remaining = factor
    while remaining > 1e-12:
        keep = np.arange(n) if remaining >= 1.0 else np.flatnonzero(rng.random(n) < remaining)
        offset = float(rng.uniform(0.0, min(shift_s, span)))
        times.append(np.mod(trace.times[keep] + offset, span))
        idx.append(keep)
        remaining -= 1.0
    all_times = np.concatenate(times)
    all_idx = np.concatenate(idx)
    order = np.argsort(all_times, kind="stable")
    all_idx = all_idx[order]
    hashes = tuple(trace.hash_ids[i] for i in all_idx.tolist()) if trace.hash_ids is not None else None
    return Trace(all_times[order], trace.prompts[all_idx], trace.outputs[all_idx], hashes, trace.name,
                 trace.format, trace.rate_scale * factor)


def fleet_prefix_hit_rate(trace: Trace) -> float:
    """Fraction of prompt tokens that a single, unbounded prefix cache shared by the whole fleet
    would hit (an upper bound: the simulator's caches are per replica and bounded)."""
    if trace.hash_ids is None or not len(trace):
        return 0.0
    seen: set[int] = set()
    hit = 0
    for prompt, ids in zip(trace.prompts.tolist(), trace.hash_ids, strict=True):
        n = 0
        for h in ids:
            if h not in seen:
                break
            n += 1
        hit += min(n * MOONCAKE_BLOCK_TOKENS, max(prompt - 1, 0))
        seen.update(ids)
    total = int(trace.prompts.sum())
    return hit / total if total else 0.0


# ------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------
def detect_format(lines: Sequence[str], name: str = "trace") -> Format:
    """``mooncake`` when the first non-blank line opens a JSON object, ``azure`` when it is a CSV
    header naming TIMESTAMP, ContextTokens and GeneratedTokens."""
    for line in lines:
        text = line.strip().lstrip("\ufeff")
        if not text:
            continue
        if text.startswith("{"):
            return "mooncake"
        if all(col in text for col in AZURE_COLUMNS):
            return "azure"
        raise TraceError(f"{name}: cannot tell the trace format from its first line {text[:80]!r}: expected an "
                         f"Azure CSV header ({','.join(AZURE_COLUMNS)}) or a Mooncake JSON object "
                         "(give --format)")
    raise TraceError(f"{name}: the trace is empty")


def parse_trace(lines: Iterable[str], fmt: str = "auto", name: str = "trace") -> Trace:
    """Read a trace from its lines (``text.splitlines()`` or an open file)."""
    seq = lines if isinstance(lines, Sequence) else list(lines)
    if fmt == "auto":
        fmt = detect_format(seq, name)
    if fmt == "azure":
        return read_azure(seq, name)
    if fmt == "mooncake":
        return read_mooncake(seq, name)
    raise TraceError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")


def parse_timestamp(text: str) -> float:
    """Seconds from a TIMESTAMP cell: a number, or ``YYYY-MM-DD HH:MM:SS[.fraction]`` (UTC)."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        m = _STAMP.fullmatch(s)
        if not m:
            raise ValueError(f"TIMESTAMP {text!r} is neither a number nor YYYY-MM-DD HH:MM:SS[.fraction]") from None
        y, mo, d, h, mi, sec, frac = m.groups()
        try:
            base = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=dt.UTC).timestamp()
        except ValueError as exc:
            raise ValueError(f"TIMESTAMP {text!r}: {exc}") from None
        return base + (float("0." + frac) if frac else 0.0)
    if not math.isfinite(value):
        raise ValueError(f"TIMESTAMP {text!r} is not a finite number")
    return value


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a whole number")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not a number") from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise ValueError(f"{what} {value!r} is not a number")
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{what} {value!r} is not a whole number")
    if number < minimum:
        raise ValueError(f"{what} {value!r} must be at least {minimum}")
    if number > MAX_REQUEST_TOKENS:
        raise ValueError(f"{what} {value!r} is more than {MAX_REQUEST_TOKENS:,} tokens")
    return int(number)


def _finish(name: str, fmt: str, times: list[float], prompts: list[int], outputs: list[int],
            hashes: list[tuple[int, ...]] | None) -> Trace:
    if not times:
        raise TraceError(f"{name}: the trace has no requests")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order[0]]
    p = np.asarray(prompts, dtype=np.int64)[order]
    o = np.maximum(np.asarray(outputs, dtype=np.int64)[order], 1)
    h = tuple(hashes[i] for i in order.tolist()) if hashes is not None else None
    return Trace(t, p, o, h, name, fmt)


def read_azure(lines: Sequence[str], name: str = "trace") -> Trace:
    """The Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    header: dict[str, int] | None = None
    for lineno, row in _csv_rows(lines, name):
        if header is None:
            cells = [c.strip().lstrip("\ufeff") for c in row]
            missing = [c for c in AZURE_COLUMNS if c not in cells]
            if missing:
                raise TraceError(f"{name}:{lineno}: the header must name {', '.join(AZURE_COLUMNS)}; "
                                 f"missing {', '.join(missing)} (got {','.join(cells)[:120]!r})")
            header = {c: cells.index(c) for c in AZURE_COLUMNS}
            continue
        try:
            if len(row) <= max(header.values()):
                raise ValueError(f"expected {len(header)} columns ({','.join(AZURE_COLUMNS)}), got {len(row)}")
            times.append(parse_timestamp(row[header["TIMESTAMP"]]))
            prompts.append(_count(row[header["ContextTokens"]], "ContextTokens", 1))
            outputs.append(_count(row[header["GeneratedTokens"]], "GeneratedTokens", 0))
        except ValueError as exc:
            raise TraceError(f"{name}:{lineno}: {exc}") from None
    if header is None:
        raise TraceError(f"{name}: the trace is empty (no header line)")
    return _finish(name, "azure", times, prompts, outputs, None)


def _csv_rows(lines: Sequence[str], name: str) -> Iterable[tuple[int, list[str]]]:
    """(physical line number, cells) of every non-blank line; a quoted cell may not span lines."""
    for i, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise TraceError(f"{name}:{i}: not CSV: {exc}") from None
        yield i, cells


def read_mooncake(lines: Sequence[str], name: str = "trace") -> Trace:
    """The Mooncake trace JSONL (``timestamp`` in ms, ``input_length``, ``output_length``, ``hash_ids``)."""
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    hashes: list[tuple[int, ...]] = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc.msg} at column {exc.colno}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in obj:
                    raise ValueError(f"missing {key!r} (a Mooncake request has timestamp, input_length, "
                                     "output_length, hash_ids)")
            stamp = obj["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
                raise ValueError(f"timestamp {stamp!r} is not a number of milliseconds")
            prompt = _count(obj["input_length"], "input_length", 1)
            output = _count(obj["output_length"], "output_length", 0)
            ids = obj.get("hash_ids", [])
            if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
                raise ValueError("hash_ids must be a list of integers")
            if len(ids) > math.ceil(prompt / MOONCAKE_BLOCK_TOKENS):
                raise ValueError(f"{len(ids)} hash_ids for {prompt} input tokens: more blocks of "
                                 f"{MOONCAKE_BLOCK_TOKENS} tokens than the prompt has")
        except ValueError as exc:
            raise TraceError(f"{name}:{lineno}: {exc}") from None
        times.append(float(stamp) / 1000.0)
        prompts.append(prompt)
        outputs.append(output)
        hashes.append(tuple(ids))
    return _finish(name, "mooncake", times, prompts, outputs, hashes)

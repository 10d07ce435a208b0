"""Trace readers of the simulator: both formats, auto-detection, rate scaling, errors that name the line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from goodput.sim.trace import (
    MOONCAKE_BLOCK_TOKENS,
    TraceError,
    detect_format,
    fleet_prefix_hit_rate,
    parse_timestamp,
    parse_trace,
    read_azure,
    read_mooncake,
    replicate_rate,
    scale_rate,
)
from goodput.sim.traces import load_trace

AZURE = [
    "TIMESTAMP,ContextTokens,GeneratedTokens",
    "2023-11-16 18:15:46.6805900,374,44",
    "2023-11-16 18:15:50.9951690,396,109",
    "",
    "2023-11-16 18:15:51.0000001,1000,0",
]

MOONCAKE = [
    json.dumps({"timestamp": 0, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]}),
    json.dumps({"timestamp": 1500, "input_length": 1500, "output_length": 20, "hash_ids": [1, 2, 4]}),
    json.dumps({"timestamp": 1000, "input_length": 600, "output_length": 0, "hash_ids": [7, 8]}),
]


def test_azure_seven_fractional_digits_and_relative_times() -> None:
    t = read_azure(AZURE, "a.csv")
    assert len(t) == 3
    assert t.times[0] == 0.0
    assert t.times[1] == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)
    assert t.times[2] == pytest.approx(51.0000001 - 46.6805900, abs=1e-6)
    assert t.prompts.tolist() == [374, 396, 1000]
    assert t.outputs.tolist() == [44, 109, 1]  # a zero output is served as one token
    assert parse_timestamp("12.5") == 12.5


def test_azure_columns_in_any_order() -> None:
    t = read_azure(["GeneratedTokens,TIMESTAMP,ContextTokens", "5,0,100", "6,2.5,200"], "x")
    assert t.prompts.tolist() == [100, 200] and t.outputs.tolist() == [5, 6] and t.times.tolist() == [0.0, 2.5]


@pytest.mark.parametrize("bad, line, words", [
    ("2023-11-16 18:15:52.1,abc,3", 6, "ContextTokens 'abc' is not a number"),
    ("2023-11-16 18:15:52.1,12.5,3", 6, "not a whole number"),
    ("2023-11-16 18:15:52.1,-4,3", 6, "at least 1"),
    ("yesterday,10,3", 6, "TIMESTAMP 'yesterday'"),
    ("2023-11-16 18:15:52.1,10", 6, "expected 3 columns"),
    ("2023-13-16 18:15:52.1,10,3", 6, "TIMESTAMP"),
])
def test_azure_malformed_line_is_named(bad: str, line: int, words: str) -> None:
    with pytest.raises(TraceError, match=rf"^a\.csv:{line}: .*{words}"):
        read_azure([*AZURE, bad], "a.csv")


def test_azure_bad_header_and_empty() -> None:
    with pytest.raises(TraceError, match=r"a\.csv:1: the header must name .*missing GeneratedTokens"):
        read_azure(["TIMESTAMP,ContextTokens", "0,1"], "a.csv")
    with pytest.raises(TraceError, match="no requests"):
        read_azure(AZURE[:1], "a.csv")
    with pytest.raises(TraceError, match="empty"):
        parse_trace(["", "  "], "auto", "e.csv")


def test_mooncake_sorted_ms_and_hashes() -> None:
    t = read_mooncake(MOONCAKE, "m.jsonl")
    assert t.times.tolist() == [0.0, 1.0, 1.5]
    assert t.prompts.tolist() == [1100, 600, 1500]
    assert t.outputs.tolist() == [10, 1, 20]
    assert t.hash_ids == ((1, 2, 3), (7, 8), (1, 2, 4))


@pytest.mark.parametrize("bad, words", [
    ("{not json", "not a JSON object"),
    ("[1, 2]", "expected a JSON object"),
    ('{"timestamp": 5, "output_length": 3}', "missing 'input_length'"),
    ('{"timestamp": "soon", "input_length": 3, "output_length": 3}', "timestamp 'soon'"),
    ('{"timestamp": 5, "input_length": 0, "output_length": 3}', "input_length 0 must be at least 1"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": "x"}', "hash_ids must be a list"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": [1, 2]}', "more blocks"),
])
def test_mooncake_malformed_line_is_named(bad: str, words: str) -> None:
    with pytest.raises(TraceError, match=rf"^m\.jsonl:5: .*{words}"):
        read_mooncake([*MOONCAKE, "", bad], "m.jsonl")


def test_format_detection() -> None:
    assert detect_format(["", *AZURE]) == "azure"
    assert detect_format(MOONCAKE) == "mooncake"
    assert parse_trace(MOONCAKE).format == "mooncake"
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        detect_format(["time,in,out", "0,1,1"], "x.csv")
    with pytest.raises(TraceError, match=r"x\.csv:2: "):
        parse_trace(["TIMESTAMP,ContextTokens,GeneratedTokens", "0,1"], "azure", "x.csv")


def test_rate_scaling_compress_and_replicate() -> None:
    t = read_azure(AZURE, "a.csv")
    fast = scale_rate(t, 4.0)
    assert np.allclose(fast.times, t.times / 4.0) and fast.rate_scale == 4.0 and len(fast) == len(t)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{k},100,10" for k in range(1000)]
    base = parse_trace(lines)
    more = replicate_rate(base, 2.5, seed=1)
    assert 2400 <= len(more) <= 2600
    assert more.span_s == pytest.approx(base.span_s, abs=1.0)
    assert np.all(np.diff(more.times) >= 0)
    with pytest.raises(TraceError):
        scale_rate(t, 0.0)


def test_replicated_copies_are_independent_users_not_clumps() -> None:
    """x4 the rate of a Poisson trace stays Poisson-like (index of dispersion of 1 s counts near 1):
    copies are shifted independently, not placed next to their original (which would give ~4)."""
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(0.5, 4000))
    base = parse_trace(["TIMESTAMP,ContextTokens,GeneratedTokens"]
                       + [f"{t:.4f},100,10" for t in times])
    more = replicate_rate(base, 4.0, seed=3)
    counts = np.bincount(more.times.astype(int))[:-1]
    assert len(more) == 4 * len(base)
    assert 0.8 < counts.var() / counts.mean() < 1.25
    assert counts.mean() == pytest.approx(8.0, rel=0.03)


def test_fleet_prefix_hit_rate_known_answer() -> None:
    t = read_mooncake(MOONCAKE, "m.jsonl")
    # Request 3 (1500 tokens) finds blocks 1, 2 of request 1: 2 x 512 tokens hit.
    assert fleet_prefix_hit_rate(t) == pytest.approx(2 * MOONCAKE_BLOCK_TOKENS / (1100 + 600 + 1500))


def test_bundled_traces_load() -> None:
    conv = load_trace("azure-conv")
    assert len(conv) == 19366 and conv.format == "azure"
    assert 3400 < conv.span_s < 3600

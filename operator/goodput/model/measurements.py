"""Predicting published serving measurements, row by row, to check the capacity model.

The CSV format is the one of ``shared/data/measurements/README.md``. Each load mode maps to
one way of driving the replica model:

* ``static_batch``: a batch of identical requests prefilled together, then decoded together.
* ``closed_loop_concurrency``: N clients, each sending its next request when the last ends;
  the engine batches continuously with chunked prefill, and clients beyond the batch the KV
  cache holds wait in a queue.
* ``offline_max``: all requests at once; the engine keeps the largest batch its KV cache and
  token budget allow.

Assumptions shared by every row (no per-row or per-source tuning): FP8 and FP4 checkpoints in
these reports keep an FP8 KV cache (ModelOpt/TensorRT-LLM and NIM FP8 profiles quantize it);
16-bit checkpoints keep a 16-bit KV cache; engines reserve a request's whole context
(input + output) when admitting it; the token budget per step is 8,192.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from goodput.model import goodput as steady  # the planner's own steady state (called through the module)
from goodput.model.architecture import get_model
from goodput.model.efficiency import AcceleratorScale, Efficiency, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel

METRICS = (
    "decode_step_ms",
    "prefill_batch_ms",
    "ttft_batch1_ms",
    "ttft_mean_ms",
    "itl_mean_ms",
    "output_tokens_per_s",
    "max_output_tokens_per_s",
    "total_tokens_per_s",
    "e2e_mean_ms",
)
LOAD_MODES = ("static_batch", "closed_loop_concurrency", "offline_max")
# The columns parse_row needs; a file without them is not a measurements CSV (see ../shared/data/measurements).
MEASUREMENT_COLUMNS = ("model_id", "precision_id", "gpu_id", "num_gpus", "tp", "input_len", "output_len",
                       "load_mode", "load", "metric", "value")

STEP_TOKEN_BUDGET = 8192
# Batch cap of an engine left to choose its own batch (trtllm-bench, vLLM offline benchmarks).
OFFLINE_MAX_BATCH = 2048
_PER_GPU = re.compile(r"(tok/s/gpu|per[ -]gpu|/gpu\b)", re.IGNORECASE)


@dataclass(frozen=True)
class Measurement:
    model_id: str
    gpu_id: str
    precision: str
    num_gpus: int
    tp: int
    input_len: int
    output_len: int
    load_mode: str
    load: int | None  # None for offline_max
    metric: str
    value: float
    notes: str = ""
    engine: str = ""
    row: Mapping[str, str] = field(default_factory=dict)

    @property
    def engine_class(self) -> str:
        return engine_class_of(self.engine, self.row.get("engine_class", ""))

    @property
    def per_gpu(self) -> bool:
        return bool(_PER_GPU.search(self.notes))


def parse_row(row: Mapping[str, str]) -> Measurement:
    """Parse one CSV row; raise CapacityModelError naming the bad field."""

    def need(name: str) -> str:
        value = (row.get(name) or "").strip()
        if not value:
            raise CapacityModelError(f"missing {name}")
        return value

    def integer(name: str) -> int:
        try:
            return int(float(need(name)))
        except ValueError as exc:
            raise CapacityModelError(f"{name}={row.get(name)!r} is not a number") from exc

    metric = need("metric")
    if metric not in METRICS:
        raise CapacityModelError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    load_mode = need("load_mode")
    if load_mode not in LOAD_MODES:
        raise CapacityModelError(f"unknown load_mode {load_mode!r}; known: {', '.join(LOAD_MODES)}")
    load_text = need("load")
    load = None if load_text == "max" else integer("load")
    try:
        value = float(need("value"))
    except ValueError as exc:
        raise CapacityModelError(f"value={row.get('value')!r} is not a number") from exc
    if not (math.isfinite(value) and value > 0):
        raise CapacityModelError(f"value={row.get('value')!r} must be a positive finite number")
    return Measurement(
        model_id=need("model_id"),
        gpu_id=need("gpu_id"),
        precision=need("precision_id"),
        num_gpus=integer("num_gpus"),
        tp=integer("tp"),
        input_len=integer("input_len"),
        output_len=integer("output_len"),
        load_mode=load_mode,
        load=load,
        metric=metric,
        value=value,
        notes=row.get("notes", "") or "",
        engine=row.get("engine", "") or "",
        row=dict(row),
    )


# Engines named in published reports, by class. An engine without CUDA graphs launches every
# kernel from the host. The Splitwise profiling engine is not named; it is classed by what its
# profile shows: a decode step of Llama-2-70B at TP8 on A100 takes 43 ms where the bandwidth
# roofline gives 11 ms, the per-step overhead of eager execution, 4x any engine with graphs.
_EAGER_MARKERS = ("eager", "without cuda graph", "no cuda graph", "transformers", "unspecified (splitwise")


def engine_class_of(engine: str, explicit: str = "") -> str:
    """The engine class of a measurement: an explicit ``engine_class`` column, else from its
    ``engine`` text; engines with CUDA graphs (vLLM V1, TensorRT-LLM, SGLang, NIM) by default."""
    if explicit.strip():
        return explicit.strip()
    text = engine.lower()
    return "eager" if any(marker in text for marker in _EAGER_MARKERS) else "cuda-graph"


Factors = Efficiency | Mapping[str, Efficiency] | None


def _efficiency_for(m: Measurement, efficiency: Factors) -> Efficiency:
    """One set of factors for every row, one per engine class, or the shipped ones of the row's class."""
    if isinstance(efficiency, Efficiency):
        return efficiency
    klass = m.engine_class
    if efficiency is not None and klass in efficiency:
        return efficiency[klass]
    return calibrated_efficiency("vllm-eager" if klass == "eager" else "vllm")


def replica_for(m: Measurement, efficiency: Factors = None, scale: AcceleratorScale | None = None) -> ReplicaModel:
    kv = "fp8" if m.precision in ("fp8", "fp4") else "auto"
    return ReplicaModel(
        get_model(m.model_id),
        get_accelerator(m.gpu_id),
        m.precision,
        m.tp,
        kv_cache_dtype=kv,
        efficiency=_efficiency_for(m, efficiency),
        max_num_seqs=OFFLINE_MAX_BATCH if m.load_mode == "offline_max" else 256,
        max_num_batched_tokens=STEP_TOKEN_BUDGET,
        scale=scale,
    )


def _static_batch_s(r: ReplicaModel, batch: int, input_len: int, output_len: int) -> float:
    """Prefill the batch together, then decode output_len - 1 further steps (the first token
    comes out of the prefill)."""
    prefill = float(r.prefill_s(float(batch), float(input_len)))
    if output_len <= 1:
        return prefill
    contexts = input_len + np.arange(1, output_len, dtype=np.float64)
    decode = r.decode_step_s(np.full_like(contexts, float(batch)), contexts)
    return prefill + float(np.sum(decode))


@dataclass(frozen=True)
class SteadyState:
    """Continuous batching with chunked prefill at a fixed running batch."""

    batch: float
    step_mean_s: float
    chunk_step_s: float
    prefill_s: float
    requests_per_s: float


def continuous_batching(r: ReplicaModel, batch: float, input_len: float, output_len: float) -> SteadyState:
    """A replica that keeps ``batch`` sequences running; every finished sequence is replaced.

    The planner's own steady state (``goodput.aggregated_steady_state``) for requests all alike,
    so ``validate`` scores the formula the planner plans with. If even every step carrying a
    full chunk cannot keep up with the prompts, the batch shrinks to what the budget sustains.
    """
    shape = steady.RequestShape.fixed(max(input_len, 1.0), max(output_len, 1.0))
    b = max(min(batch, steady.sustainable_batch(r, shape)), 1.0)
    st = steady.aggregated_steady_state(r, shape, np.array([b]))
    prefill = float(steady.prompt_service_s(r, shape, st)[0, 0])
    step = float(st["step"][0])
    return SteadyState(b, step, float(st["t_chunk"][0]), prefill, float(st["rate"][0]))


def _closed_loop(r: ReplicaModel, clients: int, input_len: int, output_len: int) -> dict[str, float]:
    max_batch = max(r.max_batch(input_len + output_len), 1)
    running = min(clients, max_batch)
    state = continuous_batching(r, running, input_len, output_len)
    itl = state.step_mean_s
    cycle = state.prefill_s + (output_len - 1) * itl
    if clients > state.batch:
        # Clients beyond the running batch queue for a slot: Little's law on the queue.
        rate = state.batch / cycle
        ttft = (clients - state.batch) / rate + state.prefill_s
    else:
        rate = clients / cycle
        # Prompts of the other clients can hold the chunk budget: M/D/1 mean wait.
        rho = min(rate * state.prefill_s * (clients - 1) / max(clients, 1), 0.95)
        ttft = state.prefill_s + rho * state.prefill_s / (2.0 * (1.0 - rho))
        rate = clients / (ttft + (output_len - 1) * itl)
    return {"ttft_s": ttft, "itl_s": itl, "output_tokens_per_s": rate * output_len}


def predict(m: Measurement, efficiency: Factors = None, scale: AcceleratorScale | None = None) -> float:
    """The model's prediction of one measurement, in the row's unit."""
    r = replica_for(m, efficiency, scale)
    replica_share = 1.0 / m.tp if m.per_gpu else 1.0
    if m.load_mode == "offline_max":
        if m.metric != "max_output_tokens_per_s":
            raise CapacityModelError(f"offline_max rows predict max_output_tokens_per_s, not {m.metric}")
        batch = max(r.max_batch(m.input_len + m.output_len), 1)
        state = continuous_batching(r, batch, m.input_len, m.output_len)
        return state.requests_per_s * m.output_len * replica_share
    if m.load is None or m.load < 1:
        raise CapacityModelError(f"{m.load_mode} needs a positive integer load")
    if m.load_mode == "closed_loop_concurrency":
        result = _closed_loop(r, m.load, m.input_len, m.output_len)
        if m.metric == "ttft_mean_ms":
            return result["ttft_s"] * 1e3
        if m.metric == "itl_mean_ms":
            return result["itl_s"] * 1e3
        if m.metric == "output_tokens_per_s":
            return result["output_tokens_per_s"] * replica_share
        raise CapacityModelError(f"closed-loop rows cannot predict {m.metric}")
    # static batch
    b = m.load
    if m.metric == "decode_step_ms":
        return float(r.decode_step_s(float(b), float(m.input_len))) * 1e3
    if m.metric in ("prefill_batch_ms", "ttft_batch1_ms"):
        return float(r.prefill_s(float(b), float(m.input_len))) * 1e3
    total_s = _static_batch_s(r, b, m.input_len, m.output_len)
    if m.metric == "e2e_mean_ms":
        return total_s * 1e3
    if m.metric == "output_tokens_per_s":
        return b * m.output_len / total_s * replica_share
    if m.metric == "total_tokens_per_s":
        return b * (m.input_len + m.output_len) / total_s * replica_share
    raise CapacityModelError(f"static-batch rows cannot predict {m.metric}")


@dataclass
class RowResult:
    row: Mapping[str, str]
    metric: str
    measured: float | None
    predicted: float | None
    ape: float | None
    error: str | None = None


def evaluate(rows: Iterable[Mapping[str, str]], efficiency: Factors = None,
             scale: AcceleratorScale | None = None) -> list[RowResult]:
    """Predict every row. A row that cannot be predicted is reported with its error, never dropped.
    ``efficiency``: one set for all rows, a mapping engine class -> set, or None for the shipped
    factors of each row's engine class. ``scale`` overrides the accelerator scale (fitting it)."""
    results = []
    for row in rows:
        try:
            m = parse_row(row)
            predicted = predict(m, efficiency, scale)
            if not math.isfinite(predicted) or predicted <= 0:
                raise CapacityModelError(f"prediction is not a positive number ({predicted})")
            ape = abs(predicted - m.value) / abs(m.value) if m.value else math.inf
            results.append(RowResult(row, m.metric, m.value, predicted, ape))
        except (CapacityModelError, KeyError) as exc:
            results.append(RowResult(row, str(row.get("metric", "")), None, None, None, error=str(exc)))
    return results


def _stats(apes: list[float]) -> dict[str, float | int]:
    if not apes:
        return {"count": 0}
    arr = np.asarray(apes, dtype=np.float64)
    return {
        "count": int(arr.size),
        "median_ape": float(np.median(arr)),
        "p90_ape": float(np.percentile(arr, 90)),
        "mean_ape": float(np.mean(arr)),
        "max_ape": float(np.max(arr)),
    }


def summarize(results: list[RowResult]) -> dict[str, object]:
    ok = [r for r in results if r.ape is not None]
    by_metric: dict[str, list[float]] = {}
    for r in ok:
        assert r.ape is not None
        by_metric.setdefault(r.metric, []).append(r.ape)
    return {
        "rows": len(results),
        "predicted": len(ok),
        "errors": len(results) - len(ok),
        "overall": _stats([r.ape for r in ok if r.ape is not None]),
        "per_metric": {k: _stats(v) for k, v in sorted(by_metric.items())},
    }

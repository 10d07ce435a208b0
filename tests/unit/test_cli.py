"""The `goodput` command line: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import goodput
from goodput.cli import main

GPUS_CSV = Path(goodput.__file__).resolve().parent / "data" / "gpus.csv"
MODELS_CSV = Path(goodput.__file__).resolve().parent / "data" / "models.csv"

PREDICT_KEYS = (
    "weights_per_gpu_gib",
    "kv_capacity_tokens",
    "max_batch",
    "fits",
    "decode_step_ms",
    "prefill_batch_ms",
    "ttft_batch1_ms",
    "output_tokens_per_s",
)

LLAMA_8B_CONFIG = {
    "_name_or_path": "",
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def run_json(capsys, argv: list[str]) -> tuple[int, dict]:
    rc = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert captured.err == ""
    return rc, json.loads(captured.out)


def run_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    err = captured.err
    assert err.startswith("goodput: error: ")
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line, no traceback
    return err


PLAN_ARGS = [
    "plan", "--model", "llama-3.1-70b", "--precision", "fp8", "--gpu", "h100-sxm-80gb,h200-sxm-141gb",
    "--rate", "5", "--input-len", "2000", "--input-len-p99", "6000", "--output-len", "300",
    "--ttft-p99-ms", "2000", "--itl-p99-ms", "60",
]


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------
def test_predict_json_llama70b_fp8_tp2(capsys):
    rc, out = run_json(capsys, ["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb",
                                "--precision", "fp8", "--tp", "2", "--input-len", "2048", "--output-len", "256",
                                "--batch", "8"])
    assert rc == 0
    for key in PREDICT_KEYS:
        assert key in out, key
    assert (out["model"], out["gpu"], out["precision"], out["tp"], out["batch"]) == (
        "llama-3.1-70b", "h100-sxm-80gb", "fp8", 2, 8)
    # 72.65e9 B of weights (fp8, 16-bit embeddings) / 2 GPUs = 33.8 GiB per GPU.
    assert out["weights_per_gpu_gib"] == pytest.approx(33.83, abs=0.05)
    assert out["fits"] is True
    # About 36 GiB of KV per GPU at 160 KiB per token per GPU: over 200k tokens.
    assert 100_000 < out["kv_capacity_tokens"] < 400_000
    # max_batch: capacity // 2304-token sequences, at most max_num_seqs 256.
    assert out["max_batch"] == min(256, out["kv_capacity_tokens"] // 2304)
    assert 10.8 < out["decode_step_ms"] < 40.0
    assert out["decode_bound"] == "memory"
    assert out["ttft_batch1_ms"] < out["prefill_batch_ms"]
    assert 8 * out["ttft_batch1_ms"] * 0.5 < out["prefill_batch_ms"] < 8 * out["ttft_batch1_ms"] * 1.5
    assert out["output_tokens_per_s"] == pytest.approx(8 / (out["decode_step_ms"] / 1e3), rel=1e-3)


def test_predict_picks_smallest_tp(capsys):
    rc, out = run_json(capsys, ["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb",
                                "--precision", "bf16", "--input-len", "3000", "--output-len", "1000"])
    assert rc == 0
    assert out["tp"] == 2 and out["fits"] is True and out["batch"] == 1
    assert out["ttft_batch1_ms"] == pytest.approx(out["prefill_batch_ms"])


def test_predict_kv_dtype_fp8_halves_kv_bytes(capsys):
    argv = ["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "fp8", "--tp", "2",
            "--input-len", "1000", "--output-len", "100"]
    _, auto = run_json(capsys, argv)
    _, fp8 = run_json(capsys, [*argv, "--kv-dtype", "fp8"])
    assert auto["kv_bytes_per_token"] == 327680 and fp8["kv_bytes_per_token"] == 163840
    assert fp8["kv_capacity_tokens"] == pytest.approx(2 * auto["kv_capacity_tokens"], abs=2)


def test_predict_text_output(capsys):
    rc = main(["predict", "--model", "llama-3.1-8b", "--gpu", "l40s", "--precision", "fp8",
               "--input-len", "1000", "--output-len", "200", "--batch", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "NVIDIA L40S" in out and "decode step" in out


def test_predict_explicit_tp_that_does_not_fit_reports_it(capsys):
    # Bad input (issue 15): one line saying why, exit 2, nothing on stdout.
    rc = main(["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--tp", "1",
               "--input-len", "1000", "--output-len", "100", "--json"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert "does not fit at TP1" in captured.err and "GiB of weights per GPU" in captured.err


def test_predict_refuses_a_tp_the_crd_does_not_allow(capsys):
    rc = main(["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "fp8", "--tp", "3",
               "--input-len", "1000", "--output-len", "100"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tp 3" in err and "1, 2, 4, 8" in err and err.count("\n") == 1


def test_predict_batch_beyond_the_kv_cache_exits_2(capsys):
    rc = main(["predict", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "fp8", "--tp", "2",
               "--batch", "5000", "--input-len", "1000", "--output-len", "1000"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert "--batch 5000 does not fit" in captured.err and "use --batch" in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(["--model", "llama-3.1-70b", "--gpu", "tpu-v5", "--precision", "fp8"], "unknown GPU id 'tpu-v5'",
                     id="unknown-gpu"),
        pytest.param(["--model", "gpt-17", "--gpu", "h100-sxm-80gb", "--precision", "fp8"], "unknown model 'gpt-17'",
                     id="unknown-model"),
        pytest.param(["--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "fp4"], "FP4",
                     id="fp4-on-h100"),
        pytest.param(["--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--precision", "fp4", "--tp", "2"], "FP4",
                     id="fp4-on-h100-tp2"),
        pytest.param(["--model", "llama-3.1-405b", "--gpu", "l4-24gb", "--precision", "bf16"], "does not fit",
                     id="405b-on-l4"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "a100-sxm-80gb", "--precision", "fp8"], "FP8 tensor cores",
                     id="fp8-on-a100"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "int3"],
                     "unknown weight precision", id="unknown-precision"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--kv-dtype",
                      "int4"], "unknown KV-cache dtype", id="unknown-kv-dtype"),
        pytest.param(["--model", "qwen2.5-7b", "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--tp", "8"],
                     "tensor-parallel degree 8", id="invalid-tp"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "h100", "--precision", "bf16"], "unknown GPU id 'h100'",
                     id="ambiguous-gpu-prefix"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--price",
                      "h100-sxm-80gb=cheap"], "is not a number", id="bad-price"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16", "--price",
                      "h100-sxm-80gb"], "--price takes GPU=USD", id="price-without-equals"),
    ],
)
def test_predict_errors_are_one_line_exit_2(capsys, argv, needle):
    err = run_error(capsys, ["predict", *argv, "--input-len", "4096", "--output-len", "256", "--json"])
    assert needle in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(["--model", "llama-3.1-8b", "--gpu", "tpu-v5"], "unknown GPU id", id="unknown-gpu"),
        pytest.param(["--model", "gpt-17", "--gpu", "h100-sxm-80gb"], "unknown model", id="unknown-model"),
        pytest.param(["--model", "llama-3.1-8b", "--gpu", ","], "--gpu needs at least one GPU id", id="empty-gpu"),
    ],
)
def test_plan_errors_are_one_line_exit_2(capsys, argv, needle):
    err = run_error(capsys, ["plan", *argv, "--precision", "fp8", "--rate", "1", "--input-len", "100",
                             "--output-len", "100", "--ttft-p99-ms", "500", "--itl-p99-ms", "50"])
    assert needle in err


def test_plan_without_lengths_is_an_error(capsys):
    err = run_error(capsys, ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
                             "--rate", "1", "--ttft-p99-ms", "500", "--itl-p99-ms", "50"])
    assert "--input-len and --output-len" in err


def test_plan_prefix_hit_rate_of_one_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
              "--rate", "1", "--input-len", "100", "--output-len", "100", "--prefix-hit-rate", "1",
              "--ttft-p99-ms", "500", "--itl-p99-ms", "50"])
    assert info.value.code == 2
    assert "--prefix-hit-rate: '1' must be below 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb", "--rate", "-1",
         "--input-len", "100", "--output-len", "100", "--ttft-p99-ms", "500", "--itl-p99-ms", "50"],
        ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb", "--rate", "1",
         "--input-len", "100", "--output-len", "100", "--ttft-p99-ms", "0", "--itl-p99-ms", "50"],
        ["predict", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb", "--batch", "0",
         "--input-len", "100", "--output-len", "100"],
        ["predict", "--precision", "fp8", "--gpu", "h100-sxm-80gb", "--input-len", "100", "--output-len", "100"],
    ],
)
def test_bad_arguments_exit_2_via_argparse(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "gpu", "precision", "needle"),
    [("llama-3.1-70b", "h100-sxm-80gb", "fp4", "FP4"), ("llama-3.1-405b", "l4-24gb", "bf16", "does not fit")],
)
def test_plan_with_no_possible_configuration(capsys, model, gpu, precision, needle):
    # `plan` answers "no plan" (exit 1) rather than failing: with several GPUs some may be impossible.
    rc, out = run_json(capsys, ["plan", "--model", model, "--precision", precision, "--gpu", gpu, "--rate", "1",
                                "--input-len", "1000", "--output-len", "100", "--ttft-p99-ms", "2000",
                                "--itl-p99-ms", "100"])
    assert rc == 1
    assert out["chosen"] is None
    assert needle in out["message"]
    assert out["rejected"] and all(r["reason"] for r in out["rejected"])


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def test_plan_json_chosen_within_slos(capsys):
    rc, out = run_json(capsys, PLAN_ARGS)
    assert rc == 0
    assert out["model"] == "llama-3.1-70b" and out["precision"] == "fp8"
    assert out["slo"] == {"ttft_ms": 2000.0, "itl_ms": 60.0, "percentile": 99.0}
    assert out["demand"]["rate_rps"] == 5.0 and out["demand"]["input_len_mean"] == pytest.approx(2000, abs=0.5)
    c = out["chosen"]
    assert c is not None and out["limited_by_budget"] is False
    assert c["gpu"] in ("h100-sxm-80gb", "h200-sxm-141gb") and c["mode"] in ("aggregated", "disaggregated")
    assert 0 < c["predicted_ttft_ms"] <= 2000.0
    assert 0 < c["predicted_itl_ms"] <= 60.0
    assert c["served_rps"] >= 5.0
    assert c["gpus"] == sum(p["gpus"] for p in c["pools"])
    for p in c["pools"]:
        assert p["gpus"] == p["tp"] * p["replicas"] and p["goodput_rps_per_replica"] > 0
        assert p["limit_at_goodput"]
    assert c["usd_per_hour"] > 0 and c["usd_per_million_tokens"] > 0
    assert c["reason"] == ""
    assert out["alternatives"]
    for a in out["alternatives"]:
        assert a["reason"], a
        assert a["usd_per_hour"] >= c["usd_per_hour"] - 1e-9  # the chosen one is the cheapest
    assert "within the SLOs" in out["message"]


def test_plan_text_output(capsys):
    assert main(PLAN_ARGS) == 0
    out = capsys.readouterr().out
    assert out.startswith("demand: 5 req/s")
    assert "PLAN:" in out and "alternatives:" in out and "planned in" in out


def test_plan_price_override_changes_cost(capsys):
    base = [*PLAN_ARGS[:6], "h100-sxm-80gb", *PLAN_ARGS[7:]]
    _, normal = run_json(capsys, base)
    _, cheap = run_json(capsys, [*base, "--price", "h100-sxm-80gb=1.0"])
    assert normal["chosen"]["gpus"] == cheap["chosen"]["gpus"]
    assert cheap["chosen"]["usd_per_hour"] == pytest.approx(cheap["chosen"]["gpus"] * 1.0)
    assert normal["chosen"]["usd_per_hour"] == pytest.approx(normal["chosen"]["gpus"] * 6.88)


def test_plan_limited_by_budget(capsys):
    # 50 req/s of Llama-3.1-8B needs several H100s; one GPU serves only part of it.
    rc, out = run_json(capsys, ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
                                "--rate", "50", "--input-len", "2000", "--output-len", "500",
                                "--ttft-p99-ms", "1000", "--itl-p99-ms", "40", "--max-gpus", "1"])
    assert rc == 0
    assert out["limited_by_budget"] is True
    c = out["chosen"]
    assert c is not None and c["gpus"] == 1
    assert 0 < c["served_rps"] < 50
    assert "over the budget" in out["message"] and "1 GPUs serve" in out["message"]
    for a in out["alternatives"]:
        assert a["reason"].startswith("over budget")


def test_plan_limited_by_cost_budget(capsys):
    rc, out = run_json(capsys, ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
                                "--rate", "50", "--input-len", "2000", "--output-len", "500",
                                "--ttft-p99-ms", "1000", "--itl-p99-ms", "40", "--max-cost-per-hour", "14"])
    assert rc == 0
    assert out["limited_by_budget"] is True
    assert out["chosen"]["usd_per_hour"] <= 14.0


def test_plan_budget_too_small_for_any_replica(capsys):
    # Llama-3.1-70B bf16 needs TP2 on H100: a one-GPU budget admits no configuration at all.
    rc, out = run_json(capsys, ["plan", "--model", "llama-3.1-70b", "--precision", "bf16", "--gpu", "h100-sxm-80gb",
                                "--rate", "5", "--input-len", "1000", "--output-len", "200",
                                "--ttft-p99-ms", "2000", "--itl-p99-ms", "80", "--max-gpus", "1"])
    assert rc == 1
    assert out["chosen"] is None and out["limited_by_budget"] is True
    assert "no configuration fits" in out["message"]


@pytest.mark.parametrize("mode", ["aggregated", "disaggregated"])
def test_plan_mode_is_respected(capsys, mode):
    rc, out = run_json(capsys, ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
                                "--rate", "10", "--input-len", "1000", "--output-len", "200",
                                "--ttft-p99-ms", "1000", "--itl-p99-ms", "50", "--mode", mode])
    assert rc == 0
    assert out["chosen"]["mode"] == mode
    assert all(a["mode"] == mode for a in out["alternatives"])
    roles = [p["role"] for p in out["chosen"]["pools"]]
    assert roles == (["aggregated"] if mode == "aggregated" else ["prefill", "decode"])


def test_plan_disaggregated_chosen_within_ttft_slo(capsys):
    rc, out = run_json(capsys, ["plan", "--model", "llama-3.1-70b", "--precision", "fp8", "--gpu", "h100-sxm-80gb",
                                "--rate", "40", "--input-len", "1000", "--output-len", "1000",
                                "--ttft-p99-ms", "250", "--itl-p99-ms", "100", "--mode", "disaggregated"])
    assert rc == 0
    c = out["chosen"]
    assert c["predicted_itl_ms"] <= 100.0
    assert c["predicted_ttft_ms"] <= 250.0


# ---------------------------------------------------------------------------------------------
# --model-config and --lengths-from
# ---------------------------------------------------------------------------------------------
def test_model_config_file(tmp_path, capsys):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    config = folder / "config.json"
    config.write_text(json.dumps(LLAMA_8B_CONFIG), encoding="utf-8")
    rc, out = run_json(capsys, ["predict", "--model-config", str(config), "--gpu", "h100-sxm-80gb",
                                "--precision", "bf16", "--input-len", "1000", "--output-len", "100"])
    assert rc == 0
    assert out["model"] == "my-llama"  # named after the folder holding config.json
    # 8,029,995,008 parameters x 2 B = 14.96 GiB.
    assert out["weights_total_gib"] == pytest.approx(8_029_995_008 * 2 / 2**30, abs=0.01)
    assert out["tp"] == 1 and out["kv_bytes_per_token"] == 131072
    _, catalog = run_json(capsys, ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
                                   "--precision", "bf16", "--input-len", "1000", "--output-len", "100"])
    assert out["decode_step_ms"] == pytest.approx(catalog["decode_step_ms"], rel=0.01)

    rc, plan_out = run_json(capsys, ["plan", "--model-config", str(config), "--gpu", "h100-sxm-80gb",
                                     "--precision", "bf16", "--rate", "2", "--input-len", "1000", "--output-len",
                                     "100", "--ttft-p99-ms", "1000", "--itl-p99-ms", "50"])
    assert rc == 0 and plan_out["model"] == "my-llama" and plan_out["chosen"] is not None


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"), ("{}", "config.json lacks")],
)
def test_model_config_errors(tmp_path, capsys, content, needle):
    config = tmp_path / "config.json"
    config.write_text(content, encoding="utf-8")
    err = run_error(capsys, ["predict", "--model-config", str(config), "--gpu", "h100-sxm-80gb",
                             "--precision", "bf16", "--input-len", "1000", "--output-len", "100"])
    assert needle in err


def test_model_config_missing_file(tmp_path, capsys):
    err = run_error(capsys, ["predict", "--model-config", str(tmp_path / "nope.json"), "--gpu", "h100-sxm-80gb",
                             "--precision", "bf16", "--input-len", "1000", "--output-len", "100"])
    assert "cannot read model config" in err


def write_trace(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TRACE_ARGS = ["plan", "--model", "llama-3.1-8b", "--precision", "fp8", "--gpu", "h100-sxm-80gb", "--rate", "2",
              "--ttft-p99-ms", "1000", "--itl-p99-ms", "50"]


def test_lengths_from_azure_trace(tmp_path, capsys):
    rows = [(f"2023-11-16 18:15:{i:02d}.000", str(100 * (i + 1)), str(10 + i)) for i in range(40)]
    trace = write_trace(tmp_path / "trace.csv", rows)
    rc, out = run_json(capsys, [*TRACE_ARGS, "--lengths-from", str(trace)])
    assert rc == 0
    # Prompts 100..4000 (mean 2050), outputs 10..49 (mean 29.5); quantile bins approximate the means.
    assert out["demand"]["input_len_mean"] == pytest.approx(2050, rel=0.05)
    assert out["demand"]["output_len_mean"] == pytest.approx(29.5, rel=0.05)
    assert out["demand"]["input_len_p99"] <= 4000
    assert out["chosen"] is not None


def test_lengths_from_bundled_trace(capsys):
    # azure-conv: 19,366 requests, prompts mean 1154.7 tokens, outputs mean 211.1 tokens.
    rc, out = run_json(capsys, [*TRACE_ARGS, "--lengths-from", "azure-conv"])
    assert rc == 0
    assert out["demand"]["input_len_mean"] == pytest.approx(1154.7, rel=0.05)
    assert out["demand"]["output_len_mean"] == pytest.approx(211.1, rel=0.05)
    assert out["chosen"] is not None


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        ([("0", "100", "10"), ("1", "abc", "10")], 3, "ContextTokens 'abc' is not a number"),
        ([("0", "100", "10"), ("1", "200", "20"), ("2", "300", "")], 4, "GeneratedTokens '' is not a number"),
        ([("0", "100", "10"), ("1", "200", "20"), ("2", "300", "30"), ("3", "400")], 5, "expected 3 columns"),
        ([("0", "-5", "10")], 2, "ContextTokens '-5' must be at least 1"),
        ([("0", "nan", "10")], 2, "ContextTokens 'nan' is not a whole number"),
        ([("0", "1e30", "10")], 2, "ContextTokens '1e30' is more than 10,000,000 tokens"),
    ],
)
def test_lengths_from_malformed_line(tmp_path, capsys, rows, line, message):
    """--lengths-from reads with the simulator's trace reader: bad rows are named by line, never averaged in."""
    trace = write_trace(tmp_path / "trace.csv", rows)
    err = run_error(capsys, [*TRACE_ARGS, "--lengths-from", str(trace)])
    assert f"{trace}:{line}: {message}" in err


def test_lengths_from_wrong_columns(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("time,prompt,completion\n1,100,10\n", encoding="utf-8")
    err = run_error(capsys, [*TRACE_ARGS, "--lengths-from", str(trace)])
    assert f"{trace}: cannot tell the trace format" in err


def test_lengths_from_empty_or_missing(tmp_path, capsys):
    trace = write_trace(tmp_path / "empty.csv", [])
    assert "has no requests" in run_error(capsys, [*TRACE_ARGS, "--lengths-from", str(trace)])
    assert "cannot read" in run_error(capsys, [*TRACE_ARGS, "--lengths-from", str(tmp_path / "absent.csv")])


def test_lengths_from_malformed_line_after_blank_line(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n\n1,abc,20\n", encoding="utf-8")
    err = run_error(capsys, [*TRACE_ARGS, "--lengths-from", str(trace)])
    assert f"{trace}:4:" in err


# ---------------------------------------------------------------------------------------------
# catalog
# ---------------------------------------------------------------------------------------------
def test_catalog_gpus_json_lists_every_gpu(capsys):
    with GPUS_CSV.open(encoding="utf-8") as fh:
        expected = [r["gpu_id"] for r in csv.DictReader(fh)]
    rc = main(["catalog", "gpus", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["gpu_id"] for g in out] == expected
    h100 = next(g for g in out if g["gpu_id"] == "h100-sxm-80gb")
    assert h100["memory_gib"] == 80 and h100["hbm_tb_s"] == pytest.approx(3.35)
    assert h100["tflops"]["bf16"] == pytest.approx(989) and "fp4" not in h100["tflops"]
    assert all(g["usd_per_gpu_hour"] > 0 and g["price_source"] for g in out)


def test_catalog_models_json_lists_every_model(capsys):
    with MODELS_CSV.open(encoding="utf-8") as fh:
        expected = [r["model_id"] for r in csv.DictReader(fh)]
    assert main(["catalog", "models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["model_id"] for m in out] == expected
    mixtral = next(m for m in out if m["model_id"] == "mixtral-8x7b")
    assert mixtral["params_active_b"] == pytest.approx(12.88)


@pytest.mark.parametrize("what", ["gpus", "models"])
def test_catalog_text(capsys, what):
    assert main(["catalog", what]) == 0
    out = capsys.readouterr().out
    assert ("h100-sxm-80gb" if what == "gpus" else "llama-3.1-70b") in out

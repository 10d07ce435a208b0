"""Careless inputs, typed as a new user would: each exits 2 with one line naming what to fix, never a
traceback (the first-day issue's table). Argument errors come from argparse (usage, then one error line);
the others from `goodput`'s own check ("goodput: error: ..." alone)."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from goodput.cli import main

PLAN = ["plan", "--model", "llama-3.1-8b", "--precision", "bf16", "--gpu", "h100-sxm-80gb",
        "--input-len", "1000", "--output-len", "200", "--ttft-p99-ms", "1000", "--itl-p99-ms", "50"]
PLAN_RATE = [*PLAN, "--rate", "2"]
PREDICT = ["predict", "--model", "llama-3.1-8b", "--precision", "bf16", "--input-len", "100", "--output-len", "10"]
SIM = ["simulate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--precision", "bf16",
       "--ttft-p99-ms", "1000", "--itl-p99-ms", "50", "--policy", "static-peak", "--quiet"]
MEASUREMENTS_HEADER = "model_id,precision_id,gpu_id,num_gpus,tp,input_len,output_len,load_mode,load,metric,value"


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.err


def files(tmp: Path) -> dict[str, str]:
    """Files the cases name, as `{name}` in their argv."""
    made = {
        "latin1": (tmp / "latin1.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10 caf\xe9\n".encode("latin-1")),
        "azure": (tmp / "azure.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n1,200,20\n"),
        "empty": (tmp / "empty.csv", b""),
        "header_only": (tmp / "header.csv", (MEASUREMENTS_HEADER + "\n").encode()),
        "wrong_columns": (tmp / "wrong.csv", b"model,gpu,value\nllama,h100,3\n"),
        "huge_tokens": (tmp / "huge.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n0,1e30,10\n"),
        "no_layers": (tmp / "cfg" / "config.json", b'{"hidden_size": 4096, "num_attention_heads": 32, '
                      b'"vocab_size": 32000}'),
    }
    for path, data in made.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {k: str(p) for k, (p, _) in made.items()}


CASES: list[tuple[str, list[str], str]] = [
    ("rate above the CRD's bound", [*PLAN, "--rate", "1e30"], "--rate: '1e30' must be at most 1e+06"),
    ("rate not a number", [*PLAN, "--rate", "nan"], "--rate: 'nan' is not a finite number"),
    ("negative rate", [*PLAN, "--rate", "-1"], "--rate: '-1' must be at least 0"),
    ("huge prompt", [*PLAN_RATE[:-4], "--input-len", "1e30", "--rate", "2"], "'1e30' must be at most 1e+07"),
    ("percentile of 100", [*PLAN_RATE, "--slo-percentile", "100"], "must be below 100"),
    ("price of an unknown GPU", [*PLAN_RATE, "--price", "h999=2"], "unknown GPU id 'h999'; known GPUs: "),
    ("price not a number", [*PLAN_RATE, "--price", "h100-sxm-80gb=two"], "'two' is not a number"),
    ("price without =", [*PLAN_RATE, "--price", "2"], "--price takes GPU=USD"),
    ("two GPUs to predict", [*PREDICT, "--gpu", "h100-sxm-80gb", "--gpu", "a100-sxm-80gb"], "predict takes one --gpu"),
    ("lengths from a latin-1 file", [*PLAN_RATE, "--lengths-from", "{latin1}"], "not UTF-8 text"),
    ("lengths with a huge count", [*PLAN_RATE, "--lengths-from", "{huge_tokens}"], "more than 10,000,000 tokens"),
    ("validate a latin-1 file", ["validate", "--measurements", "{latin1}"], "not UTF-8 text"),
    ("validate a trace", ["validate", "--measurements", "{azure}", "--strict"], "is not a measurements CSV"),
    ("validate an empty file", ["validate", "--measurements", "{empty}"], "is empty: not a measurements CSV"),
    ("validate a header alone", ["validate", "--measurements", "{header_only}"], "has a header but no measurements"),
    ("validate wrong columns", ["validate", "--measurements", "{wrong_columns}"], "its header lacks model_id"),
    ("config.json without layers", [*PLAN_RATE[:1], "--model-config", "{no_layers}", *PLAN_RATE[3:]],
     "config.json: config.json lacks num_hidden_layers (or n_layer, num_layers)"),
    ("plot into a missing folder", [*PLAN_RATE, "--plot", "/no/such/dir/x.png"],
     "the folder /no/such/dir does not exist"),
    ("simulate huge token count", [*SIM, "--trace", "{huge_tokens}"], "more than 10,000,000 tokens"),
    ("simulate huge rate scale", [*SIM, "--trace", "azure-conv", "--rate-scale", "1e30"], "must be at most 100000"),
    ("simulate replicates too much", [*SIM, "--trace", "azure-conv", "--rate-scale", "5000"],
     "more than the simulator's 20,000,000"),
    ("simulate plot into a missing folder", [*SIM, "--trace", "azure-conv", "--plot", "/no/such/dir/x.png"],
     "the folder /no/such/dir does not exist"),
]


@pytest.mark.parametrize(("what", "argv", "message"), CASES, ids=[c[0] for c in CASES])
def test_careless_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
                                               argv: list[str], message: str) -> None:
    names = files(tmp_path)
    rc, err = run(capsys, [a.format(**names) for a in argv])
    assert rc == 2, (what, err)
    last = err.rstrip("\n").splitlines()[-1]
    assert message in last, (what, err)
    if last.startswith("goodput: error: "):  # goodput's own checks print that line alone
        assert err.count("\n") == 1, err


def test_repeated_and_duplicated_gpus_are_each_planned_once(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    argv = [*PLAN_RATE[:6], "h100-sxm-80gb,h100-sxm-80gb", "--gpu", "a100-sxm-80gb", *PLAN_RATE[7:], "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    planned = {c["gpu"] for c in [report["chosen"], *report["alternatives"]] if c}
    assert planned == {"h100-sxm-80gb", "a100-sxm-80gb"}
    rows = [(a["mode"], a["gpu"], a["tp"]) for a in report["alternatives"]]
    assert len(rows) == len(set(rows)), rows


def test_plot_without_matplotlib_says_which_extra(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for argv in ([*PLAN_RATE, "--plot", str(tmp_path / "p.png")],
                 [*SIM, "--trace", "azure-conv", "--plot", str(tmp_path / "s.png")]):
        rc, err = run(capsys, argv)
        assert rc == 2
        assert err == "goodput: error: --plot needs matplotlib: pip install 'goodput-operator[plot]'\n"
    assert not (tmp_path / "p.png").exists()


def test_given_p99_is_the_p99_planned(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    argv = [*PLAN_RATE, "--input-len-p99", "4100", "--output-len-p99", "600", "--json"]
    assert main(argv) == 0
    demand = json.loads(capsys.readouterr().out)["demand"]
    assert demand["input_len_p99"] == pytest.approx(4100, abs=0.5)
    assert demand["output_len_p99"] == pytest.approx(600, abs=0.5)
    assert demand["input_len_mean"] == pytest.approx(1000, abs=0.5)

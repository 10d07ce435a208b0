"""One set of conventions across `goodput` commands (kubectl's where it has one): -o formats with --json
as an alias, --version, crd to stdout unless --output-file, headed catalog tables, defaults in every help,
vLLM's flag names as aliases, and a kubeconfig problem as one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from goodput.cli import build_parser, main

PLAN = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--rate", "2", "--input-len", "1000",
        "--output-len", "200", "--ttft-p99-ms", "1000", "--itl-p99-ms", "50"]


def out_of(capsys: pytest.CaptureFixture[str], argv: list[str], rc: int = 0) -> str:
    assert main(argv) == rc
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [PLAN, ["catalog", "gpus"], ["catalog", "models"],
                                  ["predict", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
                                   "--input-len", "100", "--output-len", "10"]])
def test_json_yaml_and_the_json_alias_agree(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    as_json = json.loads(out_of(capsys, [*argv, "-o", "json"]))
    as_alias = json.loads(out_of(capsys, [*argv, "--json"]))
    as_yaml = yaml.safe_load(out_of(capsys, [*argv, "-o", "yaml"]))
    for data in (as_alias, as_yaml):
        if isinstance(data, dict):  # plan reports its own run time
            data.pop("elapsed_s", None)
    if isinstance(as_json, dict):
        as_json.pop("elapsed_s", None)
    assert as_json == as_alias == as_yaml


def test_precision_defaults_to_bf16_as_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(out_of(capsys, [*PLAN, "--json"]))["precision"] == "bf16"


def test_vllm_flag_names_are_aliases() -> None:
    parser = build_parser()
    a = parser.parse_args(["predict", "--model", "m", "--gpu", "g", "--input-len", "1", "--output-len", "1",
                           "--tensor-parallel-size", "4", "--kv-cache-dtype", "fp8"])
    assert (a.tp, a.kv_dtype) == (4, "fp8")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("goodput ")


def test_crd_writes_to_stdout_unless_told_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = out_of(capsys, ["crd", "-o", "yaml"])
    assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
    assert list(tmp_path.iterdir()) == []  # `-o yaml` is a format, not a file named yaml
    assert json.loads(out_of(capsys, ["crd", "-o", "json"])) == yaml.safe_load(text)
    assert out_of(capsys, ["crd", "--output-file", "crd.yaml"]) == ""
    assert (tmp_path / "crd.yaml").read_text(encoding="utf-8") == text


def test_catalog_tables_are_headed_with_flops_per_dtype_and_kv_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    gpus = out_of(capsys, ["catalog", "gpus"]).splitlines()
    assert gpus[0].split()[:2] == ["GPU", "NAME"] and "FP8 TFLOPS" in gpus[0] and "FP4 TFLOPS" in gpus[0]
    b200 = next(line for line in gpus if line.startswith("b200"))
    assert "9,000" in b200  # FP4 dense TFLOPS
    models = out_of(capsys, ["catalog", "models"]).splitlines()
    assert "KV B/TOKEN (16-BIT)" in models[0]
    assert "131,072" in next(line for line in models if line.startswith("llama-3.1-8b "))
    wide = out_of(capsys, ["catalog", "models", "-o", "wide"]).splitlines()
    assert "HUGGING FACE NAME" in wide[0] and "meta-llama/Llama-3.1-8B" in "".join(wide)


def _subparsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_flag_has_help_and_its_default(command: str) -> None:
    sub = _subparsers()[command]
    for action in sub._actions:  # type: ignore[attr-defined]
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        text = sub._get_formatter()._get_help_string(action)  # type: ignore[attr-defined]
        if action.default not in (None, False, [], ()):
            assert "default" in text, f"{command} {action.option_strings[0]}: help does not say its default"


@pytest.mark.parametrize(("content", "message"), [
    ("a: [b\n", "is not valid YAML at line 2"),
    ("apiVersion: v1\nkind: Config\n", "no usable Kubernetes configuration"),
])
def test_explain_with_a_broken_kubeconfig_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, content: str,
                                                             message: str) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(content, encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for argv, prefix in ((["explain", "x"], "goodput explain: "), (["operator"], "goodput: error: ")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(prefix) and message in err and err.count("\n") == 1, err


def test_min_replicas_gives_every_pool_redundancy(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb,h200-sxm-141gb", "--rate", "0.5",
            "--input-len", "1000", "--output-len", "200", "--ttft-p99-ms", "1000", "--itl-p99-ms", "50", "--json"]
    single = json.loads(out_of(capsys, argv))
    assert min(p["replicas"] for p in single["chosen"]["pools"]) == 1  # a light load fits one replica
    redundant = json.loads(out_of(capsys, [*argv, "--min-replicas", "2"]))
    for candidate in [redundant["chosen"], *redundant["alternatives"]]:
        assert all(p["replicas"] >= 2 for p in candidate["pools"]), candidate
    assert redundant["chosen"]["usd_per_hour"] >= single["chosen"]["usd_per_hour"]


KUBECONFIG_TWO_CONTEXTS = """apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: team-a
  context: {cluster: c, user: u, namespace: team-a}
- name: plain
  context: {cluster: c, user: u}
current-context: team-a
"""


def test_kubeconfig_context_and_its_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from goodput.kube.actions import KubeConfigError, load_config

    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_TWO_CONTEXTS, encoding="utf-8")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert load_config(str(path)) == "team-a"  # the current context's namespace, as kubectl takes it
    assert load_config(str(path), "plain") is None  # a context without one: the caller's default
    with pytest.raises(KubeConfigError, match="no usable Kubernetes configuration"):
        load_config(str(path), "absent")
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert load_config() == "team-a"


def test_explain_takes_kubeconfig_context_and_the_contexts_namespace(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_TWO_CONTEXTS, encoding="utf-8")
    # Nothing listens on 127.0.0.1:1: the message names the server, so the flags were used.
    assert main(["explain", "x", "--kubeconfig", str(path), "--context", "team-a"]) == 2
    assert "https://127.0.0.1:1" in capsys.readouterr().err


KUBECONFIG_TWO_CLUSTERS = """apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}
- name: dev
  cluster: {server: "https://127.0.0.1:2"}
users:
- name: u
  user: {token: secret-token}
contexts:
- name: prod
  context: {cluster: prod, user: u, namespace: serving}
- name: dev
  context: {cluster: dev, user: u}
current-context: dev
"""


def test_operator_context_is_what_kopf_connects_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from goodput.kube.actions import client_connection, load_config

    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_TWO_CLUSTERS, encoding="utf-8")
    namespace = load_config(str(path), "prod")
    info = client_connection(namespace)
    assert info["server"] == "https://10.0.0.1:6443" and info["insecure"] is True
    assert (info["scheme"], info["token"]) == ("Bearer", "secret-token")
    assert info["default_namespace"] == "serving"
    assert client_connection(load_config(str(path)))["server"] == "https://127.0.0.1:2"  # the current context


def test_operator_with_an_unknown_context_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_TWO_CLUSTERS, encoding="utf-8")
    # cmd_operator sets these for kopf's login: touched through monkeypatch first, so they are restored.
    for name in ("GOODPUT_KUBE_CONTEXT", "KUBECONFIG", "GOODPUT_TIMER_SECONDS"):
        monkeypatch.setenv(name, "")
    assert main(["operator", "--kubeconfig", str(path), "--context", "staging"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("goodput: error: no usable Kubernetes configuration") and "staging" in err
    assert err.count("\n") == 1


def test_observe_defaults_the_namespace_to_the_contexts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_TWO_CONTEXTS, encoding="utf-8")
    base = ["observe", "--prometheus", "http://127.0.0.1:1", "--name", "llm", "--timeout-s", "0.5"]
    assert main([*base, "--kubeconfig", str(path)]) == 1  # nothing listens: unavailable, but for which target?
    assert capsys.readouterr().out.startswith("team-a/llm from http://127.0.0.1:1")
    assert main([*base, "--kubeconfig", str(path), "--context", "plain"]) == 1
    assert capsys.readouterr().out.startswith("default/llm from")
    assert main([*base, "--kubeconfig", str(path), "-n", "prod"]) == 1
    assert capsys.readouterr().out.startswith("prod/llm from")
    assert main([*base, "--kubeconfig", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("goodput") and "no usable Kubernetes configuration" in err and err.count("\n") == 1

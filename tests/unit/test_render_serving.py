"""What the operator deploys must serve: checkpoints, vendors, the P/D router, scraping, graceful exit.

The apiserver's verdict on these objects is in tests/integration/test_render_dryrun.py; vLLM's own
argument parser checks the argument lists in the real-vLLM tests. Here: the choices themselves.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.cli import main as cli_main
from goodput.cli.render import render_objects
from goodput.model.errors import CapacityModelError
from goodput.model.serving import checkpoint_by_name, checkpoint_for, checkpoints, context_length, vendor_facts
from goodput.planner.recommend import hinted_workload, max_model_len, recommend, resolve
from goodput.render.reconcile import reconcile
from goodput.render.scale_down import LEAVING_COST, PodState, plan_scale_down
from goodput.render.vllm import (
    RenderConfig,
    desired_objects,
    drain_command,
    obsolete_pools,
    termination_grace_s,
    vllm_version,
)

ROOT = Path(__file__).resolve().parents[2]


def spec_of(model_id: str = "llama-3.1-70b", precision: str = "bf16", gpu: str = "h100-sxm-80gb",
            mode: str = "aggregated", **extra: Any) -> InferenceDeploymentSpec:
    data: dict[str, Any] = {"model": {"id": model_id}, "precision": {"weights": precision}, "accelerator": {"gpu": gpu},
                            "slo": {"ttftMs": 2000, "itlMs": 60}, "mode": mode,
                            "workload": {"requestRate": 4, "inputTokens": {"mean": 1000, "p99": 4000},
                                         "outputTokens": {"mean": 200, "p99": 800}}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return InferenceDeploymentSpec.model_validate(data)


def objects(spec: InferenceDeploymentSpec, config: RenderConfig | None = None) -> list[dict[str, Any]]:
    resolved = resolve(spec, "llm")
    rec = recommend(spec, resolved, hinted_workload(spec))
    return desired_objects("llm", "ns", "uid-1", spec, resolved, rec, config or RenderConfig())


def vllm_container(objs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == f"llm-{role}")
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def arg(container: dict[str, Any], flag: str) -> str | None:
    args = container["args"]
    return args[args.index(flag) + 1] if flag in args else None


# --- the catalog ---------------------------------------------------------------------------------
def test_every_catalog_row_names_a_source_and_a_known_model_and_precision() -> None:
    from goodput.model.architecture import model_catalog
    from goodput.model.precision import WEIGHT_PRECISIONS

    models = model_catalog()
    for c in checkpoints():
        assert c.model_id in models and c.precision in WEIGHT_PRECISIONS and c.source and "/" in c.hf_name, c
    assert len({(c.model_id, c.precision) for c in checkpoints()}) == len(checkpoints()), "one checkpoint per pair"
    for model_id in models:
        assert context_length(model_id), f"{model_id} has no context length in model_context.csv"
    assert set(vendor_facts()) >= {"h100-sxm-80gb", "mi300x-192gb"}


@pytest.mark.parametrize(("precision", "repo", "method"), [
    ("fp8", "RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8", "compressed-tensors"),
    ("int8", "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8", "compressed-tensors"),
    ("int4-awq", "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "awq"),
    ("int4-gptq", "hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4", "gptq"),
])
def test_a_quantized_precision_gets_its_own_checkpoint_and_no_flag_on_nvidia(precision: str, repo: str,
                                                                              method: str) -> None:
    c = vllm_container(objects(spec_of(precision=precision)), "aggregated")
    assert arg(c, "--model") == repo
    assert "--quantization" not in c["args"], "vLLM reads the checkpoint's quantization_config"
    assert "--dtype" not in c["args"]
    assert checkpoint_by_name(repo) is not None and checkpoint_by_name(repo).quant_method == method  # type: ignore[union-attr]


def test_amd_gets_rocm_kernels_resource_label_and_image() -> None:
    objs = objects(spec_of(precision="int4-awq", gpu="mi300x-192gb"))
    c = vllm_container(objs, "aggregated")
    assert arg(c, "--quantization") == "awq"  # not the CUDA-only awq_marlin vLLM picks on NVIDIA
    assert {"name": "VLLM_USE_TRITON_AWQ", "value": "1"} in c["env"]
    tp = int(arg(c, "--tensor-parallel-size"))
    assert c["image"].startswith("rocm/vllm:") and c["resources"]["limits"] == {"amd.com/gpu": tp}
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"][0]["key"] == "amd.com/gpu.product-name"
    assert "AMD_Instinct_MI300X_OAM" in term["matchExpressions"][0]["values"]
    gptq = vllm_container(objects(spec_of(precision="int4-gptq", gpu="mi300x-192gb")), "aggregated")
    assert arg(gptq, "--quantization") == "gptq"


def test_nvidia_pool_is_pinned_to_the_gpu_product_and_overrides_win() -> None:
    objs = objects(spec_of(gpu="h200-sxm-141gb"))
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]
    assert expr == {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200"]}
    custom = spec_of(gpu="h200-sxm-141gb", accelerator={"nodeLabel": {"key": "pool", "values": ["h200"]},
                                                        "resourceName": "example.com/gpu"},
                     template={"image": "registry.local/vllm:v0.33.0"})
    objs = objects(custom, RenderConfig(vllm_images={"nvidia": "ignored:v1", "amd": "ignored:v1"}))
    c = vllm_container(objs, "aggregated")
    pod = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert c["image"] == "registry.local/vllm:v0.33.0" and "example.com/gpu" in c["resources"]["limits"]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
        0]["matchExpressions"][0]["key"] == "pool"
    chart = vllm_container(objects(spec_of(), RenderConfig(vllm_images={"nvidia": "mirror/vllm:v0.11.0",
                                                                         "amd": "x"})), "aggregated")
    assert chart["image"] == "mirror/vllm:v0.11.0"
    unpinned = objects(spec_of(accelerator={"pinToGpuType": False}))
    assert "affinity" not in next(o for o in unpinned if o["kind"] == "Deployment")["spec"]["template"]["spec"]


def test_no_checkpoint_for_the_precision_is_degraded_naming_hugging_face_name() -> None:
    spec = spec_of(precision="fp4", gpu="b200-180gb")  # no NVFP4 checkpoint of Llama-3.1-70B is known
    with pytest.raises(CapacityModelError, match=r"spec\.model\.huggingFaceName"):
        resolve(spec, "llm")
    out = reconcile({"metadata": {"name": "llm", "namespace": "ns", "uid": "u", "generation": 1},
                     "spec": spec.model_dump(by_alias=True, exclude_none=True)}, {}, _now())
    degraded = next(c for c in out.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "spec.model.huggingFaceName" in degraded["message"] and not out.apply
    named = spec_of(precision="fp4", gpu="b200-180gb",
                    model={"huggingFaceName": "nvidia/Llama-3.3-70B-Instruct-FP4"})
    assert resolve(named, "llm").hugging_face_name == "nvidia/Llama-3.3-70B-Instruct-FP4"


def test_a_named_checkpoint_of_another_precision_is_refused() -> None:
    spec = spec_of(precision="int4-awq", model={"huggingFaceName": "meta-llama/Llama-3.1-70B-Instruct"})
    with pytest.raises(CapacityModelError, match="holds bf16 weights"):
        resolve(spec, "llm")


def test_fp8_without_an_fp8_checkpoint_is_quantized_by_vllm_and_planned_at_fp8_bytes() -> None:
    online = checkpoint_for("mistral-7b", "fp8")
    assert online is not None and online.hf_name == "mistralai/Mistral-7B-v0.1" and online.online_quantization
    c = vllm_container(objects(spec_of(model_id="mistral-7b", precision="fp8")), "aggregated")
    assert arg(c, "--quantization") == "fp8" and "--dtype" not in c["args"]
    assert resolve(spec_of(model_id="mistral-7b", precision="fp8"), "x").precision == "fp8"


def test_native_precision_of_the_catalog_model_is_respected() -> None:
    # DeepSeek publishes V3 in FP8: bf16 has no checkpoint, fp8 is the catalog's own.
    with pytest.raises(CapacityModelError, match="no bf16 checkpoint of deepseek-v3"):
        resolve(spec_of(model_id="deepseek-v3", gpu="h200-sxm-141gb"), "x")
    assert checkpoint_for("deepseek-v3", "fp8").hf_name == "deepseek-ai/DeepSeek-V3"  # type: ignore[union-attr]


def test_max_model_len_is_the_model_context_unless_capped_and_the_plan_holds_it() -> None:
    spec = spec_of(model_id="llama-3.1-8b")
    assert max_model_len(spec) == 131072
    c = vllm_container(objects(spec), "aggregated")
    assert arg(c, "--max-model-len") == "131072"
    capped = spec_of(model_id="llama-3.1-8b", model={"maxModelLen": 8192})
    assert arg(vllm_container(objects(capped), "aggregated"), "--max-model-len") == "8192"
    # 70B bf16 on 80 GB: the weights alone need TP2, and a 131072-token sequence's KV must fit too.
    resolved = resolve(spec_of(), "x")
    assert resolved.max_model_len == 131072
    assert all(p.tp >= 2 for p in recommend(spec_of(), resolved, hinted_workload(spec_of())).pools)
    status = reconcile({"metadata": {"name": "llm", "namespace": "ns", "uid": "u", "generation": 1},
                        "spec": capped.model_dump(by_alias=True, exclude_none=True)}, {}, _now()).status
    assert status["plan"]["maxModelLen"] == 8192 and status["plan"]["checkpoint"] == "meta-llama/Llama-3.1-8B-Instruct"


# --- P/D ---------------------------------------------------------------------------------------
def test_disaggregated_mode_deploys_the_router_and_the_client_service_selects_it() -> None:
    objs = objects(spec_of(mode="disaggregated"))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert {("ServiceAccount", "llm-router"), ("Role", "llm-router"), ("RoleBinding", "llm-router"),
            ("Deployment", "llm-router"), ("Service", "llm")} <= kinds
    client = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "llm")
    assert client["spec"]["selector"]["goodput.dev/role"] == "router"
    router = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "llm-router")
    rc = router["spec"]["template"]["spec"]["containers"][0]
    args = rc["args"]
    assert rc["command"] == ["vllm-router"] and rc["image"] == "vllm/vllm-router:v0.1.17"
    for flag in ("--vllm-pd-disaggregation", "--service-discovery"):
        assert flag in args
    i = args.index("--prefill-selector")
    assert args[i + 1:i + 3] == ["goodput.dev/inference-deployment=llm", "goodput.dev/role=prefill"]
    assert args[args.index("--service-discovery-namespace") + 1] == "ns"
    role = next(o for o in objs if o["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    for pool in ("prefill", "decode"):
        config = json.loads(arg(vllm_container(objs, pool), "--kv-transfer-config") or "{}")
        assert config == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    assert "router" in obsolete_pools(recommend(spec_of(), resolve(spec_of(), "x"), hinted_workload(spec_of())))


def test_the_vllm_router_parses_the_rendered_arguments() -> None:
    """The real consumer: vllm-router's own argument parser (PyPI 0.1.17) accepts the command line."""
    router = next(o for o in objects(spec_of(mode="disaggregated"))
                  if o["kind"] == "Deployment" and o["metadata"]["name"] == "llm-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    code = ("import sys; from vllm_router.launch_router import parse_router_args as p; "
            "a = p(sys.argv[1:]); print(a.vllm_pd_disaggregation, a.service_discovery, "
            "sorted(a.prefill_selector.items()), a.service_discovery_port, a.prefill_policy, a.decode_policy)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["True", "True"] and "goodput.dev/role" in out.stdout


# --- scraping --------------------------------------------------------------------------------
def test_pods_carry_scrape_annotations_and_pod_monitors_keep_the_collector_labels() -> None:
    objs = objects(spec_of(mode="disaggregated"), RenderConfig(pod_monitor=True))
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    monitors = [o for o in objs if o["kind"] == "PodMonitor"]
    assert [m["spec"]["podMetricsEndpoints"][0]["port"] for m in monitors] == ["http", "metrics"]
    targets = {r["targetLabel"] for r in monitors[0]["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert targets == {"goodput_dev_inference_deployment", "goodput_dev_role"}
    assert not [o for o in objects(spec_of()) if o["kind"] == "PodMonitor"], "only when the CRD exists"


# --- graceful exit ------------------------------------------------------------------------------
def test_vllm_version_from_image_tags() -> None:
    assert vllm_version("vllm/vllm-openai:v0.11.0") == (0, 11)
    assert vllm_version("vllm/vllm-openai:v0.33.0") == (0, 33)
    assert vllm_version("rocm/vllm:rocm7.0.0_vllm_0.11.2_20251210") == (0, 11)
    assert vllm_version("registry:5000/vllm/vllm-openai:latest") is None
    assert vllm_version("vllm/vllm-openai") is None


def test_shutdown_timeout_only_where_vllm_has_it_and_within_the_grace_period() -> None:
    old = vllm_container(objects(spec_of()), "aggregated")
    assert "--shutdown-timeout" not in old["args"]  # 0.11 does not know the flag
    new = vllm_container(objects(spec_of(template={"image": "vllm/vllm-openai:v0.33.0"})), "aggregated")
    grace = termination_grace_s(spec_of())
    assert 0 < int(arg(new, "--shutdown-timeout") or 0) < grace
    assert grace >= 2 * (800 * 0.060 + 2.0), "covers the p99 output at the ITL target, twice"
    assert old["lifecycle"]["preStop"]["exec"]["command"][0] == "python3"


class _FakeVllm(http.server.BaseHTTPRequestHandler):
    in_flight = 2

    def do_GET(self) -> None:
        body = ("# HELP vllm:num_requests_running x\n"
                f'vllm:num_requests_running{{engine="0",model_name="m"}} {float(type(self).in_flight)}\n'
                'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
                'vllm:num_requests_waiting_by_reason{reason="capacity"} 7.0\n').encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_prestop_drain_waits_for_vllm_to_empty_and_no_longer() -> None:
    """Runs the rendered preStop command (Python, as in the vLLM image) against a server exposing
    vLLM's gauges: it returns once running + waiting reach 0."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        cmd = drain_command(port, 30)
        cmd = [sys.executable if c == "python3" else c for c in cmd]
        cmd[-1] = cmd[-1].replace("time.sleep(5)", "time.sleep(0)")  # skip the settle time in the test
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd)
        time.sleep(2.5)
        assert proc.poll() is None, "exited while 2 requests were running"
        _FakeVllm.in_flight = 0
        assert proc.wait(timeout=10) == 0
        assert 2.5 <= time.monotonic() - t0 < 10
    finally:
        server.shutdown()


def test_scale_down_chooses_the_idlest_ready_pods_and_marks_them_lowest() -> None:
    pods = [PodState("a", True, False, 1.0), PodState("b", True, False, 2.0), PodState("c", True, False, 3.0),
            PodState("d", False, False, 4.0), PodState("e", True, True, 0.5)]
    plan = plan_scale_down(pods, target=2, in_flight={"a": 5, "b": 0, "c": 1})
    assert plan.leaving == ("d", "b")  # the not-ready pod first (the ReplicaSet takes it anyway), then the idlest
    assert plan.costs == {"b": LEAVING_COST, "c": 1, "a": 5}
    assert plan_scale_down(pods, target=2, in_flight=None).costs == {}, "no load known: Kubernetes chooses"
    assert plan_scale_down(pods, target=4, in_flight={}).leaving == ()
    tie = plan_scale_down(pods[:3], target=2, in_flight={})
    assert tie.leaving == ("c",), "on a tie the youngest leaves"


# --- goodput render ----------------------------------------------------------------------------
def test_render_is_the_operators_first_reconcile_and_the_cli_exit_codes(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    manifest = yaml.safe_load((ROOT / "manifests/examples/disaggregated-70b-fp8-h100.yaml").read_text())
    objs, status = render_objects(manifest, uid="abc")
    out = reconcile({"metadata": {**manifest["metadata"], "uid": "abc", "generation": 1},
                     "spec": manifest["spec"]}, {}, _now())
    assert objs == out.apply and status["plan"]["mode"] == "disaggregated"
    offline, _ = render_objects(manifest)
    assert all("ownerReferences" not in o["metadata"] for o in offline)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert cli_main(["render", "-f", str(path), "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List" and {o["kind"] for o in listed["items"]} >= {"Deployment", "Service", "Role"}
    bad = dict(manifest, spec={**manifest["spec"], "precision": {"weights": "fp4"},
                               "accelerator": {"gpu": "b200-180gb"}})
    path.write_text(yaml.safe_dump(bad))
    assert cli_main(["render", "-f", str(path)]) == 1
    assert "spec.model.huggingFaceName" in capsys.readouterr().err
    path.write_text("kind: Deployment\n")
    assert cli_main(["render", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exactly one InferenceDeployment" in err


def _now() -> Any:
    import datetime as dt

    return dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

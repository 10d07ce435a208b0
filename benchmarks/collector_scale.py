"""Collector at scale (issue 19): one tick of the per-resource and of the shared collector against a real Prometheus.

    python benchmarks/collector_scale.py [--counts 100,300,1000] [--scrape-seconds 5] [--per-resource-sample 200]

For each N: one exporter process (a child: its CPU is not the operator's) serves the series of N
fake vLLM pods, one per InferenceDeployment (namespace ``bench``, role ``aggregated``), with vLLM's
metric names and bucket layouts and labels as the Kubernetes relabeling leaves them (namespace,
pod, goodput_dev_inference_deployment, goodput_dev_role); Debian's Prometheus scrapes it every
``--scrape-seconds``. After the windows have filled it times, in this process:

- the shared collector: one tick (a fresh fleet-wide snapshot, then every resource's Observation
  from it), three times, the median reported;
- the per-resource collector: every resource's own queries, one after the other (as one worker
  thread would); above ``--per-resource-sample`` resources, that many of them, scaled to N.

Queries sent, wall time, this process's CPU time (time.process_time: the operator's share), and
Prometheus' own CPU time (from /proc) for the tick. Windows are 30 s / 60 s (not the operator's
60 s / 600 s) to keep the run short; a longer range makes each query read more samples, on both
paths alike. Writes benchmarks/results/collector_scale.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from goodput.devcluster.prometheus import LocalPrometheus
from goodput.metrics.prometheus import PrometheusCollector
from goodput.metrics.shared import SharedCollector

NAMESPACE = "bench"
WINDOW_S, LONG_WINDOW_S = 30.0, 60.0
RESULTS = Path(__file__).resolve().parent / "results"
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0]
PREFILL_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0]


# ------------------------------------------------------------------------------------------
# the exporter (child process)
# ------------------------------------------------------------------------------------------
def exposition(n: int, t0: float) -> bytes:
    el = time.time() - t0
    out: list[str] = []
    for i in range(n):
        lab = (f'namespace="{NAMESPACE}",pod="d{i}-0",goodput_dev_inference_deployment="d{i}",'
               f'goodput_dev_role="aggregated",model_name="m"')
        rate = 1.0 + (i % 7)
        reqs = rate * el
        out.append(f"vllm:num_requests_running{{{lab}}} {10 + i % 5}")
        out.append(f"vllm:num_requests_waiting{{{lab}}} {i % 3}")
        out.append(f"vllm:kv_cache_usage_perc{{{lab}}} {0.1 + (i % 9) / 10}")
        out.append(f'vllm:cache_config_info{{{lab},num_gpu_blocks="{1000 + i}",block_size="16"}} 1')
        out.append(f"vllm:request_success_total{{{lab}}} {reqs}")
        out.append(f"vllm:prompt_tokens_total{{{lab}}} {reqs * 1200}")
        out.append(f"vllm:generation_tokens_total{{{lab}}} {reqs * 210}")
        out.append(f"vllm:num_preemptions_total{{{lab}}} {reqs * 0.01}")
        out.append(f"vllm:prefix_cache_queries_total{{{lab}}} {reqs * 1000}")
        out.append(f"vllm:prefix_cache_hits_total{{{lab}}} {reqs * 300}")
        for name, buckets, count, mean in (("vllm:request_prompt_tokens", TOKEN_BUCKETS, reqs, 1200.0),
                                           ("vllm:request_generation_tokens", TOKEN_BUCKETS, reqs, 210.0),
                                           ("vllm:time_to_first_token_seconds", TTFT_BUCKETS, reqs, 0.3),
                                           ("vllm:request_prefill_time_seconds", PREFILL_BUCKETS, reqs, 0.2),
                                           ("vllm:inter_token_latency_seconds", ITL_BUCKETS, reqs * 210, 0.03)):
            top = buckets[-1]
            for le in buckets:
                out.append(f'{name}_bucket{{{lab},le="{float(le)}"}} {count * min(1.0, le / (top / 4))}')
            out.append(f'{name}_bucket{{{lab},le="+Inf"}} {count}')
            out.append(f"{name}_sum{{{lab}}} {count * mean}")
            out.append(f"{name}_count{{{lab}}} {count}")
    return ("\n".join(out) + "\n").encode()


def serve(n: int, port: int) -> None:
    t0 = time.time()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(n, t0)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()


# ------------------------------------------------------------------------------------------
# the measurement
# ------------------------------------------------------------------------------------------
def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(prom: LocalPrometheus, fn: Any) -> dict[str, float]:
    p0, c0, w0 = proc_cpu_s(prom.pid), time.process_time(), time.perf_counter()
    fn()
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
            "prometheus_cpu_s": proc_cpu_s(prom.pid) - p0}


def run(n: int, scrape_s: float, sample: int, work: Path) -> dict[str, Any]:
    from goodput.devcluster.prometheus import free_port

    port = free_port()
    exporter = subprocess.Popen([sys.executable, __file__, "--serve", str(n), str(port)])
    prom = LocalPrometheus(work / f"n{n}", scrape_interval_s=scrape_s)
    try:
        prom.set_targets([(f"127.0.0.1:{port}", {})])
        with prom:
            prom.wait_until(lambda: bool(prom.query("count(up == 1)")), timeout_s=60, what="the exporter scraped")
            prom.wait_until(lambda: float(prom.query("count(vllm:num_requests_running)")[0]["value"][1]) >= n,
                            timeout_s=60, what="every pod's series")
            time.sleep(WINDOW_S + 2 * scrape_s)
            series = int(float(prom.query("count({__name__=~\"vllm:.*\"})")[0]["value"][1]))
            names = [f"d{i}" for i in range(n)]
            shared_ticks = []
            for _ in range(3):
                shared = SharedCollector(prom.url, timeout_s=30, budget_s=120)
                now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=scrape_s)
                obs: list[Any] = []
                m = timed(prom, lambda s=shared, t=now, o=obs: o.extend(
                    s.observe(NAMESPACE, x, t, WINDOW_S, LONG_WINDOW_S, 0.99) for x in names))
                m["queries"] = shared.queries_sent
                m["available"] = sum(1 for o in obs if o.available)
                snap = shared.snapshot(now, WINDOW_S, LONG_WINDOW_S, 0.99)
                m["fetch_s"] = snap.fetch_s
                shared_ticks.append(m)
                time.sleep(1)
            per = PrometheusCollector(prom.url, timeout_s=30, budget_s=120)
            subset = names[:: max(1, n // sample)][:sample] if n > sample else names
            now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=scrape_s)
            per_obs: list[Any] = []
            pm = timed(prom, lambda: per_obs.extend(
                per.observe(NAMESPACE, x, now, WINDOW_S, LONG_WINDOW_S, 0.99) for x in subset))
            scale = n / len(subset)
            per_tick = {"wall_s": pm["wall_s"] * scale, "cpu_s": pm["cpu_s"] * scale,
                        "prometheus_cpu_s": pm["prometheus_cpu_s"] * scale, "queries": per.queries_sent * scale,
                        "measured_resources": len(subset), "available": sum(1 for o in per_obs if o.available)}
            # the two agree on what they read (same evaluation time for a few resources)
            check = SharedCollector(prom.url, timeout_s=30, budget_s=120)
            agree = all(check.observe(NAMESPACE, x, now, WINDOW_S, LONG_WINDOW_S, 0.99)
                        == per.observe(NAMESPACE, x, now, WINDOW_S, LONG_WINDOW_S, 0.99) for x in subset[:5])
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    med = {k: statistics.median(t[k] for t in shared_ticks) for k in shared_ticks[0]}
    return {"resources": n, "series": series, "shared": med, "shared_ticks": shared_ticks,
            "per_resource": per_tick, "agree_on_sample": agree}


def markdown(results: list[dict[str, Any]], scrape_s: float) -> str:
    lines = [
        "# Collector at scale (issue 19)",
        "",
        "`python benchmarks/collector_scale.py` on "
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), Prometheus 2.42 (Debian), "
        f"scrape every {scrape_s:g} s, windows {WINDOW_S:g} s / {LONG_WINDOW_S:g} s, one pod per resource "
        "(102 vLLM series each). One tick = every resource's Observation once. Shared: median of 3 ticks. "
        "Per-resource: one resource after another; above 200 resources, 200 of them timed and scaled to N. "
        "CPU = this process (the operator's share); Prometheus CPU from /proc.",
        "",
        "| resources | series | path | queries/tick | wall s/tick | operator CPU s/tick | operator CPU ms/resource "
        "| Prometheus CPU s/tick | resources available (of those timed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = r["resources"]
        for label, m in (("shared", r["shared"]), ("per-resource", r["per_resource"])):
            lines.append(f"| {n} | {r['series']} | {label} | {m['queries']:.0f} | {m['wall_s']:.2f} | "
                         f"{m['cpu_s']:.2f} | {1000 * m['cpu_s'] / n:.2f} | {m['prometheus_cpu_s']:.2f} | "
                         f"{m['available']} |")
    lines += ["", "Shared and per-resource Observations equal on the sampled resources (same evaluation time): "
              + ", ".join(f"N={r['resources']}: {'yes' if r['agree_on_sample'] else 'NO'}" for r in results), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100,300,1000")
    ap.add_argument("--scrape-seconds", type=float, default=5.0)
    ap.add_argument("--per-resource-sample", type=int, default=200)
    ap.add_argument("--serve", nargs=2, type=int, metavar=("N", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    results = []
    with tempfile.TemporaryDirectory(prefix="collector-scale-") as tmp:
        for n in (int(x) for x in args.counts.split(",")):
            r = run(n, args.scrape_seconds, args.per_resource_sample, Path(tmp))
            print(json.dumps({k: v for k, v in r.items() if k != "shared_ticks"}), flush=True)
            results.append(r)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collector_scale.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "collector_scale.md").write_text(markdown(results, args.scrape_seconds))
    print(markdown(results, args.scrape_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

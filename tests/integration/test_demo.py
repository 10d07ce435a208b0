"""`goodput demo`, run as a user runs it: a subprocess that starts its own control plane,
Prometheus, emulator and operator, streams decisions, summarizes, plots, and leaves nothing behind,
also when interrupted.

"Nothing behind": no process whose command line or environment names the demo's work directory
(every child has it: etcd's data dir, the apiserver's certificates, Prometheus's config, the
emulator's targets file, the operator's KUBECONFIG), and the work directory itself removed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DECISION = re.compile(r"^t=[+-]\d+s ([A-Z]\w+)[ :]", re.MULTILINE)  # ScaleUp, Emergency, Initial, ...
SUMMARY = re.compile(r"summary: SLO attainment (\d+\.\d)% \(TTFT\) / ≈?(\d+\.\d)% \(ITL\), (\d+\.\d+) GPU-hours, "
                     r"cost \$(\d+\.\d\d), (\d+) scaling actions")
SERVED = re.compile(r"requests +([\d,]+) offered, ([\d,]+) served")


def demo_argv(work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "goodput.cli", "demo", "--work-dir", str(work), *extra]


def leftovers(marker: Path) -> list[str]:
    """Processes (other than this one) whose command line or environment mentions ``marker``."""
    needle = str(marker).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in cmdline or needle in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:160]}")
    return found


def assert_nothing_left(work: Path) -> None:
    deadline = time.monotonic() + 5  # the demo waits for its children; this is only slack for /proc
    while (left := leftovers(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, "processes left behind:\n" + "\n".join(left)
    assert not work.exists(), f"{work} left behind: {sorted(p.name for p in work.iterdir())}"


def test_demo_streams_decisions_summarizes_plots_and_cleans_up(tmp_path: Path) -> None:
    work, plot = tmp_path / "work", tmp_path / "out" / "demo.png"
    t0 = time.monotonic()
    run = subprocess.run(demo_argv(work, "--duration-s", "90", "--plot", str(plot)), capture_output=True,
                         text=True, timeout=480)
    out = run.stdout
    print(out + run.stderr[-3000:], file=sys.stderr)
    print(f"[demo test] goodput demo --duration-s 90 took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    assert run.returncode == 0, f"exit {run.returncode}:\n{out[-3000:]}\n{run.stderr[-3000:]}"

    for phase in ("starting the control plane", "starting Prometheus", "starting the vLLM emulator",
                  "starting the operator", "applying InferenceDeployment", "load on"):
        assert f"==> {phase}" in out, f"no {phase!r} line"
    decisions = DECISION.findall(out)
    assert decisions, f"no decision was streamed:\n{out}"
    first = next(m.start() for m in DECISION.finditer(out))
    assert first < out.index("==> summary"), "decisions came only at the end"
    assert re.search(r"^t=\+\d+s +offered [\d.]+ req/s · replicas \d+ desired, \d+ serving", out, re.MULTILINE), \
        "no status line"

    summary = SUMMARY.search(out)
    assert summary, f"no summary line:\n{out}"
    ttft_ok, itl_ok, gpu_h, cost = (float(summary.group(i)) for i in range(1, 5))
    assert 0 < ttft_ok <= 100 and 0 < itl_ok <= 100
    # At least one H100 for the ~90 s of load and its cold start; at most the 8 replicas the example allows.
    assert 90 / 3600 <= gpu_h <= 8 * 200 / 3600, gpu_h
    assert cost == pytest.approx(gpu_h * 6.88, abs=0.011), "cost is GPU-hours times the plan's H100 price"
    served = SERVED.search(out)
    assert served and int(served.group(2).replace(",", "")) > 100, "the emulator served (almost) nothing"
    print(f"[demo test] decisions {decisions}; scaling actions {summary.group(5)}", file=sys.stderr)

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_nothing_left(work)


@pytest.mark.parametrize(("sig", "after", "code"), [
    (signal.SIGINT, "==> load on", 130),  # Ctrl-C in the middle of the load
    (signal.SIGTERM, "==> applying InferenceDeployment", 143),  # while everything is coming up
])
def test_demo_interrupted_stops_everything(tmp_path: Path, sig: signal.Signals, after: str, code: int) -> None:
    work = tmp_path / "work"
    # Its own process group, signalled as a terminal signals its foreground job: the demo and the
    # children in its group (Prometheus) all get it.
    proc = subprocess.Popen(demo_argv(work, "--duration-s", "300"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(after in line for line in lines):
            assert proc.poll() is None, "the demo ended early:\n" + "".join(lines)
            assert time.monotonic() < deadline, f"no {after!r} line:\n" + "".join(lines)
            time.sleep(0.2)
        time.sleep(3)
        os.killpg(proc.pid, sig)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    out = "".join(lines)
    print(out, file=sys.stderr)
    assert rc == code, f"exit {rc} after {sig.name}:\n{out}"
    assert f"interrupted ({sig.name})" in out
    assert "done; everything stopped and removed" in out
    assert "==> summary" not in out
    assert_nothing_left(work)


VIA_ROUTER = re.compile(r"via router +([\d,]+) requests sent to vllm-router, ([\d,]+) served, ([\d,]+) failed")


def test_a_disaggregated_demo_sends_its_load_through_the_real_router(tmp_path: Path) -> None:
    """Issue 14: in disaggregated mode the clients' requests go through vllm-router, started from the
    Deployment the operator rendered, which finds the prefill and decode pods through Kubernetes."""
    work = tmp_path / "work"
    run = subprocess.run(demo_argv(work, "--example", "disaggregated-70b-fp8-h100", "--duration-s", "45",
                                   "--plot", str(tmp_path / "pd.png")), capture_output=True, text=True, timeout=480)
    out = run.stdout
    print(out + run.stderr[-3000:], file=sys.stderr)
    assert run.returncode == 0, f"exit {run.returncode}:\n{out[-3000:]}\n{run.stderr[-3000:]}"
    assert "==> starting vllm-router as the operator rendered it" in out
    via = VIA_ROUTER.search(out)
    assert via, f"no router line in the summary:\n{out}"
    sent, served, failed = (int(via.group(i).replace(",", "")) for i in (1, 2, 3))
    assert served > 100 and failed <= 0.01 * sent, (sent, served, failed)
    assert_nothing_left(work)

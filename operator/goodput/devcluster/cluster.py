"""A real Kubernetes control plane on 127.0.0.1, started the way controller-runtime's envtest does.

``LocalCluster`` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as
child processes (binaries from :func:`goodput.devcluster.build.ensure_binaries`), with freshly
generated certificates, free ports and a throw-away work directory. kwok plays the kubelet for a
few fake GPU nodes, so pods scheduled there become Running and Ready without containers. The
apiserver has the aggregation layer (front-proxy CA and client cert, ``--requestheader-*``), so
extension API servers such as KEDA's metrics adapter (`goodput.devcluster.keda`) can be registered
with an APIService; ``hpa_sync_period_s`` sets the HorizontalPodAutoscaler controller's period.

    with LocalCluster() as cluster:
        cluster.kubectl("get", "nodes")

Everything it starts is stopped again by :meth:`LocalCluster.stop` (also on a failed start, at
interpreter exit, and -- on Linux -- when the parent Python process dies).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from goodput.devcluster.build import Binaries, ensure_binaries
from goodput.devcluster.processes import kill_with_parent

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_LABEL = ("type", "kwok")

_LOOPBACK = "127.0.0.1"
_NO_PROXY_HOSTS = ("127.0.0.1", "localhost", "::1")


class LocalClusterError(RuntimeError):
    """The local control plane failed to start or misbehaved; the message carries the log tail."""


def _log(msg: str) -> None:
    print(f"[dev-cluster] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# ports, environment


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bind to port 0; all sockets are held until
    every port is picked, so the ports are distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _no_proxy_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(have + [h for h in _NO_PROXY_HOSTS if h not in have])
    return env


# --------------------------------------------------------------------------------------------
# certificates


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path  # RSA private key (signing)
    sa_pub: Path  # RSA public key (verification)
    # the aggregation layer: kube-apiserver proxies aggregated APIs (KEDA's external.metrics.k8s.io)
    # with this client certificate, signed by a CA of its own that the extension servers trust
    front_proxy_ca: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


FRONT_PROXY_CLIENT_CN = "front-proxy-client"


def generate_pki(cert_dir: Path, *, valid_days: int = 7) -> _Pki:
    """A CA, the apiserver serving cert, an admin (system:masters) client cert, the
    service-account RSA key pair, and the front-proxy CA with its client cert (the aggregation
    layer), written as PEM files into ``cert_dir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=valid_days)

    def key_pem(key: Any) -> bytes:
        return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not cert_sign,
                             data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                             crl_sign=cert_sign, encipher_only=False, decipher_only=False)

    def make_ca(cn: str) -> tuple[Any, x509.Name, x509.SubjectKeyIdentifier, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name(cn)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(usage(cert_sign=True), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        return key, subject, ski, cert

    ca_key, ca_name, ca_ski, ca = make_ca("goodput-devcluster-ca")
    fp_key, fp_name, fp_ski, fp_ca = make_ca("goodput-devcluster-front-proxy-ca")

    def leaf(subject: x509.Name, eku: x509.ObjectIdentifier,
             sans: list[x509.GeneralName] | None = None, *,
             issuer: tuple[Any, x509.Name, x509.SubjectKeyIdentifier] | None = None) -> tuple[Any, x509.Certificate]:
        signer_key, signer_name, signer_ski = issuer or (ca_key, ca_name, ca_ski)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(signer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage(cert_sign=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer_ski),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(signer_key, hashes.SHA256())

    serving_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(_LOOPBACK)),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        *(x509.DNSName(d) for d in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                    "kubernetes.default.svc.cluster.local")),
    ]
    serving_key, serving = leaf(name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans)
    admin_key, admin = leaf(name("admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    proxy_key, proxy = leaf(name(FRONT_PROXY_CLIENT_CN), ExtendedKeyUsageOID.CLIENT_AUTH,
                            issuer=(fp_key, fp_name, fp_ski))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = _Pki(
        ca_cert=cert_dir / "ca.crt", ca_key=cert_dir / "ca.key",
        serving_cert=cert_dir / "apiserver.crt", serving_key=cert_dir / "apiserver.key",
        admin_cert=cert_dir / "admin.crt", admin_key=cert_dir / "admin.key",
        sa_key=cert_dir / "sa.key", sa_pub=cert_dir / "sa.pub",
        front_proxy_ca=cert_dir / "front-proxy-ca.crt",
        front_proxy_client_cert=cert_dir / "front-proxy-client.crt",
        front_proxy_client_key=cert_dir / "front-proxy-client.key",
    )
    pki.front_proxy_ca.write_bytes(cert_pem(fp_ca))
    pki.front_proxy_client_cert.write_bytes(cert_pem(proxy))
    _write_private(pki.front_proxy_client_key, key_pem(proxy_key))
    pki.ca_cert.write_bytes(cert_pem(ca))
    _write_private(pki.ca_key, key_pem(ca_key))
    pki.serving_cert.write_bytes(cert_pem(serving))
    _write_private(pki.serving_key, key_pem(serving_key))
    pki.admin_cert.write_bytes(cert_pem(admin))
    _write_private(pki.admin_key, key_pem(admin_key))
    _write_private(pki.sa_key, sa_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                                    serialization.NoEncryption()))
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def _kubeconfig(server: str, pki: _Pki, *, cluster_name: str = "goodput-dev") -> dict[str, Any]:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name,
                      "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": "admin",
                   "user": {"client-certificate-data": b64(pki.admin_cert),
                            "client-key-data": b64(pki.admin_key)}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": "admin",
                                                        "namespace": "default"}}],
        "current-context": cluster_name,
        "preferences": {},
    }


# --------------------------------------------------------------------------------------------
# kwok stages: how the fake nodes become Ready and heart-beat, and how pods on them run, complete
# and go away (see the YAML file's header).

KWOK_STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")  # a data file: how kwok's fakes behave


# --------------------------------------------------------------------------------------------
# processes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.running():
            raise LocalClusterError(f"{self.name} is already running (pid {self.popen.pid})")  # type: ignore[union-attr]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log_file.write(f"---- {dt.datetime.now().isoformat()} starting: {' '.join(self.argv)}\n".encode())
        self._log_file.flush()
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                      stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                      preexec_fn=kill_with_parent())

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise LocalClusterError(
                f"{self.name} exited with status {self.popen.returncode}; last lines of {self.log_path}:\n"
                f"{_tail(self.log_path)}")

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)  # type: ignore[union-attr]

    def reap(self, deadline: float) -> None:
        """Wait for the process until ``deadline`` (monotonic); SIGKILL it after that."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"{self.name} did not stop after SIGTERM; sending SIGKILL")
                self.popen.kill()
                self.popen.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _stop_procs(procs: Iterable[_Proc], timeout: float) -> None:
    procs = list(procs)
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.reap(deadline)


_LIVE: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


# --------------------------------------------------------------------------------------------
# the cluster


@dataclass(frozen=True)
class FakeNodeSpec:
    """The shape of one fake GPU node."""

    gpus: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    gpu_product: str = DEFAULT_GPU_PRODUCT


class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. After start:
    ``kubeconfig`` (admin kubeconfig path, usable by kubectl and the ``kubernetes`` client),
    ``server`` (``https://127.0.0.1:<port>``), ``work_dir``, ``logs_dir``.
    """

    def __init__(
        self,
        binaries: Binaries | None = None,
        *,
        nodes: int = 4,
        node: FakeNodeSpec | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        keep: bool = False,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        extra_apiserver_args: Iterable[str] = (),
        hpa_sync_period_s: float = 15.0,
    ) -> None:
        self._binaries = binaries
        self.node_count = nodes
        self.node_spec = node or FakeNodeSpec()
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self.keep = keep
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.hpa_sync_period_s = hpa_sync_period_s
        # Pod IPs come from a loopback /16 (all of 127.0.0.0/8 reaches this host on Linux): what runs
        # "in" a pod (the vLLM emulator, the real vllm-router) listens on its pod's own IP, so
        # Kubernetes service discovery (vllm-router's, Prometheus') finds it as in a cluster, and no
        # traffic ever leaves the machine. A random /16 keeps parallel clusters apart.
        self.pod_cidr = f"127.{random.randint(64, 250)}.0.0/16"

        self.work_dir: Path = Path()
        self.kubeconfig: Path = Path()
        self.server: str = ""
        self.ports: dict[str, int] = {}
        self.started_in: float | None = None
        self._pki: _Pki | None = None
        self._ssl: ssl.SSLContext | None = None
        self._procs: dict[str, _Proc] = {}
        self._started = False
        self._lock = threading.RLock()

    # ---- context manager -------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- paths / env -----------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def node_names(self) -> list[str]:
        return [f"kwok-gpu-{i}" for i in range(self.node_count)]

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes (and anyone who wants to talk to this cluster):
        proxies bypassed for loopback, KUBECONFIG pointing at the admin kubeconfig."""
        env = _no_proxy_env()
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    @property
    def ca_cert(self) -> Path:
        """The cluster CA's certificate (it signs the apiserver's serving cert and the clients')."""
        if self._pki is None:
            raise LocalClusterError("cluster not started")
        return self._pki.ca_cert

    @property
    def ca_key(self) -> Path:
        """The cluster CA's private key: for signing the serving certs of local extension servers."""
        if self._pki is None:
            raise LocalClusterError("cluster not started")
        return self._pki.ca_key

    @property
    def client_tls(self) -> tuple[Path, Path, Path]:
        """(CA certificate, admin client certificate, its key): for clients that take files, e.g.
        Prometheus' kubernetes_sd_configs."""
        if self._pki is None:
            raise LocalClusterError("cluster not started")
        return self._pki.ca_cert, self._pki.admin_cert, self._pki.admin_key

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    # ---- start -------------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        with self._lock:
            if self._started:
                raise LocalClusterError("cluster already started")
            self._started = True
            _LIVE.add(self)
            t0 = time.monotonic()
            try:
                self._start(t0)
            except BaseException as exc:
                if isinstance(exc, LocalClusterError):
                    _log(f"start failed: {exc}")
                self.stop()
                raise
            self.started_in = time.monotonic() - t0
            _log(f"cluster ready in {self.started_in:.1f} s: {self.server} (kubeconfig {self.kubeconfig})")
            return self

    def _prepare_work_dir(self) -> None:
        if self._work_dir_arg is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="goodput-devcluster-"))
            return
        wd = self._work_dir_arg.resolve()
        if wd.exists() and any(wd.iterdir()):
            # stop() removes the work dir: never take over one with somebody else's files in it
            raise LocalClusterError(f"work dir {wd} exists and is not empty")
        wd.mkdir(parents=True, exist_ok=True)
        self.work_dir = wd

    def _start(self, t0: float) -> None:
        def step(msg: str) -> None:
            _log(f"[{time.monotonic() - t0:5.1f} s] {msg}")

        if self._binaries is None:
            self._binaries = ensure_binaries()
        for p in self._binaries.all():
            if not p.exists():
                raise LocalClusterError(f"missing binary {p}: run goodput.devcluster.build.ensure_binaries()")
        self._prepare_work_dir()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        step(f"work dir {self.work_dir}")

        names = ("etcd_client", "etcd_peer", "apiserver", "controller_manager", "scheduler")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.server = f"https://{_LOOPBACK}:{self.ports['apiserver']}"

        self._pki = generate_pki(self.work_dir / "pki")
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(self.server, self._pki)), encoding="utf-8")
        self.kubeconfig.chmod(0o600)
        self._ssl = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        self._ssl.load_cert_chain(str(self._pki.admin_cert), str(self._pki.admin_key))
        (self.work_dir / "kwok").mkdir()
        stages = self.work_dir / "kwok" / "stages.yaml"
        stages.write_text(KWOK_STAGES_FILE.read_text(encoding="utf-8"), encoding="utf-8")
        step("certificates and kubeconfig written")

        self._define_processes(stages)

        self._procs["etcd"].start()
        self._wait("etcd /health", self._etcd_healthy, [self._procs["etcd"]], timeout=30)
        step("etcd ready")

        self._procs["kube-apiserver"].start()
        self._wait_apiserver_ready()
        step("kube-apiserver ready")

        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._procs[name].start()

        for name in self.node_names:
            self.add_node(name)
        step(f"{self.node_count} fake nodes created; waiting for Ready")

        everything = list(self._procs.values())
        self._wait("kube-controller-manager /healthz",
                   lambda: self._component_healthy(self.ports["controller_manager"]), everything)
        self._wait("kube-scheduler /healthz", lambda: self._component_healthy(self.ports["scheduler"]), everything)
        self._wait(f"{self.node_count} nodes Ready and untainted", self._nodes_ready, everything)
        self._wait("ServiceAccount default/default", lambda: self._exists(
            "/api/v1/namespaces/default/serviceaccounts/default"), everything)

    def _define_processes(self, stages: Path) -> None:
        b = self._binaries
        assert b is not None and self._pki is not None
        pki, ports, kubeconfig = self._pki, self.ports, str(self.kubeconfig)
        etcd_client = f"http://{_LOOPBACK}:{ports['etcd_client']}"
        etcd_peer = f"http://{_LOOPBACK}:{ports['etcd_peer']}"
        env = _no_proxy_env()
        env.pop("KUBECONFIG", None)
        kwok_env = dict(env, KWOK_WORKDIR=str(self.work_dir / "kwok"))  # keeps ~/.kwok/kwok.yaml out

        argvs: dict[str, list[str]] = {
            "etcd": [
                str(b.etcd),
                "--name=default",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_client}",
                f"--advertise-client-urls={etcd_client}",
                f"--listen-peer-urls={etcd_peer}",
                f"--initial-advertise-peer-urls={etcd_peer}",
                f"--initial-cluster=default={etcd_peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                str(b.kube_apiserver),
                f"--etcd-servers={etcd_client}",
                f"--bind-address={_LOOPBACK}",
                f"--advertise-address={_LOOPBACK}",
                f"--secure-port={ports['apiserver']}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # the kubernetes Service's endpoints would be 127.0.0.1, which Endpoints reject
                "--endpoint-reconciler-type=none",
                # on SIGTERM, end open watches within 2 s: otherwise the HTTP server waits for the
                # controllers' watch connections up to --request-timeout (60 s) before it exits
                "--shutdown-watch-termination-grace-period=2s",
                # the aggregation layer (APIService objects: KEDA's metrics adapter serves
                # external.metrics.k8s.io behind it): the proxy's client cert and what it asserts
                f"--requestheader-client-ca-file={pki.front_proxy_ca}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
                f"--proxy-client-key-file={pki.front_proxy_client_key}",
                *self.extra_apiserver_args,
            ],
            # no --authentication/--authorization-kubeconfig for these two: /healthz is always
            # allowed, and delegated authn would look for a request-header CA this cluster lacks
            "kube-controller-manager": [
                str(b.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=false",
                f"--bind-address={_LOOPBACK}",
                f"--secure-port={ports['controller_manager']}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                # the HorizontalPodAutoscaler controller (in --controllers=*): 15 s by default
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period_s:g}s",
            ],
            "kube-scheduler": [
                str(b.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--bind-address={_LOOPBACK}",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
            ],
            "kwok": [
                str(b.kwok),
                f"--kubeconfig={kubeconfig}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-label-selector={KWOK_NODE_LABEL[0]}={KWOK_NODE_LABEL[1]}",
                f"--cidr={self.pod_cidr}",
            ],
        }
        self._procs = {
            name: _Proc(name, argv, self.log_path(name), kwok_env if name == "kwok" else env)
            for name, argv in argvs.items()
        }

    # ---- waiting -----------------------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], bool], watch: Iterable[_Proc], *,
              timeout: float | None = None, interval: float = 0.1) -> None:
        watch = list(watch)
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        last_error: Exception | None = None
        while True:
            for p in watch:
                p.check_alive()
            try:
                if ready():
                    return
                last_error = None
            except Exception as exc:  # retried until the deadline, then reported
                last_error = exc
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{_tail(p.log_path, 15)}" for p in watch)
                raise LocalClusterError(
                    f"timed out waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
                    + f"\n{tails}")
            time.sleep(interval)

    def _wait_apiserver_ready(self) -> None:
        self._wait("kube-apiserver /readyz", lambda: self._get_status("/readyz") == 200,
                   [self._procs["etcd"], self._procs["kube-apiserver"]])

    def _etcd_healthy(self) -> bool:
        url = f"http://{_LOOPBACK}:{self.ports['etcd_client']}/health"
        with _OPENER.open(url, timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _component_healthy(self, port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of the component itself
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        with opener.open(f"https://{_LOOPBACK}:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)

    def _exists(self, path: str) -> bool:
        return self._get_status(path) == 200

    def _nodes_ready(self) -> bool:
        selector = f"{KWOK_NODE_LABEL[0]}={KWOK_NODE_LABEL[1]}"
        items = self.api("GET", f"/api/v1/nodes?labelSelector={selector}")["items"]
        ready = [n for n in items if node_is_ready(n) and not _blocking_taints(n)]
        return len(ready) >= self.node_count

    # ---- REST --------------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              timeout: float = 10.0) -> Any:
        if self._ssl is None:
            raise LocalClusterError("cluster not started")
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self._ssl))
        return opener.open(req, timeout=timeout)

    def _get_status(self, path: str) -> int:
        try:
            with self._open("GET", path, timeout=3) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def api(self, method: str, path: str, body: Any = None, *,
            content_type: str = "application/json", timeout: float = 10.0) -> Any:
        """A raw API call as the admin user: ``api("GET", "/api/v1/nodes")`` -> decoded JSON.
        Raises ``urllib.error.HTTPError`` on a non-2xx answer."""
        with self._open(method, path, body, content_type, timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (admin credentials)."""
        from kubernetes import config as k8s_config

        new_client: Any = k8s_config.new_client_from_config  # untyped library function
        return new_client(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = False, input: str | None = None,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the system ``kubectl`` against this cluster; stdout/stderr captured as text."""
        exe = shutil.which("kubectl")
        if exe is None:
            raise LocalClusterError("`kubectl` is not on PATH")
        return subprocess.run([exe, f"--kubeconfig={self.kubeconfig}", *args], input=input, capture_output=True,
                              text=True, env=self.env, timeout=timeout, check=check)

    # ---- nodes -------------------------------------------------------------------------------

    def node_manifest(self, name: str, spec: FakeNodeSpec | None = None, index: int = 0) -> dict[str, Any]:
        spec = spec or self.node_spec
        resources = {"cpu": spec.cpu, "memory": spec.memory, "pods": str(spec.pods), "ephemeral-storage": "1Ti"}
        if spec.gpus:
            resources[GPU_RESOURCE] = str(spec.gpus)
        labels = {
            KWOK_NODE_LABEL[0]: KWOK_NODE_LABEL[1],
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node-role.kubernetes.io/agent": "",
        }
        if spec.gpus:
            labels["nvidia.com/gpu.product"] = spec.gpu_product
            labels["nvidia.com/gpu.count"] = str(spec.gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {},
            # a kubelet registers its node with status; kwok's stages keep capacity and addresses
            "status": {
                "capacity": resources,
                "allocatable": dict(resources),
                "addresses": [{"type": "InternalIP", "address": f"10.128.{index // 250}.{index % 250 + 1}"},
                              {"type": "Hostname", "address": name}],
            },
        }

    def add_node(self, name: str, spec: FakeNodeSpec | None = None) -> dict[str, Any]:
        """Create one more fake node (kwok makes it Ready within a fraction of a second)."""
        existing = self.api("GET", f"/api/v1/nodes?labelSelector={KWOK_NODE_LABEL[0]}={KWOK_NODE_LABEL[1]}")
        index = len(existing["items"])
        return dict(self.api("POST", "/api/v1/nodes", self.node_manifest(name, spec, index)))

    def wait_nodes_ready(self, count: int | None = None, timeout: float = 30.0) -> None:
        count = self.node_count if count is None else count

        def ready() -> bool:
            items = self.api("GET", f"/api/v1/nodes?labelSelector={KWOK_NODE_LABEL[0]}={KWOK_NODE_LABEL[1]}")
            return sum(1 for n in items["items"] if node_is_ready(n) and not _blocking_taints(n)) >= count

        self._wait(f"{count} nodes Ready", ready, self._procs.values(), timeout=timeout)

    # ---- faults ------------------------------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (SIGTERM, SIGKILL after the stop timeout)."""
        with self._lock:
            proc = self._procs["kube-apiserver"]
            _stop_procs([proc], self.stop_timeout)
            _log("kube-apiserver stopped")

    def start_apiserver(self, timeout: float | None = None) -> None:
        """Start kube-apiserver again (same port, flags and etcd data) and wait for /readyz."""
        with self._lock:
            t0 = time.monotonic()
            self._procs["kube-apiserver"].start()
            self._wait("kube-apiserver /readyz", lambda: self._get_status("/readyz") == 200,
                       [self._procs["etcd"], self._procs["kube-apiserver"]], timeout=timeout)
            _log(f"kube-apiserver ready again in {time.monotonic() - t0:.1f} s")

    def restart_apiserver(self, downtime: float = 0.0, timeout: float | None = None) -> None:
        """Stop kube-apiserver, stay down for ``downtime`` seconds, start it and wait for /readyz.
        etcd, the controllers, the scheduler and kwok keep running and reconnect by themselves."""
        with self._lock:
            self.stop_apiserver()
            if downtime > 0:
                time.sleep(downtime)
            self.start_apiserver(timeout=timeout)

    def process(self, component: str) -> subprocess.Popen[bytes] | None:
        """The running ``Popen`` of a component (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, kwok), or None."""
        proc = self._procs.get(component)
        return proc.popen if proc is not None and proc.running() else None

    # ---- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process (SIGTERM; SIGKILL after ``stop_timeout``) and remove the work dir
        unless ``keep``. Safe to call more than once, and on a cluster that failed to start."""
        with self._lock:
            procs = self._procs
            # clients first, then the apiserver, then its storage
            _stop_procs([procs[n] for n in ("kwok", "kube-scheduler", "kube-controller-manager") if n in procs],
                        self.stop_timeout)
            _stop_procs([procs[n] for n in ("kube-apiserver",) if n in procs], self.stop_timeout)
            _stop_procs([procs[n] for n in ("etcd",) if n in procs], self.stop_timeout)
            _LIVE.discard(self)
            if self.work_dir != Path() and self.work_dir.exists():
                if self.keep:
                    _log(f"kept work dir {self.work_dir} (logs in {self.logs_dir})")
                else:
                    shutil.rmtree(self.work_dir, ignore_errors=True)
            self._started = False


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def node_is_ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions") or [])


def _blocking_taints(node: Mapping[str, Any]) -> list[str]:
    return [t["key"] for t in node.get("spec", {}).get("taints") or []
            if t.get("key") in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions") or [])


__all__ = [
    "DEFAULT_GPU_PRODUCT",
    "FRONT_PROXY_CLIENT_CN",
    "GPU_RESOURCE",
    "KWOK_STAGES_FILE",
    "FakeNodeSpec",
    "LocalCluster",
    "LocalClusterError",
    "free_ports",
    "generate_pki",
    "node_is_ready",
    "pod_is_ready",
]

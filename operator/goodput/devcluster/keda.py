"""The real KEDA on a `LocalCluster`: its operator and metrics adapter as local processes.

    with LocalCluster(hpa_sync_period_s=5) as cluster, LocalKeda(cluster) as keda:
        cluster.kubectl("apply", "-f", "scaledobject.yaml")   # KEDA makes the HPA, the HPA scales

What :meth:`LocalKeda.start` does, in order:

* the CRDs of KEDA's module (``config/crd/bases``: ScaledObject, ScaledJob, TriggerAuthentication,
  ...) are applied and waited for, and the namespace ``keda`` is created;
* one serving/client certificate, signed by the cluster's CA, with the SANs ``127.0.0.1``,
  ``localhost`` and the two Services' DNS names, goes into ``<work>/certs`` as ``ca.crt``,
  ``tls.crt``, ``tls.key``: the layout KEDA reads for the mTLS of the gRPC link from the adapter
  to the operator, and the adapter's HTTPS serving cert;
* ``keda-operator`` runs with the admin kubeconfig, ``--leader-elect=false``, no certificate
  rotation and no webhook/APIService patching (those manage in-cluster secrets this setup does
  not have), and serves its gRPC metrics service on a free 127.0.0.1 port;
* ``keda-adapter`` (the metrics API server) runs with delegated authentication and authorization
  through the same kubeconfig (the apiserver's ``extension-apiserver-authentication`` ConfigMap
  carries the front-proxy CA), on a free port;
* ``keda/keda-metrics-apiserver`` is a Service of type ExternalName ``localhost`` (there is no
  kube-proxy here, and Endpoints refuse loopback addresses: for an ExternalName Service the
  aggregator dials ``https://<externalName>:<APIService port>`` itself), and the APIService
  ``v1beta1.external.metrics.k8s.io`` points at it with the cluster CA as its ``caBundle``;
* it waits until that APIService is Available and the external metrics API answers.

:meth:`LocalKeda.stop` deletes the APIService first (an unavailable aggregated API makes every
discovery of the cluster, kubectl's included, complain), then stops the two processes.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from goodput.devcluster.build import KedaBinaries, ensure_keda
from goodput.devcluster.cluster import LocalCluster, LocalClusterError, _Proc, _stop_procs, _tail, free_ports

KEDA_NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"


def _log(msg: str) -> None:
    print(f"[dev-keda] {msg}", file=sys.stderr, flush=True)


def write_keda_certs(cert_dir: Path, ca_cert: Path, ca_key: Path, *, valid_days: int = 7) -> None:
    """``ca.crt``, ``tls.crt``, ``tls.key`` in ``cert_dir``: one leaf cert signed by the cluster CA,
    for serving and as a client (KEDA's operator and adapter authenticate each other with it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise LocalClusterError("the cluster CA key is not an EC key")
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    dns = ["localhost", *(f"{svc}.{KEDA_NAMESPACE}.svc{suffix}" for svc in (METRICS_SERVICE, "keda-operator")
                          for suffix in ("", ".cluster.local"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keda")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), *(x509.DNSName(d) for d in dns)]), critical=False)
            .sign(signer, hashes.SHA256()))
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = cert_dir / "tls.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)


def production_stack_scaled_object(namespace: str, name: str, deployment: str, prometheus_url: str, query: str, *,
                                   threshold: float = 5, min_replicas: int = 1, max_replicas: int = 10,
                                   polling_interval_s: int = 15,
                                   scale_down_window_s: int | None = None) -> dict[str, Any]:
    """The vLLM production-stack tutorial's ScaledObject: one Prometheus trigger on ``query``
    (``sum(vllm:num_requests_waiting{...})``) with ``threshold`` 5, metric type AverageValue
    (KEDA's default: the HPA wants ``ceil(sum / threshold)`` replicas). ``scale_down_window_s``
    overrides the HPA's 300 s scale-down stabilization window (None: Kubernetes' default)."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"name": deployment},
        "minReplicaCount": min_replicas,
        "maxReplicaCount": max_replicas,
        "pollingInterval": polling_interval_s,
        "triggers": [{"type": "prometheus", "metadata": {
            "serverAddress": prometheus_url,
            "metricName": "vllm:num_requests_waiting",
            "query": query,
            "threshold": f"{threshold:g}",
        }}],
    }
    if scale_down_window_s is not None:
        spec["advanced"] = {"horizontalPodAutoscalerConfig": {
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": scale_down_window_s}}}}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def hpa_name(scaled_object: str) -> str:
    """The HPA KEDA makes for a ScaledObject (unless it names one itself)."""
    return f"keda-hpa-{scaled_object}"


class LocalKeda:
    """KEDA's operator and metrics adapter for one started `LocalCluster` (see the module docstring)."""

    def __init__(self, cluster: LocalCluster, binaries: KedaBinaries | None = None, *,
                 work_dir: str | os.PathLike[str] | None = None, start_timeout: float = 120.0,
                 stop_timeout: float = 10.0, log_level: str = "info") -> None:
        self.cluster = cluster
        self._binaries = binaries
        self._work_dir_arg = Path(work_dir) if work_dir is not None else None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.work_dir = Path()
        self.ports: dict[str, int] = {}
        self.started_in: float | None = None
        self._procs: dict[str, _Proc] = {}

    def __enter__(self) -> LocalKeda:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def cert_dir(self) -> Path:
        return self.work_dir / "certs"

    def log_path(self, component: str) -> Path:
        return self.work_dir / "logs" / f"{component}.log"

    # ---- start ---------------------------------------------------------------------------------

    def start(self) -> LocalKeda:
        t0 = time.monotonic()
        try:
            self._start(t0)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        _log(f"KEDA ready in {self.started_in:.1f} s (logs in {self.work_dir / 'logs'})")
        return self

    def _start(self, t0: float) -> None:
        def step(msg: str) -> None:
            _log(f"[{time.monotonic() - t0:5.1f} s] {msg}")

        b = self._binaries = self._binaries or ensure_keda()
        if self._work_dir_arg is not None:
            self.work_dir = self._work_dir_arg
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.work_dir = Path(tempfile.mkdtemp(prefix="goodput-keda-", dir=self.cluster.work_dir))
        cluster = self.cluster
        self._apply_crds(b.crd_dir)
        self._ensure_namespace()
        step("CRDs established, namespace keda")

        write_keda_certs(self.cert_dir, cluster.ca_cert, cluster.ca_key)
        # the CAs scalers trust besides the system's (--ca-dir: every file in it must be a cert)
        ca_dir = self.work_dir / "ca"
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "ca.crt").write_bytes(cluster.ca_cert.read_bytes())
        names = ("grpc", "operator_metrics", "operator_health", "adapter", "adapter_metrics")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        env = dict(cluster.env, WATCH_NAMESPACE="", POD_NAMESPACE=KEDA_NAMESPACE,
                   KEDA_CLUSTER_OBJECT_NAMESPACE=KEDA_NAMESPACE)
        kubeconfig, certs, p = str(cluster.kubeconfig), str(self.cert_dir), self.ports
        self._procs = {
            "keda-operator": _Proc("keda-operator", [
                str(b.operator),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--metrics-bind-address=127.0.0.1:{p['operator_metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{p['operator_health']}",
                f"--metrics-service-bind-address=127.0.0.1:{p['grpc']}",
                f"--cert-dir={certs}",
                f"--ca-dir={ca_dir}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                f"--zap-log-level={self.log_level}",
                "--zap-encoder=console",
            ], self.log_path("keda-operator"), env),
            "keda-adapter": _Proc("keda-adapter", [
                str(b.adapter),
                f"--kubeconfig={kubeconfig}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['adapter']}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs}/tls.crt",
                f"--tls-private-key-file={certs}/tls.key",
                f"--metrics-service-address=127.0.0.1:{p['grpc']}",
                f"--port={p['adapter_metrics']}",
                f"--zap-log-level={self.log_level}",
                "--zap-encoder=console",
            ], self.log_path("keda-adapter"), env),
        }
        for proc in self._procs.values():
            proc.start()
        step(f"keda-operator (gRPC 127.0.0.1:{p['grpc']}) and keda-adapter (https://127.0.0.1:{p['adapter']}) "
             "started")
        self._register_apiservice()
        self._wait("APIService " + APISERVICE + " Available", self._apiservice_available)
        self._wait("the external metrics API", lambda: cluster.api(
            "GET", "/apis/external.metrics.k8s.io/v1beta1") is not None)
        step("external.metrics.k8s.io served through the aggregation layer")

    def _apply_crds(self, crd_dir: Path) -> None:
        files = sorted(crd_dir.glob("*.yaml"))
        if not files:
            raise LocalClusterError(f"no KEDA CRDs in {crd_dir}")
        args = ["apply", "--server-side", *(a for f in files for a in ("-f", str(f)))]
        out = self.cluster.kubectl(*args)
        if out.returncode != 0:
            raise LocalClusterError(f"applying KEDA's CRDs failed: {out.stderr.strip()}")
        for f in files:
            crd = yaml.safe_load(f.read_text(encoding="utf-8"))
            self._wait(f"CRD {crd['metadata']['name']} Established",
                       lambda name=crd["metadata"]["name"]: self._crd_established(name), watch=False)

    def _crd_established(self, name: str) -> bool:
        crd = self.cluster.api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in crd.get("status", {}).get("conditions") or [])

    def _ensure_namespace(self) -> None:
        try:
            self.cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": KEDA_NAMESPACE}})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def _register_apiservice(self) -> None:
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE},
                   "spec": {"type": "ExternalName", "externalName": "localhost",
                            "ports": [{"name": "https", "port": self.ports["adapter"]}]}}
        apiservice = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                      "metadata": {"name": APISERVICE},
                      "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                               "groupPriorityMinimum": 100, "versionPriority": 100,
                               "service": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE,
                                           "port": self.ports["adapter"]},
                               "caBundle": base64.b64encode(self.cluster.ca_cert.read_bytes()).decode("ascii")}}
        for obj in (service, apiservice):
            out = self.cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
            if out.returncode != 0:
                raise LocalClusterError(f"applying {obj['kind']} failed: {out.stderr.strip()}")

    def apiservice_status(self) -> dict[str, Any]:
        obj = self.cluster.api("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
        conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions") or []
        return next((dict(c) for c in conditions if c.get("type") == "Available"), {})

    def _apiservice_available(self) -> bool:
        return self.apiservice_status().get("status") == "True"

    def _wait(self, what: str, ready: Any, *, watch: bool = True, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.start_timeout)
        last: Exception | None = None
        while True:
            if watch:
                for proc in self._procs.values():
                    proc.check_alive()
            try:
                if ready():
                    return
                last = None
            except Exception as exc:  # retried until the deadline
                last = exc
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{_tail(p.log_path, 20)}"
                                  for p in self._procs.values())
                extra = ""
                if "APIService" in what:
                    try:
                        extra = f"\nAPIService condition: {self.apiservice_status()}"
                    except Exception as exc:
                        extra = f"\nAPIService: {exc}"
                raise LocalClusterError(f"timed out waiting for {what}"
                                        + (f" (last error: {last})" if last else "") + extra + f"\n{tails}")
            time.sleep(0.25)

    # ---- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Delete the APIService (so the cluster's discovery stays clean), stop both processes."""
        if self._procs:
            try:
                self.cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", "--wait=false",
                                     timeout=20)
            except Exception as exc:  # the cluster may be gone already
                _log(f"could not delete the APIService: {exc}")
        _stop_procs(list(self._procs.values()), self.stop_timeout)

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"--- {name} ({p.log_path}):\n{_tail(p.log_path, lines)}" for name, p in self._procs.items())


__all__ = ["APISERVICE", "KEDA_NAMESPACE", "LocalKeda", "hpa_name", "production_stack_scaled_object",
           "write_keda_certs"]

"""kopf handlers: thin. Read the cluster and Prometheus, call the pure `reconcile`, carry out its Outcome.

Run with `goodput operator` (or `kopf run -m goodput.handlers.operator`). Settings (environment):
GOODPUT_TIMER_SECONDS (reconcile period, default 30), GOODPUT_PROMETHEUS_URL (default metrics
source; spec.prometheus.url overrides it per resource; unset and no override: plan from the spec's
workload hints), GOODPUT_WINDOW_SECONDS / GOODPUT_LONG_WINDOW_SECONDS (60 / 600),
GOODPUT_PROMETHEUS_TIMEOUT_SECONDS (5), GOODPUT_METRICS_PORT (the operator's own /metrics; 0 = off).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from goodput.api.v1alpha1 import GROUP, PLURAL, VERSION
from goodput.handlers import exporter
from goodput.kube.actions import Kube, load_config
from goodput.planner.observation import Observation
from goodput.render.reconcile import reconcile

Logger = logging.Logger | logging.LoggerAdapter[Any]
TIMER_SECONDS = float(os.environ.get("GOODPUT_TIMER_SECONDS", "30"))
WINDOW_SECONDS = float(os.environ.get("GOODPUT_WINDOW_SECONDS", "60"))
LONG_WINDOW_SECONDS = float(os.environ.get("GOODPUT_LONG_WINDOW_SECONDS", "600"))
PROMETHEUS_TIMEOUT_SECONDS = float(os.environ.get("GOODPUT_PROMETHEUS_TIMEOUT_SECONDS", "5"))
_collectors: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_kube: Kube | None = None


def _lock(uid: str) -> threading.Lock:
    # The timer and the change handlers of one object must not reconcile at the same time.
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _kube
    load_config()
    _kube = Kube()
    # Handler progress in annotations, not in status: status belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # The operator posts its own Events (one per decision); kopf's log-to-event posting would add noise.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    port = int(os.environ.get("GOODPUT_METRICS_PORT", "0"))
    if port:
        exporter.serve(port)


def observe(spec: dict[str, Any], namespace: str, name: str, now: dt.datetime) -> Observation | None:
    """Live metrics for one resource, or None when no Prometheus is configured for it."""
    prom = spec.get("prometheus") or {}
    url = prom.get("url") or os.environ.get("GOODPUT_PROMETHEUS_URL")
    if not url:
        return None
    from goodput.metrics.prometheus import PrometheusCollector  # only when metrics are used

    matchers = tuple(sorted((prom.get("labelMatchers") or {}).items()))
    key = (url, matchers)
    if key not in _collectors:
        _collectors[key] = PrometheusCollector(url, timeout_s=PROMETHEUS_TIMEOUT_SECONDS,
                                               extra_matchers=dict(matchers))
    percentile = float((spec.get("slo") or {}).get("percentile", 99.0))
    result: Observation = _collectors[key].observe(namespace, name, now, window_s=WINDOW_SECONDS,
                                                   long_window_s=LONG_WINDOW_SECONDS, quantile=percentile / 100)
    return result


def reconcile_object(body: kopf.Body, logger: Logger) -> None:
    assert _kube is not None, "startup handler did not run"
    obj: dict[str, Any] = {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
    name, namespace = body.metadata.name, body.metadata.namespace or "default"
    uid = body.metadata.uid or f"{namespace}/{name}"
    now = dt.datetime.now(dt.UTC)
    with _lock(uid):
        observation = observe(obj["spec"], namespace, name, now)  # never raises: gaps are in the Observation
        try:
            observed = _kube.observe_pools(namespace, name)
            outcome = reconcile(obj, observed, now, observation)
            for desired in outcome.apply:
                _kube.apply(desired)
            for role in outcome.delete_pools:
                _kube.delete_pool(namespace, name, role)
            _kube.patch_status(namespace, name, outcome.status)
        except (ApiException, HTTPError, OSError) as exc:
            # Nothing is recorded as done: the next attempt recomputes the same outcome.
            exporter.RECONCILE_ERRORS.labels(namespace=namespace, name=name).inc()
            raise kopf.TemporaryError(f"Kubernetes API call failed, retrying: {exc}", delay=10) from exc
        exporter.record(namespace, name, outcome.status, [e.reason for e in outcome.events])
        for event in outcome.events:
            try:
                _kube.post_event(obj, event, now)
            except (ApiException, HTTPError, OSError) as exc:
                logger.warning("could not post event %s: %s", event.reason, exc)
            logger.info("%s: %s", event.reason, event.message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_change(*, body: kopf.Body, logger: Logger, **_: Any) -> None:
    reconcile_object(body, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(*, name: str, namespace: str | None, **_: Any) -> None:
    # Owned objects go with the garbage collector; only the operator's own series remain to drop.
    exporter.forget(namespace or "default", name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
def on_timer(*, body: kopf.Body, logger: Logger, **_: Any) -> None:
    reconcile_object(body, logger)

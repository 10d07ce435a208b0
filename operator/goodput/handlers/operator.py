"""kopf handlers: thin. Read the cluster and Prometheus, call the pure `reconcile`, carry out its Outcome.

Run with `goodput operator` (or `kopf run -m goodput.handlers.operator`). Its settings are one
typed object, `SETTINGS`, read once from the environment when this module is imported (every
variable, its meaning and default: `goodput.handlers.settings`).

Faults: each reconcile reads the object fresh (kopf's body may predate our own last status
write, and deciding from it would repeat a decision), and commits its status only if nobody
wrote in between (409 otherwise: recompute from a fresh read). Status goes out as a merge-patch
diff against what the object holds, and not at all when nothing changed. An apiserver that is down makes
the handler fail with a TemporaryError and kopf retries it after one timer period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from goodput.api.v1alpha1 import GROUP, PLURAL, VERSION
from goodput.api.vocabulary import ROLE_LABEL
from goodput.handlers import exporter
from goodput.handlers.settings import OperatorSettings
from goodput.kube.actions import Kube, client_connection, load_config
from goodput.planner.observation import Observation, PoolObservation
from goodput.render.patch import status_patch
from goodput.render.reconcile import Event, Outcome, reconcile

Logger = logging.Logger | logging.LoggerAdapter[Any]
SETTINGS = OperatorSettings.from_env(os.environ)  # once, at start-up (see goodput.handlers.settings)
CONFLICT_ATTEMPTS = 5  # reads-decide-write rounds when others keep writing the object meanwhile
EVENT_ATTEMPTS = 3  # an Event is named by its content: posting it again cannot duplicate it
_collectors: dict[tuple[str, tuple[tuple[str, str], ...], int], Any] = {}
_shared: dict[str, Any] = {}  # url -> SharedCollector (thread-safe: one for all worker threads)
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_kube: Kube | None = None
_render_config = SETTINGS.render


def _lock(uid: str) -> threading.Lock:
    # The timer and the change handlers of one object must not reconcile at the same time.
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own login, unless `--context` chose a kubeconfig context other than the current one."""
    context = SETTINGS.context
    if context is None:
        return kopf.login_via_client(**kwargs)
    namespace = load_config(None, context)
    return kopf.ConnectionInfo(**client_connection(namespace))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _kube, _render_config
    load_config(None, SETTINGS.context)
    _kube = Kube()
    # Images and the PodMonitor switch from the chart's values; PodMonitors only where the
    # Prometheus Operator serves them (GOODPUT_POD_MONITOR=auto, the chart's default).
    config = SETTINGS.render
    if SETTINGS.pod_monitor == "auto":
        config = dataclasses.replace(config, pod_monitor=_kube.has_pod_monitor_crd())
    _render_config = config
    # Handler progress in annotations, not in status: status belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # The operator posts its own Events (one per decision); kopf's log-to-event posting would add noise.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    if SETTINGS.metrics_port:
        exporter.serve(SETTINGS.metrics_port)


def _collector(spec: dict[str, Any], url: str) -> Any:
    from goodput.metrics.prometheus import PrometheusCollector  # only when metrics are used

    matchers = tuple(sorted(((spec.get("prometheus") or {}).get("labelMatchers") or {}).items()))
    # One collector per worker thread: kopf runs handlers of different objects at once, and a
    # collector is not thread-safe.
    key = (url, matchers, threading.get_ident())
    if key not in _collectors:
        _collectors[key] = PrometheusCollector(url, timeout_s=SETTINGS.prometheus_timeout_s,
                                               extra_matchers=dict(matchers))
    return _collectors[key]


def _shared_collector(url: str) -> Any:
    from goodput.metrics.shared import SharedCollector  # only when metrics are used

    with _locks_guard:
        if url not in _shared:
            _shared[url] = SharedCollector(url, timeout_s=SETTINGS.prometheus_timeout_s,
                                           max_age_s=SETTINGS.shared_max_age_s)
        return _shared[url]


def observe(spec: dict[str, Any], namespace: str, name: str, now: dt.datetime) -> Observation | None:
    """Live metrics for one resource, or None when no Prometheus is configured for it. From the
    tick's fleet-wide answer of its Prometheus (one per URL, a per-resource URL included), unless
    its spec sets its own label matchers or GOODPUT_SHARED_COLLECTOR=0: then its own queries."""
    prom = spec.get("prometheus") or {}
    url = prom.get("url") or SETTINGS.prometheus_url
    if not url:
        return None
    percentile = float((spec.get("slo") or {}).get("percentile", 99.0))
    shared = SETTINGS.shared_collector and not prom.get("labelMatchers")
    collector = _shared_collector(url) if shared else _collector(spec, url)
    result: Observation = collector.observe(namespace, name, now, window_s=SETTINGS.window_s,
                                            long_window_s=SETTINGS.long_window_s, quantile=percentile / 100)
    return result


def pod_in_flight(spec: dict[str, Any], namespace: str, name: str, role: str,
                  now: dt.datetime) -> dict[str, float] | None:
    """Requests running + waiting per pod of one pool, from the same Prometheus as `observe`."""
    url = (spec.get("prometheus") or {}).get("url") or SETTINGS.prometheus_url
    if not url:
        return None
    loads: dict[str, float] | None = _collector(spec, url).pod_in_flight(namespace, name, role, now)
    return loads


def prepare_scale_downs(kube: Kube, obj: dict[str, Any], outcome: Outcome,
                        observed: dict[str, PoolObservation], now: dt.datetime, logger: Logger) -> None:
    """Before a Deployment's replicas drop: mark the pods with the fewest requests in flight as
    the ones to delete (pod-deletion-cost), so the ReplicaSet does not cut busy pods."""
    meta = obj["metadata"]
    for desired in outcome.apply:
        if desired["kind"] != "Deployment":
            continue
        role = desired["metadata"]["labels"][ROLE_LABEL]
        seen = observed.get(role)
        target = int(desired["spec"]["replicas"])
        if seen is None or target >= seen.replicas:
            continue
        loads = pod_in_flight(obj.get("spec") or {}, meta["namespace"], meta["name"], role, now)
        plan = kube.mark_leaving_pods(meta["namespace"], meta["name"], role, target, loads)
        logger.info("%s %d→%d: %s", role, seen.replicas, target, plan.reason)


def reconcile_object(body: kopf.Body, logger: Logger) -> None:
    assert _kube is not None, "startup handler did not run"
    name, namespace = body.metadata.name, body.metadata.namespace or "default"
    uid = body.metadata.uid or f"{namespace}/{name}"
    now = dt.datetime.now(dt.UTC)
    with _lock(uid):
        try:
            done = _decide_and_commit(_kube, namespace, name, now, logger)
        except (ApiException, HTTPError, OSError) as exc:
            # Nothing is recorded as done: the next attempt recomputes the same outcome.
            exporter.RECONCILE_ERRORS.labels(namespace=namespace, name=name).inc()
            raise kopf.TemporaryError(f"Kubernetes API call failed, retrying in {SETTINGS.retry_delay_s:g} s: {exc}",
                                      delay=SETTINGS.retry_delay_s) from exc
        if done is None:
            return  # deleted meanwhile
        obj, outcome = done
        exporter.record(namespace, name, outcome.status, [e.reason for e in outcome.events])
        _post_events(_kube, obj, outcome.events, now, logger)


def _decide_and_commit(kube: Kube, namespace: str, name: str, now: dt.datetime,
                       logger: Logger) -> tuple[dict[str, Any], Outcome] | None:
    """Read, decide, apply, write status. A 409 (someone wrote the object, or created a
    Deployment, in between) starts over from a fresh read, so no write is lost and no decision
    is made twice. Metrics are read once: they do not depend on who wrote what."""
    observation: Observation | None = None
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        obj = kube.read(namespace, name)
        if obj is None:
            return None
        if attempt == 1:
            observation = observe(obj.get("spec") or {}, namespace, name, now)  # never raises
        observed = kube.observe_pools(namespace, name)
        outcome = reconcile(obj, observed, now, observation, _render_config)
        try:
            prepare_scale_downs(kube, obj, outcome, observed, now, logger)
            for desired in outcome.apply:
                kube.apply(desired)
            for role in outcome.delete_pools:
                kube.delete_pool(namespace, name, role)
            patch = status_patch(obj.get("status"), outcome.status)
            # An unchanged status is not written: no apiserver write, no etcd revision, no watch
            # event back to every watcher of the object.
            exporter.STATUS_WRITES.labels(namespace=namespace, name=name,
                                          result="written" if patch else "unchanged").inc()
            if patch is not None:
                kube.patch_status(namespace, name, patch, obj["metadata"]["resourceVersion"])
            return obj, outcome
        except ApiException as exc:
            if exc.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
            logger.info("conflict (409) writing %s/%s, attempt %d: changed meanwhile; deciding again from a fresh "
                        "read", namespace, name, attempt)
    raise AssertionError("unreachable")


def _post_events(kube: Kube, obj: dict[str, Any], events: list[Event], now: dt.datetime, logger: Logger) -> None:
    """After the status that records them is written. A few retries ride out a short apiserver
    blip; an Event still not posted is logged (the decision itself is in status)."""
    for event in events:
        for attempt in range(1, EVENT_ATTEMPTS + 1):
            try:
                kube.post_event(obj, event, now)
                break
            except (ApiException, HTTPError, OSError) as exc:
                if attempt == EVENT_ATTEMPTS:
                    logger.warning("could not post event %s: %s", event.reason, exc)
                else:
                    time.sleep(attempt)
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.timer_s, initial_delay=SETTINGS.timer_s)
def on_timer(*, body: kopf.Body, logger: Logger, **_: Any) -> None:
    reconcile_object(body, logger)

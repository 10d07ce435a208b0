"""kopf handlers: thin. Read the cluster, call the pure `reconcile`, carry out its Outcome.

Run with `goodput operator` (or `kopf run -m goodput.handlers.operator`). The timer period is
GOODPUT_TIMER_SECONDS (default 30).
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
from goodput.kube.actions import Kube, load_config
from goodput.render.reconcile import reconcile

Logger = logging.Logger | logging.LoggerAdapter[Any]
TIMER_SECONDS = float(os.environ.get("GOODPUT_TIMER_SECONDS", "30"))
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


def reconcile_object(body: kopf.Body, logger: Logger) -> None:
    assert _kube is not None, "startup handler did not run"
    obj: dict[str, Any] = {"metadata": dict(body.metadata), "spec": dict(body.spec), "status": dict(body.status)}
    name, namespace = body.metadata.name, body.metadata.namespace or "default"
    uid = body.metadata.uid or f"{namespace}/{name}"
    now = dt.datetime.now(dt.UTC)
    with _lock(uid):
        try:
            observed = _kube.observe_pools(namespace, name)
            outcome = reconcile(obj, observed, now)
            for desired in outcome.apply:
                _kube.apply(desired)
            for role in outcome.delete_pools:
                _kube.delete_pool(namespace, name, role)
            _kube.patch_status(namespace, name, outcome.status)
        except (ApiException, HTTPError, OSError) as exc:
            # Nothing is recorded as done: the next attempt recomputes the same outcome.
            raise kopf.TemporaryError(f"Kubernetes API call failed, retrying: {exc}", delay=10) from exc
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
def on_timer(*, body: kopf.Body, logger: Logger, **_: Any) -> None:
    reconcile_object(body, logger)

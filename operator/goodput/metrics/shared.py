"""One Prometheus answer per tick for every InferenceDeployment: the collector at scale.

    shared = SharedCollector("http://prometheus.monitoring:9090", max_age_s=15)
    obs = shared.observe("prod", "llama-70b", now)      # never raises; same Observation as PrometheusCollector

`PrometheusCollector.observe` asks ~46 queries per resource, each filtered to one deployment. At
1,000 resources on a 30 s timer that is ~1,500 queries/s. This asks the *same* queries (built by
`build_queries`/`build_labelled_queries`, so the same PromQL functions, dedup of duplicate
scrapes, fallbacks between vLLM name generations) with a selector that matches every deployment
(``goodput_dev_inference_deployment!="", namespace!="", goodput_dev_role=~"aggregated|prefill|decode"``)
and grouped ``by (namespace, goodput_dev_inference_deployment, goodput_dev_role)``. Every
aggregation in those queries is a sum, max, count or histogram_quantile *within* a group, and
every binary operation matches one-to-one on the group's labels, so each (namespace, name) part
of the fleet-wide answer is exactly what the per-resource query returns for that resource. The
answer is split per (namespace, name) once and each reconcile assembles its Observation from its
part with the same code as the per-resource path (`assemble`): same `missing` notes, None vs 0,
NaN, optional fields, buckets per ``le``, KV capacity.

The cache
---------
Keyed by (window_s, long_window_s, quantile) within one collector (one per Prometheus URL): one
snapshot per key. A reconcile at time ``now`` reuses a snapshot taken within ``max_age_s`` of
``now`` (default half the timer period: every tick of a 30 s timer gets a fresh one) and otherwise
fetches a new one, evaluated at ``now``. Fetches are serialised per collector (kopf runs handlers
in several threads): the threads that need the same snapshot meanwhile wait and reuse it. The
Observation's time is the snapshot's (what the values describe), at most ``max_age_s`` old.

Histogram quantiles depend on the SLO percentile, so the quantile is part of the key: each
percentile in use costs one fleet-wide fetch per tick (a constant, not per resource). Computing
them in Python from the bucket answers would have to reproduce histogram_quantile's interpolation
and its monotonicity fixes exactly, and the long window has no bucket answer; asking Prometheus
keeps the results identical.

Failures: a fetch that fails (unreachable, timeout, HTTP error, malformed body) is a snapshot too:
every resource of that tick gets `Observation.unavailable` with the same error as the per-resource
path would give, and the next tick retries (no retry storm of one failing fetch per resource).
A resource absent from the answer gets empty parts, hence the Observation the per-resource
collector gives a deployment with no series (no pools, one note: not zero load).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goodput.api.vocabulary import PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL
from goodput.metrics.prometheus import (
    NAMESPACE_LABEL,
    PrometheusCollector,
    QueryPlan,
    _check_args,
    _Client,
    _num,
    _Unavailable,
    _unix,
    assemble,
)
from goodput.metrics.promql import Matcher, Sample
from goodput.planner.observation import ROLES, Observation

log = logging.getLogger(__name__)

# Grouping of the fleet-wide queries: one group per (namespace, deployment, role).
FLEET_BY = (NAMESPACE_LABEL, PROM_DEPLOYMENT_LABEL, PROM_ROLE_LABEL)
DEFAULT_MAX_AGE_S = 15.0
_NONE: tuple[Sample, ...] = ()


def fleet_matchers(extra: Sequence[Matcher] = ()) -> tuple[Matcher, ...]:
    """Every vLLM pod of every InferenceDeployment (the role regex as in `deployment_matchers`)."""
    return (Matcher(PROM_DEPLOYMENT_LABEL, "!=", ""), Matcher(NAMESPACE_LABEL, "!=", ""),
            Matcher(PROM_ROLE_LABEL, "=~", "|".join(ROLES)), *extra)


@dataclass
class Snapshot:
    """One fleet-wide answer: promql -> (namespace, name) -> samples, or the error of its fetch."""

    time: dt.datetime
    plan: QueryPlan
    parts: dict[str, dict[tuple[str, str], list[Sample]]] = field(default_factory=dict)
    error: str | None = None
    queries: int = 0  # HTTP queries this fetch sent
    fetch_s: float = 0.0  # wall time of the fetch

    def deployments(self) -> set[tuple[str, str]]:
        return {key for part in self.parts.values() for key in part}


def split(samples: Sequence[Sample]) -> dict[tuple[str, str], list[Sample]]:
    """A fleet-wide answer per (namespace, deployment); series without either label are dropped
    (the selector excludes them; a per-resource query could never match them either)."""
    out: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        ns, name = s.labels.get(NAMESPACE_LABEL, ""), s.labels.get(PROM_DEPLOYMENT_LABEL, "")
        if ns and name:
            out.setdefault((ns, name), []).append(s)
    return out


class SharedCollector:
    """Serves `observe` for every deployment at one Prometheus from one fleet-wide answer per tick.
    Thread-safe. Arguments as `PrometheusCollector`'s, plus ``max_age_s`` (how old a snapshot may be
    and still be reused)."""

    def __init__(self, url: str, timeout_s: float = 5.0, extra_matchers: Mapping[str, str] | None = None, *,
                 budget_s: float | None = None, max_age_s: float = DEFAULT_MAX_AGE_S,
                 client: _Client | None = None, **kwargs: Any) -> None:
        if not (math.isfinite(max_age_s) and max_age_s >= 0):
            raise ValueError(f"max_age_s must be a non-negative number of seconds, got {max_age_s}")
        self._prom = PrometheusCollector(url, timeout_s, extra_matchers, budget_s=budget_s, client=client, **kwargs)
        self.url = self._prom.url
        self.max_age_s = float(max_age_s)
        self._snapshots: dict[tuple[float, float, float], Snapshot] = {}
        self._guard = threading.Lock()  # the dict
        self._fetching = threading.Lock()  # one fetch at a time; the others wait and reuse it
        self.fetches = 0

    @property
    def queries_sent(self) -> int:
        return self._prom.queries_sent

    def observe(self, namespace: str, name: str, now: dt.datetime, window_s: float = 60,
                long_window_s: float = 600, quantile: float = 0.99) -> Observation:
        """The pools of InferenceDeployment ``namespace/name``, from this tick's snapshot. Never raises."""
        w_s, lw_s = _num(window_s, 60.0), _num(long_window_s, 600.0)
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            return Observation.unavailable(now, f"invalid namespace/name {namespace!r}/{name!r}: both must be "
                                                "non-empty strings", w_s, lw_s)
        problem = _check_args(window_s, long_window_s, quantile, now)
        if problem:
            return Observation.unavailable(now, problem, w_s, lw_s)
        try:
            snap = self.snapshot(now, w_s, lw_s, float(quantile))
            if snap.error is not None:
                return Observation.unavailable(snap.time, snap.error, w_s, lw_s)
            key = (namespace, name)
            return assemble(snap.plan, lambda promql: snap.parts[promql].get(key, _NONE), f"{namespace}/{name}",
                            snap.time, w_s, lw_s, blank_role=None)
        except Exception as exc:  # a bug or a surprise: still never raise into the operator
            log.exception("reading Prometheus failed unexpectedly")
            return Observation.unavailable(now, f"reading Prometheus at {self.url} failed: "
                                                f"{type(exc).__name__}: {exc}", w_s, lw_s)

    def snapshot(self, now: dt.datetime, window_s: float, long_window_s: float, quantile: float) -> Snapshot:
        """This tick's fleet-wide answer for the key: a fresh one reused, else fetched at ``now``."""
        key = (window_s, long_window_s, quantile)
        with self._guard:
            snap = self._snapshots.get(key)
        if snap is not None and self._fresh(snap, now):
            return snap
        with self._fetching:
            with self._guard:
                snap = self._snapshots.get(key)
            if snap is not None and self._fresh(snap, now):
                return snap  # fetched by another thread while this one waited
            snap = self._fetch(now, window_s, long_window_s, quantile)
            with self._guard:
                self._snapshots[key] = snap
            return snap

    def _fresh(self, snap: Snapshot, now: dt.datetime) -> bool:
        age = (_unix(now) - _unix(snap.time))
        return 0 <= age <= self.max_age_s

    def _fetch(self, now: dt.datetime, window_s: float, long_window_s: float, quantile: float) -> Snapshot:
        plan = QueryPlan.build(fleet_matchers(self._prom.extra_matchers), window_s, long_window_s, quantile,
                               by=FLEET_BY)
        snap = Snapshot(time=now, plan=plan)
        sent0, t0 = self._prom.queries_sent, time.monotonic()
        self.fetches += 1
        try:
            answers = self._prom.fetch(plan, _unix(now), t0 + self._prom.budget_s)
            snap.parts = {promql: split(samples) for promql, samples in answers.items()}
        except _Unavailable as exc:  # every resource of this tick is unavailable, with the same words
            snap.error = str(exc)
        except Exception as exc:  # a bug or a surprise: the same, and logged
            log.exception("reading Prometheus failed unexpectedly")
            snap.error = f"reading Prometheus at {self.url} failed: {type(exc).__name__}: {exc}"
        finally:
            snap.queries = self._prom.queries_sent - sent0
            snap.fetch_s = time.monotonic() - t0
        log.debug("fleet snapshot from %s: %d queries, %d deployments, %.3f s%s", self.url, snap.queries,
                  len(snap.deployments()), snap.fetch_s, f", failed: {snap.error}" if snap.error else "")
        return snap

"""The operator's settings: one typed object, read once at start-up from the environment that
`goodput operator` fills from its flags (and the Helm chart from its values).

kopf's timer interval is fixed when the handlers are registered, so the settings are read when
`goodput.handlers.operator` is imported; `goodput operator` sets the environment from its flags
before that import. A value that does not parse is an error naming the variable, raised at
start-up, never a surprise in a reconcile.

==========================================  ======================================  =========
variable                                    what                                    default
==========================================  ======================================  =========
GOODPUT_TIMER_SECONDS                       reconcile period                        30
GOODPUT_PROMETHEUS_URL                      default metrics source (per resource:   none
                                            spec.prometheus.url)
GOODPUT_PROMETHEUS_TIMEOUT_SECONDS          Prometheus' own query timeout           5
GOODPUT_WINDOW_SECONDS                      the short window: load, latency         60
GOODPUT_LONG_WINDOW_SECONDS                 the long window: the trend              600
GOODPUT_SHARED_COLLECTOR                    one fleet-wide query set per tick       1 (on)
GOODPUT_SHARED_COLLECTOR_MAX_AGE_SECONDS    how long a tick's answer is reused      timer / 2
GOODPUT_METRICS_PORT                        the operator's own /metrics (0: off)    0
GOODPUT_POD_MONITOR                         PodMonitors: true, false or auto        false
GOODPUT_KUBE_CONTEXT                        kubeconfig context (`--context`)        current
images and the router's role                see `goodput.render.vllm.RenderConfig`
==========================================  ======================================  =========
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from goodput.kube.actions import CONTEXT_ENV
from goodput.render.vllm import RenderConfig

_OFF = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting that does not parse: the message names the variable and the value."""


@dataclass(frozen=True)
class OperatorSettings:
    timer_s: float = 30.0
    prometheus_url: str | None = None
    prometheus_timeout_s: float = 5.0
    window_s: float = 60.0
    long_window_s: float = 600.0
    shared_collector: bool = True
    shared_max_age_s: float = 15.0
    metrics_port: int = 0
    pod_monitor: str = "false"  # "true", "false" or "auto" (where the Prometheus Operator's CRD exists)
    context: str | None = None
    render: RenderConfig = field(default_factory=RenderConfig)

    @property
    def retry_delay_s(self) -> float:
        """After a failed API call: kopf retries the handler this much later."""
        return min(10.0, self.timer_s)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorSettings:
        timer_s = _seconds(env, "GOODPUT_TIMER_SECONDS", 30.0)
        window_s = _seconds(env, "GOODPUT_WINDOW_SECONDS", 60.0)
        long_window_s = _seconds(env, "GOODPUT_LONG_WINDOW_SECONDS", 600.0)
        if long_window_s < window_s:
            raise SettingsError(f"GOODPUT_LONG_WINDOW_SECONDS={long_window_s:g} is shorter than "
                                f"GOODPUT_WINDOW_SECONDS={window_s:g}: the trend needs the longer window")
        pod_monitor = (env.get("GOODPUT_POD_MONITOR") or "false").strip().lower()
        pod_monitor = "true" if pod_monitor in ("1", "true", "yes") else "auto" if pod_monitor == "auto" else "false"
        port = env.get("GOODPUT_METRICS_PORT") or "0"
        if not port.isdigit() or int(port) > 65535:
            raise SettingsError(f"GOODPUT_METRICS_PORT={port!r}: a TCP port (1-65535), or 0 for none")
        return cls(timer_s=timer_s, prometheus_url=env.get("GOODPUT_PROMETHEUS_URL") or None,
                   prometheus_timeout_s=_seconds(env, "GOODPUT_PROMETHEUS_TIMEOUT_SECONDS", 5.0),
                   window_s=window_s, long_window_s=long_window_s,
                   shared_collector=(env.get("GOODPUT_SHARED_COLLECTOR") or "1").strip().lower() not in _OFF,
                   shared_max_age_s=_seconds(env, "GOODPUT_SHARED_COLLECTOR_MAX_AGE_SECONDS", timer_s / 2),
                   metrics_port=int(port), pod_monitor=pod_monitor, context=env.get(CONTEXT_ENV) or None,
                   render=RenderConfig.from_env(env))


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}={text!r}: a positive number of seconds")
    return value

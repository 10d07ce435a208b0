"""The operator's settings (goodput.handlers.settings): one typed object from the environment,
defaults as documented, and a clear error naming the variable for a value that does not parse."""

from __future__ import annotations

import pytest

from goodput.handlers.settings import OperatorSettings, SettingsError


def test_defaults() -> None:
    s = OperatorSettings.from_env({})
    assert (s.timer_s, s.window_s, s.long_window_s, s.prometheus_timeout_s) == (30.0, 60.0, 600.0, 5.0)
    assert s.prometheus_url is None and s.shared_collector and s.shared_max_age_s == 15.0
    assert s.metrics_port == 0 and s.pod_monitor == "false" and s.context is None and s.retry_delay_s == 10.0


def test_values_from_the_environment() -> None:
    s = OperatorSettings.from_env({"GOODPUT_TIMER_SECONDS": "5", "GOODPUT_PROMETHEUS_URL": "http://p:9090",
                                   "GOODPUT_SHARED_COLLECTOR": "off", "GOODPUT_METRICS_PORT": "9102",
                                   "GOODPUT_POD_MONITOR": "auto", "GOODPUT_KUBE_CONTEXT": "kind-x",
                                   "GOODPUT_VLLM_IMAGE_NVIDIA": "reg/vllm:1"})
    assert (s.timer_s, s.shared_max_age_s, s.retry_delay_s) == (5.0, 2.5, 5.0)
    assert s.prometheus_url == "http://p:9090" and not s.shared_collector and s.metrics_port == 9102
    assert s.pod_monitor == "auto" and s.context == "kind-x" and s.render.vllm_images["nvidia"] == "reg/vllm:1"
    assert OperatorSettings.from_env({"GOODPUT_POD_MONITOR": "true"}).render.pod_monitor


@pytest.mark.parametrize(("env", "named"), [
    ({"GOODPUT_TIMER_SECONDS": "fast"}, "GOODPUT_TIMER_SECONDS='fast': a number of seconds"),
    ({"GOODPUT_WINDOW_SECONDS": "-1"}, "GOODPUT_WINDOW_SECONDS='-1': a positive number of seconds"),
    ({"GOODPUT_PROMETHEUS_TIMEOUT_SECONDS": "nan"}, "GOODPUT_PROMETHEUS_TIMEOUT_SECONDS='nan'"),
    ({"GOODPUT_METRICS_PORT": "http"}, "GOODPUT_METRICS_PORT='http': a TCP port"),
    ({"GOODPUT_WINDOW_SECONDS": "600", "GOODPUT_LONG_WINDOW_SECONDS": "60"}, "shorter than GOODPUT_WINDOW_SECONDS"),
])
def test_a_value_that_does_not_parse_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as err:
        OperatorSettings.from_env(env)
    assert named in str(err.value)

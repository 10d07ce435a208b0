"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def helm() -> Path:
    """A real helm v3 binary (fetched once and cached by `ensure_helm`). Never skips: without helm
    the chart tests fail with the reason."""
    from goodput.devcluster.helm import HelmUnavailable, ensure_helm

    try:
        return ensure_helm()
    except HelmUnavailable as exc:
        pytest.fail(f"these tests render the chart with a real helm v3 and never skip: {exc}", pytrace=False)

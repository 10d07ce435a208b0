"""The examples ship inside the package (for `goodput demo` from an installed package) and stay equal to
manifests/examples/, which users apply with kubectl."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from goodput.demo.run import BUNDLED_EXAMPLES, DEFAULT_EXAMPLE, EXAMPLES_DIR, example_arg

ROOT = Path(__file__).resolve().parents[2]


def test_bundled_examples_equal_the_manifests() -> None:
    manifests = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
    assert [p.stem for p in manifests] == list(BUNDLED_EXAMPLES)
    for path in manifests:
        assert (EXAMPLES_DIR / path.name).read_bytes() == path.read_bytes(), (
            f"operator/goodput/data/examples/{path.name} drifted: cp manifests/examples/*.yaml "
            "operator/goodput/data/examples/")


def test_examples_are_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["goodput"]
    package = ROOT / "operator" / "goodput"
    for path in EXAMPLES_DIR.glob("*.yaml"):
        rel = str(path.relative_to(package))
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would not be in the wheel"
    assert DEFAULT_EXAMPLE.is_relative_to(package)


@pytest.mark.parametrize("name", BUNDLED_EXAMPLES)
def test_example_names_resolve_to_the_bundled_files(name: str) -> None:
    assert example_arg(name) == EXAMPLES_DIR / f"{name}.yaml"
    assert example_arg("my/own.yaml") == Path("my/own.yaml")

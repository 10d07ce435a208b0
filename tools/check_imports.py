"""A second opinion on the pure core's imports: it does no I/O and knows nothing of the shell.

The import contracts proper are import-linter's, in pyproject.toml ([tool.importlinter]: every
package's layer, the shell included, forbidden libraries, the runtime apart from the dev harness,
no import cycle), checked by `lint-imports` in `./dev test`. This small AST check of the core's
rules below runs beside it, independent of import-linter.

Layers, lowest first (a package may import its own layer and the ones below it):

    model    capacity math (numpy)              -> nothing of goodput's but model
    engine   one vLLM replica, step by step     -> model
    api      CRD models (pydantic)              -> model
    planner  decisions from an observation      -> model, api
    render   desired Kubernetes objects         -> model, api, planner
    sim      trace-replay simulator             -> model, engine, api, planner (its command is goodput.cli.simulate)

The core (those four) imports no Kubernetes client, kopf, Prometheus client, HTTP or socket
library, no subprocess, and none of the I/O packages (metrics, kube, handlers, cli, plot,
emulator). Exit status 1 with one line per violation.

    python tools/check_imports.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE_LAYERS = {"model": 0, "engine": 1, "api": 1, "planner": 2, "render": 3, "sim": 3}
# A core package's shell (reads files, draws, parses arguments), exempt. None now: the commands live in goodput.cli.
IO_MODULES: set[str] = set()
FORBIDDEN_EXTERNAL = (
    "kopf", "kubernetes", "prometheus_api_client", "prometheus_client", "requests", "urllib3", "httpx",
    "aiohttp", "http", "socket", "urllib.request", "subprocess", "asyncio", "matplotlib",
)
IO_PACKAGES = ("metrics", "kube", "handlers", "cli", "plot", "emulator", "simulator", "devcluster", "demo")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations(package_dir: Path) -> list[str]:
    problems = []
    for layer, rank in CORE_LAYERS.items():
        for path in sorted((package_dir / layer).rglob("*.py")):
            if path.relative_to(package_dir).as_posix() in IO_MODULES:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in _imports(tree):
                where = f"{path}:{line}"
                if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_EXTERNAL):
                    problems.append(f"{where}: core package '{layer}' imports I/O library '{name}'")
                    continue
                parts = name.split(".")
                if parts[0] != "goodput" or len(parts) < 2:
                    continue
                target = parts[1]
                if target in IO_PACKAGES:
                    problems.append(f"{where}: core package '{layer}' imports I/O package 'goodput.{target}'")
                elif target in CORE_LAYERS and (CORE_LAYERS[target] > rank
                                                or (CORE_LAYERS[target] == rank and target != layer)):
                    problems.append(f"{where}: '{layer}' imports the higher layer 'goodput.{target}'")
    return problems


def main(argv: list[str]) -> int:
    package_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "operator" / "goodput"
    problems = violations(package_dir)
    for p in problems:
        print(p)
    if not problems:
        print(f"import direction OK ({', '.join(CORE_LAYERS)} import no I/O)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""Reading the simulator's inputs from files: request traces and the simulated world's efficiency.

The file reading of `goodput.sim` (no parsing: `goodput.sim.trace` parses, `goodput.engine.world`
builds the world), shared by `goodput simulate`, the vLLM emulator and the benchmarks. A file that
cannot be read is one CapacityModelError naming why.
"""

from __future__ import annotations

import json
from pathlib import Path

from goodput.engine.world import World, build_world
from goodput.model.errors import CapacityModelError
from goodput.sim.trace import BUNDLED_TRACES, Trace, parse_trace, trace_path


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file, or one line naming why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CapacityModelError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CapacityModelError(f"cannot read {what} {path}: not UTF-8 text ({exc.reason})") from None


def load_trace(name_or_path: str, fmt: str = "auto") -> Trace:
    path = trace_path(name_or_path)
    text = read_text_file(path, "trace")
    name = name_or_path if name_or_path in BUNDLED_TRACES else str(path)
    return parse_trace(text.splitlines(), fmt, name)


def load_world(efficiency: str | None, scale: str | None) -> World:
    """The world of ``--world-efficiency`` and ``--world-scale`` (reads the file, if one is named)."""
    document = None
    if efficiency and not efficiency.startswith("preset:"):
        text = read_text_file(Path(efficiency), "--world-efficiency")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CapacityModelError(f"--world-efficiency {efficiency} is not JSON: {exc}") from None
    return build_world(efficiency, scale, document)

"""The world the simulated engines run in, apart from the planner's belief about them.

The capacity model is 10-35% off on hardware and engines it has not seen, so a simulator whose
engines run the planner's own model can never show the planner wrong. A `World` says how the
simulated (or emulated) engines differ from the belief; the planner keeps the shipped factors
(`goodput.model.efficiency.calibrated_efficiency`), only the engines change.

A world is built from three things, applied in this order:

1. **A base set of efficiency factors** (the names of `Efficiency`, as in ``data/efficiency.json``):
   the shipped ones (the belief), a whole set given as a document (``{"factors": {...}}``; names
   left out keep the shipped value) or an engine preset (``data/efficiency_presets.json``,
   ``{"presets": {NAME: {"description", "source", "factors"}}}``, fitted per source or engine
   class by ``tools/calibrate.py --presets``).
2. **Scale factors** ``NAME=FACTOR``: the base factor times FACTOR. The product must stay within
   the factor's bounds (`Efficiency.validate`): a bandwidth fraction of 0.87 cannot be made
   1.25 times larger. That is what the speed aliases are for.
3. **Speed aliases**, multipliers of how fast the engine is rather than of a fraction, so that
   "25% faster than the model believes" is expressible whatever the fraction:

   * ``decode_speed=X``: the memory-bound part of every step (weight and KV-cache reads, the time
     of decode) takes 1/X of the belief's time;
   * ``prefill_speed=X``: the compute-bound part (GEMM, attention and LM-head FLOPs, the time of
     prefill) takes 1/X;
   * ``speed=X``: the whole step (both parts, all-reduces and fixed overheads) takes 1/X, so a
     uniformly slower or faster engine is slower or faster by exactly that ratio.

   The soft maximum that joins the two parts is kept, so a mixed step is faster by between the
   two. KV transfer between pools is not an engine step and is unchanged (scale
   ``kv_transfer_bytes_s_per_gpu`` for that).

Pure: no I/O besides the package's own presets file, read as ``calibrated_efficiency`` reads its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from goodput.model.efficiency import Efficiency, calibrated_efficiency
from goodput.model.errors import CapacityModelError
from goodput.model.replica import Num, ReplicaModel, StepTimeFn

SPEED_ALIASES = {
    "decode_speed": "memory-bound part of a step (weight and KV reads) takes 1/X of the belief's time",
    "prefill_speed": "compute-bound part of a step (GEMM, attention, LM-head FLOPs) takes 1/X",
    "speed": "every engine step takes 1/X of the belief's time",
}
PRESETS_FILE = "efficiency_presets.json"
FACTOR_NAMES = tuple(f.name for f in dataclasses.fields(Efficiency))


@dataclass(frozen=True)
class World:
    """The engines' efficiency and speed, and where they came from (for the record)."""

    efficiency: Efficiency = field(default_factory=calibrated_efficiency)
    decode_speed: float = 1.0
    prefill_speed: float = 1.0
    speed: float = 1.0
    name: str = "belief"  # belief | file:PATH | preset:NAME, then "+scale" when scaled
    source: str = "the planner's shipped factors (data/efficiency.json)"
    scale: dict[str, float] = field(default_factory=dict)  # the NAME=FACTOR multipliers given

    @property
    def is_belief(self) -> bool:
        """True when the engines are exactly the planner's model."""
        return (self.efficiency == calibrated_efficiency()
                and self.decode_speed == self.prefill_speed == self.speed == 1.0)

    def engine_model(self, belief: ReplicaModel) -> ReplicaModel:
        """The world's engine with the belief's configuration (model, GPU, precision, TP, engine
        arguments). The belief itself when the world is the belief (bit-identical results)."""
        if self.is_belief:
            return belief
        return WorldReplicaModel(belief, self)

    def ratios(self) -> dict[str, float]:
        """Every factor that differs from the belief, as world / belief, plus the speed aliases."""
        shipped = calibrated_efficiency().to_dict()
        out = {name: round(v / shipped[name], 6) for name, v in self.efficiency.to_dict().items()
               if shipped[name] and not math.isclose(v, shipped[name], rel_tol=1e-9)}
        out.update({alias: getattr(self, alias) for alias in SPEED_ALIASES if getattr(self, alias) != 1.0})
        return out

    def describe(self) -> dict[str, Any]:
        """``config.world`` of the simulator's JSON."""
        return {"name": self.name, "label": self.label(), "source": self.source, "is_belief": self.is_belief,
                "scale": dict(self.scale), "vs_belief": self.ratios(),
                "speed": {alias: getattr(self, alias) for alias in SPEED_ALIASES},
                "efficiency": self.efficiency.to_dict()}

    def label(self) -> str:
        """One line for the table and the plot."""
        if self.is_belief:
            return "belief (the engines are the planner's model)"
        ratios = ", ".join(f"{k} x{v:g}" for k, v in self.ratios().items()) or "no factor differs"
        return f"{self.name} ({ratios}); the planner keeps the shipped factors"


class WorldReplicaModel(ReplicaModel):
    """A `ReplicaModel` of the belief's configuration with the world's efficiency and speeds."""

    def __init__(self, belief: ReplicaModel, world: World) -> None:
        super().__init__(belief.arch, belief.gpu, belief.precision, belief.tp, belief.kv_cache_dtype,
                         world.efficiency, max_num_seqs=belief.max_num_seqs,
                         max_num_batched_tokens=belief.max_num_batched_tokens)
        # Rates, not fractions: a speed is not bounded by a fraction's (0, 1].
        self.bandwidth_bytes_s *= world.decode_speed
        self.gemm_flops_s *= world.prefill_speed
        self.attention_flops_s *= world.prefill_speed
        self.lm_head_flops_s *= world.prefill_speed
        self.step_time_scale = 1.0 / world.speed

    def step_time_s(self, decode_seqs: Num, decode_context_tokens: Num, prefill_tokens: Num | float = 0.0,
                    prefill_pairs: Num | float = 0.0, prefill_seqs: Num | float = 0.0,
                    prefill_context_tokens: Num | float = 0.0) -> Num:
        t = super().step_time_s(decode_seqs, decode_context_tokens, prefill_tokens, prefill_pairs, prefill_seqs,
                                prefill_context_tokens)
        return t * self.step_time_scale if self.step_time_scale != 1.0 else t

    def step_time_fn(self) -> StepTimeFn:
        """The belief's fast path with this world's rates (set on ``self``), then the speed."""
        fn: StepTimeFn | None = vars(self).get("_step_time_fn")
        if fn is not None:
            return fn
        base = self._fast_step_time()
        scale = self.step_time_scale

        def step_time(*args: Num) -> Num:
            return base(*args) * scale

        fn = self._step_time_fn = base if scale == 1.0 else step_time
        return fn


# ------------------------------------------------------------------------------------------
# building worlds
# ------------------------------------------------------------------------------------------
def parse_scale(text: str) -> dict[str, float]:
    """``NAME=FACTOR[,NAME=FACTOR...]`` -> {name: factor}; names are efficiency factors or speed aliases."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise CapacityModelError(f"--world-scale {item!r}: expected NAME=FACTOR")
        _check_name(name)
        try:
            factor = float(value)
        except ValueError:
            raise CapacityModelError(f"--world-scale {name}: {value.strip()!r} is not a number") from None
        if not math.isfinite(factor) or factor <= 0:
            raise CapacityModelError(f"--world-scale {name}: the factor must be a positive number, got {value.strip()}")
        if name in out:
            raise CapacityModelError(f"--world-scale {name} is given twice")
        out[name] = factor
    if not out:
        raise CapacityModelError("--world-scale: expected NAME=FACTOR[,NAME=FACTOR...]")
    return out


def _check_name(name: str) -> None:
    if name not in FACTOR_NAMES and name not in SPEED_ALIASES:
        raise CapacityModelError(f"unknown world factor {name!r}; known: {', '.join(FACTOR_NAMES)}, "
                                 f"and the speed aliases {', '.join(SPEED_ALIASES)}")


def world_from_factors(factors: dict[str, Any], name: str, source: str) -> World:
    """A world whose engines have these factors (absolute values; left-out ones keep the shipped
    value; speed aliases are multipliers of the belief's speed)."""
    if not isinstance(factors, dict) or not factors:
        raise CapacityModelError(f"world {name}: 'factors' must be a non-empty object of NAME: number")
    values: dict[str, float] = {}
    speeds: dict[str, float] = {}
    for key, value in factors.items():
        _check_name(str(key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CapacityModelError(f"world {name}: factor {key} must be a number, got {value!r}")
        if key in SPEED_ALIASES:
            if value <= 0:
                raise CapacityModelError(f"world {name}: {key} must be positive, got {value}")
            speeds[key] = float(value)
        else:
            values[key] = float(value)
    base = calibrated_efficiency().to_dict()
    try:
        efficiency = Efficiency.from_dict({**base, **values})
    except CapacityModelError as exc:
        raise CapacityModelError(f"world {name}: {exc}") from None
    return _world(efficiency, speeds, name=name, source=source)


def world_from_document(document: Any, name: str) -> World:
    """A world from a JSON document: ``{"factors": {...}}`` (as data/efficiency.json) or a flat
    object of factors; its ``source``/``fitted_on`` is kept as provenance."""
    if not isinstance(document, dict):
        raise CapacityModelError(f"world {name}: expected a JSON object with 'factors'")
    factors = document.get("factors", document)
    source = str(document.get("source") or document.get("fitted_on") or name)
    return world_from_factors(factors, name, source)


def scaled(world: World, scale: dict[str, float]) -> World:
    """The world with its factors multiplied by ``scale`` (speed aliases multiply its speeds)."""
    values = world.efficiency.to_dict()
    speeds = {alias: getattr(world, alias) for alias in SPEED_ALIASES}
    for name, factor in scale.items():
        _check_name(name)
        if name in SPEED_ALIASES:
            speeds[name] *= factor
            continue
        values[name] *= factor
        try:
            world.efficiency.replace(**{name: values[name]}).validate()
        except CapacityModelError as exc:
            hint = _speed_hint(name)
            raise CapacityModelError(f"--world-scale {name}={factor:g}: {world.efficiency.to_dict()[name]:g} x "
                                     f"{factor:g} = {values[name]:g} is out of bounds ({exc}){hint}") from None
    label = "+".join(f"{k}={v:g}" for k, v in scale.items())
    name = f"{world.name}+scale" if world.name != "belief" else "scale"
    return _world(Efficiency.from_dict(values), speeds, name=f"{name}:{label}", source=world.source,
                  scale={**world.scale, **scale})


def _world(efficiency: Efficiency, speeds: dict[str, float], name: str, source: str,
           scale: dict[str, float] | None = None) -> World:
    return World(efficiency, decode_speed=speeds.get("decode_speed", 1.0),
                 prefill_speed=speeds.get("prefill_speed", 1.0), speed=speeds.get("speed", 1.0),
                 name=name, source=source, scale=dict(scale or {}))


def _speed_hint(name: str) -> str:
    if name == "bandwidth_fraction":
        return "; to make decode faster than the bound allows, use decode_speed"
    if name in ("compute_fraction", "low_precision_compute_derate"):
        return "; to make prefill faster than the bound allows, use prefill_speed"
    return ""


@functools.cache
def shipped_presets() -> dict[str, Any]:
    """The engine presets shipped as data (empty when none are)."""
    path = resources.files("goodput").joinpath("data", PRESETS_FILE)
    if not path.is_file():
        return {}
    document = json.loads(path.read_text(encoding="utf-8"))
    presets: dict[str, Any] = document.get("presets", {})
    return presets


def preset_world(name: str, presets: dict[str, Any] | None = None) -> World:
    """The engines of preset ``name`` (from ``presets``, default the shipped ones)."""
    presets = shipped_presets() if presets is None else presets
    if not presets:
        raise CapacityModelError(f"no engine presets are shipped (data/{PRESETS_FILE} is absent; "
                                 "tools/calibrate.py --presets writes it); give --world-efficiency FILE.json")
    if name not in presets:
        raise CapacityModelError(f"unknown engine preset {name!r}; known: {', '.join(sorted(presets))}")
    entry = presets[name]
    if not isinstance(entry, dict):
        raise CapacityModelError(f"engine preset {name}: expected an object with 'factors'")
    source = str(entry.get("source") or entry.get("description") or name)
    return world_from_factors(entry.get("factors", {}), f"preset:{name}", source)


def build_world(efficiency: str | None = None, scale: str | None = None,
                document: Any = None) -> World:
    """The world of ``--world-efficiency`` (``preset:NAME``, or a file whose parsed JSON is
    ``document``) and ``--world-scale``; the belief when neither is given."""
    world = World()
    if efficiency:
        if efficiency.startswith("preset:"):
            world = preset_world(efficiency.removeprefix("preset:"))
        else:
            world = world_from_document(document, f"file:{efficiency}")
    if scale:
        world = scaled(world, parse_scale(scale))
    return world

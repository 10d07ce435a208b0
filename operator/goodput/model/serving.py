"""What vLLM is given to serve a plan: the checkpoint for a model and weight precision, the
accelerator's vendor facts (Kubernetes resource, node label, image), and the model's context length.

Pure lookups over package data (see ``data/SOURCES.md``):

- ``checkpoints.csv``: public Hugging Face repositories per catalog model and weight precision,
  each with the quantization method its ``config.json`` declares and where the name comes from.
  vLLM reads that ``quantization_config`` itself, so on NVIDIA no ``--quantization`` flag is given
  (an explicit flag that disagrees with the checkpoint makes vLLM refuse to start). Two cases need
  one: AMD, where the Marlin kernels vLLM would pick for AWQ/GPTQ are CUDA-only (``awq`` with
  Triton kernels, ``gptq`` instead, as AMD's ROCm documentation serves them), and FP8 of a model
  without an FP8 checkpoint, which vLLM quantizes itself at load time (``--quantization fp8``).
- ``accelerators.csv``: vendor, extended resource, the node label that names the GPU product
  (NVIDIA GPU feature discovery's ``nvidia.com/gpu.product``, AMD's node labeller
  ``amd.com/gpu.product-name``) with the values it takes, and the default vLLM image.
- ``model_context.csv``: ``max_position_embeddings`` of each catalog model, the length vLLM serves
  when ``--max-model-len`` is not given.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

from goodput.model.errors import CatalogError

VENDORS = ("nvidia", "amd")
# The Marlin kernels vLLM chooses for AWQ/GPTQ checkpoints on CUDA do not exist on ROCm.
_AMD_QUANTIZATION = {"awq": "awq", "gptq": "gptq"}
_AMD_QUANTIZATION_ENV = {"awq": {"VLLM_USE_TRITON_AWQ": "1"}}
ONLINE_QUANTIZATION = {"fp8": "fp8"}  # precisions vLLM can quantize a 16-bit checkpoint to at load time


@dataclass(frozen=True)
class Checkpoint:
    model_id: str
    precision: str
    hf_name: str
    quant_method: str  # the checkpoint's quantization_config.quant_method ("" for 16-bit)
    source: str
    online_quantization: str = ""  # set when vLLM quantizes a 16-bit checkpoint at load time

    def vllm_quantization(self, vendor: str) -> str | None:
        """The --quantization flag vLLM needs for this checkpoint on this vendor (None: it reads
        the checkpoint's own quantization_config)."""
        if self.online_quantization:
            return self.online_quantization
        if vendor == "amd":
            return _AMD_QUANTIZATION.get(self.quant_method)
        return None

    def vllm_env(self, vendor: str) -> dict[str, str]:
        return dict(_AMD_QUANTIZATION_ENV.get(self.quant_method, {})) if vendor == "amd" else {}


@dataclass(frozen=True)
class VendorFacts:
    gpu_id: str
    vendor: str
    resource_name: str
    node_label: str
    node_label_values: tuple[str, ...]
    vllm_image: str
    source: str


DEFAULT_IMAGES = {"nvidia": "vllm/vllm-openai:v0.11.0", "amd": "rocm/vllm:rocm7.0.0_vllm_0.11.2_20251210"}
DEFAULT_RESOURCES = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("goodput.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@functools.cache
def checkpoints() -> tuple[Checkpoint, ...]:
    return tuple(Checkpoint(r["model_id"], r["precision"], r["hf_name"], r["quant_method"], r["source"])
                 for r in _rows("checkpoints.csv"))


@functools.cache
def vendor_facts() -> dict[str, VendorFacts]:
    out = {}
    for r in _rows("accelerators.csv"):
        if r["vendor"] not in VENDORS:
            raise CatalogError(f"accelerators.csv: unknown vendor {r['vendor']!r} for {r['gpu_id']}")
        out[r["gpu_id"]] = VendorFacts(r["gpu_id"], r["vendor"], r["resource_name"], r["node_label"],
                                       tuple(v for v in r["node_label_values"].split("|") if v), r["vllm_image"],
                                       r["source"])
    return out


@functools.cache
def context_lengths() -> dict[str, int]:
    return {r["model_id"]: int(r["max_position_embeddings"]) for r in _rows("model_context.csv")}


def vendor_of(gpu_id: str) -> VendorFacts | None:
    """Vendor facts of a catalog GPU (None for a GPU the catalog does not know)."""
    return vendor_facts().get(gpu_id)


def context_length(model_id: str) -> int | None:
    return context_lengths().get(model_id)


def checkpoint_by_name(hf_name: str) -> Checkpoint | None:
    """The catalog entry of a Hugging Face repository (names compare case-insensitively, as the Hub does)."""
    key = hf_name.lower()
    return next((c for c in checkpoints() if c.hf_name.lower() == key), None)


def checkpoint_for(model_id: str, precision: str) -> Checkpoint | None:
    """The checkpoint to deploy for a catalog model in a weight precision: a published one, or for
    FP8 the 16-bit one quantized by vLLM at load time; None when neither exists."""
    rows = [c for c in checkpoints() if c.model_id == model_id]
    exact = next((c for c in rows if c.precision == precision), None)
    if exact is not None:
        return exact
    if precision in ONLINE_QUANTIZATION:
        base = next((c for c in rows if c.precision in ("bf16", "fp16")), None)
        if base is not None:
            return Checkpoint(model_id, precision, base.hf_name, "", f"{base.source}; quantized to {precision} by "
                              "vLLM at load time (no pre-quantized checkpoint in the catalog)",
                              online_quantization=ONLINE_QUANTIZATION[precision])
    return None


def known_precisions(model_id: str) -> list[str]:
    """The weight precisions the catalog has a checkpoint for (FP8 too when vLLM can make it)."""
    have = [c.precision for c in checkpoints() if c.model_id == model_id]
    if any(p in ("bf16", "fp16") for p in have):
        have += [p for p in ONLINE_QUANTIZATION if p not in have]
    return have

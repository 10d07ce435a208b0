"""Model architectures: what the roofline needs to know about a transformer.

From the bundled catalog (``data/models.csv``), an inline definition, or a Hugging Face
``config.json`` read from a local file (never downloaded).
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from goodput.model.errors import CatalogError

# MLA (DeepSeek-V2/V3) caches one latent vector per layer: kv_lora_rank 512 + rope 64 elements.
MLA_LATENT_ELEMENTS = 576


def kv_bytes_per_token_16bit(layers: int, kv_heads: int, head_dim: int, mla_latent: int | None = None) -> float:
    """KV-cache bytes of one token in 16 bit: K and V of every KV head in every layer, or for MLA the
    one latent vector per layer."""
    if mla_latent is not None:
        return float(layers * mla_latent * 2)
    return float(2 * layers * kv_heads * head_dim * 2)


@dataclass(frozen=True)
class ModelArch:
    model_id: str
    hf_name: str
    params_total: float
    params_active: float
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    attention: str  # "MHA", "GQA" or "MLA"
    kv_bytes_per_token_16bit: float
    experts: int = 0
    experts_per_token: int = 0
    tied_embeddings: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        for name in ("params_total", "params_active", "layers", "hidden_size", "attention_heads", "vocab_size"):
            if not getattr(self, name) > 0:
                raise CatalogError(f"model {self.model_id!r}: {name} must be positive")
        if self.params_active > self.params_total * 1.0001:
            raise CatalogError(f"model {self.model_id!r}: active parameters exceed total parameters")
        if self.kv_bytes_per_token_16bit <= 0:
            raise CatalogError(f"model {self.model_id!r}: KV bytes per token must be positive")
        if self.experts and not 0 < self.experts_per_token <= self.experts:
            raise CatalogError(f"model {self.model_id!r}: experts_per_token must be in 1..experts")

    @property
    def is_moe(self) -> bool:
        return self.experts > 0 and self.experts_per_token > 0 and self.params_total > self.params_active

    @property
    def embedding_params(self) -> float:
        """Input embedding plus, when untied, the LM head: kept in 16 bit by every quantization scheme."""
        one = float(self.vocab_size * self.hidden_size)
        return one if self.tied_embeddings else 2.0 * one

    @property
    def lm_head_params(self) -> float:
        return float(self.vocab_size * self.hidden_size)

    @property
    def routed_expert_params(self) -> float:
        """Parameters of all routed experts; active = non-expert + routed * k/E."""
        if not self.is_moe:
            return 0.0
        fraction = self.experts_per_token / self.experts
        return (self.params_total - self.params_active) / (1.0 - fraction)

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of QK^T and AV for one (query, key) pair across all layers."""
        if self.attention == "MLA":
            # Absorbed MLA: scores over the 576-wide latent, values over the 512-wide part.
            per_layer = 2.0 * self.attention_heads * (MLA_LATENT_ELEMENTS + 512)
        else:
            per_layer = 4.0 * self.attention_heads * self.head_dim
        return per_layer * self.layers

    def kv_bytes_per_token_per_gpu(self, tp: int, kv_bytes_per_element: float) -> float:
        scale = kv_bytes_per_element / 2.0
        if self.attention == "MLA":
            # The latent cache is not split by heads: every tensor-parallel rank keeps all of it.
            return self.kv_bytes_per_token_16bit * scale
        # KV heads are split across ranks; beyond kv_heads ranks each rank keeps one (replicated) head.
        heads_per_gpu = max(self.kv_heads / tp, 1.0)
        return self.kv_bytes_per_token_16bit * scale * heads_per_gpu / self.kv_heads

    def valid_tp(self, tp: int) -> bool:
        """vLLM shards attention heads: the degree must divide the query heads, and KV heads must
        divide evenly or be replicated whole."""
        if tp < 1 or self.attention_heads % tp:
            return False
        if self.attention == "MLA" or self.kv_heads <= 0:
            return True
        return self.kv_heads % tp == 0 or tp % self.kv_heads == 0


def _int(text: str) -> int:
    text = (text or "").strip()
    return int(float(text)) if text else 0


@functools.cache
def model_catalog() -> dict[str, ModelArch]:
    text = resources.files("goodput").joinpath("data", "models.csv").read_text(encoding="utf-8")
    catalog: dict[str, ModelArch] = {}
    for row in csv.DictReader(io.StringIO(text)):
        attention = row["attention"].split()[0].upper()
        heads = _int(row["attention_heads"])
        hidden = _int(row["hidden_size"])
        head_dim = _int(row["head_dim"]) or (hidden // heads if heads else 0)
        catalog[row["model_id"]] = ModelArch(
            model_id=row["model_id"],
            hf_name=row["hf_name"],
            params_total=float(row["params_total_b"]) * 1e9,
            params_active=float(row["params_active_b"]) * 1e9,
            layers=_int(row["layers"]),
            hidden_size=hidden,
            attention_heads=heads,
            kv_heads=_int(row["kv_heads"]) or (0 if attention == "MLA" else heads),
            head_dim=head_dim,
            ffn_size=_int(row["ffn_size"]),
            vocab_size=_int(row["vocab"]),
            attention=attention,
            kv_bytes_per_token_16bit=float(row["kv_bytes_per_token_bf16"]),
            experts=_int(row["experts"]),
            experts_per_token=_int(row["experts_per_token"]),
            # Of the catalog's models only the small Qwen2.5/Llama variants tie; none listed here do.
            tied_embeddings=False,
            notes=row.get("notes", ""),
        )
    return catalog


def get_model(model_id: str) -> ModelArch:
    catalog = model_catalog()
    key = model_id.strip()
    if key in catalog:
        return catalog[key]
    for arch in catalog.values():  # also accept the Hugging Face name
        if arch.hf_name.lower() == key.lower():
            return arch
    known = ", ".join(sorted(catalog))
    raise CatalogError(
        f"unknown model {model_id!r}; known models: {known} (or pass a Hugging Face config.json with --model-config)"
    )


def _get(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in config and config[key] is not None:
            return config[key]
    return default


def _required_int(config: Mapping[str, Any], *keys: str) -> int:
    """A positive integer field of config.json; the error names the field (and its aliases) to add."""
    value = _get(config, *keys)
    names = keys[0] + (f" (or {', '.join(keys[1:])})" if keys[1:] else "")
    if value is None:
        raise CatalogError(f"config.json lacks {names}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise CatalogError(f"config.json field {keys[0]}={value!r} is not an integer") from None
    if isinstance(value, bool) or number != value or number < 1:
        raise CatalogError(f"config.json field {keys[0]}={value!r} must be a positive integer")
    return number


def arch_from_hf_config(config: Mapping[str, Any], model_id: str | None = None) -> ModelArch:
    """Derive the architecture and parameter counts from a Hugging Face ``config.json`` mapping.

    Parameter counts are computed from the shapes (norms and biases ignored: well under 0.1%).
    """
    if "text_config" in config and "num_hidden_layers" not in config:
        config = config["text_config"]  # multimodal wrappers keep the language model here
    layers = _required_int(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _required_int(config, "hidden_size", "n_embd", "d_model")
    heads = _required_int(config, "num_attention_heads", "n_head")
    vocab = _required_int(config, "vocab_size")
    kv_heads = int(_get(config, "num_key_value_heads", "multi_query_group_num", default=heads))
    head_dim = int(_get(config, "head_dim", default=hidden // heads))
    ffn = int(_get(config, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden))
    tied = bool(_get(config, "tie_word_embeddings", default=False))
    kv_lora = _get(config, "kv_lora_rank")

    if kv_lora:  # MLA
        q_lora = _get(config, "q_lora_rank")
        nope = int(_get(config, "qk_nope_head_dim", default=128))
        rope = int(_get(config, "qk_rope_head_dim", default=64))
        v_dim = int(_get(config, "v_head_dim", default=128))
        q_params = hidden * q_lora + q_lora * heads * (nope + rope) if q_lora else hidden * heads * (nope + rope)
        attn = q_params + hidden * (kv_lora + rope) + kv_lora * heads * (nope + v_dim) + heads * v_dim * hidden
        attention = "MLA"
        kv_bytes = kv_bytes_per_token_16bit(layers, 0, 0, mla_latent=int(kv_lora) + rope)
        head_dim = nope + rope
    else:
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        attention = "MHA" if kv_heads == heads else "GQA"
        kv_bytes = kv_bytes_per_token_16bit(layers, kv_heads, head_dim)

    experts = int(_get(config, "num_local_experts", "n_routed_experts", "num_experts", default=0) or 0)
    k = int(_get(config, "num_experts_per_tok", "num_experts_per_token", "moe_topk", default=0) or 0)
    gated = 3  # SwiGLU/GeGLU: gate, up, down
    if experts and k:
        moe_ffn = int(_get(config, "moe_intermediate_size", default=ffn))
        shared = int(_get(config, "n_shared_experts", "num_shared_experts", default=0) or 0)
        dense_layers = int(_get(config, "first_k_dense_replace", default=0) or 0)
        moe_layers = layers - dense_layers
        expert = gated * hidden * moe_ffn
        router = hidden * experts
        dense_mlp = gated * hidden * ffn
        total_mlp = dense_layers * dense_mlp + moe_layers * ((experts + shared) * expert + router)
        active_mlp = dense_layers * dense_mlp + moe_layers * ((k + shared) * expert + router)
    else:
        experts, k = 0, 0
        total_mlp = active_mlp = layers * gated * hidden * ffn
    embed = vocab * hidden * (1 if tied else 2)
    total = layers * attn + total_mlp + embed
    active = layers * attn + active_mlp + embed
    name = str(_get(config, "_name_or_path", default="") or "")
    return ModelArch(
        model_id=model_id or name or str(_get(config, "model_type", default="custom")),
        hf_name=name,
        params_total=float(total),
        params_active=float(active),
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads if attention != "MLA" else 0,
        head_dim=head_dim,
        ffn_size=ffn,
        vocab_size=vocab,
        attention=attention,
        kv_bytes_per_token_16bit=kv_bytes,
        experts=experts,
        experts_per_token=k,
        tied_embeddings=tied,
        notes="derived from config.json",
    )


def arch_from_hf_config_file(path: str | Path, model_id: str | None = None) -> ModelArch:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read model config {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(f"cannot read model config {path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(config, dict):
        raise CatalogError(f"{path} must hold a JSON object (a Hugging Face config.json)")
    try:
        return arch_from_hf_config(config, model_id=model_id or Path(path).parent.name or None)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None

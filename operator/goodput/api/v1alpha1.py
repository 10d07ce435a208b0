"""`InferenceDeployment` (goodput.dev/v1alpha1): the pydantic models are the single source of truth.

`goodput crd` turns them into the CustomResourceDefinition in `crds/` (OpenAPI schema with
defaults, bounds, enums and CEL rules), and the operator parses objects with the same models,
so the admission schema and the code can never disagree. Field names are camelCase on the
wire (aliases) and snake_case in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from goodput.api.vocabulary import GROUP as GROUP  # re-exported: the CRD's API group

VERSION = "v1alpha1"
KIND = "InferenceDeployment"
PLURAL = "inferencedeployments"
SINGULAR = "inferencedeployment"
SHORT_NAMES = ["infd"]

WeightPrecisionName = Literal["bf16", "fp16", "fp8", "int8", "int4-awq", "int4-gptq", "fp4", "mxfp4"]
KVCacheDtype = Literal["auto", "fp8"]
Mode = Literal["auto", "aggregated", "disaggregated"]
# Serving engines by the capacity model's engine classes (goodput.model.efficiency.ENGINE_CLASSES).
Engine = Literal["vllm", "vllm-eager", "sglang", "tensorrt-llm", "nim"]


def rule(expression: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    """A CEL validation rule (x-kubernetes-validations) checked by the apiserver at admission."""
    r: dict[str, JsonValue] = {"rule": expression, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    return r


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# Parameters outside the embeddings must exist: the active ones (all, for a dense model) exceed the
# input embedding plus, unless tied, the LM head.
EMBEDDINGS_RULE = ("(has(self.paramsActiveB) ? self.paramsActiveB : self.paramsTotalB) * 1e9 > "
                   "double(self.vocabSize) * double(self.hiddenSize) * "
                   "(has(self.tiedEmbeddings) && self.tiedEmbeddings ? 1.0 : 2.0)")
EMBEDDINGS_MESSAGE = ("paramsActiveB (default paramsTotalB) must exceed the embedding parameters, "
                      "vocabSize × hiddenSize × 2 (× 1 with tiedEmbeddings)")


class Architecture(_Model):
    """An architecture the catalog does not know (figures from its config.json)."""

    params_total_b: float = Field(gt=0, le=10000, description="Total parameters, billions.")
    params_active_b: float | None = Field(None, gt=0, le=10000,
                                          description="Active parameters per token (MoE), billions; default: total.")
    layers: int = Field(ge=1, le=1000)
    hidden_size: int = Field(ge=1, le=1_000_000)
    attention_heads: int = Field(ge=1, le=10_000)
    kv_heads: int | None = Field(None, ge=1, le=10_000, description="Default: attentionHeads (MHA).")
    head_dim: int | None = Field(None, ge=1, le=10_000, description="Default: hiddenSize / attentionHeads.")
    ffn_size: int = Field(ge=1, le=10_000_000)
    vocab_size: int = Field(ge=1, le=10_000_000)
    attention: Literal["MHA", "GQA", "MLA"] = "GQA"
    experts: int | None = Field(None, ge=1, le=100_000)
    experts_per_token: int | None = Field(None, ge=1, le=100_000)
    tied_embeddings: bool = False
    max_position_embeddings: int | None = Field(
        None, ge=128, le=10_000_000,
        description="The model's context length (config.json max_position_embeddings): the default --max-model-len.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        rule("!has(self.paramsActiveB) || self.paramsActiveB <= self.paramsTotalB",
             "paramsActiveB must not exceed paramsTotalB"),
        rule("has(self.experts) == has(self.expertsPerToken)",
             "experts and expertsPerToken go together (MoE)"),
        rule("!has(self.experts) || self.expertsPerToken < self.experts",
             "expertsPerToken must be less than experts (a MoE routes each token to some of its experts)"),
        rule(EMBEDDINGS_RULE, EMBEDDINGS_MESSAGE),
        rule("!has(self.kvHeads) || self.kvHeads <= self.attentionHeads", "kvHeads must not exceed attentionHeads"),
        rule("has(self.headDim) || self.hiddenSize >= self.attentionHeads",
             "hiddenSize must be at least attentionHeads (or set headDim)"),
    ]})

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        # The same rules as the CEL above, for objects admitted before they existed: without them
        # the capacity model divides by zero (k = E) or takes roots of negative times (parameters
        # smaller than the embeddings). Found by tests/integration/test_fuzz_specs.py.
        if self.experts is not None and self.experts_per_token is not None \
                and self.experts_per_token >= self.experts:
            raise ValueError("expertsPerToken must be less than experts (a MoE routes each token to some of its "
                             "experts)")
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        if (self.params_active_b or self.params_total_b) * 1e9 <= embeddings:
            raise ValueError(EMBEDDINGS_MESSAGE)
        if self.kv_heads is not None and self.kv_heads > self.attention_heads:
            raise ValueError("kvHeads must not exceed attentionHeads")
        if self.head_dim is None and self.hidden_size < self.attention_heads:
            raise ValueError("hiddenSize must be at least attentionHeads (or set headDim)")
        return self


class ModelSpec(_Model):
    id: str | None = Field(None, min_length=1, max_length=128,
                           description="Catalog model id (`goodput catalog models`), e.g. llama-3.1-70b.")
    architecture: Architecture | None = Field(None, description="Inline architecture for a model not in the catalog.")
    hugging_face_name: str | None = Field(
        None, min_length=1, max_length=256,
        description="What vLLM loads (--model), e.g. hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4; default: the "
        "catalog's checkpoint for the weight precision (`goodput catalog checkpoints`).")
    served_model_name: str | None = Field(None, min_length=1, max_length=256,
                                          description="--served-model-name; default: the resource name.")
    max_model_len: int | None = Field(None, ge=128, le=10_000_000,
                                      description="--max-model-len: cap the context; default: the model's context "
                                      "length. Every pod's KV cache must hold one sequence this long.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        rule("has(self.id) || has(self.architecture)",
             "model needs either id (a catalog model) or architecture (an inline one)"),
        rule("has(self.id) || has(self.huggingFaceName)",
             "an inline architecture needs huggingFaceName: the checkpoint vLLM loads"),
    ]})


class PrecisionSpec(_Model):
    weights: WeightPrecisionName = Field("bf16", description="Weight precision.")
    kv_cache: KVCacheDtype = Field("auto", description="KV-cache dtype: auto (model dtype) or fp8.")


class CustomAccelerator(_Model):
    memory_gib: float = Field(gt=0, le=100_000, alias="memoryGiB")
    hbm_bandwidth_tb_s: float = Field(gt=0, le=1_000, alias="hbmBandwidthTBps")
    bf16_tflops: float = Field(gt=0, le=1_000_000, alias="bf16TFLOPS")
    fp8_tflops: float | None = Field(None, gt=0, le=1_000_000, alias="fp8TFLOPS")
    fp4_tflops: float | None = Field(None, gt=0, le=1_000_000, alias="fp4TFLOPS")
    int8_tops: float | None = Field(None, gt=0, le=1_000_000, alias="int8TOPS")
    link_gb_s_bidirectional: float = Field(64.0, gt=0, le=100_000, alias="linkGBpsBidirectional",
                                           description="GPU-to-GPU link, both directions, GB/s.")


class NodeLabel(_Model):
    key: str = Field(min_length=1, max_length=317)
    values: list[str] = Field(min_length=1, max_length=64, description="Any of these values matches.")


class AcceleratorSpec(_Model):
    gpu: str = Field(min_length=1, max_length=64,
                     description="GPU id from the catalog (`goodput catalog gpus`), or a name for `custom`.")
    custom: CustomAccelerator | None = Field(None, description="Datasheet figures of a GPU the catalog lacks.")
    price_per_gpu_hour: float | None = Field(None, gt=0, le=10_000,
                                             description="USD per GPU-hour; default: the catalog's on-demand price.")
    resource_name: str | None = Field(None, min_length=1, max_length=253,
                                      description="Extended resource requested per GPU; default: the vendor's "
                                      "(nvidia.com/gpu, amd.com/gpu).")
    vendor: Literal["nvidia", "amd"] | None = Field(
        None, description="GPU vendor: picks the resource, the node label and the vLLM image; default: the catalog "
        "GPU's (nvidia for a custom one).")
    node_label: NodeLabel | None = Field(
        None, description="The node label (and its values) that pins vLLM pods to this GPU type; default: the "
        "vendor's (NVIDIA GPU feature discovery nvidia.com/gpu.product, AMD amd.com/gpu.product-name).")
    pin_to_gpu_type: bool = Field(True, description="Give every vLLM pool a node affinity for its GPU type.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        rule("!has(self.custom) || has(self.pricePerGpuHour)",
             "a custom accelerator needs pricePerGpuHour (the catalog has no price for it)"),
    ]})


class SLOSpec(_Model):
    ttft_ms: float = Field(gt=0, le=3_600_000, description="Time-to-first-token target, milliseconds.")
    itl_ms: float = Field(gt=0, le=600_000, description="Inter-token latency target, milliseconds.")
    percentile: float = Field(99.0, ge=50, lt=100, description="Percentile the targets apply to.")


class PoolScaling(_Model):
    min_replicas: int = Field(1, ge=0, le=10_000)
    max_replicas: int = Field(100, ge=1, le=10_000)
    standby_replicas: int = Field(
        0, ge=0, le=1_000,
        description="Warm replicas held above what the demand needs (within maxReplicas and the budget): "
                    "capacity that serves a burst at once instead of one cold start later, at their price.")

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        rule("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas"),
    ]})


class ScalingSpec(_Model):
    aggregated: PoolScaling = Field(default_factory=PoolScaling)
    prefill: PoolScaling = Field(default_factory=PoolScaling)
    decode: PoolScaling = Field(default_factory=PoolScaling)
    tensor_parallel: Literal[1, 2, 4, 8] | None = Field(
        None, description="Pin the tensor-parallel degree; default: the planner chooses.")
    max_gpus: int | None = Field(None, ge=1, le=100_000, description="Hard cap on GPUs across all pools.")
    max_cost_per_hour: float | None = Field(None, gt=0, le=10_000_000, description="Hard cap, USD per hour.")
    scale_up_stabilization_seconds: int = Field(0, ge=0, le=3600,
                                                description="Scale up to the lowest recommendation of this window.")
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=86_400, description="Scale down to the highest recommendation of this window.")
    scale_up_max_percent_per_minute: int = Field(100, ge=1, le=10_000)
    scale_down_max_percent_per_minute: int = Field(10, ge=1, le=100)
    tolerance: float = Field(0.1, ge=0, lt=1, description="Ignore changes in demand smaller than this fraction.")
    cold_start_seconds: int = Field(180, ge=0, le=7200,
                                    description="Seconds from a new replica's creation until it serves.")
    burst_quantile: float = Field(
        0.0, ge=0, lt=1,
        description="Burst headroom: hold capacity for this quantile of the load's rise within one cold "
                    "start, learnt from the arrival history per load level (0, the default: no headroom; "
                    "measured, 0.99 bought 0.6-0.9 points of attainment on a bursty trace for 3-11% more "
                    "GPU-hours).")
    max_arrival_scv: float = Field(
        1.0, ge=1, le=16,
        description="Bound on the arrival variability (ca², per replica) the TTFT queueing term plans with, "
                    "measured from the dispersion of completions per 30 s; 1 plans for Poisson arrivals "
                    "whatever is measured (the default: at 30 s the measure also counts minute-scale rate "
                    "changes, which burstQuantile covers).")
    uncalibrated_margin: float = Field(
        0.3, ge=0, le=2,
        description="Until live metrics calibrate the capacity model, size for engines this fraction slower "
                    "than it in decode and prefill (the model is 10-35% off on engines it has not seen); the "
                    "evidence replaces the margin as it accumulates. 0: trust the model from the start.")


class LengthHint(_Model):
    mean: float = Field(gt=0, le=10_000_000)
    p99: float | None = Field(None, gt=0, le=10_000_000)

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        rule("!has(self.p99) || self.p99 >= self.mean", "p99 must be >= mean"),
    ]})


class WorkloadHints(_Model):
    """The demand to plan for before live metrics exist."""

    request_rate: float = Field(1.0, ge=0, le=1_000_000, description="Requests per second.")
    input_tokens: LengthHint = Field(default_factory=lambda: LengthHint(mean=1000.0, p99=4000.0))
    output_tokens: LengthHint = Field(default_factory=lambda: LengthHint(mean=200.0, p99=800.0))
    prefix_cache_hit_rate: float = Field(0.0, ge=0, lt=1)


class PrometheusSpec(_Model):
    url: str | None = Field(None, max_length=2048, pattern=r"^https?://",
                            description="Override the operator's Prometheus URL.")
    label_matchers: dict[str, str] = Field(default_factory=dict,
                                           description="Extra label matchers added to every query.")


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field("token", min_length=1, max_length=253)


def _free_form(description: str) -> Any:
    """A Kubernetes type the operator passes through untouched (validated by the apiserver when
    the Deployment is applied)."""
    return Field(default=None, description=description,
                 json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


class PodTemplateOverlay(_Model):
    image: str | None = Field(None, min_length=1, max_length=512,
                              description="vLLM image; default: the operator's for the GPU vendor "
                              "(vllm/vllm-openai for NVIDIA, AMD's ROCm build for AMD).")
    extra_args: list[str] = Field(default_factory=list, description="Appended to the vLLM command line.")
    env: list[dict[str, Any]] | None = _free_form("EnvVar list added to the vLLM container.")
    resources: dict[str, Any] | None = _free_form("Container resources; GPUs are set by the plan.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] | None = _free_form("Pod tolerations.")
    volumes: list[dict[str, Any]] | None = _free_form("Extra pod volumes.")
    volume_mounts: list[dict[str, Any]] | None = _free_form("Extra container volume mounts.")
    hugging_face_token_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the Hugging Face token (referenced by name, never copied).")
    port: int = Field(8000, ge=1, le=65535)
    service_account_name: str | None = Field(None, max_length=253)
    termination_grace_period_seconds: int | None = Field(
        None, ge=1, le=86_400, description="How long a leaving vLLM pod may finish its requests; default: long "
        "enough for the longest request the plan expects.")


class RouterSpec(_Model):
    """vLLM's P/D-aware router (vllm-router) in front of the prefill and decode pools."""

    image: str | None = Field(None, min_length=1, max_length=512,
                              description="Router image; default: the operator's (vllm/vllm-router).")
    replicas: int = Field(1, ge=1, le=100)
    prefill_policy: Literal["random", "round_robin", "cache_aware", "power_of_two", "consistent_hash"] = \
        "cache_aware"
    decode_policy: Literal["random", "round_robin", "cache_aware", "power_of_two", "consistent_hash"] = \
        "power_of_two"
    extra_args: list[str] = Field(default_factory=list, description="Appended to the router's command line.")
    resources: dict[str, Any] | None = _free_form("Router container resources.")


class InferenceDeploymentSpec(_Model):
    model: ModelSpec
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)
    accelerator: AcceleratorSpec
    slo: SLOSpec
    mode: Mode = "auto"
    engine: Engine = Field(
        "vllm", description="The engine whose efficiency factors size the pools: vllm (V1, CUDA graphs), sglang, "
        "tensorrt-llm and nim share the CUDA-graph class; vllm-eager (--enforce-eager) has no CUDA graphs, "
        "so its steps cost more. The operator renders vLLM pods.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    workload: WorkloadHints = Field(default_factory=WorkloadHints)
    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    template: PodTemplateOverlay = Field(default_factory=PodTemplateOverlay)
    router: RouterSpec = Field(default_factory=RouterSpec, description="Disaggregated mode: the P/D router.")
    paused: bool = Field(False, description="Change nothing; keep what runs.")
    dry_run: bool = Field(False, description="Plan, write status and events, change no Deployment.")


# --- status ---------------------------------------------------------------------------------

class Condition(_Model):
    type: str  # a goodput.api.vocabulary.ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class PlanStatus(_Model):
    mode: Literal["aggregated", "disaggregated"]
    tensor_parallel: int = Field(description="TP of the decoding pool (aggregated or decode).")
    prefill_tensor_parallel: int | None = None
    aggregated_replicas: int | None = None
    prefill_replicas: int | None = None
    decode_replicas: int | None = Field(None, description="Decoding replicas: the decode pool, or the aggregated pool.")
    gpus: int
    cost_per_hour: float
    cost_per_million_tokens: float | None = None
    predicted_ttft_ms: float | None = None
    predicted_itl_ms: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = Field(None, description="--max-model-len of every pool: longer requests are refused.")
    checkpoint: str | None = Field(None, description="The Hugging Face checkpoint vLLM loads (--model).")
    engine_args: dict[str, dict[str, int]] | None = Field(
        None, description="vLLM --max-num-batched-tokens and --max-num-seqs per pool, kept until the spec changes.")
    reason: str = ""

    # The one place a status plan is read and written (reconcile, the planner's running shape,
    # explain and the operator's /metrics all go through these).
    @classmethod
    def read(cls, data: Any) -> PlanStatus | None:
        """The plan a status holds; None when there is none or it does not parse (written by hand,
        or mangled). Fields this version does not know are ignored: a newer operator's status reads."""
        if not isinstance(data, Mapping):
            return None
        known = {f.alias or name for name, f in cls.model_fields.items()}
        try:
            return cls.model_validate({k: v for k, v in data.items() if k in known})
        except ValidationError:
            return None

    def to_status(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def pool_replicas(self) -> dict[str, int]:
        """Replicas per pool."""
        if self.mode == "aggregated":
            return {"aggregated": int(self.aggregated_replicas if self.aggregated_replicas is not None
                                      else self.decode_replicas or 0)}
        return {"prefill": int(self.prefill_replicas or 0), "decode": int(self.decode_replicas or 0)}

    def pool_tp(self) -> dict[str, int]:
        """The tensor-parallel degree per pool."""
        if self.mode == "aggregated":
            return {"aggregated": self.tensor_parallel}
        prefill = self.prefill_tensor_parallel if self.prefill_tensor_parallel is not None else self.tensor_parallel
        return {"prefill": prefill, "decode": self.tensor_parallel}

    def pool_engine_args(self) -> dict[str, tuple[int, int]]:
        """(--max-num-batched-tokens, --max-num-seqs) per pool where both are recorded."""
        return {role: (int(v["maxNumBatchedTokens"]), int(v["maxNumSeqs"]))
                for role, v in (self.engine_args or {}).items() if "maxNumBatchedTokens" in v and "maxNumSeqs" in v}


class Decision(_Model):
    time: str
    reason: str = Field(description="Machine-readable reason code, e.g. ScaleUp, Initial, InvalidSpec.")
    message: str
    pool: str | None = None
    from_replicas: int | None = None
    to_replicas: int | None = None


class InferenceDeploymentStatus(_Model):
    model_config = ConfigDict(extra="allow")  # kopf keeps its own bookkeeping fields here

    observed_generation: int | None = None
    # A map keyed by type, as Kubernetes conditions are: a server-side apply merges one condition at a time.
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    plan: PlanStatus | None = None
    observed: dict[str, Any] | None = Field(None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    autoscaler: dict[str, Any] | None = Field(
        None, description="The planner's memory (recent recommendations, scale events, calibration), so its "
        "decisions survive an operator restart.", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    last_scale_time: str | None = None
    decisions: list[Decision] = Field(default_factory=list, max_length=20)


class InferenceDeployment(_Model):
    api_version: Literal["goodput.dev/v1alpha1"] = "goodput.dev/v1alpha1"
    kind: Literal["InferenceDeployment"] = "InferenceDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceDeploymentSpec
    status: InferenceDeploymentStatus | None = None

    model_config = ConfigDict(extra="ignore")

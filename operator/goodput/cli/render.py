"""`goodput render -f FILE.yaml [-o yaml|json]`: every object the operator would apply for an
InferenceDeployment, offline, like ``helm template``.

It runs the operator's own reconcile step (`goodput.render.reconcile.reconcile`) on the object as
a fresh resource with no live metrics, so what it prints is what the operator's first reconcile
applies: planned from ``spec.workload``, clamped to the spec's bounds and budget. A spec the
operator would mark ``Degraded=True`` (no checkpoint for the precision, a model that does not fit,
an unknown GPU) prints that message and exits 1; a file that is not an InferenceDeployment exits 2.

Objects carry no ownerReferences unless ``--uid`` names the InferenceDeployment's uid (the garbage
collector deletes objects whose owner does not exist). ``goodput catalog checkpoints`` lists the
checkpoints the operator picks per model and weight precision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from goodput.api.v1alpha1 import KIND
from goodput.api.vocabulary import ConditionType
from goodput.model.serving import DEFAULT_IMAGES, checkpoints, known_precisions
from goodput.render.offline import RenderError, first_reconcile
from goodput.render.vllm import ROUTER_IMAGE, RenderConfig


def add_render_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "render", help="print the objects the operator would apply for an InferenceDeployment (offline)",
        description="Plan an InferenceDeployment from its spec.workload hints and print every object the operator "
                    "would apply (the operator's own reconcile step, no cluster needed).")
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="InferenceDeployment YAML/JSON ('-': stdin)")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml",
                   help="the objects as a YAML stream or a JSON List")
    p.add_argument("-n", "--namespace", help="default: the file's metadata.namespace, else default")
    p.add_argument("--uid", help="the InferenceDeployment's uid: adds ownerReferences (as the operator sets them)")
    p.add_argument("--pod-monitor", action="store_true",
                   help="include the Prometheus Operator PodMonitors (the operator adds them when the CRD exists)")
    p.add_argument("--vllm-image-nvidia", default=os.environ.get("GOODPUT_VLLM_IMAGE_NVIDIA"), metavar="IMAGE",
                   help=f"default vLLM image on NVIDIA GPUs (default {DEFAULT_IMAGES['nvidia']})")
    p.add_argument("--vllm-image-amd", default=os.environ.get("GOODPUT_VLLM_IMAGE_AMD"), metavar="IMAGE",
                   help=f"default vLLM image on AMD GPUs (default {DEFAULT_IMAGES['amd']})")
    p.add_argument("--router-image", default=os.environ.get("GOODPUT_ROUTER_IMAGE"), metavar="IMAGE",
                   help=f"default vllm-router image (default {ROUTER_IMAGE})")
    p.set_defaults(func=cmd_render)
    return p


def _load(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"cannot read {path}: {exc}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(found) != 1:
        raise RenderError(f"{path} must hold exactly one {KIND} (found {len(found)})")
    return found[0]


def render_objects(manifest: dict[str, Any], namespace: str | None = None, uid: str | None = None,
                   config: RenderConfig | None = None,
                   now: dt.datetime | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(objects, status) of the operator's first reconcile of ``manifest``, now (`first_reconcile`)."""
    return first_reconcile(manifest, now or dt.datetime.now(dt.UTC), namespace, uid, config)


def _degraded(status: dict[str, Any]) -> str | None:
    cond = next((c for c in status.get("conditions", []) if c.get("type") == ConditionType.DEGRADED), None)
    return str(cond.get("message")) if cond and cond.get("status") == "True" else None


def cmd_render(args: argparse.Namespace) -> int:
    config = RenderConfig.from_env({"GOODPUT_VLLM_IMAGE_NVIDIA": args.vllm_image_nvidia or "",
                                    "GOODPUT_VLLM_IMAGE_AMD": args.vllm_image_amd or "",
                                    "GOODPUT_ROUTER_IMAGE": args.router_image or "",
                                    "GOODPUT_POD_MONITOR": "true" if args.pod_monitor else ""})
    try:
        objects, status = render_objects(_load(args.filename), args.namespace, args.uid, config)
    except RenderError as exc:
        print(f"goodput render: error: {exc}", file=sys.stderr)
        return 2
    degraded = _degraded(status)
    if degraded:
        print(f"goodput render: the operator would set Degraded=True and apply nothing: {degraded}", file=sys.stderr)
        return 1
    if not objects:
        print("goodput render: spec.dryRun is true: the operator plans and reports, and applies nothing",
              file=sys.stderr)
        return 0
    plan = status.get("plan") or {}
    print(f"# {plan.get('reason', '')}"[:2000], file=sys.stderr)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(yaml.safe_dump_all(objects, sort_keys=False, width=200), end="")
    return 0


def checkpoint_rows() -> list[dict[str, Any]]:
    """`goodput catalog checkpoints` rows: model, precision, repository, quantization method, source."""
    return [{"model_id": c.model_id, "precision": c.precision, "hf_name": c.hf_name, "quant_method": c.quant_method,
             "source": c.source} for c in checkpoints()]


def print_checkpoints(rows: list[dict[str, Any]]) -> None:
    """The checkpoints table, and the models whose fp8 vLLM quantizes online (no FP8 checkpoint)."""
    for r in rows:
        print(f"{r['model_id']:<16}{r['precision']:<11}{r['hf_name']:<58}{r['quant_method'] or '-'}")
    models = sorted({r["model_id"] for r in rows})
    online = [m for m in models if "fp8" in known_precisions(m) and not any(
        r["model_id"] == m and r["precision"] == "fp8" for r in rows)]
    if online:
        print(f"fp8 without an FP8 checkpoint (vLLM quantizes the 16-bit one at load time): {', '.join(online)}")

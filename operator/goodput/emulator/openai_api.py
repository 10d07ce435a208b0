"""The slice of vLLM's OpenAI-compatible API and of the NixlConnector P/D exchange that an emulated
replica serves, so that the real ``vllm-router`` (``--vllm-pd-disaggregation``) drives emulated
prefill and decode pools.

What the router does (vllm-project/router, ``src/routers/http/vllm_pd_router.rs``), and what a
vLLM replica with ``--kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'``
answers (vLLM ``nixl_connector.py``, ``request_finished``); the emulator answers the same way:

1. The router picks a prefill and a decode worker, and POSTs the client's request to the prefill
   worker with ``max_tokens: 1`` (and ``max_completion_tokens: 1`` if given), ``stream: false``,
   no ``stream_options``, and ``kv_transfer_params = {"do_remote_decode": true,
   "do_remote_prefill": false, "remote_engine_id": null, "remote_block_ids": null,
   "remote_host": null, "remote_port": null}``.
2. The prefill replica computes the prompt's KV, samples one token, keeps the KV blocks and
   answers an ordinary completion whose top-level ``kv_transfer_params`` say where they are:
   ``{"do_remote_prefill": true, "do_remote_decode": false, "remote_engine_id": ENGINE,
   "remote_block_ids": [...], "remote_host": HOST, "remote_port": PORT, "tp_size": TP}``.
3. The router sends the client's original request to the decode worker with those
   ``kv_transfer_params`` at the top level, and streams the decode worker's answer back.
4. The decode replica reads the blocks from the prefill engine (NIXL over the side channel at
   ``remote_host:remote_port``) and decodes ``max_tokens`` tokens without computing the prompt.

Here the side channel is HTTP on the prefill replica's own port: the decode replica POSTs
``/goodput/nixl/read`` with the engine id and block ids; the prefill replica answers 200 and frees
them, or 404 when it holds no such blocks (a different engine, blocks already read, a restarted
pod). A decode request whose read fails is answered 503, as a vLLM decode instance fails a request
whose KV transfer fails. The blocks a prefill replica holds are counted, not charged to its KV
cache (real vLLM keeps them allocated until they are read or time out).

Tokens: a string prompt counts one token per word or punctuation mark (no tokenizer is loaded);
a list of token ids counts its length; chat messages count their contents plus 4 per message.
Every request generates exactly ``max_tokens`` tokens (``finish_reason: "length"``) of filler text;
the timing is the emulated engine's. A streamed answer is sent as one SSE body when the request
finishes (the client sees the right end-to-end latency, not the per-token pace).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from goodput.engine.replica import Finished

NIXL_READ_PATH = "/goodput/nixl/read"
COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's (and OpenAI's) default for /v1/completions
CHAT_MESSAGE_OVERHEAD_TOKENS = 4  # role and template markers around each chat message
REQUEST_TIMEOUT_S = 600.0
NIXL_READ_TIMEOUT_S = 5.0
_WORD = re.compile(r"\w+|[^\w\s]")


class ApiError(Exception):
    """An answer other than 200: vLLM's error body ``{"object": "error", "message", "type", "code"}``."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> bytes:
        return json.dumps({"object": "error", "message": self.message, "type": self.kind,
                           "param": None, "code": self.status}).encode()


def count_prompt_tokens(value: Any) -> int:
    """Prompt tokens of a completions ``prompt`` (string, token ids, or a one-element list of either)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return len(_WORD.findall(value))
    if isinstance(value, list) and all(isinstance(t, int) for t in value):
        return len(value)
    raise ApiError(400, "prompt must be a string, a list of token ids, or a one-element list of either "
                   "(batched prompts are not emulated)")


def count_chat_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: count the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += len(_WORD.findall(str(content or ""))) + CHAT_MESSAGE_OVERHEAD_TOKENS
    return total


@dataclass(frozen=True)
class CompletionRequest:
    chat: bool
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    kv_transfer_params: dict[str, Any] | None

    @property
    def remote_decode(self) -> bool:
        """The router's prefill stage: compute the KV and keep it for a decode instance."""
        return bool((self.kv_transfer_params or {}).get("do_remote_decode"))

    @property
    def remote_prefill(self) -> bool:
        """The router's decode stage: the KV is on a prefill instance."""
        return bool((self.kv_transfer_params or {}).get("do_remote_prefill"))


def parse_request(path: str, raw: bytes, served_model_name: str, max_model_len: int) -> CompletionRequest:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    chat = path == "/v1/chat/completions"
    prompt = count_chat_tokens(body.get("messages")) if chat else count_prompt_tokens(body.get("prompt"))
    prompt = max(prompt, 1)
    model = str(body.get("model") or served_model_name)
    if model != served_model_name:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
    limit = body.get("max_completion_tokens") if chat else None
    limit = limit if limit is not None else body.get("max_tokens")
    default = DEFAULT_COMPLETION_MAX_TOKENS if not chat else max_model_len - prompt
    max_tokens = default if limit is None else limit
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, "max_tokens must be an integer >= 1")
    if prompt + max_tokens > max_model_len:
        # vLLM's words, so that a client sees the same refusal
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you "
                       f"requested {prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in "
                       "the completion). Please reduce the length of the messages or completion.")
    params = body.get("kv_transfer_params")
    return CompletionRequest(chat, model, prompt, max_tokens, bool(body.get("stream")),
                             params if isinstance(params, dict) else None)


# ------------------------------------------------------------------------------------------
# the KV blocks a prefill replica keeps for decode replicas, and the counts both sides keep
# ------------------------------------------------------------------------------------------
@dataclass
class KvHolder:
    """The NIXL side of one replica: blocks held for remote decodes, and what happened to them."""

    engine_id: str
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("prefills_for_remote_decode", "remote_prefill_decodes", "local_requests", "kv_reads_served",
         "kv_read_misses", "kv_read_failures"), 0))
    _held: dict[int, int] = field(default_factory=dict)  # first block id -> number of blocks
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, prompt_tokens: int, block_size: int) -> list[int]:
        n = -(-prompt_tokens // block_size)
        with self._lock:
            first = next(self._ids)
            for _ in range(n - 1):
                next(self._ids)
            self._held[first] = n
        return list(range(first, first + n))

    def read(self, engine_id: str, block_ids: list[int]) -> bool:
        """Hand over (and free) blocks a decode replica asks for; False when they are not held here."""
        with self._lock:
            if engine_id != self.engine_id or not block_ids or self._held.get(block_ids[0]) != len(block_ids):
                self.counters["kv_read_misses"] += 1
                return False
            del self._held[block_ids[0]]
            self.counters["kv_reads_served"] += 1
            return True

    @property
    def held_blocks(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters, "held_blocks": sum(self._held.values())}


def new_engine_id(pod_name: str) -> str:
    return f"{pod_name}-{uuid.uuid4().hex[:8]}"


def nixl_read(host: str, port: int, engine_id: str, block_ids: list[int]) -> bool:
    """The decode side's read of a prefill engine's blocks (NIXL's role, over HTTP here)."""
    body = json.dumps({"engine_id": engine_id, "block_ids": block_ids}).encode()
    request = urllib.request.Request(f"http://{host}:{port}{NIXL_READ_PATH}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=NIXL_READ_TIMEOUT_S) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# ------------------------------------------------------------------------------------------
# one replica's endpoint
# ------------------------------------------------------------------------------------------
RunFn = Callable[[int, int], Finished | None]  # (prompt tokens, output tokens) -> finished, None: refused


@dataclass
class ReplicaEndpoint:
    """What one emulated replica answers on its port. ``run`` submits a request to the replica's
    engine and blocks until it leaves it (None when the engine refuses it or the replica goes)."""

    role: str  # aggregated, prefill or decode
    served_model_name: str
    max_model_len: int
    tp: int
    host: str
    port: int
    block_size: int
    run: RunFn
    kv: KvHolder

    def get(self, path: str) -> tuple[int, bytes] | None:
        if path == "/v1/models":
            card = {"id": self.served_model_name, "object": "model", "created": int(time.time()),
                    "owned_by": "vllm", "root": self.served_model_name, "max_model_len": self.max_model_len}
            return 200, json.dumps({"object": "list", "data": [card]}).encode()
        if path == "/goodput/nixl/stats":
            return 200, json.dumps({"engine_id": self.kv.engine_id, "role": self.role,
                                    **self.kv.snapshot()}).encode()
        return None

    def post(self, path: str, raw: bytes) -> tuple[int, str, bytes] | None:
        """(status, content type, body) for the paths served here; None for others."""
        if path == NIXL_READ_PATH:
            return self._serve_read(raw)
        if path not in COMPLETION_PATHS:
            return None
        try:
            req = parse_request(path, raw, self.served_model_name, self.max_model_len)
            return self._complete(req)
        except ApiError as exc:
            return exc.status, "application/json", exc.body()

    def _serve_read(self, raw: bytes) -> tuple[int, str, bytes]:
        try:
            ask = json.loads(raw)
            ok = self.kv.read(str(ask["engine_id"]), [int(b) for b in ask["block_ids"]])
        except (ValueError, KeyError, TypeError):
            return 400, "application/json", b'{"error": "engine_id and block_ids expected"}'
        return (200, "application/json", b'{"ok": true}') if ok else \
            (404, "application/json", b'{"error": "no such blocks held"}')

    def _complete(self, req: CompletionRequest) -> tuple[int, str, bytes]:
        params: dict[str, Any] | None = None
        if req.remote_decode:  # stage 1: prefill here, the KV stays for a decode replica
            out_tokens = 1
            self.kv.count("prefills_for_remote_decode")
        elif req.remote_prefill:  # stage 2: the KV is read from the prefill replica
            self._read_remote(req.kv_transfer_params or {})
            out_tokens = req.max_tokens
            self.kv.count("remote_prefill_decodes")
        else:
            if self.role == "prefill" and req.max_tokens > 1:
                raise ApiError(400, "this emulated prefill replica serves P/D prefills "
                               "(kv_transfer_params.do_remote_decode) and max_tokens=1 requests only")
            out_tokens = req.max_tokens
            self.kv.count("local_requests")
        finished = self.run(req.prompt_tokens, out_tokens)
        if finished is None:
            raise ApiError(503, "the replica refused or dropped the request", "ServiceUnavailableError")
        if req.remote_decode:
            params = {"do_remote_prefill": True, "do_remote_decode": False,
                      "remote_engine_id": self.kv.engine_id,
                      "remote_block_ids": self.kv.hold(req.prompt_tokens, self.block_size),
                      "remote_host": self.host, "remote_port": self.port, "tp_size": self.tp}
        body = completion_body(req, finished.output_tokens, params)
        if req.stream:
            return 200, "text/event-stream", stream_body(req, finished.output_tokens)
        return 200, "application/json", body

    def _read_remote(self, params: dict[str, Any]) -> None:
        try:
            host, port = str(params["remote_host"]), int(params["remote_port"])
            engine_id, blocks = str(params["remote_engine_id"]), [int(b) for b in params["remote_block_ids"]]
        except (KeyError, TypeError, ValueError):
            self.kv.count("kv_read_failures")
            raise ApiError(400, "kv_transfer_params with do_remote_prefill need remote_host, remote_port, "
                           "remote_engine_id and remote_block_ids") from None
        if not nixl_read(host, port, engine_id, blocks):
            self.kv.count("kv_read_failures")
            raise ApiError(503, f"KV transfer from {engine_id} at {host}:{port} failed",
                           "ServiceUnavailableError")


def _usage(req: CompletionRequest, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": output_tokens,
            "total_tokens": req.prompt_tokens + output_tokens}


def _text(output_tokens: int) -> str:
    return " ".join("tok" for _ in range(output_tokens))


def completion_body(req: CompletionRequest, output_tokens: int, kv_params: dict[str, Any] | None) -> bytes:
    created = int(time.time())
    if req.chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": _text(output_tokens)},
                                  "finish_reason": "length", "logprobs": None}
        body: dict[str, Any] = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion"}
    else:
        choice = {"index": 0, "text": _text(output_tokens), "finish_reason": "length", "logprobs": None}
        body = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
    body.update(created=created, model=req.model, choices=[choice], usage=_usage(req, output_tokens),
                kv_transfer_params=kv_params)
    return json.dumps(body).encode()


def stream_body(req: CompletionRequest, output_tokens: int) -> bytes:
    """The SSE events of a streamed answer (one chunk per token, then ``[DONE]``)."""
    rid = f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}"
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    created = int(time.time())
    events = []
    for i in range(output_tokens):
        last = i == output_tokens - 1
        piece = "tok" if i == 0 else " tok"
        choice: dict[str, Any] = ({"index": 0, "delta": {"content": piece}} if req.chat
                                  else {"index": 0, "text": piece})
        choice["finish_reason"] = "length" if last else None
        chunk: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": req.model,
                                 "choices": [choice]}
        if last:
            chunk["usage"] = _usage(req, output_tokens)
        events.append(f"data: {json.dumps(chunk)}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


class Waiter:
    """A request submitted from an HTTP thread, finished (or dropped) by the emulator's loop."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.finished: Finished | None = None

    def finish(self, finished: Finished | None) -> None:
        self.finished = finished
        self._done.set()

    def wait(self, timeout_s: float = REQUEST_TIMEOUT_S) -> Finished | None:
        self._done.wait(timeout_s)
        return self.finished


class ApiLoad:
    """The emulator's arrivals sent as real HTTP requests (``--send-to URL``: a router, a Service) instead
    of through its internal router: a prompt of ``prompt`` words (one token each, as counted here) and
    ``max_tokens = output``, one thread per request in flight. Counts what the client sees."""

    def __init__(self, base_url: str, model: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {"sent": 0, "served": 0, "failed": 0}
        self.statuses: dict[str, int] = {}
        self.e2e_s: list[float] = []  # per served request, as the client saw it
        self.output_tokens: list[int] = []
        self.errors: list[str] = []  # the first few error answers, for a person to read

    def send(self, prompt: int, output: int) -> None:
        with self._lock:
            self.counters["sent"] += 1
        threading.Thread(target=self._one, args=(prompt, output), daemon=True, name="api-load").start()

    def _one(self, prompt: int, output: int) -> None:
        body = json.dumps({"model": self.model, "prompt": " ".join("w" for _ in range(prompt)),
                           "max_tokens": output}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        started = time.monotonic()
        status, error = "error", ""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                answer.read()
                status = str(answer.status)
        except urllib.error.HTTPError as exc:
            status = str(exc.code)
            error = f"{exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if status != "200" and len(self.errors) < 5:
                self.errors.append(error)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == "200":
                self.counters["served"] += 1
                self.e2e_s.append(time.monotonic() - started)
                self.output_tokens.append(output)
            else:
                self.counters["failed"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counters, "statuses": dict(self.statuses), "e2eS": list(self.e2e_s),
                    "outputTokens": list(self.output_tokens), "errors": list(self.errors)}

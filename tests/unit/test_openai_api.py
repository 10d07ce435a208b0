"""The emulator's OpenAI API slice: token counts, vLLM's refusals, the KV blocks held for decodes."""

from __future__ import annotations

import json

import pytest

from goodput.emulator.openai_api import (
    ApiError,
    CompletionRequest,
    KvHolder,
    count_chat_tokens,
    count_prompt_tokens,
    parse_request,
)


def _parse(body: dict[str, object], path: str = "/v1/completions", max_model_len: int = 100) -> CompletionRequest:
    return parse_request(path, json.dumps(body).encode(), "llama", max_model_len)


def test_prompt_tokens_from_text_ids_and_chat() -> None:
    assert count_prompt_tokens("Hello, world") == 3
    assert count_prompt_tokens([1, 2, 3, 4]) == 4
    assert count_prompt_tokens(["a b"]) == 2
    assert count_chat_tokens([{"role": "user", "content": "a b"}, {"role": "system", "content": "c"}]) == 3 + 8
    with pytest.raises(ApiError):
        count_prompt_tokens(["a", "b"])  # batched prompts are not emulated


def test_the_router_stages_are_recognised() -> None:
    prefill = _parse({"prompt": "a b", "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})
    decode = _parse({"prompt": "a b", "max_tokens": 5, "kv_transfer_params": {"do_remote_prefill": True}})
    assert prefill.remote_decode and not prefill.remote_prefill
    assert decode.remote_prefill and decode.max_tokens == 5


@pytest.mark.parametrize(("body", "status"), [
    ({"prompt": "a " * 90, "max_tokens": 20}, 400),  # over max_model_len, as vLLM refuses it
    ({"prompt": "a", "model": "other"}, 404),
    ({"prompt": "a", "max_tokens": 0}, 400),
])
def test_refusals(body: dict[str, object], status: int) -> None:
    with pytest.raises(ApiError) as info:
        _parse(body)
    assert info.value.status == status
    assert json.loads(info.value.body())["object"] == "error"


def test_defaults_follow_vllm() -> None:
    assert _parse({"prompt": "a b"}).max_tokens == 16
    # chat: up to the context left
    assert _parse({"messages": [{"role": "user", "content": "a"}]}, "/v1/chat/completions").max_tokens == 95


def test_blocks_are_read_once_by_the_engine_that_holds_them() -> None:
    kv = KvHolder("engine-a")
    blocks = kv.hold(33, 16)
    assert len(blocks) == 3 and kv.held_blocks == 3
    assert not kv.read("engine-b", blocks)
    assert not kv.read("engine-a", blocks[:2])
    assert kv.read("engine-a", blocks)
    assert not kv.read("engine-a", blocks)  # freed after the read
    assert kv.snapshot()["held_blocks"] == 0 and kv.snapshot()["kv_read_misses"] == 3

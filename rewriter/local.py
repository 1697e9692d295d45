"""Greedy generation with a transformers model in this process (by default the base of the model being trained)."""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext

from rewriter.engine import EngineError, UsageCounter, to_messages


class LocalEngine(UsageCounter):
    """Greedy generation with an in-process transformers model (by default the model being trained)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.name = f"local:{os.path.basename(str(source).rstrip('/')) or source}"
        # One model, one forward at a time: Send branches may call from several threads.
        self._generate_lock = threading.Lock()
        self.kind = "local"

    def __repr__(self) -> str:
        return f"LocalEngine({self.name!r})"

    def identity(self) -> dict:
        return {"kind": "local", "model": self.name, "base_url": None}

    def request_params(self, params: dict) -> dict:
        max_new = int(params.get("max_tokens") or params.get("max_new_tokens") or self.max_new_tokens)
        return {"max_tokens": max_new, "do_sample": False}

    def _render(self, messages: list[dict]) -> tuple[str, bool]:
        """The prompt text, and whether the tokenizer should add its own special tokens."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        # Base models have no template; a plain transcript still reads as a conversation.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:", True

    def generate(self, prompt: str | list[dict], system: str | None = None, **params) -> str:
        import torch

        text, special = self._render(to_messages(prompt, system))
        max_new = int(params.get("max_tokens") or params.get("max_new_tokens") or self.max_new_tokens)
        tok = self.tokenizer
        with self._generate_lock:
            enc = tok(text, return_tensors="pt", add_special_tokens=special).to(self.model.device)
            was_training = self.model.training
            # A PeftModel would otherwise rewrite with the adapter being trained; the base model is the rewriter.
            no_adapter = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()
            self.model.eval()
            try:
                with torch.no_grad(), no_adapter:
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=max_new,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                    )
            finally:
                self.model.train(was_training)
        n_in = enc["input_ids"].shape[1]
        new_ids = out[0, n_in:]
        self.record_usage(int(n_in), int(new_ids.shape[0]))
        text = tok.decode(new_ids, skip_special_tokens=True).strip()
        expect = params.get("expect")
        if expect and expect not in text:
            raise EngineError(f"{self.name}: malformed reply: no {expect}")
        return text



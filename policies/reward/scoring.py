"""Batched reward scoring with a sequence-classification model; torch is imported only when scoring."""

from __future__ import annotations

import numpy as np


def encode(tokenizer, texts, max_length: int):
    """The one tokenisation used for training and scoring alike, so a saved policy scores what it learned on."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def score_texts(model, tokenizer, texts, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    import torch

    texts = list(texts)
    if not texts:
        return np.zeros(0, dtype=np.float32)
    model.eval()
    out = []
    # Sorting by length keeps padding (and so wasted compute) small within a batch; order is restored below.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            enc = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            enc.pop("token_type_ids", None)  # trl trains without them; score the same way
            out.append(model(**enc).logits[:, 0].float().cpu().numpy())
    scores = np.empty(len(texts), dtype=np.float32)
    scores[order] = np.concatenate(out)
    return scores

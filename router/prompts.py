"""Fitting a prompt into the model's length: shared by routed runs (held-out prompts) and `nslora eval`."""

from __future__ import annotations

from nslora.core.errors import UserError


def fit(tokenizer, system: str, question: str, limit: int) -> tuple[str, bool]:
    """The question, its leading lines dropped until the prompt fits `limit` tokens (the last line, the question
    itself, always kept); (question, whether it was cut). Raises if even the question alone is too long."""
    from adapters.train import prompt_text

    def size(q: str) -> int:
        return len(tokenizer(prompt_text(tokenizer, system, q), add_special_tokens=False)["input_ids"])

    lines = question.split("\n")
    if size(question) <= limit:
        return question, False
    if size(lines[-1]) > limit:
        raise UserError(f"even the question's last line is over {limit} tokens; raise --max-length")
    # The fewest leading lines to drop, by bisection: the prompt only shrinks as lines go, and tokenising it once
    # per dropped line made a long story quadratic.
    low, high = 0, len(lines) - 1  # size(cut=low) > limit, size(cut=high) <= limit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if size("\n".join(lines[mid:])) <= limit else (mid, high)
    return "\n".join(lines[high:]), True

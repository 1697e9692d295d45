"""GSM8K: grade-school maths word problems.

Official format (openai/grade-school-math, train.jsonl): one JSON object a line with `question` and `answer`,
the answer a worked solution with `<<48/2=24>>` calculator annotations that ends in `#### 72`.
"""

from __future__ import annotations

import json
import math
import re

from nslora.core.errors import UserError
from nslora.tasks.base import Sample, Task
from nslora.tasks.files import read_text, shorten
from nslora.tasks.scoring import ANSWER_MARKER, Candidate, final_answer

DEFAULT_SYSTEM = "Solve the math word problem step by step if needed, and give the final answer as a number."

_KEYS = ("question", "answer")
_EXPECTED = "a GSM8K JSONL file (one JSON object a line with keys question, answer)"
_HUB_HELP = "task.path is not set and openai/gsm8k cannot be loaded (offline?); download train.jsonl and set task.path=path/to/train.jsonl"

# A thousands-grouped number ("1,234.5") or a plain one; a minus counts as a sign only where it cannot be a
# subtraction or a range ("5-3", "(2)-1").
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CALC = re.compile(r"<<[^<>]*>>")


# Markers that put the answer right after them, in order of trust: the trained form, LaTeX, "the answer is".
_MARKERS = (re.compile(r"####"), re.compile(r"\\boxed\{"), ANSWER_MARKER)
_STRICT = re.compile(r"####\s*\$?\s*(" + _NUMBER.pattern + ")")
# A check of the result after the answer ("Check: 7 = 7 x 1", "Verification: ...") is not the answer.
_CHECK = re.compile(r"\b(?:check|verify|verification|proof)\b\s*[:.,-]", re.I)
# A worked step ("48 + 24 = 72") is one candidate, its result: its operands are not answers offered beside it.
_STEP = re.compile(rf"\$?{_NUMBER.pattern}%?(?:\s*[-+*/\u00d7x\u00f7]\s*\$?{_NUMBER.pattern}%?)*(?:\s*=\s*\$?{_NUMBER.pattern}%?)+|{_NUMBER.pattern}")
_NOT = re.compile(r"\b(?:not|isn't|never|rather\s+than|instead\s+of)\s+(?:\w+\s+)?\$?$", re.I)


def _numbers(sentence: str) -> list[Candidate]:
    return [Candidate(canonical_number(_NUMBER.findall(m.group())[-1]), m.start(), m.end()) for m in _STEP.finditer(sentence)
            if not _NOT.search(sentence[: m.start()])]


def canonical_number(text: str) -> str:
    """'1,000' -> '1000', '72.0' -> '72', '2.50' -> '2.5'."""
    text = text.replace(",", "").strip()
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _parse_record(rec: object, where: str, index: int, target: str) -> Sample:
    """`where` names the file and line (or the hub row) for error messages."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object with keys {', '.join(_KEYS)}, got {type(rec).__name__}")
    missing = [k for k in _KEYS if k not in rec]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(missing)}; each line needs keys {', '.join(_KEYS)}")
    question, solution = rec["question"], rec["answer"]
    if not isinstance(question, str) or not isinstance(solution, str) or not question.strip():
        raise UserError(f"{where}: question and answer must be non-empty strings")
    if "####" not in solution:
        raise UserError(f"{where}: the answer does not end in '#### <number>' (got {shorten(solution[-40:])}); GSM8K answers end with the final number after '#### '")
    body, _, final = solution.rpartition("####")
    answer = canonical_number(final)
    if not answer:
        raise UserError(f"{where}: nothing after '#### ' in the answer; GSM8K answers end with the final number after '#### '")
    # The <<...>> annotations were for the original authors' calculator tool; a model trained on them would
    # learn to emit markup, so the solution target drops them.
    worked = _CALC.sub("", body).rstrip()
    worked = f"{worked}\n#### {answer}" if worked else f"#### {answer}"
    return Sample(
        id=f"gsm8k-{index}",
        system=DEFAULT_SYSTEM,
        question=question.strip(),
        answer=answer,
        target=answer if target == "answer" else worked,
        meta={"solution": worked},
    )


def _read_jsonl(path: str) -> list[tuple[str, object]]:
    text = read_text(path, _EXPECTED)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path} line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n}: invalid JSON ({e.msg} at column {e.colno}); expected {_EXPECTED}") from None
    return records


HUB_ID = "openai/gsm8k"


def _read_hub(split: str = "train") -> list[tuple[str, object]]:
    try:
        # Imported here: `datasets` is slow to import and only this path needs it.
        from datasets import load_dataset

        ds = load_dataset("openai/gsm8k", "main", split=split)
        return [(f"openai/gsm8k {split} row {i}", dict(row)) for i, row in enumerate(ds)]
    except Exception as e:  # noqa: BLE001 - any failure (network, cache, version) has the same fix
        raise UserError(f"{_HUB_HELP} ({type(e).__name__})") from None


class Gsm8kTask(Task):
    name = "gsm8k"
    default_system = DEFAULT_SYSTEM

    def __init__(self, split: str = "train"):
        self.split = split  # the hub copy's split (train / test); a JSONL file is one split already

    def load(self, cfg) -> list[Sample]:
        hub = not cfg.path or cfg.path == HUB_ID
        if not hub and self.split != "train":
            raise UserError(f"task.params.split={self.split!r} reads a split of the hub copy; task.path={cfg.path} is one file: drop the split")
        records = _read_hub(self.split) if hub else _read_jsonl(cfg.path)
        if not records:
            raise UserError(f"{cfg.path or 'openai/gsm8k'} holds no problems; expected {_EXPECTED}")
        # The id is the record's position, so the JSONL file and the hub copy of it give the same ids.
        return [_parse_record(rec, where, i, cfg.target) for i, (where, rec) in enumerate(records)]

    def extract(self, text: str) -> str:
        """The number the reply finally commits to (the rule in tasks.scoring.final_answer, reasoning first):
        the one after '####', '\\boxed{' or 'the answer is', else the last, before any check of the result
        ("7. Check: 7 = 7 x 1" gives 7); a self-correction's number replaces the first ("is 5. Wait, actually it
        is 6." gives 6); two numbers offered ("either 8 or 7") or a hedge ("maybe 12?") give none."""
        check = _CHECK.search(text)
        body = text[: check.start()] if check and _NUMBER.search(text[: check.start()]) else text
        # Numbers side by side in a worked solution are steps ("24, 72"), not options: only "or" offers two.
        return final_answer(body, _numbers, last=True, markers=_MARKERS, lists_offer=False)

    def extract_strict(self, text: str) -> str:
        """The number after '####' (the training format), else none."""
        m = _STRICT.search(text)
        return canonical_number(m.group(1)) if m else ""

    def matches(self, answer: str, sample: Sample) -> bool:
        try:
            return math.isclose(float(answer), float(sample.answer), rel_tol=1e-9, abs_tol=1e-9)
        except ValueError:  # a gold answer (or an extraction) that is not a number: compare as text
            return super().matches(answer, sample)

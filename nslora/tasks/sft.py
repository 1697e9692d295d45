"""`task.name=sft`: your own supervised fine-tuning data, in the formats TRL's SFTTrainer reads.

    task: {name: sft, path: data/train.jsonl, params: {heldout_path: data/test.jsonl, answer: label}}

`task.path` is a JSONL / JSON / CSV / Parquet file, a folder written by `datasets`' `save_to_disk`, or (online) a
hub id. Rows are TRL's *prompt-completion* format (`prompt`, `completion`: strings, or message lists) or its
*conversational* format (`messages`: the last assistant turn is the target, the turns before it the prompt).
Column names are params. The held-out set is drawn from the same data by `task.seed`, or read from
`params.heldout_path`. A DatasetDict folder or hub id gives its `train` split for training (`params.split`) and
its `test` split as held-out data (`params.heldout_split`). `params.answer` says how a reply is scored: `text` (the normalised reply, its first line
when flexible), `number` (the GSM8K rules) or `label` (one of the gold answers' label set, with negation and an
echo of the options handled); `task.scorer` takes your own function instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nslora.core.errors import UserError
from nslora.tasks.base import Sample, Task, split
from nslora.tasks.gsm8k import Gsm8kTask
from nslora.tasks.scoring import Candidate, final_answer

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ANSWERS = ("text", "number", "label")


def read_rows(path: str, split: str | None = None, default: str = "train") -> tuple[list[dict[str, Any]], str]:
    """(rows, a name for messages) of a data file, a save_to_disk folder or a hub id; `split` picks one split of
    a DatasetDict folder or a hub data set (`default` when None); a file or a Dataset folder is one split."""
    import datasets

    p = Path(path)
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if (split or default) not in ds:
                    raise UserError(f"task.path: {p} holds splits {', '.join(ds)} but no {split or default!r}; set "
                                    "task.params.split / heldout_split (nslora eval --split) to one of them")
                ds = ds[split or default]
            elif split is not None:
                raise UserError(f"task.path: {p} is one split (a Dataset, not a DatasetDict); drop task.params.split={split!r}")
        elif p.suffix.lower() in FORMATS:
            if not p.is_file():
                raise UserError(f"task.path: {p} does not exist; give a JSONL, CSV or Parquet file, or a save_to_disk folder")
            if split is not None:
                raise UserError(f"task.path: {p} is one file, so it has no split {split!r}; drop task.params.split")
            ds = datasets.load_dataset(FORMATS[p.suffix.lower()], data_files=str(p), split="train")
        elif p.exists():
            raise UserError(f"task.path: {p} is not a .jsonl, .json, .csv or .parquet file; convert it or save it with datasets' save_to_disk")
        else:
            ds = datasets.load_dataset(str(path), split=split or default)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - parse errors, a hub id offline: the same one-line fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"task.path: {path} could not be read ({first}); check the file's format, or the hub id and network") from None
    return [dict(r) for r in ds], str(path)


def _text(value: Any, where: str, what: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # CSV and Parquet type numeric columns
        return str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def _turns(messages: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{where}: every message needs 'role' and 'content', got {m!r:.80}")
        out.append((str(m["role"]), _text(m["content"], where, f"the {m['role']} message's content")))
    return out


def _prompt_of(turns: list[tuple[str, str]], where: str) -> tuple[str, str]:
    """(system, question) of the turns before the target: one system turn, then the conversation as text."""
    system = "\n".join(c for r, c in turns if r == "system")
    rest = [(r, c) for r, c in turns if r != "system"]
    if not rest or rest[-1][0] != "user":
        raise UserError(f"{where}: the prompt must end with a user turn before the assistant's answer")
    if len(rest) == 1:
        return system, rest[0][1]
    return system, "\n".join(f"{r.capitalize()}: {c}" for r, c in rest)


class SftTask(Task):
    name = "sft"
    default_system = ""

    def __init__(self, prompt_column: str = "prompt", completion_column: str = "completion", messages_column: str = "messages",
                 system_column: str | None = None, id_column: str | None = None, heldout_path: str | None = None,
                 answer: str = "text", split: str | None = None, heldout_split: str | None = None):
        if answer not in ANSWERS:
            raise ValueError(f"task.params.answer={answer!r} must be one of {', '.join(ANSWERS)}")
        self.prompt_column, self.completion_column, self.messages_column = prompt_column, completion_column, messages_column
        self.system_column, self.id_column, self.heldout_path, self.answer = system_column, id_column, heldout_path, answer
        self.train_split, self.heldout_split = split, heldout_split  # `split` is the method below
        self._numbers = Gsm8kTask()
        self.labels: list[str] = []

    # ------------------------------------------------------------------------------------------ loading

    def load(self, cfg) -> list[Sample]:
        if not cfg.path:
            raise UserError("task.name=sft needs task.path: a JSONL / CSV / Parquet file, a save_to_disk folder or a hub id")
        samples = self._samples(cfg.path, "train", self.train_split, "train")
        if self.heldout_path:  # a DatasetDict folder or hub id gives its test split unless heldout_split says otherwise
            samples += self._samples(self.heldout_path, "heldout", self.heldout_split, "test")
        if self.answer == "label":
            self.labels = sorted({s.answer for s in samples}, key=lambda a: (-len(a), a))
        return samples

    def _samples(self, path: str, part: str, split: str | None, default: str) -> list[Sample]:
        rows, name = read_rows(path, split, default)
        if not rows:
            raise UserError(f"{name} holds no rows; give a file with {self._expected()}")
        columns = set(rows[0])
        out = []
        for i, row in enumerate(rows):
            where = f"{name} row {i + 1}"
            system, question, target = self._parse(row, columns, where)
            if not question.strip():
                raise UserError(f"{where}: empty prompt; fill it or remove the row")
            if not target.strip():
                raise UserError(f"{where}: empty completion; fill it or remove the row")
            sid = str(row[self.id_column]) if self.id_column else f"{part}-{i}"
            kind = "conversational" if self.messages_column in columns else "prompt-completion"
            listed = isinstance(row.get(self.prompt_column), list)
            out.append(Sample(id=sid, system=system, question=question, answer=target.strip(), target=target,
                              meta={"part": part, "row": i + 1, "file": name, "format": kind, "prompt_is_list": listed}))
        return out

    def _expected(self) -> str:
        return (f"'{self.prompt_column}' and '{self.completion_column}' columns (prompt-completion) or a "
                f"'{self.messages_column}' column (conversational)")

    def _parse(self, row: dict[str, Any], columns: set[str], where: str) -> tuple[str, str, str]:
        if self.messages_column in columns:
            turns = _turns(row[self.messages_column], where)
            last = max((k for k, (r, _) in enumerate(turns) if r == "assistant"), default=None)
            if last is None:
                raise UserError(f"{where}: the conversation has no assistant turn to learn; end it with an assistant message")
            system, question = _prompt_of(turns[:last], where)
            return system, question, turns[last][1]
        if self.prompt_column in columns and self.completion_column in columns:
            prompt, completion = row[self.prompt_column], row[self.completion_column]
            if isinstance(prompt, list):
                system, question = _prompt_of(_turns(prompt, where), where)
            else:
                system, question = "", _text(prompt, where, self.prompt_column)
            if isinstance(completion, list):
                turns = _turns(completion, where)
                completion = "\n".join(c for r, c in turns if r == "assistant")
            if self.system_column:
                if self.system_column not in columns:
                    raise UserError(f"{where}: no column '{self.system_column}' (task.params.system_column); columns: {', '.join(sorted(columns))}")
                system = _text(row[self.system_column] or "", where, self.system_column)
            return system, question, _text(completion, where, self.completion_column)
        raise UserError(f"{where}: expected {self._expected()}, found columns {', '.join(sorted(columns))}; "
                        "name yours with task.params.prompt_column / completion_column / messages_column")

    def split(self, samples: list[Sample], n_train: int, n_heldout: int, seed: int) -> tuple[list[Sample], list[Sample]]:
        """By task.seed from one file; with heldout_path, training samples from task.path and held-out from it."""
        if not self.heldout_path:
            return split(samples, n_train, n_heldout, seed)
        train = [s for s in samples if s.meta["part"] == "train"]
        heldout = [s for s in samples if s.meta["part"] == "heldout"]
        for what, have, need in (("task.path", train, n_train), ("task.params.heldout_path", heldout, n_heldout)):
            if len(have) < need:
                raise UserError(f"{what} has {len(have)} rows, fewer than the {need} asked for; lower task.n_train / task.n_heldout")
        return split(train, n_train, 0, seed)[0], split(heldout, 0, n_heldout, seed)[1]

    def as_row(self, sample: Sample, system: str, question: str) -> dict[str, Any]:
        """The sample with its (perhaps rewritten) prompt in the format it came in, for augmented/."""
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        if sample.meta.get("format") == "conversational":
            return {self.messages_column: turns + [{"role": "assistant", "content": sample.target}]}
        prompt = turns if sample.meta.get("prompt_is_list") else question
        return {self.prompt_column: prompt, self.completion_column: sample.target}

    # ------------------------------------------------------------------------------------------ scoring

    def extract(self, text: str) -> str:
        if self.answer == "number":
            return self._numbers.extract(text)
        if self.answer == "label":
            return find_label(text, self.labels)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[0] if lines else ""

    def extract_strict(self, text: str) -> str:
        if self.answer == "number":
            return self._numbers.extract_strict(text)
        if self.answer == "label":
            m = re.fullmatch(r"\s*(?:answer\s*:\s*)?(.+?)\s*\.?\s*", text, re.I | re.S)
            got = m.group(1) if m else ""
            return next((lab for lab in self.labels if lab.lower() == got.lower()), "")
        return text

    def matches(self, answer: str, sample: Sample) -> bool:
        if self.answer == "number":
            return self._numbers.matches(answer, sample)
        return super().matches(answer, sample)


_NEGATED = re.compile(r"\b(?:not|isn't|is\s+not|never|no)\s+(?:\w+\s+)?$", re.I)


def find_label(text: str, labels: list[str]) -> str:
    """The label the reply finally commits to (whole words, any case; the rule in tasks.scoring.final_answer),
    a negated one skipped; a reply that offers two or more labels ("yes, no or maybe") or hedges states none."""
    if not labels:
        return ""
    alternatives = "|".join(re.escape(lab) for lab in labels)
    pattern = re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.I)
    by_case = {lab.lower(): lab for lab in reversed(labels)}

    def find(sentence: str) -> list[Candidate]:
        return [Candidate(by_case[m.group(1).lower()], m.start(), m.end()) for m in pattern.finditer(sentence)
                if not _NEGATED.search(sentence[: m.start()])]

    return final_answer(text, find)

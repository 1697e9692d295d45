"""CliniFact: does a publication abstract back a clinical-trial claim?

Official format (ds4dh/CliniFact, train_set.csv / validation_set.csv): a CSV with, among others, the columns
`claim`, `article_abstract` and `label` (1 = evidence, 0 = inconclusive, 2 = no information), and an `index`
column that identifies the row.
"""

from __future__ import annotations

import csv
import io
import re

from nslora.core.errors import UserError
from nslora.tasks.base import Sample, Task
from nslora.tasks.files import read_text, shorten
from nslora.tasks.scoring import Candidate, final_answer

DEFAULT_SYSTEM = "You check clinical-trial claims against a publication abstract. Answer with one word: TRUE, FALSE or NONE."

INSTRUCTION = (
    "Does the abstract back the claim? Answer TRUE if it gives evidence for the claim, "
    "FALSE if its evidence is inconclusive, NONE if it says nothing about the claim."
)
LABELS = {"1": "TRUE", "0": "FALSE", "2": "NONE"}
_COLUMNS = ("claim", "article_abstract", "label")
_EXPECTED = "a CliniFact CSV file (columns claim, article_abstract, label)"
_VERDICT = re.compile(r"\b(true|false|none)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|isn't|is\s+not|never|neither)\s+(?:\w+\s+)?$", re.I)


def _verdicts(sentence: str) -> list[Candidate]:
    """The labels a sentence states: a negated one turned over ("not true" is FALSE), "none" in prose skipped."""
    out = []
    for m in _VERDICT.finditer(sentence):
        word, before, after = m.group(1).upper(), sentence[: m.start()], sentence[m.end():]
        if word == "NONE" and m.group(1) != "NONE" and re.match(r"\s+(?:of|the|at|in|is|was|were|are)\b", after, re.I):
            continue  # "none of the ...": prose, not the label
        if _NEGATION.search(before):
            if word == "NONE":
                continue
            word = "FALSE" if word == "TRUE" else "TRUE"
        out.append(Candidate(word, m.start(), m.end()))
    return out


def _rows(path: str) -> tuple[list[str], list[list[str]]]:
    text = read_text(path, _EXPECTED)
    # Lift the csv module's 128 KiB cap on one field (a pasted full text instead of an abstract passes it);
    # the old cap is restored so other readers in the process keep theirs.
    old = csv.field_size_limit(1 << 30)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        rows = list(reader)
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e}); expected {_EXPECTED}") from None
    finally:
        csv.field_size_limit(old)
    if header is None:
        raise UserError(f"{path} is empty; expected {_EXPECTED}")
    return [h.strip() for h in header], rows


class ClinifactTask(Task):
    name = "clinifact"
    default_system = DEFAULT_SYSTEM

    def load(self, cfg) -> list[Sample]:
        if not cfg.path:
            raise UserError(f"task.path is not set; clinifact needs {_EXPECTED}, e.g. task.path=data/clinifact/train_set.csv")
        path = str(cfg.path)
        header, rows = _rows(path)
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected columns {', '.join(_COLUMNS)} (found {', '.join(header[:8]) or 'none'})")
        col = {name: header.index(name) for name in header}
        id_col = "id" if "id" in col else "index" if "index" in col else None
        samples = []
        for i, row in enumerate(rows, start=1):
            if not any(cell.strip() for cell in row):
                continue  # a blank line at the end of a hand-edited file
            where = f"{path} row {i}"  # data rows count from 1, the header not included
            if len(row) != len(header):
                raise UserError(f"{where}: {len(row)} fields but the header has {len(header)}; check the quoting of that row")
            claim, abstract, label = (row[col[c]].strip() for c in _COLUMNS)
            if re.fullmatch(r"[012]\.0+", label):
                label = label[0]  # written as a float by a pandas round trip
            if label not in LABELS:
                raise UserError(f"{where}: label {shorten(label)} is not 0, 1 or 2 (1 = evidence/TRUE, 0 = inconclusive/FALSE, 2 = no information/NONE)")
            if not claim or not abstract:
                raise UserError(f"{where}: empty claim or article_abstract; every row needs both")
            key = row[col[id_col]].strip() if id_col else ""
            samples.append(
                Sample(
                    id=f"clinifact-{key or i}",
                    system=DEFAULT_SYSTEM,
                    question=f"Claim: {claim}\n\nAbstract: {abstract}\n\n{INSTRUCTION}",
                    answer=LABELS[label],
                    target=LABELS[label],
                    # claim and abstract kept apart, for a rewriter that restructures rather than rephrases
                    meta={"row": i, "label": int(label), "claim": claim, "abstract": abstract},
                )
            )
        if not samples:
            raise UserError(f"{path} has a header but no rows; expected {_EXPECTED}")
        return samples

    def extract(self, text: str) -> str:
        """The verdict the reply finally commits to (the rule in tasks.scoring.final_answer): TRUE / FALSE / NONE
        as a label, a negated one turned over ("not true" is FALSE), "none" in prose ("none of the patients") not
        a label; an echo of the options ("TRUE, FALSE or NONE") or a hedge ("Probably TRUE.") gives none."""
        return final_answer(text, _verdicts)

    def extract_strict(self, text: str) -> str:
        """The label alone, or after 'Answer:' (any case, trailing full stop allowed), else none."""
        m = re.fullmatch(r"\s*(?:answer\s*:\s*)?(true|false|none)\s*\.?\s*", text, re.I)
        return m.group(1).upper() if m else ""

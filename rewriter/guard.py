"""The meaning guard: cheap checks that a rewritten question still asks the same thing and does not give away
the answer. Pure functions, no models, so every rewrite can be checked and the checks can be tested exhaustively.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'\u2019-]*")
# Capitalised words that open sentences without being names. A sentence-initial word outside this list that
# recurs in the text ("John went ... John moved ...") is treated as a name, which is how bAbI stories read.
_STARTERS = set(
    """a an the this that these those there here it its he she they we you i his her their our my your
    what where who whom whose which when why how is are was were do does did can could will would should may
    might must if then so and but or after before while during in on at to from of for with by as each every
    all some any one two three four five six seven eight nine ten first next finally also later yesterday
    today tomorrow now please read note suppose given assume""".split()
)


def _numbers(text: str) -> set[str]:
    # "1,000" and "1000" are the same number; "3.50" and "3.5" are not (rewriters keep the spelling).
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _names(text: str) -> set[str]:
    """Capitalised words that are not just capitalised because they open a sentence."""
    mid: set[str] = set()
    start_counts: dict[str, int] = {}
    for m in _WORD.finditer(text):
        word = re.sub(r"['\u2019]s$", "", m.group())
        if not word[0].isupper() or word == "I":
            continue
        before = text[: m.start()].rstrip(" \t\"'(\u201c")
        at_start = before == "" or before[-1] in ".!?:\n"
        if at_start:
            start_counts[word] = start_counts.get(word, 0) + 1
        else:
            mid.add(word)
    recurring = {w for w, n in start_counts.items() if n >= 2 and w.lower() not in _STARTERS}
    return mid | recurring


def _has(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _asked(text: str) -> str:
    """The interrogative sentences: "Where is Mary?" in a bAbI story."""
    return " ".join(re.findall(r"[^.!?\n]*\?", text))


def _mentions(text: str, answer: str) -> bool:
    """Whether the answer occurs in the text as a whole word or number (case-insensitive)."""
    answer = answer.strip().rstrip(".").strip()
    if not answer:
        return False
    plain = answer.replace(",", "").lstrip("$")
    if _NUMBER.fullmatch(plain):
        try:
            target = float(plain)
        except ValueError:
            return False
        return any(float(n) == target for n in _numbers(text) if n.count(".") <= 1)
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, flags=re.IGNORECASE) is not None


def check(original: str, new: str, gold: str) -> tuple[bool, str]:
    """(accepted, reason): "ok", or the first check that failed."""
    if new is None or not new.strip():
        return False, "empty rewrite"
    if " ".join(new.split()) == " ".join(original.split()):
        return False, "unchanged"
    limit = 3 * len(original) + 200
    if len(new) > limit:
        return False, f"too long ({len(new)} chars, limit {limit})"
    lost = sorted(_numbers(original) - _numbers(new))
    if lost:
        return False, f"dropped number(s): {', '.join(lost)}"
    names = sorted(_names(original))
    lost = [w for w in names if not _has(new, w)]
    if lost:
        return False, f"dropped name(s): {', '.join(lost)}"
    # bAbI's failure mode: the story intact, but "Where is Mary?" became "Where is Sandra?".
    asked, asked_now = _asked(original), _asked(new)
    switched = [w for w in names if _has(asked_now, w) and not _has(asked, w)]
    if switched:
        return False, f"the question now asks about {', '.join(switched)}"
    if _mentions(new, gold) and not _mentions(original, gold):
        return False, f"reveals the gold answer {gold.strip()!r}"
    return True, "ok"


def check_system(original: str, new: str) -> tuple[bool, str]:
    """A new system prompt only gets the basic checks: its wording is free, facts live in the question."""
    if new is None or not new.strip():
        return False, "empty system prompt"
    limit = 3 * len(original) + 200
    if len(new) > limit:
        return False, f"system prompt too long ({len(new)} chars, limit {limit})"
    return True, "ok"

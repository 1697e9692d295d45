"""Reading a data file with errors a user can act on (one line each, naming the file and the fix)."""

from __future__ import annotations

from pathlib import Path

from nslora.core.errors import UserError


def read_text(path: str | Path, expected: str) -> str:
    """The whole file as text. `expected` describes the format, e.g. "a GSM8K JSONL file"."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"task.path: {p} does not exist; set task.path to {expected}")
    if not p.is_file():
        raise UserError(f"task.path: {p} is not a file; set task.path to {expected}")
    raw = p.read_bytes()
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would otherwise end up
        # glued to the first column name.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{p} line {line}: invalid UTF-8 (byte {raw[e.start]:#04x}); re-save the file as UTF-8") from None


def shorten(text: str, limit: int = 60) -> str:
    """A fragment of bad input to quote inside a one-line message."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")

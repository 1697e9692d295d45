"""Helpers for the config dataclass of each component: a field with help text, and a one-line check."""

from __future__ import annotations

from dataclasses import field

from nslora.core.errors import UserError


def option(default, help: str, **kw):
    """A dataclass field carrying `help` (shown by `nslora run --help`); lists and dicts get a fresh copy."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def require(cond: bool, msg: str) -> None:
    """Refuse a bad config value: `msg` names the key, quotes the value and says what fits."""
    if not cond:
        raise UserError(msg)

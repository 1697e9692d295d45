"""The one way this project writes a file or a folder.

Written under a temporary name beside the target, flushed and fsync'ed, renamed over it, and the folder fsync'ed,
so that after a crash, a `kill -9` or a power cut the target is the old version or the new one, never half of
either (a rename alone is atomic for readers, but without the syncs a power cut can leave an empty file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

from nslora.core.errors import UserError


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{suffix}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """A file object for `path`: what is written lands there whole when the block ends, or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path, "tmp")
    f = open(tmp, mode, encoding=None if "b" in mode else encoding)  # noqa: SIM115 - closed below
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def put_file(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put a finished file that a library wrote under a temporary name in place: synced, renamed, folder synced."""
    fd = os.open(os.fspath(tmp), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with open_atomic(path) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with open_atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    return write_text(path, json.dumps(data, **{"indent": 2, **dumps}) + "\n")


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (a folder a library wrote with plain writes)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


@contextlib.contextmanager
def folder_atomic(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to fill; when the block ends it is synced and takes `path`'s place (an old folder there
    is moved aside first and removed after, so `path` is never missing and never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _tmp(path, "partial"), _tmp(path, "old")
    for leftover in (tmp, old):  # from a process that died here
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def refuse_existing(path: str | os.PathLike, what: str, flag: str = "--overwrite") -> None:
    """One line and no write when `path` holds something of the user's: a file, or a folder that is not empty."""
    p = Path(path)
    if p.is_file() or (p.is_dir() and any(p.iterdir())) or (p.exists() and not p.is_dir()):
        raise UserError(f"{what}: {p} already exists; choose another path or pass {flag} to replace it")


def connect_durable(path: str | os.PathLike, timeout: float = 30.0):
    """A SQLite connection whose committed transactions survive a power cut (synchronous=FULL, in rollback-journal
    and WAL mode alike), waiting up to `timeout` seconds for another process's lock instead of failing at once."""
    import sqlite3

    db = sqlite3.connect(os.fspath(path), check_same_thread=False, timeout=timeout)
    db.execute("PRAGMA synchronous=FULL")
    return db

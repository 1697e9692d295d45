"""A clean stop on SIGINT / SIGTERM: the training loop checks `stop_requested()` between steps and raises
Interrupted at a resumable point (router/durable.py keeps what resuming needs)."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """SIGINT / SIGTERM arrived; the current step finished and the run stopped at a resumable point."""


_stop = {"requested": False}


def stop_requested() -> bool:
    return _stop["requested"]


def install_signal_handlers():
    """First signal: finish the current step, then stop. A second one stops at once (the default handler)."""
    previous = {}

    def handler(signum, frame):
        _stop["requested"] = True
        signal.signal(signum, previous.get(signum, signal.SIG_DFL))

    _stop["requested"] = False
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a test runner's worker): no handlers
            pass

    def restore():
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore

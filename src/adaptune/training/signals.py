"""Stopping a run cleanly on Ctrl-C (SIGINT) and SIGTERM (how schedulers, containers and preemptible machines stop a
job): both end in a checkpoint at the start of the interrupted step, then exit 130 / 143.

One process: the signal raises at once (``KeyboardInterrupt`` / :class:`Terminated`), except while a step's
update is being applied (optimizer step, step counter), which is never cut in half: a signal there waits for the
update to finish. Several processes (torchrun): a signal only marks this rank; at each step boundary the ranks
agree (one all-reduce) and all stop at the same step, so collective checkpoint gathers line up.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["EXIT_CODES", "StopSignals", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so the same checkpoint-and-exit path runs."""


# Shell convention: 128 + signal number.
EXIT_CODES = {KeyboardInterrupt: 128 + signal.SIGINT, Terminated: 128 + signal.SIGTERM}


def _error(signum: int) -> KeyboardInterrupt:
    return Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()


class StopSignals:
    """Context manager that turns SIGINT / SIGTERM into exceptions at safe points (see the module docstring).

    Args:
        agree: for several processes, a collective ``any(flag) -> bool`` over the ranks; None for one process.
    """

    def __init__(self, agree: Callable[[bool], bool] | None = None) -> None:
        self.agree = agree
        self.pending: int | None = None  # the signal that arrived while it could not raise
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring or self.agree is not None:
            self.pending = self.pending or signum
            return
        raise _error(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A section a signal must not cut: it takes effect at the next ``raise_pending``."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def raise_pending(self) -> None:
        """Raise for a signal that arrived at a deferred moment (on every rank, if any rank got one)."""
        stop = self.pending is not None
        if self.agree is not None:
            stop = self.agree(stop)
        if stop:
            raise _error(self.pending or signal.SIGTERM)

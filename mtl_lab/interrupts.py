"""Stopping on a signal: keep what finished, say what was cut short, exit with 128 + signal.

A scheduler (SLURM, Kubernetes, systemd) stops a job with SIGTERM; a user with Ctrl-C (SIGINT).
Lightning turns SIGTERM inside a fit into ``SIGTERMException``, a ``SystemExit`` without a code
(status 0: a scheduler would count the job a success), and KeyboardInterrupt into ``exit(1)``.
While :func:`stop_on_signals` is active, SIGTERM, SIGINT and SIGHUP raise :class:`Interrupted` in
the main thread instead; it passes through Lightning (which composes its own SIGTERM handler with
an existing one and re-raises foreign exceptions), the sweep executor saves nothing half-done
(every finished group is already in ``results.parquet``), stops its workers and adds what was cut
short, and the CLI exits with ``exit_code`` = 128 + signal number (143 for SIGTERM, 130 for
SIGINT), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None),
                                 getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(BaseException):  # noqa: N818 - a stop request, like KeyboardInterrupt
    """Training stopped by a signal. A BaseException so that ``except Exception`` never swallows
    it. ``detail`` says what was saved and what was cut short (filled in by the executor)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = int(signum)
        self.detail = detail

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.name}" + (f": {self.detail}" if self.detail else "")


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Raise :class:`Interrupted` on ``signals`` while the block runs (main thread only; a no-op
    elsewhere), then restore the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def as_interrupted(err: BaseException) -> Interrupted | None:
    """The :class:`Interrupted` an exception stands for: itself, Lightning's SIGTERMException,
    or a KeyboardInterrupt; None for anything else."""
    if isinstance(err, Interrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return Interrupted(signal.SIGINT)
    if isinstance(err, SystemExit) and type(err).__name__ == "SIGTERMException":
        return Interrupted(signal.SIGTERM)
    return None

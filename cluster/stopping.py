"""SIGTERM and SIGINT stop the job cleanly (issue 21, finding 1).

``ray job stop`` and Kubernetes send SIGTERM, a terminal sends SIGINT. Either
one raises :class:`JobStopped` in the driver's main thread once; the driver then
cuts the rows in flight short (their attempts do not count), compacts what is
committed, writes the manifest, shuts Ray down and exits with
``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), as shells report a
process ended by that signal.

``ray.init`` installs its own SIGTERM handler in the driver, which ends the
process without that cleanup, so :meth:`StopSignals.install` is called again
after connecting. A second signal while the driver is already stopping is only
logged: the cleanup is short, and ``ray job stop`` sends SIGKILL if it is not.
"""
from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator

__all__ = ["JobStopped", "StopSignals", "STOP_SIGNALS"]

log = logging.getLogger("recon.job")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class JobStopped(BaseException):
    """The driver received a stop signal (SIGTERM, SIGINT): a request to stop, not an error.

    Outside the :class:`recon.errors.ReconError` tree on purpose. Raised from the signal handler
    at whatever line the main thread is running, it must travel past the many ``except
    Exception`` blocks of the job and of Ray (which turn errors into error rows, retries or
    warnings) up to :func:`cluster.cli.main`, as KeyboardInterrupt does.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Installs the job's SIGTERM/SIGINT handlers and restores the previous ones."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Callable[..., Any] | int | None] = {}
        self._defer = 0

    def install(self) -> None:
        """(Re)install the handlers; a no-op outside the main thread, where Python allows none."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._saved.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._saved.clear()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside: a first signal is recorded (``received``) but raises nothing, so cleanup
        steps (marker removal, compaction, manifest, Ray shutdown) are never cut short."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None and self._defer:
            self.received = signum
            log.warning("%s received while finishing up; stopping once that is done",
                        signal.Signals(signum).name)
            return
        if self.received is not None:
            log.warning("%s received while already stopping; finishing the cleanup first",
                        signal.Signals(signum).name)
            return
        self.received = signum
        log.warning("%s received: stopping; rows in flight are cut short and re-run next time",
                    signal.Signals(signum).name)
        raise JobStopped(signum)

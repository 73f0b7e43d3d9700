"""When a run stops early: :class:`StopControl`, the one part that owns every stop request and answers the loop.

A run stops early, after a whole step, when Ctrl-C/SIGTERM arrives (:class:`StopSignals`), a callback sets
``state.stop``, or ``stop_after_steps`` is reached. With one process a request takes effect after the step it
came in; with several, only a request agreed by all ranks at a totals read (every ``DIST_READ_EVERY`` steps at
the latest) does, so every rank stops at the same step. The trainer asks ``must_read`` (should this step's
bookkeeping read the totals, a host sync) and then ``reason`` (why stop now, or None).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

DIST_READ_EVERY = 10  # several processes: agree on stop requests at least this often (steps)


class StopSignals:
    """SIGINT/SIGTERM -> ``requested`` (the loop checkpoints and stops); a second SIGINT raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self.name = ""
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.name = signal.Signals(signum).name

    def restore(self) -> None:
        for s, handler in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, handler)


class StopControl:
    """Every reason a run may stop early, and the answer to "stop after this step?".

    ``requested``: a callback's ``state.stop`` or a signal; ``stop_after_steps``: stop once that global step is
    reached (unless the run is finished by then); ``distributed``: several ranks, which stop only on a request
    agreed at a read.
    """

    def __init__(self, *, stop_after_steps: int | None, total_steps: int, distributed: bool) -> None:
        self.stop_after_steps = stop_after_steps
        self.total_steps = total_steps
        self.distributed = distributed
        self.requested = False
        self.signals: StopSignals | None = None

    def listen(self) -> None:
        """Catch Ctrl-C and SIGTERM from now on (from the main thread only; elsewhere signals stay as they are)."""
        if threading.current_thread() is threading.main_thread():
            self.signals = StopSignals()

    def restore(self) -> None:
        """Give the signals back their handlers."""
        if self.signals is not None:
            self.signals.restore()

    @property
    def signalled(self) -> bool:
        """Ctrl-C or SIGTERM asked the run to stop."""
        return self.signals is not None and self.signals.requested

    def limit_reached(self, step: int) -> bool:
        """``stop_after_steps`` is reached at ``step`` and the run is not finished."""
        limit = self.stop_after_steps
        return limit is not None and step >= limit and step < self.total_steps

    def must_read(self, step: int) -> bool:
        """Whether the bookkeeping after ``step`` must read the totals for a stop: a request with one process,
        the step limit, or (several processes) the agreement due every ``DIST_READ_EVERY`` steps. Signals
        that arrived are taken as a request first."""
        if self.signalled:
            self.requested = True
        if self.distributed:
            return step % DIST_READ_EVERY == 0 or self.limit_reached(step)
        return self.requested or self.limit_reached(step)

    def reason(self, step: int, agreed: bool) -> str | None:
        """Why the run stops after ``step`` (``agreed``: all ranks asked at the last read; one process: its own
        request), or None to go on."""
        if agreed or (self.requested and not self.distributed) or self.limit_reached(step):
            return f"stopped ({self.signals.name if self.signalled else 'on request'})"  # type: ignore[union-attr]
        return None

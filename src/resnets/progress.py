"""Progress on stderr: a tqdm bar on a terminal, a few plain lines otherwise, nothing for tiny jobs.

:func:`progress_mode` is the one decision (``"bar"``, ``"plain"`` or ``"off"``) shared by the training loop and
:class:`Progress`, which counts the items of one job (images decoded, written or predicted; batches evaluated).
Nothing is shown before :data:`DELAY_S` seconds have passed or for fewer than :data:`MIN_TOTAL` items. Off a
terminal a plain line (no carriage returns) is written at each tenth of the total, at most one every
:data:`MIN_GAP_S` seconds apart from the last; with no known total, one every :data:`INTERVAL_S` seconds.
stdout is never written to: it carries results (``--json``, ``predict --format json``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

DELAY_S = 1.0  # nothing shown for jobs shorter than this
MIN_TOTAL = 2  # nor for jobs of fewer items
MIN_GAP_S = 2.0  # plain lines: at most one per this many seconds (the last, at 100%, always)
INTERVAL_S = 30.0  # plain lines without a known total: one per this many seconds

Mode = Literal["bar", "plain", "off"]


def stderr_is_terminal() -> bool:
    """True if stderr is a terminal (where a bar that redraws itself in place can be shown)."""
    return sys.stderr.isatty()


def progress_mode(enabled: bool = True) -> Mode:
    """``"off"`` if not ``enabled``, else ``"bar"`` on a terminal and ``"plain"`` (periodic lines) off one."""
    if not enabled:
        return "off"
    return "bar" if stderr_is_terminal() else "plain"


class Progress:
    """Progress of one job of ``total`` items (None: unknown) on stderr, as :func:`progress_mode` decides.

    Use as a context manager; :meth:`update` adds finished items, :meth:`to` sets the count, and
    :meth:`aside` wraps other stderr writes so that they do not tear the bar.
    """

    def __init__(self, total: int | None, what: str, *, unit: str = "images", enabled: bool = True) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.done = 0
        tiny = total is not None and total < MIN_TOTAL
        self.mode: Mode = "off" if tiny else progress_mode(enabled)
        self._start = self._last = time.monotonic()
        self._tenth = 0  # plain: tenths of the total already reported
        self._lines = 0
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}" if unit else "it", file=sys.stderr,
                             delay=DELAY_S, dynamic_ncols=True, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(last_line=exc_type is None)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more finished items."""
        self.to(self.done + n)

    def to(self, done: int) -> None:
        """Set the count of finished items to ``done``."""
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
        elif self.mode == "plain":
            self._plain(time.monotonic())

    def _plain(self, now: float) -> None:
        if now - self._start < DELAY_S:
            return
        if self.total is None:
            due = now - self._last >= INTERVAL_S
        else:
            tenth = min(10, 10 * self.done // max(1, self.total))
            finished = self.done >= self.total
            due = tenth > self._tenth and (finished or now - self._last >= MIN_GAP_S)
            if due:
                self._tenth = tenth
        if due:
            self._line(now)

    def _line(self, now: float) -> None:
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        share = f" ({100 * self.done // max(1, self.total)}%)" if self.total is not None else ""
        print(f"{self.what}: {count} {self.unit}{share}, {now - self._start:.0f} s", file=sys.stderr, flush=True)
        self._last = now
        self._lines += 1

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Lift the bar (if shown) while the block writes to stderr, then redraw it."""
        bar = self._bar
        if bar is None or getattr(bar, "last_print_t", 0.0) < bar.start_t + bar.delay:  # not drawn yet
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def close(self, last_line: bool = True) -> None:
        """Finish: remove the bar; off a terminal, with ``last_line``, a closing line if lines were shown and the
        100% one is not among them."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "plain" and last_line and self._lines and (self.total is None or self._tenth < 10):
            self._line(time.monotonic())
        self.mode = "off"

"""Progress of long loops (rendering): a line in the stage's log at least every few
seconds, and a tqdm bar when stderr is a terminal.

A rule's log is a file, where a tqdm bar is unreadable, and a terminal is where a user
watches a bar; :class:`Progress` serves both. The log line says how much is done of how
much, the rate and the time left::

    render test boxes: 3/40 views, 0.41/1.20 M rays, 15.2k rays/s, ETA 52 s

Lines come from :meth:`Progress.advance` (work done, e.g. rays of a chunk) when at least
``every`` seconds passed since the last line, and once at the end. The clock is
injectable so tests need not wait.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional

CLOCK = time.monotonic
"""The default clock (seconds); tests replace it with a fake one."""

LOG_EVERY_S = 5.0
"""Seconds between progress lines: well under the 10 s a user should ever wait for one
(a chunk of rays takes a fraction of a second, so a line is at most that late)."""


def _si(value: float) -> str:
    """12.3k / 4.56 M style numbers for rates and counts."""
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 90:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """``total_items`` items (views, frames) costing ``total_work`` units (rays) in all.

    ``advance(n)`` after each piece of work, ``item_done()`` after each item, ``close()``
    at the end (or use it as a context manager). ``log``: where the lines go (default:
    the ``innout`` logger); ``bar``: a tqdm bar on stderr (default: only when stderr is a
    terminal); ``clock``: seconds, monotonic (tests pass a fake one)."""

    def __init__(self, what: str, total_items: int, total_work: int, *, item: str = "views", unit: str = "rays",
                 log: Optional[logging.Logger] = None, every: float = LOG_EVERY_S,
                 clock: Optional[Callable[[], float]] = None, bar: Optional[bool] = None):
        self.what, self.item, self.unit = what, item, unit
        self.total_items, self.total_work = int(total_items), int(total_work)
        self.log = log or logging.getLogger("innout")
        self.every, self.clock = float(every), clock or CLOCK
        self.items = self.work = 0
        self.start = self.last_line = self.clock()
        self.lines = 0
        show_bar = sys.stderr.isatty() if bar is None else bar
        self._bar: Any = None
        if show_bar and self.total_work > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_work, desc=what, unit=unit[:-1] if unit.endswith("s") else unit,
                             unit_scale=True, file=sys.stderr, leave=False)

    # -- counting -------------------------------------------------------------------------

    def advance(self, work: int) -> None:
        self.work += int(work)
        if self._bar is not None:
            self._bar.update(int(work))
        now = self.clock()
        if now - self.last_line >= self.every:
            self.report(now)

    def item_done(self) -> None:
        self.items += 1

    def rate(self) -> float:
        """Units per second since the start."""
        return self.work / max(self.clock() - self.start, 1e-9)

    def report(self, now: Optional[float] = None) -> None:
        """Log one progress line (``now``: the clock's reading, if just taken)."""
        now = self.clock() if now is None else now
        rate = self.work / max(now - self.start, 1e-9)
        eta = (self.total_work - self.work) / rate if rate > 0 else float("inf")
        eta_text = _duration(eta) if eta != float("inf") else "unknown"
        self.log.info("%s: %d/%d %s, %s/%s %s, %s %s/s, ETA %s", self.what, self.items, self.total_items, self.item,
                      _si(self.work), _si(self.total_work), self.unit, _si(rate), self.unit, eta_text)
        self.last_line = now
        self.lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        seconds = self.clock() - self.start
        self.log.info("%s: %d %s, %s %s in %s (%s %s/s)", self.what, self.items, self.item, _si(self.work), self.unit,
                      _duration(seconds), _si(self.work / max(seconds, 1e-9)), self.unit)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

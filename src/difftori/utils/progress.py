"""Progress for long loops: a tqdm bar on a terminal, a compact line every few seconds in a log.

tqdm redraws many times a second; written to a file (``make demo > log``, CI) every redraw is a
line. :func:`progress` returns a tqdm bar when the stream is a terminal and otherwise a
:class:`LineProgress` with the same ``update`` / ``set_postfix`` / ``close`` methods.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["progress", "LineProgress", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = 10.0
"""Seconds between two progress lines when the output is not a terminal."""


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """``desc: n/total unit (p%), rate, elapsed, eta, postfix`` printed at most every ``interval`` seconds."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", interval: float = LOG_INTERVAL_S,
                 file: TextIO | None = None, clock=time.monotonic):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.interval, self.file, self._clock = interval, file, clock
        self._start = self._last = clock()
        self._n0 = initial
        self._postfix: dict[str, Any] = {}
        self._printed_n = None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._print()

    def set_postfix(self, **kwargs: Any) -> None:
        self._postfix = kwargs

    def line(self) -> str:
        elapsed = self._clock() - self._start
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s, {_fmt_time(elapsed)} elapsed")
        if rate > 0 and self.total and self.n < self.total:
            parts[-1] += f", eta {_fmt_time((self.total - self.n) / rate)}"
        if self._postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self._postfix.items()))
        return ", ".join(parts)

    def _print(self) -> None:
        print(self.line(), file=self.file or sys.stderr, flush=True)
        self._last = self._clock()
        self._printed_n = self.n

    def close(self) -> None:
        """Print the final state (unless already printed, or nothing happened)."""
        if self._printed_n != self.n and self.n != self._n0:
            self._print()


def progress(total: int, initial: int = 0, desc: str = "", unit: str = "it", enabled: bool = True,
             file: TextIO | None = None, interval: float = LOG_INTERVAL_S):
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise; a silent bar if not ``enabled``."""
    from tqdm import tqdm

    stream = file or sys.stderr
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, initial=initial, desc=desc, unit=unit, interval=interval, file=file)

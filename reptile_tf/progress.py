"""Progress a person can follow on a terminal and in a log file (train, evaluate, fetch, prepare).

Three modes:

- "bar": a tqdm bar, when stderr is a terminal;
- "lines": plain lines, flushed, when stderr goes to a log file (Snakemake rules, SLURM jobs) or
  with `--no-progress`: one at the start, then one every `every_fraction` of the work (5%) and at
  least every `max_interval_s` (5 min), and one at the end, each with done/total, the latest
  metrics (e.g. loss, accuracy), the rate (from the first step on, leaving out one-off work such
  as tracing) and the time left. No terminal escape codes;
- "off": nothing (the Python API's `progress=False`, used by tests).

`resolve_mode(progress)` maps the commands' `progress` argument to a mode: True = "bar" on a
terminal, else "lines"; False = "off"; a mode name is taken as is.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

MODES = ("bar", "lines", "off")
EVERY_FRACTION = 0.05
MAX_INTERVAL_S = 300.0


def resolve_mode(progress: bool | str, stream: TextIO | None = None) -> str:
    """"bar" | "lines" | "off" from a command's `progress` argument (True = by the terminal)."""
    if isinstance(progress, str):
        if progress not in MODES:
            raise ValueError(f"unknown progress mode {progress!r}; choose one of {', '.join(MODES)}")
        return progress
    if not progress:
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        tty = False
    return "bar" if tty else "lines"


def cli_mode(no_progress: bool) -> str:
    """The mode of a command run with or without `--no-progress`: lines instead of bars."""
    return "lines" if no_progress else resolve_mode(True)


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s, 12s; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(count: float) -> str:
    """Binary multiples: 512 B, 1.5 KiB, 12.3 MiB, 1.02 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """One unit of work being done: `update(n)` as it advances, `set_postfix(...)` for its metrics.

    Use as a context manager or call `close()`. In "lines" mode the first line is written at
    construction, then at every `every_fraction` of the total (0 = never by fraction), at least
    every `max_interval_s` seconds (checked on `update`), never more often than `min_interval_s`,
    and a last line at `close()` if anything happened since the previous one.
    """

    def __init__(self, total: int | None, desc: str, *, mode: str = "lines", unit: str = "it",
                 initial: int = 0, every_fraction: float = EVERY_FRACTION, max_interval_s: float = MAX_INTERVAL_S,
                 min_interval_s: float = 0.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, leave: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; choose one of {', '.join(MODES)}")
        self.total = total
        self.desc = desc
        self.mode = mode
        self.unit = unit
        self.n = initial
        self.every_fraction = every_fraction
        self.max_interval_s = max_interval_s
        self.min_interval_s = min_interval_s
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self._closed = False
        self._start_n = initial
        self._start_time = clock()
        # The rate is measured from the first update on: the first step often includes one-off
        # work (tracing and compiling a tf.function, opening a connection).
        self._first: tuple[int, float] | None = None
        self._bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            byte_units = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             file=self.stream, leave=leave, **byte_units)
        self._next_n = self._after(initial)
        self._last_line_n: int | None = None
        self._last_line_time = self._start_time
        if mode == "lines":
            self._line(start=True)

    # ------------------------------------------------------------------ public

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = self.clock()
            if self._first is None:
                self._first = (self.n, now)
            since = now - self._last_line_time
            due = (self._next_n is not None and self.n >= self._next_n) or since >= self.max_interval_s
            if due and since >= self.min_interval_s:
                self._line(now=now)

    def set_postfix(self, values: dict[str, Any]) -> None:
        """Metrics shown after the count (on the bar, or on the next line)."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix({k: format_value(v) for k, v in self.postfix.items()})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self._last_line_n != self.n:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def iterate(self, iterable: Iterable) -> Iterator:
        """Yield the items of `iterable`, counting each one; closes when exhausted."""
        try:
            for item in iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    # ------------------------------------------------------------------ lines

    def _after(self, n: int) -> int | None:
        """The count at which the next line is due by fraction (None: by time only)."""
        if not self.total or self.every_fraction <= 0:
            return None
        step = max(1, int(math.ceil(self.total * self.every_fraction)))
        return (n // step + 1) * step

    def _count(self, n: float) -> str:
        return format_bytes(n) if self.unit == "B" else f"{int(n):,}"

    def format_line(self, now: float | None = None, start: bool = False) -> str:
        now = self.clock() if now is None else now
        parts = []
        if self.total:
            percent = 100.0 * self.n / self.total
            parts.append(f"{self._count(self.n)}/{self._count(self.total)} {'' if self.unit == 'B' else self.unit}"
                         .rstrip() + f" ({percent:.0f}%)")
        else:
            parts.append(f"{self._count(self.n)} {'' if self.unit == 'B' else self.unit}".rstrip())
        if start:
            parts.append("starting")
        else:
            parts += [f"{k} {format_value(v)}" for k, v in self.postfix.items()]
            elapsed = now - self._start_time
            rate = (self.n - self._start_n) / elapsed if elapsed > 0 else math.nan
            if self._first is not None and self.n > self._first[0] and now > self._first[1]:
                rate = (self.n - self._first[0]) / (now - self._first[1])
            if self.unit == "B":
                parts.append(f"{format_bytes(rate)}/s" if math.isfinite(rate) else "? B/s")
            else:
                parts.append(f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s")
            parts.append(f"elapsed {format_duration(elapsed)}")
            if self.total and self.n < self.total:
                left = (self.total - self.n) / rate if rate and math.isfinite(rate) and rate > 0 else math.nan
                parts.append(f"ETA {format_duration(left)}")
        return f"{self.desc}: " + " | ".join(parts)

    def _line(self, now: float | None = None, start: bool = False) -> None:
        now = self.clock() if now is None else now
        try:
            print(self.format_line(now, start), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or full log must not stop the work
            pass
        self._last_line_n = self.n
        self._last_line_time = now
        self._next_n = self._after(self.n)

"""Bounded transfers: every download has a deadline and a minimum rate.

A stalled or trickling server must make fetch fail with a clear message, not hang it.
Defaults (shown by `reptile-tf fetch --help`):

- deadline per file: 120 s + 1 s per 32 KiB of the size the server announces (about 6 min for
  Omniglot's 8 MB archive, about 1 h for a 110 MB archive); 1 h when no size is announced.
  The response must start within 120 s. `--timeout SECONDS` sets one fixed deadline instead.
- minimum rate: 4 KiB/s averaged over the last 60 s (`--min-rate`, `--rate-window`), checked
  once a full window has passed so that a slow start is tolerated; `--min-rate 0` disables it.

A read blocked at the deadline is woken by a watchdog that shuts the socket down, and a read
times out after one window of silence, so neither a silent nor a trickling server can hold a
file longer than its deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from reptile_tf.progress import Progress, resolve_mode

try:
    import ssl
except ImportError:  # a Python without ssl: http and local mirrors still work
    ssl = None  # type: ignore[assignment]

KIB = 1024
DEFAULT_MIN_RATE = 4 * KIB  # bytes/s
DEFAULT_WINDOW_S = 60.0
BASE_DEADLINE_S = 120.0  # also the limit for a response to start
DEADLINE_BYTES_PER_S = 32 * KIB  # the deadline grows by 1 s per this many bytes
UNKNOWN_SIZE_DEADLINE_S = 3600.0
DEADLINE_HELP = (f"{BASE_DEADLINE_S:g} s + 1 s per {DEADLINE_BYTES_PER_S // KIB} KiB of the file's size, "
                 f"{UNKNOWN_SIZE_DEADLINE_S:g} s when the size is not announced")
_CHUNK = 1 << 20


class Missing(Exception):
    """The source does not have the file, or cannot be reached: try the next source."""


class TooSlow(Missing):
    """The transfer broke its deadline or minimum rate: try the next source."""


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class TransferLimits:
    """How long one file may take (`timeout_s`, None = scaled by size) and how slow it may get."""

    timeout_s: float | None = None
    min_rate: float = DEFAULT_MIN_RATE  # bytes/s over the window; 0 = no minimum
    window_s: float = DEFAULT_WINDOW_S

    def __post_init__(self) -> None:
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        if not self.min_rate >= 0:
            raise ValueError(f"minimum rate must be >= 0, got {self.min_rate}")
        if not self.window_s > 0:
            raise ValueError(f"rate window must be positive, got {self.window_s}")

    def deadline_for(self, size: int | None) -> float:
        """Seconds one file of `size` bytes (None = unknown) may take, from request to last byte."""
        if self.timeout_s is not None:
            return self.timeout_s
        if size is None:
            return UNKNOWN_SIZE_DEADLINE_S
        return BASE_DEADLINE_S + size / DEADLINE_BYTES_PER_S

    def response_deadline(self) -> float:
        """Seconds a server may take to start its response (headers)."""
        return self.timeout_s if self.timeout_s is not None else BASE_DEADLINE_S

    def socket_timeout(self) -> float:
        """Per socket operation: one window of silence already breaks the minimum rate."""
        return self.window_s if self.min_rate > 0 else self.deadline_for(None)


_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmg]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Bytes/s from e.g. `4096`, `4K`, `1.5M`, `4KiB/s` (binary multiples); ValueError if malformed."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"not a rate: {text!r} (examples: 4096, 4K, 1.5M)")
    return float(match.group(1)) * KIB ** " kmg".index(match.group(2).lower() or " ")


def format_rate(bytes_per_s: float) -> str:
    if bytes_per_s >= KIB * KIB:
        return f"{bytes_per_s / (KIB * KIB):.1f} MiB/s"
    if bytes_per_s >= KIB:
        return f"{bytes_per_s / KIB:.1f} KiB/s"
    return f"{bytes_per_s:.0f} B/s"


class RateWindow:
    """Average transfer rate over the last `window_s` seconds, from (time, bytes so far) samples."""

    def __init__(self, window_s: float, start: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque([(start, 0)])

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))
        # Keep the newest sample at or before the window's start as the baseline; older ones go.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float | None:
        """Bytes/s since the baseline (>= one window ago), or None before a full window has passed."""
        t0, b0 = self._samples[0]
        if now - t0 < self.window_s:
            return None
        return (self._samples[-1][1] - b0) / (now - t0)


# --------------------------------------------------------------------------- messages


def _received_text(received: int, size: int | None) -> str:
    return f"{received:,} of {size:,} bytes" if size is not None else f"{received:,} bytes"


def slow_message(rate: float, received: int, size: int | None, limits: TransferLimits) -> str:
    return (f"too slow: {format_rate(rate)} averaged over the last {limits.window_s:g} s (received "
            f"{_received_text(received, size)}), below the minimum of {format_rate(limits.min_rate)}; to accept "
            "slower transfers lower --min-rate (0 = no minimum) or lengthen --rate-window")


def stalled_message(received: int, size: int | None, limits: TransferLimits) -> str:
    return (f"stalled: nothing received for {limits.socket_timeout():g} s (after {_received_text(received, size)}), "
            f"below the minimum of {format_rate(limits.min_rate)}; to wait longer lower --min-rate "
            "(0 = no minimum) or lengthen --rate-window")


def deadline_message(deadline: float, elapsed: float, received: int, size: int | None) -> str:
    average = received / elapsed if elapsed > 0 else 0.0
    return (f"exceeded the {deadline:g} s deadline for this file (received {_received_text(received, size)} "
            f"in {elapsed:.1f} s, {format_rate(average)} on average); allow more time with --timeout SECONDS "
            f"(default: {DEADLINE_HELP})")


# --------------------------------------------------------------------------- the watchdog


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for SSL sockets: it wakes a blocked reader with EOF
    # without touching the SSL object the reader is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    """Shuts down a transfer's sockets when its deadline passes, waking any blocked read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self.fired = False

    def arm(self, seconds: float) -> None:
        self.cancel()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _watched(base: type[http.client.HTTPConnection], watchdog: Watchdog) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    return Watched


def _opener(watchdog: Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies, redirects) whose connections register with the watchdog."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_watched(http.client.HTTPConnection, watchdog), req)

    handlers: list[urllib.request.BaseHandler] = [HTTP()]
    if ssl is not None:
        context = ssl.create_default_context()  # what urlopen uses by default

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(_watched(http.client.HTTPSConnection, watchdog), req, context=context)

        handlers.append(HTTPS(context=context))
    return urllib.request.build_opener(*handlers)


# --------------------------------------------------------------------------- opening and reading


def is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https", "file")


@contextlib.contextmanager
def _open_stream(location: str, limits: TransferLimits, watchdog: Watchdog) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open a file path or URL for reading; yield (stream, size if known). Missing -> Missing."""
    if not is_url(location):
        try:
            stream = open(location, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise Missing("not found") from None
        except OSError as err:
            raise Missing(f"cannot be read ({err.strerror})") from None
        with stream:
            yield stream, os.fstat(stream.fileno()).st_size
        return
    try:
        response = _opener(watchdog).open(location, timeout=limits.socket_timeout())
    except urllib.error.HTTPError as err:
        err.close()
        raise Missing(f"not found (HTTP {err.code})") from None
    except urllib.error.URLError as err:
        raise Missing(f"unreachable ({err.reason})") from None
    except (OSError, http.client.HTTPException) as err:
        raise Missing(f"unreachable ({err!r})") from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


def guarded_chunks(stream: BinaryIO, size: int | None, limits: TransferLimits, started: float,
                   watchdog: Watchdog | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
    """The stream's bytes; raises TooSlow past the deadline or below the minimum rate.

    `started` is when the request began (by `clock`); `watchdog` is the one whose firing
    turned a blocked read into an end of file or error.
    """
    watchdog = watchdog or Watchdog()
    deadline = limits.deadline_for(size)
    # read1: at most one system call, so a trickle is seen as it arrives (read(n) would block
    # until n bytes have come).
    read = getattr(stream, "read1", None) or stream.read
    window = RateWindow(limits.window_s, started)
    received = 0
    while True:
        try:
            chunk = read(_CHUNK)
        except (OSError, http.client.HTTPException) as err:
            now = clock()
            if watchdog.fired or now - started >= deadline:
                raise TooSlow(deadline_message(deadline, now - started, received, size)) from None
            if isinstance(err, TimeoutError):
                raise TooSlow(stalled_message(received, size, limits)) from None
            raise Missing(f"transfer failed after {received:,} bytes ({err!r})") from None
        now = clock()
        if not chunk:
            if watchdog.fired:  # the watchdog's shutdown looks like an end of file
                raise TooSlow(deadline_message(deadline, now - started, received, size))
            break
        if now - started > deadline:
            raise TooSlow(deadline_message(deadline, now - started, received, size))
        received += len(chunk)
        window.add(now, received)
        rate = window.rate(now)
        if limits.min_rate > 0 and rate is not None and rate < limits.min_rate:
            raise TooSlow(slow_message(rate, received, size, limits))
        yield chunk
    if size is not None and received != size:
        raise Missing(f"transfer truncated: received {received:,} of {size:,} bytes")


@contextlib.contextmanager
def open_location(location: str, limits: TransferLimits,
                  clock: Callable[[], float] = time.monotonic) -> Iterator[tuple[Iterator[bytes], int | None]]:
    """Open a path or URL; yield (chunks, size if known). The chunks obey `limits`."""
    started = clock()
    watchdog = Watchdog()
    watchdog.arm(limits.response_deadline())
    try:
        with contextlib.ExitStack() as stack:
            try:
                stream, size = stack.enter_context(_open_stream(location, limits, watchdog))
            except Missing:
                if watchdog.fired:
                    raise TooSlow(f"no response within {limits.response_deadline():g} s; allow more time with "
                                  "--timeout SECONDS") from None
                raise
            watchdog.arm(limits.deadline_for(size) - (clock() - started))
            yield guarded_chunks(stream, size, limits, started, watchdog, clock), size
    finally:
        watchdog.cancel()


def read_small(location: str, limits: TransferLimits, max_bytes: int = 4 << 20) -> bytes:
    """The bytes of a small file (e.g. a SHA256SUMS); a larger one is treated as missing."""
    data = bytearray()
    with open_location(location, limits) as (chunks, _size):
        for chunk in chunks:
            data += chunk
            if len(data) > max_bytes:
                raise Missing(f"larger than {max_bytes:,} bytes; ignored")
    return bytes(data)


# In logs (no terminal), files from this size on get progress lines; smaller ones are quick.
LINES_MIN_BYTES = 4 << 20


def _progress_bar(total: int | None, desc: str, progress: bool | str) -> Progress:
    """A byte-counting bar on a terminal; in logs, for files of LINES_MIN_BYTES or more (or of
    unknown size), a plain line with bytes, rate and time left every 10% (at most every 5 s, at
    least every 30 s) and one at the end."""
    mode = resolve_mode(progress)
    if mode == "lines" and total is not None and total < LINES_MIN_BYTES:
        mode = "off"
    label = desc if mode == "bar" else f"fetch {desc}"
    return Progress(total, label, mode=mode, unit="B", every_fraction=0.1, min_interval_s=5.0, max_interval_s=30.0,
                    leave=False)


def copy_location(location: str, target: Path, limits: TransferLimits, desc: str, progress: bool | str) -> str:
    """Stream `location` into `target` (a temp file), returning the sha256 of the bytes written.

    Source problems raise Missing / TooSlow; errors writing `target` propagate as OSError.
    `progress`: True = a bar on a terminal, lines in logs; False = nothing; or a
    `reptile_tf.progress` mode.
    """
    digest = hashlib.sha256()
    with open_location(location, limits) as (chunks, total):
        with open(target, "wb") as out, _progress_bar(total, desc, progress) as bar:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()

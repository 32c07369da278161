"""Keeping DEST clean whatever happens: termination signals, stale temp files, write errors."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Without a lock (a filesystem without flock) a temp file this old is surely not a live fetch's.
STALE_AGE_UNLOCKED_S = 24 * 3600.0


class Terminated(SystemExit):
    """Raised by the signal handler: unwinds like an exception (finally blocks remove temp files),
    then exits with the shell's code for death by that signal (128 + signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def raise_on_termination() -> Iterator[None]:
    """While inside, SIGTERM / SIGHUP raise Terminated instead of killing the process outright.

    Only in the main thread (Python delivers signals there), and only where the signal still
    has its default action: a caller's own handler, or SIG_IGN from nohup, is respected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous: dict[int, object] = {}

    def handler(signum: int, _frame) -> None:
        for s in previous:  # a second signal must not interrupt the clean-up of the first
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    for s in signums:
        if signal.getsignal(s) is signal.SIG_DFL:
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def dest_lock(dest: Path, on_wait: Callable[[], None]) -> Iterator[bool]:
    """Hold an exclusive advisory lock on the DEST directory; yield whether it is really held.

    Two fetches into one DEST then run one after the other, and the holder knows that every
    temp file in DEST is the leftover of a dead fetch, never a live one's.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield False
        return
    fd = os.open(dest, os.O_RDONLY)
    try:
        yield _flock(fcntl, fd, on_wait)
    finally:
        os.close(fd)  # releases the lock


def _flock(fcntl, fd: int, on_wait: Callable[[], None]) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        on_wait()
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError:  # a filesystem without flock support
        return False


def stale_temp_paths(dest: Path, rels: Iterable[str], min_age_s: float = 0.0,
                     now: float | None = None) -> list[Path]:
    """Temp files / folders an interrupted fetch left in DEST for the given files.

    `atomic_path` names them `.<file name>.<random>.tmp` beside the file (the image folder:
    `.images.<random>.tmp`); only names of exactly that form are returned, so nothing of the
    user's is touched. With `min_age_s`, only entries not modified for that long.
    """
    now = time.time() if now is None else now
    prefixes: dict[Path, set[str]] = {}
    for rel in rels:
        path = dest / rel
        prefixes.setdefault(path.parent, set()).add(f".{path.name}.")
    found = []
    for folder, starts in prefixes.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not (entry.name.endswith(".tmp") and entry.name.startswith(tuple(starts))):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                    found.append(Path(entry.path))
    return sorted(found)


def remove_paths(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


_NO_ROOM = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def _is_under(path: str | os.PathLike, root: Path) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def os_error_message(dest: Path, err: OSError) -> str:
    """One line for an OSError that escaped a fetch into `dest`: what happened and what to do."""
    reason = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename else ""
    outside = err.filename is not None and not _is_under(err.filename, dest)
    if err.errno in _NO_ROOM:
        return (f"no room to write into --dest {dest}: {reason}{where}. Free space there (the largest raw file "
                "is about 110 MB) or give another --dest; nothing partial was left")
    if err.errno == errno.EROFS or (err.errno in _NOT_WRITABLE and not outside):
        return (f"cannot write into --dest {dest}: {reason}{where}. Give a writable directory with --dest or fix "
                "its permissions; nothing partial was left")
    if outside:  # e.g. a file of a --source folder that cannot be read
        return f"cannot read {err.filename}: {reason}. Check the --source / --mirror you gave"
    return f"cannot write into --dest {dest}: {reason}{where}; nothing partial was left"

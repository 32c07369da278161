"""Small, dependency-free file helpers shared by every stage: atomic writes and JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from reptile_tf.errors import UserError

# OS errors that mean "this location cannot take the write", whatever the file: the user fixes
# them (free space, permissions, another --out); a traceback would only hide the one line.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or error leaves `path` untouched (old content or absent), never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temp_files(directory: str | os.PathLike, names: tuple[str, ...]) -> list[str]:
    """Delete the temporary files `atomic_path` left beside `directory/<name>` when its process
    was killed mid-write (the `finally` never ran); return their names. Only the given names:
    another command's temporary files in the same directory are not ours to remove."""
    directory = Path(directory)
    removed = []
    for name in names:
        for tmp in directory.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return sorted(removed)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def describe_os_error(err: OSError) -> str:
    """'No space left on device: runs/x/metrics.jsonl' (strerror and the file, when known)."""
    reason = err.strerror or str(err)
    return f"{reason}: {err.filename}" if err.filename else reason


@contextlib.contextmanager
def write_errors_as_user_errors(hint: str) -> Iterator[None]:
    """Turn disk-full, quota, file-size and permission errors raised in the block into one-line
    UserErrors ending with `hint` (what to do); every other error passes through unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise UserError(f"{describe_os_error(err)}; {hint}") from None


def nearest_existing(path: Path) -> Path:
    """`path` or its closest existing ancestor (what a later mkdir -p would create below)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(directory: Path) -> str | None:
    """Why a file cannot be created in `directory` (None: it can). Creates and at once removes a
    real file: the one test that agrees with the later writes (mode bits, root, ACLs, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".reptile-tf-probe-"):
            return None
    except OSError as err:
        return err.strerror or str(err)


def output_problem(out: Path, flag: str, needed_bytes: int = 0, subdirs: tuple[str, ...] = (),
                   appended: tuple[str, ...] = ()) -> str | None:
    """Why `out` cannot take a command's outputs (None when it can): a file in its place, a file
    as an ancestor, no write permission (in `out` or the existing `subdirs`; on the existing
    `appended` files, which are appended to rather than replaced), or less free space than
    `needed_bytes`. Writes nothing that stays."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"{flag} {out} exists and is not a directory; pass a directory path"
    base = nearest_existing(out)
    if not base.is_dir():
        return f"{flag} {out} cannot be created: {base} is a file; pass another path"
    for directory in (base, *(out / name for name in subdirs)):
        if directory.is_dir():
            reason = _not_writable(directory)
            if reason:
                return (f"{flag} {out}: cannot write in {directory} ({reason}); make it writable or use "
                        "another location")
    for existing in (out / name for name in appended):
        if existing.is_file() and not os.access(existing, os.W_OK):
            return f"{flag} {out}: {existing} is not writable; fix its permissions or pass a new path"
    free = shutil.disk_usage(base).free
    if free < needed_bytes:
        return (f"{flag} {out}: only {free / 2**20:.1f} MiB free on the file system of {base}, the run needs "
                f"about {needed_bytes / 2**20:.1f} MiB; free space or pass a path on another disk")
    return None


def check_output_dir(out: Path, flag: str, needed_bytes: int = 0, subdirs: tuple[str, ...] = (),
                     appended: tuple[str, ...] = ()) -> None:
    """UserError with `output_problem`'s one line when `out` cannot take the outputs."""
    problem = output_problem(out, flag, needed_bytes, subdirs, appended)
    if problem:
        raise UserError(problem)

"""`reptile-tf fetch` under faults and bad input (issue 14, items 1 and 2).

1. A mirror cannot weaken verification: its SHA256SUMS never vouches for a file the project
   knows, and archive structure checks always run.
2. Transfers have a deadline and a minimum rate; temp files go away on SIGTERM and are cleaned
   after SIGKILL; a read-only or full DEST gives one error line.

Hostile mirrors are built in tmp_path; slow servers are threaded http.server handlers on
127.0.0.1 whose loops are bounded and stop when the test ends.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from reptile_tf import cli
from reptile_tf.data import fetch as F
from reptile_tf.data.fetch import guard, transfer
from reptile_tf.errors import UserError
from reptile_tf.io import read_json, write_json_atomic

# Fixtures and helpers of the main fetch tests (the autouse `offline` fixture keeps these tests
# off the internet too: canonical URLs point at a closed local port).
from test_fetch import (  # noqa: F401 (fixtures)
    MALICIOUS, OMNI, SHARED, _omniglot_mirror, _repack, _zip_with, dead_url, leftovers, offline, sha256,
)

REPO = Path(__file__).resolve().parents[2]
BACKGROUND = "images_background.zip"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vouching_mirror(root: Path, archive: bytes, rel: str = BACKGROUND) -> Path:
    """A mirror with the real Omniglot splits, `archive` as `rel`, and a SHA256SUMS listing the
    sha256 of every file it holds: the mirror vouches for whatever it serves."""
    folder = root / "omniglot"
    shutil.copytree(OMNI / "splits", folder / "splits")
    (folder / rel).write_bytes(archive)
    lines = [f"{_sha(p.read_bytes())}  ./omniglot/{p.relative_to(folder).as_posix()}\n"
             for p in sorted(folder.rglob("*")) if p.is_file()]
    (root / "SHA256SUMS").write_text("".join(lines))
    return root


def _half_of_background(path: Path) -> bytes:
    """A sound zip holding the first half of images_background.zip's images."""
    with zipfile.ZipFile(OMNI / BACKGROUND) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        members = [i for i in zin.infolist() if not i.is_dir()]
        for info in members[: len(members) // 2]:
            zout.writestr(info, zin.read(info))
    return path.read_bytes()


# ----------------------------------------------------------------------------- 1. verification


@pytest.mark.parametrize("kind,name,symlink,reason", MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_mirror_sums_cannot_vouch_for_a_malicious_archive(tmp_path, kind, name, symlink, reason):
    hostile = _zip_with(tmp_path / "hostile.zip", name, b"evil", symlink).read_bytes()
    mirror = _vouching_mirror(tmp_path / "mirror", hostile)
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert f"{BACKGROUND} is unsafe" in message and reason in message
    assert not (dest / BACKGROUND).exists() and not (dest / F.STAMP_NAME).exists()
    assert leftovers(dest) == []


def test_mirror_sums_cannot_vouch_for_half_of_omniglot(tmp_path):
    mirror = _vouching_mirror(tmp_path / "mirror", _half_of_background(tmp_path / "half.zip"))
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert f"{BACKGROUND}: 9,640 files with tree digest" in message
    assert "19,280 images with tree digest " + F.KNOWN_ARCHIVES["omniglot", BACKGROUND].tree_digest in message
    assert "mirror SHA256SUMS" not in message, "a mirror's sum is no alternative for a file the project knows"
    assert not (dest / BACKGROUND).exists() and leftovers(dest) == []


def test_mirror_sums_cannot_vouch_for_a_changed_split_file(tmp_path):
    val = (OMNI / "splits/vinyals/val.txt").read_bytes() + b"Bogus/character01/rot000\n"
    mirror = _vouching_mirror(tmp_path / "mirror", val, rel="splits/vinyals/val.txt")
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", tmp_path / "raw", mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert "splits/vinyals/val.txt: sha256 is " + _sha(val) in message
    assert F.KNOWN_SHA256["omniglot", "splits/vinyals/val.txt"] in message


def test_a_wrong_mirror_sum_does_not_block_a_file_the_project_verifies(tmp_path):
    mirror = _omniglot_mirror(tmp_path / "mirror")
    sums = (mirror / "SHA256SUMS").read_text()
    (mirror / "SHA256SUMS").write_text(sums.replace(F.KNOWN_SHA256["omniglot", "splits/vinyals/val.txt"], "0" * 64))
    dest = F.fetch("omniglot", tmp_path / "raw", mirrors=[str(mirror)], progress=False)
    assert read_json(dest / F.STAMP_NAME)["files"]["splits/vinyals/val.txt"]["method"] == "sha256 (project)"


def test_mirror_sums_still_cover_files_the_project_does_not_know(tmp_path, monkeypatch):
    rel = "splits/vinyals/val.txt"
    monkeypatch.delitem(F.KNOWN_SHA256, ("omniglot", rel))
    dest = F.fetch("omniglot", tmp_path / "ok", mirrors=[str(SHARED)], progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files[rel]["method"] == "sha256 (mirror SHA256SUMS)"
    assert files["splits/vinyals/train.txt"]["method"] == "sha256 (project)"

    # Not listed by any mirror: nothing vouches for it.
    bare = _omniglot_mirror(tmp_path / "bare", with_sums=False)
    with pytest.raises(UserError, match="val.txt: no checksum is known for it"):
        F.fetch("omniglot", tmp_path / "bad", mirrors=[str(bare)], progress=False)


def test_structure_checks_run_even_when_only_a_mirror_vouches(tmp_path, monkeypatch):
    # The project forgets everything about the archive: only the mirror's sum is left, and it
    # lists the hostile archive. Safe member names are still required.
    key = ("omniglot", BACKGROUND)
    for table in (F.KNOWN_SHA256, F.OFFICIAL_SHA256, F.KNOWN_ARCHIVES):
        monkeypatch.delitem(table, key)
    hostile = _zip_with(tmp_path / "hostile.zip", "images_background/../../evil.png", b"evil").read_bytes()
    mirror = _vouching_mirror(tmp_path / "mirror", hostile)
    with pytest.raises(UserError, match=f"{BACKGROUND} is unsafe: member .* contains '..'"):
        F.fetch("omniglot", tmp_path / "raw", mirrors=[str(mirror)], progress=False)


def test_stamp_and_summary_name_the_check_that_verified_each_file(tmp_path, capsys, repacked_omniglot):
    dest = tmp_path / "raw"
    code = cli.main(["fetch", "omniglot", "--dest", str(dest), "--source", str(repacked_omniglot), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "images_background.zip: " in out and "19,280 images, verified by tree digest (project)" in out
    assert "splits/vinyals/val.txt: 21,312 bytes, verified by sha256 (project)" in out
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files[BACKGROUND]["method"] == "tree digest (project)" and files[BACKGROUND]["images"] == 19_280


def test_a_stamp_written_under_the_old_rules_is_not_trusted(tmp_path):
    """Version-1 stamps may cover files a mirror's sum let through: they are verified again."""
    dest = tmp_path / "raw"
    shutil.copytree(OMNI / "splits", dest / "splits")
    _zip_with(dest / BACKGROUND, "images_background/../../evil.png", b"evil")
    shutil.copy2(OMNI / "images_evaluation.zip", dest / "images_evaluation.zip")
    entry = lambda p: {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,  # noqa: E731
                       "method": "sha256 (mirror SHA256SUMS)", "sha256": sha256(p), "source": "old"}
    write_json_atomic(dest / F.STAMP_NAME, {"version": 1, "dataset": "omniglot",
                                            "files": {rel: entry(dest / rel) for rel in F.OMNIGLOT_FILES}})
    F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
    assert sha256(dest / BACKGROUND) == sha256(OMNI / BACKGROUND), "the hostile archive must be replaced"
    assert read_json(dest / F.STAMP_NAME)["version"] == F.STAMP_VERSION


@pytest.fixture(scope="module")
def repacked_omniglot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repacked") / "omniglot"
    shutil.copytree(OMNI / "splits", root / "splits")
    for name in (BACKGROUND, "images_evaluation.zip"):
        _repack(OMNI / name, root / name)
    return root


# ----------------------------------------------------------------------------- 2. slow servers


@dataclass(frozen=True)
class Slow:
    """How a slow server sends one file: silence before the headers, then `chunk` bytes every
    `pause` seconds, at most `max_writes` times (bounded; all waits end when the test ends)."""

    chunk: int = 1024
    pause: float = 0.1
    max_writes: int = 100
    header_delay: float = 0.0


class _SlowServer:
    def __init__(self, directory: Path, slow: dict[str, Slow]):
        stop = self.stop = threading.Event()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                how = slow.get(self.path.rsplit("/", 1)[-1])
                if how is None:
                    return super().do_GET()
                data = (directory / self.path.lstrip("/")).read_bytes()
                self.close_connection = True
                try:
                    if how.header_delay and stop.wait(how.header_delay):
                        return
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    sent = 0
                    for _ in range(how.max_writes):
                        if stop.wait(how.pause) or sent >= len(data):
                            return
                        self.wfile.write(data[sent : sent + how.chunk])
                        self.wfile.flush()
                        sent += how.chunk
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up: what a slow server must expect

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_server():
    servers = []

    def start(slow: dict[str, Slow]) -> _SlowServer:
        servers.append(_SlowServer(SHARED, slow))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_trickling_server_fails_with_one_line_naming_file_rate_and_flag(tmp_path, slow_server, capsys):
    server = slow_server({BACKGROUND: Slow(chunk=1024, pause=0.1, max_writes=200)})  # ~10 KiB/s, at most 20 s
    dest = tmp_path / "raw"
    started = time.monotonic()
    code = cli.main(["fetch", "omniglot", "--dest", str(dest), "--mirror", server.url, "--no-progress",
                     "--min-rate", "64K", "--rate-window", "0.5"])
    assert time.monotonic() - started < 10
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    line = errors[0]
    assert line.startswith("reptile-tf fetch: error: could not obtain a verified omniglot file 'images_background.zip'")
    assert re.search(r"too slow: [\d.]+ (B|KiB)/s averaged over the last 0.5 s", line), line
    assert "below the minimum of 64.0 KiB/s" in line and "--min-rate" in line
    assert not (dest / BACKGROUND).exists() and leftovers(dest) == []


def test_one_kib_every_20_s_breaks_the_default_minimum_rate():
    """The issue's trickle (1 KiB every 20 s), on a fake clock with the default limits."""
    now = [0.0]

    class Trickle:
        def read1(self, n):
            now[0] += 20.0
            return b"x" * 1024

    chunks = transfer.guarded_chunks(Trickle(), 8_394_302, F.TransferLimits(), started=0.0, clock=lambda: now[0])
    with pytest.raises(transfer.TooSlow) as err:
        for _ in range(100):
            next(chunks)
    assert now[0] == 60.0, "fails as soon as a full 60 s window has passed"
    assert "too slow: 51 B/s averaged over the last 60 s" in str(err.value)
    assert "below the minimum of 4.0 KiB/s" in str(err.value) and "--min-rate" in str(err.value)


def test_deadline_stops_a_steady_but_too_long_transfer():
    now = [0.0]

    class Steady:  # 64 KiB/s: well above the minimum rate, far too slow for a 1 GB file
        def read1(self, n):
            now[0] += 1.0
            return b"x" * 65536

    limits = F.TransferLimits()
    assert limits.deadline_for(10**9) == pytest.approx(120 + 10**9 / 32768)
    assert F.TransferLimits(timeout_s=30).deadline_for(10**9) == 30
    chunks = transfer.guarded_chunks(Steady(), 10**9, F.TransferLimits(timeout_s=30), started=0.0, clock=lambda: now[0])
    with pytest.raises(transfer.TooSlow, match=r"exceeded the 30 s deadline .* --timeout SECONDS"):
        for _ in range(100):
            next(chunks)
    assert now[0] == 31.0


def test_real_transfer_is_cut_at_the_deadline(tmp_path, slow_server):
    server = slow_server({BACKGROUND: Slow(chunk=16 * 1024, pause=0.05, max_writes=400)})  # 320 KiB/s, 8 MB: 26 s
    dest = tmp_path / "raw"
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[server.url], progress=False, limits=F.TransferLimits(timeout_s=1.0))
    assert time.monotonic() - started < 10
    assert "exceeded the 1 s deadline for this file" in str(err.value) and "--timeout" in str(err.value)
    assert (dest / "splits/vinyals/val.txt").is_file() and leftovers(dest) == []


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_silent_server_is_cut_at_the_deadline_not_at_the_socket_timeout(tmp_path, slow_server, phase):
    # One read blocks for as long as the socket timeout (= the 60 s rate window): the watchdog
    # must wake it at the 1 s deadline.
    how = Slow(header_delay=30.0) if phase == "headers" else Slow(chunk=1024, pause=30.0, max_writes=1)
    server = slow_server({BACKGROUND: how})
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", tmp_path / "raw", mirrors=[server.url], progress=False,
                limits=F.TransferLimits(timeout_s=1.0, window_s=60.0))
    assert time.monotonic() - started < 10
    expected = "no response within 1 s" if phase == "headers" else "exceeded the 1 s deadline"
    assert expected in str(err.value) and "--timeout" in str(err.value)


def test_limits_and_rates_parse_and_print():
    assert transfer.parse_rate("4096") == 4096
    assert transfer.parse_rate("4K") == transfer.parse_rate("4KiB/s") == 4096
    assert transfer.parse_rate("1.5M") == 1.5 * 2**20 and transfer.parse_rate("0") == 0
    with pytest.raises(ValueError):
        transfer.parse_rate("fast")
    assert transfer.format_rate(51.2) == "51 B/s" and transfer.format_rate(4096) == "4.0 KiB/s"
    assert F.TransferLimits().deadline_for(None) == 3600
    with pytest.raises(ValueError):
        F.TransferLimits(window_s=0)
    window = transfer.RateWindow(10.0, start=0.0)
    window.add(5.0, 5000)
    assert window.rate(5.0) is None  # no full window yet
    window.add(12.0, 6000)
    assert window.rate(12.0) == pytest.approx(6000 / 12)  # baseline: the start
    window.add(20.0, 6000)
    assert window.rate(20.0) == pytest.approx(1000 / 15)  # baseline: t=5, the newest >= 10 s old


def test_cli_limit_flags(tmp_path):
    parser = cli.build_parser(only="fetch")
    args = parser.parse_args(["fetch", "omniglot", "--dest", "d", "--timeout", "90", "--min-rate", "1K",
                              "--rate-window", "5"])
    assert F.limits_from_args(args) == F.TransferLimits(timeout_s=90.0, min_rate=1024.0, window_s=5.0)
    assert F.limits_from_args(parser.parse_args(["fetch", "omniglot", "--dest", "d"])) == F.TransferLimits()
    for bad in (["--timeout", "0"], ["--min-rate", "lots"], ["--rate-window", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["fetch", "omniglot", "--dest", "d", *bad])


# ----------------------------------------------------------------------------- signals, stale temp files


# Runs the CLI. With `as_nobody` (when the tests run as root, who ignores file permissions) it
# first imports everything fetch needs, then drops to uid/gid 65534: the interpreter lives in
# root's home, which nobody cannot read.
_DRIVER = """
import os, sys
import reptile_tf.cli, reptile_tf.data.fetch, tqdm
if os.environ.pop("_FETCH_TEST_AS_NOBODY", None):
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(reptile_tf.cli.main(sys.argv[1:]))
"""


def _cli_process(args: list[str], as_nobody: bool = False, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != F.ENV_MIRROR}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if as_nobody:
        env["_FETCH_TEST_AS_NOBODY"] = "1"
    return subprocess.Popen([sys.executable, "-c", _DRIVER, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_download_to_start(dest: Path, proc: subprocess.Popen) -> None:
    """Return once the archive's temp file exists and the transfer has run a little (bounded)."""
    for _ in range(400):  # 20 s at most
        if any(dest.glob(f".{BACKGROUND}.*.tmp")):
            time.sleep(0.3)  # now inside the trickling transfer
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the download did not start: {proc.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_fetch_leaves_no_temp_file_behind(tmp_path, slow_server, signum):
    # 20 KiB/s: above the default minimum rate; 40 s at most.
    server = slow_server({BACKGROUND: Slow(chunk=1024, pause=0.05, max_writes=800)})
    dest = tmp_path / "raw"
    proc = _cli_process(["fetch", "omniglot", "--dest", str(dest), "--mirror", server.url, "--no-progress"])
    _wait_for_download_to_start(dest, proc)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=20)
    if signum == signal.SIGTERM:
        # The handler turns SIGTERM into an exception: finally blocks remove the temp file.
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM; temporary files removed" in err and "Traceback" not in err
        assert leftovers(dest) == []
    else:
        # Nothing runs on SIGKILL: the next fetch removes what was left.
        assert proc.returncode == -signal.SIGKILL and leftovers(dest)
    F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
    assert leftovers(dest) == [] and F.stamp_is_current(dest, "omniglot")


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path, capsys):
    dest = tmp_path / "raw"
    stale = [dest / f".{BACKGROUND}.k2j3h4g5.tmp", dest / "splits/vinyals/.val.txt.abcdefgh.tmp",
             dest / f".{F.STAMP_NAME}.zzzz1111.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    (dest / ".images.q1w2e3r4.tmp").mkdir()
    (dest / ".images.q1w2e3r4.tmp" / "a.jpg").write_bytes(b"x")
    kept = [dest / ".keep", dest / "notes.tmp", dest / ".images_background.zip.txt", dest / "splits/my.tmp"]
    for path in kept:
        path.write_bytes(b"mine")
    F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
    assert not any(p.exists() for p in stale) and not (dest / ".images.q1w2e3r4.tmp").exists()
    assert all(p.read_bytes() == b"mine" for p in kept)
    assert "removing 4 temporary file(s)" in capsys.readouterr().err


def test_a_second_fetch_into_the_same_dest_waits_and_spares_live_temp_files(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    dest = tmp_path / "raw"
    dest.mkdir()
    live = dest / f".{BACKGROUND}.live1234.tmp"  # being written by the fetch holding the lock
    live.write_bytes(b"partial")
    fd = os.open(dest, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    outcome: dict = {}

    def second():
        try:
            outcome["dest"] = F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
        except BaseException as err:  # reported by the main thread
            outcome["error"] = err

    thread = threading.Thread(target=second, daemon=True)
    try:
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and live.exists() and not (dest / "splits").exists(), outcome
    finally:
        live.unlink()  # the first fetch ends as atomic_path would
        os.close(fd)
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert F.stamp_is_current(dest, "omniglot")


# ----------------------------------------------------------------------------- read-only and full DEST


@pytest.fixture
def world_dir():
    """A directory any user can enter (tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="reptile_tf_fetch_"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("where", ["dest", "parent"])
def test_read_only_dest_gives_one_error_line(world_dir, where):
    locked = world_dir / "locked"
    locked.mkdir()
    dest = locked if where == "dest" else locked / "raw"
    locked.chmod(0o555)
    proc = _cli_process(["fetch", "omniglot", "--dest", str(dest), "--mirror", str(SHARED), "--no-progress"],
                        as_nobody=os.geteuid() == 0)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reptile-tf fetch: error: cannot write into --dest {dest}: "
                                                   "Permission denied"), err
    assert "--dest" in lines[0] and list(locked.iterdir()) == []


def test_full_dest_gives_one_error_line_and_no_partial_file(tmp_path):
    resource = pytest.importorskip("resource")
    dest = tmp_path / "raw"

    def one_mib_files() -> None:  # writes past 1 MiB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = _cli_process(["fetch", "omniglot", "--dest", str(dest), "--mirror", str(SHARED), "--no-progress"],
                        preexec_fn=one_mib_files)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    # progress lines (bytes, rate) come first in a log; the failure is one line, the last
    lines = [line for line in err.strip().splitlines() if not line.startswith("fetch ")]
    assert len(lines) == 1 and lines[0].startswith(f"reptile-tf fetch: error: no room to write into --dest {dest}: "
                                                   "File too large"), err
    assert not (dest / BACKGROUND).exists() and leftovers(dest) == []
    assert (dest / "splits/vinyals/train.txt").is_file()  # verified files before it stay


def test_os_error_messages():
    dest = Path("/data/raw")
    full = guard.os_error_message(dest, OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("no room to write into --dest /data/raw: No space left on device.") and "\n" not in full
    ro = guard.os_error_message(dest, OSError(errno.EROFS, "Read-only file system", "/data/raw/x.tmp"))
    assert ro.startswith("cannot write into --dest /data/raw: Read-only file system (/data/raw/x.tmp)")
    src = guard.os_error_message(dest, PermissionError(errno.EACCES, "Permission denied", "/mine/images/a.jpg"))
    assert src.startswith("cannot read /mine/images/a.jpg: Permission denied")

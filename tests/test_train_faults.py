"""Faults and bad input in `reptile-tf train` / `evaluate` (issue 14, items 3-4): nothing silent,
nothing half-written.

- Numerical health: non-finite arguments are refused up front; a diverging run stops at once with
  a one-line diagnosis, exit 2, no DONE, and never checkpoints a non-finite state.
- Output: a bad --out fails before any data is loaded; disk-full and permission errors are one
  line; a failed checkpoint write leaves no `ckpt-N_temp`; a resume after it is exact.

Real failures where the machine allows them: RLIMIT_FSIZE (any user) makes a checkpoint write fail
with EFBIG; /dev/full gives ENOSPC; read-only and full file systems are tmpfs mounts (root only,
skipped elsewhere) or mode bits (non-root).
"""

from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reptile_tf import cli, io, rundir, run_state, train
from reptile_tf.errors import UserError

SINE = ["--algorithm", "reptile", "--dataset", "sine", "--ways", "1", "--shots", "10", "--seed", "0",
        "--inner-optimizer", "adam", "--inner-lr", "0.01", "--outer-lr", "1.0", "--no-progress"]
QUIET = train.RunOptions(log_every=10, checkpoint_every=20, val_every=0)


def sine(iterations: int = 40, **overrides) -> train.Settings:
    base = {"iterations": iterations, "inner_optimizer": "adam", "inner_lr": 0.01, "outer_lr": 1.0}
    return train.resolve_settings("reptile", "sine", 1, 10, {**base, **overrides})


def state_of(run_dir: Path) -> dict[str, np.ndarray]:
    state, _ = run_state.load_run_state(run_dir, rundir.read_config(run_dir))
    return {k: np.asarray(v) for k, v in state.items()}


def metrics_without_time(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rundir.read_metrics(run_dir)]


def run_cli(args: list[str], limit_file_bytes: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`reptile-tf ARGS` in a fresh process; `limit_file_bytes` makes every larger file write fail (EFBIG)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([sys.executable, "-m", "reptile_tf.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          preexec_fn=limit if limit_file_bytes else None)


def error_lines(stderr: str, command: str = "train") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"reptile-tf {command}: error:")]


class Mount:
    """A tmpfs at `path` (root with CAP_SYS_ADMIN): the real read-only / full file system."""

    def __init__(self, path: Path, size: str = "4m"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture()
def read_only_dir(tmp_path):
    """(directory, make_read_only): mode bits for a normal user; for root (who ignores them) a
    tmpfs remounted read-only."""
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        directory.mkdir()
        yield directory, lambda: directory.chmod(0o555)
        directory.chmod(0o755)
        return
    mount = Mount(tmp_path / "ro")
    try:
        yield mount.path, mount.read_only
    finally:
        mount.unmount()


# ------------------------------------------------------------------ item 3: numerical health


@pytest.mark.parametrize("flag, value", [("--inner-lr", "nan"), ("--outer-lr", "inf"), ("--adam-epsilon", "nan"),
                                         ("--eval-inner-lr", "-inf"), ("--adam-beta2", "nan")])
def test_non_finite_float_arguments_are_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    """`nan <= 0` is False: `--inner-lr nan` used to pass, train NaN and write NaN into config.json."""
    out = tmp_path / "run"
    code = cli.main(["train", *SINE, "--iterations", "2", "--out", str(out), f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2, err
    name = flag[2:].replace("-", "_")
    assert f"{name}={float(value)} is not a finite number" in err
    assert not out.exists()


def test_exploding_loss_stops_at_once_with_a_one_line_diagnosis(tmp_path, capsys):
    """`--inner-lr 1e8` used to run to the end: exit 0, DONE, a loss of 1e17 or NaN."""
    out = tmp_path / "run"
    code = cli.main(["train", *SINE, "--iterations", "50", "--checkpoint-every", "5", "--out", str(out),
                     "--inner-lr", "1e8"])
    err = capsys.readouterr().err
    assert code == 2
    [line] = error_lines(err)
    assert "training diverged at iteration 1:" in line and "training loss" in line
    assert "lower --inner-lr (now 1e+08" in line
    assert not (out / "DONE").exists() and rundir.latest_checkpoint(out) is None
    assert rundir.read_metrics(out) == []


def test_divergence_keeps_the_last_good_checkpoint_and_never_saves_a_bad_one(tmp_path):
    """Reptile on sine with an SGD inner loop and outer step 10 grows geometrically (measured: the
    loss passes 1e6 around iteration 7; first value that matters here: some iteration > 1)."""
    settings = sine(200, inner_optimizer="sgd", inner_lr=0.02, outer_lr=10.0)
    options = train.RunOptions(log_every=1, checkpoint_every=1, val_every=0)
    with pytest.raises(train.TrainingDiverged, match=r"training diverged at iteration (\d+)") as caught:
        train.train(settings, 0, tmp_path / "run", options, progress=False)
    message = str(caught.value)
    diverged = int(message.split("iteration ", 1)[1].split(":", 1)[0])
    assert diverged > 1, message
    assert "\n" not in message and "--outer-lr" in message
    assert f"the last good checkpoint (iteration {diverged - 1}) is kept" in message
    run = tmp_path / "run"
    assert not (run / "DONE").exists()
    assert rundir.latest_checkpoint(run).name == f"ckpt-{diverged - 1}"
    assert all(np.isfinite(value).all() for value in state_of(run).values())
    records = rundir.read_metrics(run)
    assert [r["iteration"] for r in records] == list(range(1, diverged))
    assert all(abs(r["loss"]) <= train.LOSS_LIMIT for r in records)


def test_the_paper_setting_with_a_huge_inner_step_stops_on_omniglot(tmp_path, omniglot_train_images):
    """The issue's case: Omniglot 5-way 1-shot Reptile, `--inner-lr 1e8`: loss 6e17, still finite."""
    settings = train.resolve_settings("reptile", "omniglot", 5, 1, {"iterations": 20, "inner_lr": 1e8})
    with pytest.raises(train.TrainingDiverged, match=r"iteration 1: the training loss reached .*--inner-lr"):
        train.train(settings, 0, tmp_path / "run", QUIET, progress=False, train_images=omniglot_train_images)
    assert not (tmp_path / "run" / "DONE").exists()


def test_diagnose_names_the_quantity_and_the_flag():
    healthy = {"loss_finite": True, "params_finite": True, "slots_finite": True, "max_loss": 1.6, "max_param": 3.0}
    reptile = train.paper_settings("reptile", "omniglot", 5, 1)
    assert train.diagnose(healthy, 5, reptile) is None
    cases = [({"loss_finite": False, "max_loss": math.nan}, "training loss is not finite (nan)"),
             ({"params_finite": False}, "meta-parameters are not finite"),
             ({"slots_finite": False}, "Adam moments are not finite"),
             ({"max_loss": 2e6}, "training loss reached 2e+06"),
             ({"max_param": 5e7}, "meta-parameter reached 5e+07")]
    for change, quantity in cases:
        message = train.diagnose({**healthy, **change}, 12, reptile.replace(outer_lr=50.0))
        assert message.startswith("training diverged at iteration 12: ") and quantity in message
        assert "lower --outer-lr (now 50, the paper's value for this setting is 1)" in message
    # No suspect above the paper's values: both step sizes are named.
    assert "--inner-lr (now 0.001) or --outer-lr (now 1)" in train.diagnose({**healthy, "max_param": 1e9}, 3, reptile)


# ------------------------------------------------------------------ item 4: outputs


def test_out_that_is_a_file_fails_before_the_data_is_loaded(tmp_path, capsys):
    """Used to load the data (66 s on Omniglot) and then end in a FileExistsError traceback."""
    out = tmp_path / "run"
    out.write_text("not a directory")
    args = ["train", "--algorithm", "reptile", "--dataset", "omniglot", "--ways", "5", "--shots", "1", "--seed", "0",
            "--iterations", "2", "--data-dir", str(tmp_path / "no-data-here"), "--out", str(out)]
    assert cli.main(args) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert f"--out {out} exists and is not a directory" in line  # not the missing data: checked first
    assert cli.main([*args[:-1], str(out / "below")]) == 2
    assert f"{out} is a file" in capsys.readouterr().err


def test_read_only_out_fails_before_the_data_is_loaded(tmp_path, read_only_dir, capsys):
    """Used to fail with a traceback at the first write (after minutes of data loading)."""
    directory, make_read_only = read_only_dir
    make_read_only()
    args = ["train", "--algorithm", "reptile", "--dataset", "omniglot", "--ways", "5", "--shots", "1", "--seed", "0",
            "--iterations", "2", "--data-dir", str(tmp_path / "no-data-here"), "--out", str(directory / "run")]
    assert cli.main(args) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert f"cannot write in {directory}" in line and "make it writable or use another location" in line


def test_a_clearly_too_small_disk_fails_up_front(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(io.shutil, "disk_usage", lambda path: real(path)._replace(free=200_000))
    with pytest.raises(UserError, match=r"only 0\.2 MiB free .* the run needs about 1\.1 MiB"):
        train.train(sine(), 0, tmp_path / "run", QUIET, progress=False)
    assert not (tmp_path / "run").exists()


def test_disk_full_is_one_user_error_line():
    with pytest.raises(UserError) as caught, io.write_errors_as_user_errors("free disk space"):
        with open("/dev/full", "w") as full:  # every write: ENOSPC
            full.write("x" * 100_000)
            full.flush()
    assert str(caught.value) == "No space left on device; free disk space"
    with pytest.raises(FileNotFoundError), io.write_errors_as_user_errors("unused"):
        open("/nonexistent/dir/file")  # not a write-location problem: unchanged


def test_failed_checkpoint_write_is_one_line_leaves_no_temp_and_resumes_exactly(tmp_path):
    """Every file write above 12 kB fails (EFBIG): config.json and metrics fit, the first
    checkpoint (21 kB) does not. Used to end in a traceback with `ckpt-20_temp/` left behind."""
    run = tmp_path / "run"
    args = ["train", *SINE, "--iterations", "40", "--checkpoint-every", "20", "--log-every", "10",
            "--val-every", "0", "--out", str(run)]
    failed = run_cli(args, limit_file_bytes=12_000)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    [line] = error_lines(failed.stderr)
    assert "cannot write checkpoint 20" in line and "File too large" in line and "resume from the start" in line
    assert not (run / "DONE").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []  # no ckpt-20_temp, no partial files
    assert [r["iteration"] for r in rundir.read_metrics(run)] == [10, 20]  # ahead of any checkpoint

    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = train.train(sine(), 0, tmp_path / "straight", QUIET, progress=False)
    a, b = state_of(run), state_of(straight)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert metrics_without_time(run) == metrics_without_time(straight)  # trimmed, then rewritten once


def test_full_disk_during_a_checkpoint_is_one_line(tmp_path):
    """A real ENOSPC: checkpoints/ is a full 64 kB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Mount(tmp_path / "small", size="64k")
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "checkpoints").symlink_to(mount.path)
        (mount.path / "filler").write_bytes(b"\0" * 60_000)
        failed = run_cli(["train", *SINE, "--iterations", "20", "--val-every", "0", "--out", str(run)])
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
        [line] = error_lines(failed.stderr)
        assert "cannot write checkpoint 20" in line and "No space left on device" in line
        assert sorted(p.name for p in mount.path.iterdir()) == ["filler"]
    finally:
        mount.unmount()


def test_stale_checkpoint_leftovers_are_removed_on_resume(tmp_path):
    """What a kill during a save leaves: `ckpt-N_temp/`, `checkpoint.tmp<hex>`, unlisted ckpt files."""
    settings = sine(40)
    run = train.train(settings, 0, tmp_path / "run", QUIET, progress=False)
    (run / "DONE").unlink()
    ckpt = run / "checkpoints"
    (ckpt / "ckpt-60_temp").mkdir()
    (ckpt / "ckpt-60_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"partial")
    (ckpt / "checkpoint.tmp0123abcd").write_text("partial")
    (ckpt / "ckpt-7.index").write_bytes(b"unlisted")
    listed = sorted(p.name for p in ckpt.iterdir() if p.name.startswith(("ckpt-20", "ckpt-40")))
    train.train(settings, 0, run, QUIET, progress=False)  # resumes at 40 of 40: cleans, writes DONE
    assert (run / "DONE").exists()
    assert sorted(p.name for p in ckpt.iterdir() if p.name != "checkpoint") == listed
    assert run_state.clean_checkpoint_dir(run) == []


def test_evaluate_into_a_read_only_run_dir_fails_before_scoring(tmp_path, read_only_dir, capsys):
    """Used to score every task and then fail with a traceback writing eval_<mode>.csv."""
    directory, make_read_only = read_only_dir
    run = train.train(sine(20), 0, directory / "run", QUIET, progress=False)
    make_read_only()
    assert cli.main(["evaluate", str(run), "--tasks", "5", "--no-progress"]) == 2
    [line] = error_lines(capsys.readouterr().err, "evaluate")
    assert f"RUN_DIR {run}: cannot write in {run}" in line
    assert not (run / rundir.EVAL_FILE).exists()

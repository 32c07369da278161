"""Progress a person can follow anywhere (issue 13, item 6): bars on a terminal, plain lines in logs.

Train and evaluate on the sine task (no data), prepare on a tiny synthetic Omniglot, fetch on a
local file: each writes flushed plain lines (count, metrics, rate, ETA) and no terminal escape
codes when stderr is not a terminal, which is how Snakemake and SLURM run them.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from reptile_tf import cli
from reptile_tf.progress import Progress, format_duration, resolve_mode

ESCAPES = re.compile(r"[\r\x1b]")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_modes():
    assert resolve_mode(True, Terminal()) == "bar"
    assert resolve_mode(True, io.StringIO()) == "lines"
    assert resolve_mode(False, Terminal()) == "off"
    assert resolve_mode("lines", Terminal()) == "lines"
    with pytest.raises(ValueError):
        resolve_mode("loud")


def test_lines_every_five_percent_with_metrics_rate_and_eta():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(1000, "train reptile omniglot", mode="lines", stream=stream, clock=clock)
    for i in range(1000):
        clock.now += 0.5
        if i % 100 == 0:
            progress.set_postfix({"loss": 1.0 / (i + 1), "accuracy": 0.5})
        progress.update(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "train reptile omniglot: 0/1,000 it (0%) | starting"
    assert len(lines) == 1 + 20  # start + every 5%, the last at 100%
    assert lines[1].startswith("train reptile omniglot: 50/1,000 it (5%) | loss 1 | accuracy 0.5 | 2 it/s")
    assert "elapsed 25s" in lines[1] and "ETA 7m55s" in lines[1]
    assert lines[-1].startswith("train reptile omniglot: 1,000/1,000 it (100%)") and "ETA" not in lines[-1]
    assert not ESCAPES.search(stream.getvalue())


def test_lines_also_every_few_minutes_and_resume_counts_from_the_start_iteration():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(100_000, "slow", mode="lines", initial=40_000, stream=stream, clock=clock)
    for _ in range(10):
        clock.now += 40.0  # 400 s: one line after 5 min although far from the next 5%
        progress.update(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("slow: 40,000/100,000 it (40%)")
    assert len(lines) == 2 and lines[1].startswith("slow: 40,008/100,000 it (40%)")
    assert "0.025 it/s" in lines[1]  # the rate of this process, not counting the resumed iterations


def test_the_rate_leaves_out_the_first_step():
    """The first iteration traces and compiles the step: the rate and ETA start after it."""
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(100, "train", mode="lines", stream=stream, clock=clock)
    clock.now += 100.0
    progress.update(1)
    for _ in range(9):
        clock.now += 1.0
        progress.update(1)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("train: 10/100 it (10%)") and "| 1 it/s | elapsed 1m49s | ETA 1m30s" in line


def test_bytes_progress_and_unknown_total():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(None, "fetch x.zip", mode="lines", unit="B", max_interval_s=30, stream=stream, clock=clock) as bar:
        for _ in range(4):
            clock.now += 20
            bar.update(3 << 20)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "fetch x.zip: 0 B | starting"
    assert lines[-1].startswith("fetch x.zip: 12.0 MiB | 153.6 KiB/s | elapsed 1m20s")


def test_bar_and_off_modes():
    terminal = Terminal()
    with Progress(10, "bar", mode="bar", stream=terminal) as bar:
        bar.set_postfix({"loss": 0.123456})
        bar.update(10)
    assert "10/10" in terminal.getvalue() and "loss=0.1235" in terminal.getvalue()
    quiet = io.StringIO()
    with Progress(10, "off", mode="off", stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (5, 125, 3725, 90000, float("nan"))] == ["5s", "2m05s", "1h02m", "1d01h", "?"]


# ------------------------------------------------------------------------- the commands, in a log


SINE_FAST = ["--inner-steps", "2", "--meta-batch", "5", "--eval-inner-steps", "2"]


def test_train_and_evaluate_write_plain_lines_to_a_log(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "--algorithm", "reptile", "--dataset", "sine", "--ways", "1", "--shots", "10",
                     "--seed", "0", "--iterations", "60", "--log-every", "10", "--val-every", "0", *SINE_FAST,
                     "--out", str(run)])
    assert code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train reptile sine")]
    assert lines[0] == "train reptile sine 1-way 10-shot: 0/60 it (0%) | starting"
    assert any(" | loss " in line and " | accuracy " in line and " it/s | " in line and "ETA" in line
               for line in lines)
    assert lines[-1].startswith("train reptile sine 1-way 10-shot: 60/60 it (100%)")
    assert not ESCAPES.search(err)

    assert cli.main(["evaluate", str(run), "--tasks", "30", "--chunk-size", "10", "--mode", "transductive"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("evaluate reptile sine transductive")]
    assert lines[0].endswith("0/30 task (0%) | starting")
    assert lines[-1].startswith("evaluate reptile sine transductive: 30/30 task (100%) | mse so far ")
    assert not ESCAPES.search(err)


def test_fetch_reports_bytes_and_rate_of_large_files_only(tmp_path):
    from reptile_tf.data.fetch.transfer import LINES_MIN_BYTES, TransferLimits, copy_location

    big, small = tmp_path / "big.zip", tmp_path / "small.txt"
    big.write_bytes(b"x" * (LINES_MIN_BYTES + 1000))
    small.write_bytes(b"y" * 1000)
    stream = io.StringIO()
    import reptile_tf.progress as progress_module

    original = progress_module.sys.stderr
    progress_module.sys.stderr = stream
    try:
        copy_location(str(big), tmp_path / "big.tmp", TransferLimits(), "omniglot/big.zip", progress=True)
        copy_location(str(small), tmp_path / "small.tmp", TransferLimits(), "omniglot/small.txt", progress=True)
    finally:
        progress_module.sys.stderr = original
    lines = stream.getvalue().splitlines()
    assert lines[0] == "fetch omniglot/big.zip: 0 B/4.0 MiB (0%) | starting"
    assert lines[-1].startswith("fetch omniglot/big.zip: 4.0 MiB/4.0 MiB (100%) |") and "/s | elapsed" in lines[-1]
    assert not any("small" in line for line in lines)


@pytest.fixture
def tiny_omniglot(tmp_path) -> Path:
    """Two archives of 2 characters x 2 drawings (the layout of the real ones)."""
    from PIL import Image

    raw = tmp_path / "raw"
    raw.mkdir()
    for archive, chars in {"images_background": ["Beta/character01", "Alpha/character02"],
                           "images_evaluation": ["Gamma/character01", "Gamma/character02"]}.items():
        with zipfile.ZipFile(raw / f"{archive}.zip", "w") as zf:
            for c, char in enumerate(chars):
                for d in range(2):
                    image = Image.new("1", (105, 105), 1)
                    for i in range(10 + d, 60 + c):
                        image.putpixel((i, 50), 0)
                    data = io.BytesIO()
                    image.save(data, format="PNG")
                    zf.writestr(f"{archive}/{char}/{c:02d}_{d:02d}.png", data.getvalue())
    return raw


def test_prepare_writes_plain_lines_instead_of_tfds_bars(tiny_omniglot, tmp_path, capsys, caplog):
    from tensorflow_datasets.core import utils as tfds_utils

    caplog.set_level("INFO", logger="reptile_tf.data.prepare")
    before = tfds_utils.tqdm
    assert cli.main(["prepare", "omniglot", "--raw", str(tiny_omniglot), "--data-dir", str(tmp_path / "tfds")]) == 0
    err = capsys.readouterr().err
    assert not ESCAPES.search(err), err[-2000:]
    assert "prepare omniglot: Generating background examples: 4 examples |" in err, err[-2000:]
    assert "prepare omniglot: Shuffling omniglot-evaluation: 4/4 examples (100%)" in err, err[-2000:]
    assert "prepare omniglot: building the TFDS dataset" in caplog.text
    assert re.search(r"omniglot prepared in .* \(\d+s\)", caplog.text)
    assert tfds_utils.tqdm is before  # TFDS is left as it was

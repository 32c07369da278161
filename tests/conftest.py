"""Shared fixtures: the offline data mirror, prepared TFDS datasets, loaded Omniglot splits.

The prepared datasets are built once and cached under `<repo>/.cache/tests/` (gitignored):
raw files are fetched from the mirror (`../shared/data`) into `.cache/tests/raw/<dataset>`
with `reptile_tf.data.fetch.fetch`, then built with `reptile-tf prepare` logic into
`.cache/tests/tfds`. Both steps are idempotent, so later sessions reuse them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The package's environment defaults (oneDNN on where TensorFlow leaves it off, one inter-op thread:
# reptile_tf/__init__.py) apply only when it is imported before TensorFlow. A test module that
# imports tensorflow first (isort puts it before reptile_tf) would otherwise run, when collected
# first, on another kernel path than the CLI: on Zen 3, oneDNN off, where the grouped convolution
# has no gradient.
import reptile_tf  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = REPO_ROOT / ".cache" / "tests"
# The conv-path choices of this test session (reptile_tf.autotune), not the user's cache: the
# tests' processes (and their subprocesses) share it, so one shape is timed once per session.
os.environ.setdefault("REPTILE_TF_AUTOTUNE_CACHE", str(TEST_CACHE / f"autotune-{os.getpid()}.json"))
MIRROR_FOLDER = {"omniglot": "omniglot", "mini_imagenet": "miniimagenet"}


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The read-only offline data mirror beside the project (`../shared/data`)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not (path / "omniglot").is_dir() or not (path / "miniimagenet").is_dir():
        pytest.fail(f"the offline data mirror {path} is missing (expected omniglot/ and miniimagenet/ in it); "
                    "the tests need ../shared/data beside the project, as on CI")
    return path


def _raw_dir(dataset: str, shared_data_dir: Path) -> Path:
    """Verified raw files of `dataset`, fetched from the mirror into the test cache (once)."""
    from reptile_tf.data.fetch import fetch

    return fetch(dataset, TEST_CACHE / "raw" / dataset, mirrors=[str(shared_data_dir)], progress=False)


def _prepared(dataset: str, shared_data_dir: Path) -> Path:
    from reptile_tf.data.prepare import prepare

    data_dir = TEST_CACHE / "tfds"
    prepare(dataset, _raw_dir(dataset, shared_data_dir), data_dir)
    return data_dir


@pytest.fixture(scope="session")
def omniglot_raw_dir(shared_data_dir: Path) -> Path:
    return _raw_dir("omniglot", shared_data_dir)


@pytest.fixture(scope="session")
def mini_imagenet_raw_dir(shared_data_dir: Path) -> Path:
    return _raw_dir("mini_imagenet", shared_data_dir)


@pytest.fixture(scope="session")
def omniglot_data_dir(shared_data_dir: Path) -> Path:
    """A TFDS data_dir holding the prepared `omniglot` dataset."""
    return _prepared("omniglot", shared_data_dir)


@pytest.fixture(scope="session")
def mini_imagenet_data_dir(shared_data_dir: Path) -> Path:
    """A TFDS data_dir holding the prepared `mini_imagenet` dataset."""
    return _prepared("mini_imagenet", shared_data_dir)


@pytest.fixture(scope="session")
def omniglot_train_images(omniglot_data_dir: Path):
    """uint8 tf.Tensor [4800, 20, 28, 28, 1]: Reptile-protocol training classes."""
    from reptile_tf.data.episodes import load_split

    return load_split("omniglot", "train", omniglot_data_dir)


@pytest.fixture(scope="session")
def omniglot_test_images(omniglot_data_dir: Path):
    """uint8 tf.Tensor [423, 20, 28, 28, 1]: Reptile-protocol test classes."""
    from reptile_tf.data.episodes import load_split

    return load_split("omniglot", "test", omniglot_data_dir)


# ----------------------------------------------------------------------------- local servers (MLflow)


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port on 127.0.0.1 that is free now."""
    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def stop_process_group():
    """A function stopping a server started with `start_new_session=True`: SIGTERM to its process
    group (the server and its workers), SIGKILL if it has not exited after `timeout` seconds."""
    def stop(process: subprocess.Popen, timeout: float = 30) -> None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return stop

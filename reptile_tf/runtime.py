"""The machine a computation runs on, and how it is set up: one home for these facts.

- CPU facts (`cpu_info`) and the real oneDNN state as TensorFlow reports it (`onednn_enabled`).
- Whether this TensorFlow can differentiate a grouped convolution
  (`grouped_conv_gradient_available`): a capability check, not a list of CPU models. The fast
  conv path has a gradient only on oneDNN and cuDNN; `models.choose_conv_path` falls back to an
  equivalent path elsewhere (oneDNN off by choice, ARM, macOS, other builds).
- Determinism (`deterministic_runtime`) and mixed precision (`precision_policy`).
- `runtime_info()`: all of the above as one JSON-able record for config.json, MLflow and bench
  (`machine_summary` makes it one line for a result file);
  `environment_info` adds the source commit (`git_commit`) and Python: a run's config.json
  `environment`.

Importing this module imports TensorFlow; `reptile_tf/__init__.py` has already chosen the
oneDNN default by then.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import tensorflow as tf

import reptile_tf

# The CPU facts live in reptile_tf.cpu (no TensorFlow: the workflow's projections read them too).
from reptile_tf.cpu import RELEVANT_CPU_FLAGS, cpu_class, cpu_info  # noqa: E402,F401


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (asked of TensorFlow)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - a TF without this private module
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_source() -> str:
    """Who decided the oneDNN state: 'user' (TF_ENABLE_ONEDNN_OPTS set), 'reptile-tf', or 'tensorflow'."""
    if reptile_tf.ONEDNN_SET_BY_USER:
        return "user"
    if reptile_tf.ONEDNN_SET_TOO_LATE:
        return "tensorflow (imported before reptile_tf)"
    return "reptile-tf" if reptile_tf.ONEDNN_VARIABLE in os.environ else "tensorflow"


@functools.cache
def grouped_conv_gradient_available() -> bool:
    """Whether this TensorFlow can differentiate a float32 grouped convolution on the default device.

    Tried once on a tiny input (a few ms): TF's own CPU kernels raise "Gradients for grouped
    convolutions are not supported on CPU"; oneDNN and cuDNN compute it.
    """
    # In a thread of its own: eager and outside any tape or tf.function being traced by the
    # caller (graph contexts and tapes are thread-local).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_try_grouped_conv_gradient).result()


def _try_grouped_conv_gradient() -> bool:
    # Two groups of two channels (one channel per group would be a depthwise conv: another kernel).
    x = tf.ones([1, 4, 4, 4])
    kernel = tf.ones([3, 3, 2, 4])
    try:
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME"))
        grads = tape.gradient(y, [x, kernel])
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
        return False
    return all(g is not None for g in grads)


def runtime_info() -> dict[str, Any]:
    """CPU, oneDNN state and its source, device: what config.json, MLflow and bench record (the conv
    path a model runs is `Model.conv_path`)."""
    gpus = tf.config.list_logical_devices("GPU")
    return {
        "cpu_model": cpu_info()["model"],
        "cpu_flags": cpu_info()["flags"],
        "cpu_class": cpu_class(),
        "onednn": onednn_enabled(),
        "onednn_source": onednn_source(),
        "device": gpus[0].name if gpus else "CPU",
        "tensorflow": tf.__version__,
    }


def onednn_label(state: bool | None) -> str:
    """'on', 'off', or 'n/a' (TensorFlow did not say) for an `onednn_enabled()` value."""
    return {True: "on", False: "off"}.get(state, "n/a")


def machine_summary(info: dict[str, Any] | None = None) -> str:
    """One line naming the machine of a result file: CPU model, CPU class, oneDNN state, device
    (`runtime_info()` by default)."""
    info = runtime_info() if info is None else info
    return f"{info['cpu_model']}, class {info['cpu_class']}, oneDNN {onednn_label(info['onednn'])}, {info['device']}"


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (None outside a git checkout); a
    `-dirty` suffix when tracked files are modified."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment_info(conv_path: str | None = None) -> dict[str, Any]:
    """Where and how a run executes: commit, Python, TensorFlow, device, CPU model and flags,
    the real oneDNN state (`runtime_info`) and the model's conv path. May change on resume."""
    return {"git_commit": git_commit(), "python": sys.version.split()[0], **runtime_info(), "conv_path": conv_path}


def deterministic_runtime(xla: bool = False) -> bool:
    """Same command, same numbers on CPU: deterministic kernels and one inter-op thread.

    Op determinism alone was not enough: two identical MAML runs diverged from iteration 4
    with TF's default inter-op thread pool (measured); with one inter-op thread they agree.
    Intra-op parallelism (inside a matmul/conv) stays on. The thread pool can only be set
    before TensorFlow initialises, so a process that already ran ops keeps its pool.
    Under XLA, op determinism is left off: TF refuses to compile MaxPoolGrad with it
    ("no deterministic XLA implementation"). Returns whether op determinism is on.
    """
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    if xla:
        return False
    tf.config.experimental.enable_op_determinism()
    return True


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def bfloat16_cpu_note() -> str | None:
    """Why bfloat16 does not pay on this CPU (None on a GPU), from what benchmarks/mixed_precision.py
    measured (results/benchmarks/<class>/mixed_precision.md: the avx512 class, AVX512_BF16, 1.00-1.18x
    on Zen 4 and 1.08-1.10x on Zen 5; the amx class, AMX tiles too, 1.10-1.22x)."""
    if tf.config.list_logical_devices("GPU"):
        return None
    bf16 = [flag for flag in cpu_info()["flags"] if flag in BF16_CPU_FLAGS]
    if bf16:
        where = f"results/benchmarks/{cpu_class()}/mixed_precision.md"
        return (f"reptile-tf: --mixed-precision on a CPU with {', '.join(bf16)}: measured at most about 1.2x the "
                f"float32 speed at this project's shapes, not consistently (see {where}): oneDNN's bfloat16 "
                "kernels run the convolutions' forward and input gradient about 2x faster, but the kernel "
                "gradient, batch norm and the element-wise ops gain little or lose. Accuracy is within the seed "
                "spread of float32 at a matched budget (results/fidelity/mixed_precision/README.md). float32 "
                "stays the default on CPUs; bfloat16 is meant for GPUs and TPUs")
    return ("reptile-tf: --mixed-precision on a CPU without bfloat16 instructions (no AVX512_BF16 or AMX): "
            "every bfloat16 op converts to float32 and back in software here, so expect it slower than float32 "
            "(not measured on this CPU class yet; even with AVX512_BF16 it is at most about 1.2x faster: "
            "results/benchmarks/avx512/mixed_precision.md); bfloat16 is meant for GPUs and TPUs")


@functools.cache
def _say_once(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """With `mixed`, compute in bfloat16 (float32 params, losses and updates) inside the block.

    The models take their compute dtype from the global Keras policy; bfloat16 keeps float32's
    exponent range, so no loss scaling is needed (unlike float16).
    """
    if not mixed:
        yield
        return
    note = bfloat16_cpu_note()
    if note:
        _say_once(note)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


if __name__ == "__main__":
    # `python -m reptile_tf.runtime`: this machine's record, as results/*/machine.json files hold it.
    import json
    import time

    from reptile_tf.models import choose_conv_path

    record = dict(runtime_info(), conv_path=choose_conv_path(), date_utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(json.dumps(record, indent=2))

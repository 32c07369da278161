"""Pick the conv-stack formulation by measurement, once per machine and shape (as cuDNN's autotuner).

Every formulation in `models.CONV_PATHS` computes the same function (tests/test_models.py), but
which one is fastest depends on the CPU class, oneDNN's state, the TensorFlow build and the shape:
on a 2-core AVX-512 EPYC the grouped convolution wins, where oneDNN is off it has no gradient at
all. So the first run of a shape times one forward + backward pass of the whole network with every
path this TensorFlow can differentiate, keeps the fastest, and caches the choice on disk, keyed
by CPU model, TensorFlow version, oneDNN state and device; later runs read the cache, so one
machine keeps making the same choice (and the same numbers). Jobs that start together (a
workflow's training jobs, with an empty cache) tune one at a time under a lock beside the cache
file, and a job that waited takes the choice the first one cached: timed separately on a busy
machine, two jobs could pick two paths, whose rounding differs. The path a run used is recorded in
its config.json (`environment.conv_path`) and the timings in the cache file.

`--conv-path NAME` (or $REPTILE_TF_CONV_PATH) forces a path; $REPTILE_TF_AUTOTUNE_CACHE moves the
cache (default `~/.cache/reptile-tf/conv_paths.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf

from reptile_tf import runtime
from reptile_tf.io import write_json_atomic
from reptile_tf.models import (CONV_PATH_ENV, CONV_PATHS, Model, available_conv_paths, broadcast_params,
                               choose_conv_path, get_model)
from reptile_tf.networks import DEFAULT_NETWORK
from reptile_tf.settings import Settings

CACHE_ENV = "REPTILE_TF_AUTOTUNE_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "reptile-tf" / "conv_paths.json"
CACHE_VERSION = 1
WARMUP, REPEATS = 2, 7


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def machine_key() -> str:
    """What decides which kernels run: CPU model, TensorFlow, oneDNN, and the device."""
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    onednn = runtime.onednn_label(runtime.onednn_enabled())
    return f"{runtime.cpu_info()['model']} | TF {tf.__version__} | oneDNN {onednn} | {device}"


def shape_key(arch: str, tasks: int, batch: int, dtype: str, network: str = DEFAULT_NETWORK) -> str:
    # The default family keeps the key caches were written with before `network` existed (a new
    # key would time it again and might pick another path: other rounding than those runs had).
    net = arch if network == DEFAULT_NETWORK else f"{arch}/{network}"
    return f"{net} {tasks}x{batch} {dtype}"


def read_cache(path: Path) -> dict[str, Any]:
    """The cache's choices, or an empty cache when it is missing, unreadable or of another version
    (a cache is only ever a saving: a bad one is measured again, never an error)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"version": CACHE_VERSION, "machines": {}}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("machines"), dict):
        return {"version": CACHE_VERSION, "machines": {}}
    return data


def time_conv_path(arch: str, path: str, num_outputs: int, tasks: int, batch: int,
                   dtype: tf.DType = tf.float32, network: str = DEFAULT_NETWORK) -> float:
    """Median seconds of one forward + backward pass of `tasks` networks on `batch` images each."""
    model = get_model(arch, num_outputs, conv_path=path, network=network)
    params = broadcast_params(model.init(0), tasks)
    x = tf.random.stateless_uniform([tasks, batch, *model.input_shape], seed=[0, 0])
    y = tf.random.stateless_uniform([tasks, batch], seed=[0, 1], maxval=num_outputs, dtype=tf.int32)

    @tf.function
    def step(params: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = tf.reduce_sum(model.loss(model.apply(params, x, compute_dtype=dtype), y))
        return tape.gradient(loss, params)

    for _ in range(1 + WARMUP):  # the first call traces
        tf.nest.map_structure(lambda t: t.numpy(), step(params))
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), step(params))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tuned_conv_path(arch: str, num_outputs: int, tasks: int, batch: int, dtype: tf.DType = tf.float32,
                    requested: str | None = None, network: str = DEFAULT_NETWORK) -> str:
    """The conv path for `tasks` networks of `arch` (family `network`) on `batch` images each:
    `requested`, else $REPTILE_TF_CONV_PATH, else the cached choice of this machine, else the
    fastest one measured now."""
    if requested or os.environ.get(CONV_PATH_ENV):
        return choose_conv_path(requested)
    candidates = available_conv_paths()
    if len(candidates) == 1:
        return candidates[0]
    path, machine, shape = cache_file(), machine_key(), shape_key(arch, tasks, batch, dtype.name, network)
    cached = _cached_path(path, machine, shape, candidates)
    if cached:
        return cached
    with _locked(path):
        cached = _cached_path(path, machine, shape, candidates)  # another job may have tuned it meanwhile
        if cached:
            return cached
        seconds = {name: time_conv_path(arch, name, num_outputs, tasks, batch, dtype, network) for name in candidates}
        best = min(seconds, key=seconds.get)
        print(f"reptile-tf: conv path {best!r} for {shape} (timed once on this machine: "
              + ", ".join(f"{name} {1000 * s:.2f} ms" for name, s in sorted(seconds.items(), key=lambda kv: kv[1]))
              + f"; cached in {path})", file=sys.stderr)
        cache = read_cache(path)
        cache["machines"].setdefault(machine, {})[shape] = {
            "path": best, "ms": {name: round(1000 * s, 3) for name, s in seconds.items()},
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        try:
            write_json_atomic(path, cache)
        except OSError as error:  # a read-only home is no reason to fail a run: it measures again next time
            print(f"reptile-tf: could not cache the conv path in {path} ({error}); set ${CACHE_ENV}", file=sys.stderr)
    return best


def _cached_path(path: Path, machine: str, shape: str, candidates: list[str]) -> str | None:
    entry = read_cache(path)["machines"].get(machine, {}).get(shape)
    return entry["path"] if isinstance(entry, dict) and entry.get("path") in candidates else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`.lock (waits for the job holding it); unlocked when the
    lock file cannot be made (a read-only home): tuning still works, only unserialised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tuned_model(arch: str, num_outputs: int, tasks: int, batch: int, dtype: tf.DType = tf.float32,
                requested: str | None = None, network: str = DEFAULT_NETWORK) -> Model:
    """`models.get_model` with the conv path `tuned_conv_path` picks (a net without convolutions as is)."""
    default = get_model(arch, num_outputs, conv_path=requested, network=network)
    if default.conv_path is None:  # nothing to tune (sine's MLP)
        return default
    path = tuned_conv_path(arch, num_outputs, tasks, batch, dtype, requested, network)
    return default if path == default.conv_path else get_model(arch, num_outputs, conv_path=path, network=network)


def training_model(settings: Settings, mixed_precision: bool = False, conv_path: str | None = None,
                   seeds: int = 1) -> Model:
    """The network a run trains, its conv path tuned for one meta-batch: `meta_batch` tasks of one
    inner minibatch (the whole training set of a task when `inner_batch` is 0, as MAML's), times
    `seeds` when that many runs train together in one call (`train.train_seeds`)."""
    batch = settings.inner_batch or settings.ways * settings.train_shots
    return tuned_model(settings.dataset, settings.num_outputs, settings.meta_batch * seeds, batch,
                       tf.bfloat16 if mixed_precision else tf.float32, conv_path, settings.network)


def evaluation_model(settings: Settings, chunk_size: int, mixed_precision: bool = False,
                     conv_path: str | None = None) -> Model:
    """The network `evaluate` adapts, its conv path tuned for one chunk of tasks and its adaptation batch."""
    batch = settings.eval_inner_batch or settings.ways * settings.shots
    return tuned_model(settings.dataset, settings.num_outputs, chunk_size, batch,
                       tf.bfloat16 if mixed_precision else tf.float32, conv_path, settings.network)


def add_conv_path_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conv-path", choices=("auto", *CONV_PATHS), default="auto",
                        help="formulation of the batched conv stack (all compute the same function): auto = the "
                             "fastest measured on this machine for this shape, timed once and cached in "
                             f"${CACHE_ENV} (default ~/.cache/reptile-tf/conv_paths.json); ${CONV_PATH_ENV} also "
                             "forces one (default: %(default)s)")


def requested_path(flag: str) -> str | None:
    """The --conv-path flag as `tuned_conv_path`'s `requested` (None: measure)."""
    return None if flag == "auto" else flag

"""How `reptile-tf bench` measures: median wall time, the RSS high-water mark, the float32
matmul peak every throughput is compared with, and the machine the numbers come from."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import tensorflow as tf

from reptile_tf import flops, models, runtime

MEMORY_METHOD = ("process RSS high-water mark (Linux VmHWM, reset through /proc/self/clear_refs after "
                 "warm-up, read after the timed repeats); step_rss_mb = that peak minus the RSS just "
                 "before the timed repeats (CPU: no device memory API)")


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(runners: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time (s) of each runner, timed one call of each per round after `warmup` rounds:
    on a machine whose load changes, a change hits every runner alike, so their ratios hold."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM (Linux), else ru_maxrss (never reset: the process-lifetime peak)."""
    value = _status_mb("VmHWM")
    if value is not None:
        return value
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_mb() -> float:
    value = _status_mb("VmRSS")
    return value if value is not None else peak_rss_mb()


def timed_with_memory(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float, float]:
    """(median seconds, peak RSS MB, step RSS MB) of `fn` after warm-up."""
    for _ in range(warmup):
        fn()
    reset_peak_rss()
    before = current_rss_mb()
    seconds = median_seconds(fn, 0, repeats)
    peak = peak_rss_mb()
    return seconds, peak, max(peak - before, 0.0)


def measure_matmul_peak(size: int, repeats: int) -> float:
    """Float32 GFLOP/s of a size x size matmul (median of repeats, after one warm-up)."""
    a = tf.random.stateless_uniform([size, size], seed=[1, 2])
    b = tf.random.stateless_uniform([size, size], seed=[3, 4])
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]), autograph=False)
    seconds = median_seconds(lambda: float(matmul(a, b)), warmup=2, repeats=repeats)
    return flops.matmul_flops(size) / seconds / 1e9


def machine_info() -> dict[str, Any]:
    """The machine and runtime of this benchmark run: CPU model, class and flags, the real oneDNN
    state (asked of TensorFlow) and who chose it, the conv path the models run."""
    facts = runtime.runtime_info()
    onednn = {True: "on", False: "off", None: "unknown"}[facts["onednn"]]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu": facts["cpu_model"], "cpu_class": facts["cpu_class"], "cpu_flags": " ".join(facts["cpu_flags"]),
            "cores": os.cpu_count(), "tf_version": tf.__version__, "python": platform.python_version(),
            "load_average": " ".join(f"{x:.2f}" for x in load),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "onednn": f"{onednn} (set by {facts['onednn_source']})", "conv_path": models.choose_conv_path()}

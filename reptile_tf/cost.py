"""How long training and evaluation take: the one home of "seconds per meta-iteration".

Projections come from measured throughput, `results/benchmarks/<cpu class>/throughput.csv` (written
by `reptile-tf bench`, this machine's CPU class first, `reptile_tf.cpu.cpu_class`; compiled meta-step, XLA off, the paper's 1-shot settings), and from the hand
FLOP count of `reptile_tf.flops` for the workloads the benchmark did not measure:

- training, seconds per meta-iteration: the measured time when the benchmark ran this very
  workload (same algorithm, dataset, ways and FLOP count); otherwise the workload's FLOPs at the
  measured GFLOP/s of the closest measured workload (same algorithm and dataset, else same
  dataset, else any), taking the slowest rate when several are equally close (conservative);
- the official code's sequential inner Adam (Reptile's tasks one after another): the parallel-mode
  time above times its slowdown measured beside the parallel mode in one run
  (`inner_adam_threads.csv` beside throughput.csv, benchmarks/inner_adam_threads.py);
- evaluation, seconds per task and mode: the task's FLOPs (`flops.eval_task_flops`) at the
  GFLOP/s the benchmark's evaluation measurement reached (Reptile Omniglot 5-way, 50 Adam steps,
  non-transductive, chunked as `reptile-tf evaluate`).

When no benchmark file is found, an assumed rate (ASSUMED_GFLOPS_PER_S) is used, and said.
Projections are for the measured machine class (a 2-core CPU) at its idle speed: a machine shared
with other jobs takes longer (the committed paper_cpu runs' rates on a loaded machine:
results/paper_cpu/README.md, against the idle ones in results/benchmarks/).

Imports neither TensorFlow nor numpy: the Snakefile uses it at parse time (workflow/rules/common.smk).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reptile_tf import flops
from reptile_tf.cpu import cpu_class, cpu_info
from reptile_tf.rundir import EVAL_MODES
from reptile_tf.settings import Settings, paper_settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = "benchmarks"  # under a results directory: one folder per CPU class (`reptile-tf bench`)
THROUGHPUT_FILE = "throughput.csv"
# Beside it: Reptile's two inner-Adam modes timed in one run (benchmarks/inner_adam_threads.py).
INNER_ADAM_FILE = "inner_adam_threads.csv"

# Only when no benchmark of any CPU class is on record (a copy of the package without results/):
# an assumed rate, said to be one in the plan statement.
ASSUMED_GFLOPS_PER_S = 50.0
ASSUMED_SOURCE = (f"no benchmark on record: {ASSUMED_GFLOPS_PER_S:.0f} GFLOP/s assumed "
                  "(run `reptile-tf bench` for a measured projection)")
# Where nothing better is known (the sine task: tiny networks, milliseconds per iteration).
SINE_SECONDS_PER_ITERATION = 0.01
SINE_SECONDS_PER_EVAL_TASK = 0.001


@dataclass(frozen=True)
class Throughput:
    """Measured rows (XLA off, finite times) and where they came from."""

    rows: tuple[dict, ...]
    source: str
    # shots -> sequential inner Adam's time / the parallel-mean one's (`read_sequential_slowdown`)
    sequential_slowdown: dict[int, float] = field(default_factory=dict)


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_throughput(path: str | os.PathLike) -> tuple[dict, ...]:
    """The XLA-off rows of a `reptile-tf bench` throughput.csv with a finite time (empty if unreadable)."""
    try:
        with open(path, newline="") as stream:
            raw = list(csv.DictReader(stream))
    except OSError:
        return ()
    rows = []
    for row in raw:
        try:
            entry = {"algorithm": row["algorithm"], "dataset": row["dataset"], "ways": int(row["ways"]),
                     "sec_per_meta_iter": _number(row["sec_per_meta_iter"]),
                     "gflop_per_meta_iter": _number(row["gflop_per_meta_iter"]),
                     "eval_tasks_per_s": _number(row.get("eval_tasks_per_s", ""))}
        except (KeyError, ValueError):
            continue
        if str(row.get("xla", "False")).strip().lower() in ("true", "1") or not entry["sec_per_meta_iter"] > 0:
            continue
        rows.append(entry)
    return tuple(rows)


def read_sequential_slowdown(path: str | os.PathLike) -> dict[int, float]:
    """shots -> the sequential inner Adam's Reptile meta-iteration at its fastest thread count over
    the parallel-mean one at its most threads (the one throughput.csv times), from one run of
    benchmarks/inner_adam_threads.py; empty if unreadable."""
    try:
        with open(path, newline="") as stream:
            raw = list(csv.DictReader(stream))
        rows = [(int(r["shots"]), r["inner_adam_mode"], int(r["threads"]), _number(r["ms_per_meta_iteration"]))
                for r in raw]
    except (OSError, KeyError, ValueError):
        return {}
    slowdown = {}
    for shots in {r[0] for r in rows}:
        sequential = [ms for s, mode, _, ms in rows if s == shots and mode == "sequential" and ms > 0]
        parallel = sorted((threads, ms) for s, mode, threads, ms in rows if s == shots and mode == "parallel_mean" and ms > 0)
        if sequential and parallel:
            slowdown[shots] = min(sequential) / parallel[-1][1]
    return slowdown


def throughput_files(results_dir: str | os.PathLike | None = None) -> list[Path]:
    """Benchmark files in the order they are preferred: this machine's CPU class first, then the
    other classes, under `results_dir` and then under the project's results/."""
    roots = ([Path(results_dir)] if results_dir is not None else []) + [PROJECT_ROOT / "results"]
    files = []
    for root in roots:
        base = root / BENCHMARKS_DIR
        files.append(base / cpu_class() / THROUGHPUT_FILE)
        files += sorted(path for path in base.glob(f"*/{THROUGHPUT_FILE}") if path not in files)
    return files


def load_throughput(results_dir: str | os.PathLike | None = None) -> Throughput:
    """Measured throughput of this CPU class if on record, else of another class, else none
    (`ASSUMED_GFLOPS_PER_S`)."""
    for path in throughput_files(results_dir):
        rows = read_throughput(path)
        if rows:
            return Throughput(rows, _short_path(path), read_sequential_slowdown(path.parent / INNER_ADAM_FILE))
    return Throughput((), ASSUMED_SOURCE)


def _short_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else as is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _benchmark_name(settings: Settings) -> str:
    return "maml_fo" if settings.algorithm == "maml" and settings.first_order else settings.algorithm


def _rate(row: dict) -> float:
    """GFLOP/s of a measured row."""
    return row["gflop_per_meta_iter"] / row["sec_per_meta_iter"]


def seconds_per_iteration(settings: Settings, throughput: Throughput | None = None) -> float:
    """Projected seconds of one meta-iteration of `settings` on the measured machine (XLA off);
    the sequential inner Adam's scaled by its measured slowdown (the nearest shot count's)."""
    if settings.synthetic:
        return SINE_SECONDS_PER_ITERATION
    throughput = throughput or load_throughput()
    seconds = _parallel_seconds_per_iteration(settings, throughput)
    slowdown = throughput.sequential_slowdown
    if settings.inner_adam_mode == "sequential" and settings.inner_optimizer == "adam" and slowdown:
        seconds *= slowdown[min(slowdown, key=lambda shots: (abs(shots - settings.shots), shots))]
    return seconds


def _parallel_seconds_per_iteration(settings: Settings, throughput: Throughput) -> float:
    rows = [r for r in throughput.rows if r["gflop_per_meta_iter"] > 0]
    work = flops.meta_iteration_flops(settings).total / 1e9
    name = _benchmark_name(settings)
    for row in rows:
        same = (row["algorithm"], row["dataset"], row["ways"]) == (name, settings.dataset, settings.ways)
        if same and math.isclose(row["gflop_per_meta_iter"], work, rel_tol=0.01):
            return row["sec_per_meta_iter"]  # this very workload was measured
    for closeness in (lambda r: (r["algorithm"], r["dataset"], r["ways"]) == (name, settings.dataset, settings.ways),
                      lambda r: (r["algorithm"], r["dataset"]) == (name, settings.dataset),
                      lambda r: r["dataset"] == settings.dataset,
                      lambda r: True):
        close = [r for r in rows if closeness(r)]
        if close:
            return work / min(_rate(r) for r in close)
    return work / ASSUMED_GFLOPS_PER_S


def eval_gflops_per_s(throughput: Throughput | None = None) -> float:
    """GFLOP/s of the benchmark's evaluation measurement (Reptile Omniglot 5-way, non-transductive)."""
    rows = (throughput or load_throughput()).rows
    measured = [r["eval_tasks_per_s"] for r in rows
                if (r["algorithm"], r["dataset"], r["ways"]) == ("reptile", "omniglot", 5) and r["eval_tasks_per_s"] > 0]
    if not measured:
        return ASSUMED_GFLOPS_PER_S
    reference = paper_settings("reptile", "omniglot", 5, 1)
    return flops.eval_task_flops(reference, transductive=False).total / 1e9 * min(measured)


def seconds_per_eval_task(settings: Settings, modes: tuple[str, ...] = EVAL_MODES,
                          throughput: Throughput | None = None) -> float:
    """Projected seconds to evaluate one task in every mode of `modes`."""
    if settings.synthetic:
        return SINE_SECONDS_PER_EVAL_TASK * len(modes)
    work = sum(flops.eval_task_flops(settings, transductive=(mode == "transductive")).total for mode in modes)
    return work / 1e9 / eval_gflops_per_s(throughput)


def training_flops(settings: Settings, iterations: int | None = None) -> float:
    """FLOPs of `iterations` (default: all) meta-iterations."""
    if settings.synthetic:
        return 0.0
    count = settings.iterations if iterations is None else iterations
    return flops.meta_iteration_flops(settings).total * count


def evaluation_flops(settings: Settings, tasks: int, modes: tuple[str, ...] = EVAL_MODES) -> float:
    if settings.synthetic:
        return 0.0
    return tasks * sum(flops.eval_task_flops(settings, transductive=(mode == "transductive")).total for mode in modes)


# Start-up of one train or evaluate job (process, TensorFlow import, data loading, tracing), not
# in the per-iteration times. From the quick preset: 57 min measured from a fresh clone
# (results/quick/README.md), of which ~2 min install/fetch/prepare, against 35 min of steps
# projected here for its 36 train and evaluate jobs and theory: ~33 s per job.
JOB_STARTUP_S = 30.0

# Hours of the other long jobs on the same machine class.
# theory: smoke ~2 min (reptile_tf/theory/budgets.py); quick 164 s measured at one thread beside a
# training run (results/theory/README.md: combinations 112 s for 200 iterations); paper: the combination curves projected from a measured
# training step and evaluation with the official commands' settings, 2.08 h at one thread on Zen 5
# beside another run (results/benchmarks/avx512/theory_cost.md), the other parts minutes.
THEORY_HOURS = {"smoke": 2 / 60, "quick": 164 / 3600, "paper": 2.1}
# `reptile-tf bench --quick`: "a few minutes" (its --help); not timed, rounded up.
BENCH_QUICK_HOURS = 0.25


# GPU hours from FLOPs: this project has had no GPU (README "Machines"), so nothing is measured;
# the same assumptions as the benchmark report's GPU projection (reptile_tf.bench): one A100 at
# 5-20% of its float32 peak, the realistic range for these small networks.
A100_FP32_TFLOPS = 19.5
GPU_EFFICIENCY_RANGE = (0.05, 0.20)


def gpu_hours_range(total_flops: float) -> tuple[float, float]:
    """(optimistic, pessimistic) hours of one A100 for `total_flops` (a projection, not a measurement)."""
    low, high = GPU_EFFICIENCY_RANGE
    peak = A100_FP32_TFLOPS * 1e12
    return total_flops / (peak * high) / 3600, total_flops / (peak * low) / 3600


# ---------------------------------------------------------------------------- this machine


def detect_gpus() -> list[str]:
    """NVIDIA GPUs visible to this process, found without importing TensorFlow (names; may be empty).

    Looks at the NVIDIA driver's /proc entries, then `nvidia-smi -L`; honours
    CUDA_VISIBLE_DEVICES set to "" or "-1" (no GPU).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return []
    proc = Path("/proc/driver/nvidia/gpus")
    try:
        found = sorted(entry.name for entry in proc.iterdir())
    except OSError:
        found = []
    if found:
        return [f"NVIDIA GPU {name}" for name in found]
    smi = shutil.which("nvidia-smi")
    if smi:
        import subprocess

        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [line.split(" (UUID")[0].strip() for line in listing.splitlines() if line.startswith("GPU ")]
    return []


def cpu_description() -> str:
    """E.g. "2 cores (AMD EPYC (family 25 model 17 stepping 1))": usable cores and `cpu_info`'s model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return f"{cores} cores ({cpu_info()['model']})"


def format_hours(hours: float) -> str:
    """A duration in hours for people: "25 min", "3.4 h", "310 h (13 days)"."""
    if hours < 1:
        return f"{max(1, round(hours * 60))} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours:,.0f} h ({hours / 24:,.0f} days)"

"""The run of `reptile-tf bench`: every measurement of a plan, in order, failures collected
instead of ending the run -> (throughput rows, profile rows, run info)."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable

import tensorflow as tf

from reptile_tf import flops
from reptile_tf.bench.measure import (MEMORY_METHOD, machine_info, measure_matmul_peak, median_seconds,
                                      timed_with_memory)
from reptile_tf.bench.peers import peer_python, run_learn2learn
from reptile_tf.bench.plan import Case, Plan, case_settings
from reptile_tf.bench.profile import profile_ops
from reptile_tf.bench.workloads import eval_chunk_size, make_eval_runner, make_loop_runner, make_meta_runner
from reptile_tf.errors import UserError


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_case(case: Case, plan: Plan, xla: bool, peak_gflops: float) -> dict[str, Any]:
    """One throughput row (the columns of throughput.csv); loop and eval columns NaN until measured."""
    settings = case_settings(case, plan.tiny)
    runner = make_meta_runner(settings, xla)
    start = time.perf_counter()
    runner()  # first call: tracing (and XLA compilation)
    trace_seconds = time.perf_counter() - start
    seconds, peak_mb, step_mb = timed_with_memory(runner, plan.warmup, plan.repeats)
    work = flops.meta_iteration_flops(settings).total
    return {
        "algorithm": case.algorithm, "dataset": case.dataset, "ways": case.ways, "shots": settings.shots,
        "xla": xla, "meta_batch": settings.meta_batch, "inner_steps": settings.inner_steps,
        "sec_per_meta_iter": seconds, "meta_iter_per_s": 1.0 / seconds, "gflop_per_meta_iter": work / 1e9,
        "gflops_per_s": work / seconds / 1e9, "fraction_of_peak": work / seconds / 1e9 / peak_gflops,
        "peak_gflops_per_s": peak_gflops, "loop_sec_per_meta_iter": math.nan, "speedup_vs_loop": math.nan,
        "eval_tasks_per_s": math.nan, "eval_10k_tasks_min": math.nan, "peak_rss_mb": peak_mb,
        "step_rss_mb": step_mb, "trace_s": trace_seconds, "repeats": plan.repeats,
    }


def measure_eval(case: Case, plan: Plan) -> float:
    """Evaluation tasks per second of `case`, chunked as `reptile-tf evaluate`."""
    settings = case_settings(case, plan.tiny)
    chunk = eval_chunk_size(settings, plan.tiny)
    runner = make_eval_runner(settings, chunk)
    seconds = median_seconds(runner, max(plan.warmup, 1), plan.eval_repeats)
    return chunk / seconds


def _attempt(errors: list[str], label: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is logged and listed in the README instead of ending the run."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any TF/compile failure of one case
        message = f"{label}: {type(error).__name__}: {str(error).strip().splitlines()[-1][:300] if str(error).strip() else ''}"
        log(f"  FAILED {message}")
        errors.append(message)
        return None


def _same_case(row: dict[str, Any], algorithms: tuple[str, ...], case: Case) -> bool:
    return row["algorithm"] in algorithms and (row["dataset"], row["ways"]) == (case.dataset, case.ways)


def run_benchmarks(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Measure everything in `plan` -> (throughput rows, profile rows, run info incl. "errors")."""
    errors: list[str] = []
    log(f"matmul peak: {plan.matmul_size}x{plan.matmul_size} float32, {plan.matmul_repeats} repeats")
    peak = measure_matmul_peak(plan.matmul_size, plan.matmul_repeats)
    log(f"matmul peak {peak:.1f} GFLOP/s")
    rows: list[dict[str, Any]] = []
    for case in plan.cases:
        for xla in (False, True) if case in plan.xla_cases else (False,):
            log(f"{case.label} xla={xla}")
            row = _attempt(errors, f"{case.label} xla={xla}", lambda: measure_case(case, plan, xla, peak))
            if row is not None:
                rows.append(row)
                log(f"  {row['sec_per_meta_iter']:.4f} s/iter, {row['gflops_per_s']:.1f} GFLOP/s, "
                    f"trace {row['trace_s']:.1f} s")
        tf.keras.backend.clear_session()
    for case in plan.loop_cases:
        log(f"{case.label} reference loop")
        settings = case_settings(case, plan.tiny)
        seconds = _attempt(errors, f"{case.label} reference loop", lambda: median_seconds(
            make_loop_runner(settings), max(plan.warmup, 1), plan.repeats))
        if seconds is None:
            continue
        log(f"  loop {seconds:.4f} s/iter")
        for row in rows:
            if _same_case(row, (case.algorithm,), case):
                row["loop_sec_per_meta_iter"] = seconds
                row["speedup_vs_loop"] = seconds / row["sec_per_meta_iter"]
    for case in plan.eval_cases:
        log(f"{case.label} evaluation")
        tasks_per_s = _attempt(errors, f"{case.label} evaluation", lambda: measure_eval(case, plan))
        if tasks_per_s is None:
            continue
        log(f"  {tasks_per_s:.2f} tasks/s")
        # Reptile and FOMAML share the evaluation settings (same inner loop): one measurement.
        same_eval = {"reptile": ("reptile", "fomaml"), "maml": ("maml", "maml_fo")}.get(case.algorithm, (case.algorithm,))
        for row in rows:
            if _same_case(row, same_eval, case):
                row["eval_tasks_per_s"] = tasks_per_s
                row["eval_10k_tasks_min"] = 10_000 / tasks_per_s / 60
    peers = None
    if plan.peers:
        # As many threads as TensorFlow's intra-op pool gets here: the same cores for both sides.
        threads = len(os.sched_getaffinity(0))
        log(f"learn2learn, {threads} threads (peers' environment)")
        peers = _attempt(errors, "learn2learn", lambda: run_learn2learn(
            peer_python(plan.peer_python), threads, plan.warmup, plan.repeats, plan.tiny))
        for name, seconds in (peers or {}).get("seconds", {}).items():
            log(f"  {name}: {seconds:.4f} s")
    profile: list[dict[str, Any]] = []
    for case in plan.profile_cases:
        log(f"{case.label} per-op profile")
        profile += _attempt(errors, f"{case.label} profile", lambda: profile_ops(
            case_settings(case, plan.tiny), max(plan.warmup, 1), max(plan.repeats // 2, 1),
            xla=bool(plan.xla_cases))) or []
    # Peak again at the end: on a machine whose load changes, the higher of the two is the
    # better estimate of what the hardware can do (fractions of peak stay <= 1).
    peak_end = measure_matmul_peak(plan.matmul_size, plan.matmul_repeats)
    log(f"matmul peak at the end {peak_end:.1f} GFLOP/s")
    if peak_end > peak:
        for row in rows:
            row["peak_gflops_per_s"] = peak_end
            row["fraction_of_peak"] = row["gflops_per_s"] / peak_end
    info = machine_info()
    info.update(peak_gflops=max(peak, peak_end), peak_start=peak, peak_end=peak_end, matmul_size=plan.matmul_size, matmul_repeats=plan.matmul_repeats,
                warmup=plan.warmup, repeats=plan.repeats, eval_repeats=plan.eval_repeats, tiny=plan.tiny,
                memory_method=MEMORY_METHOD, peers=peers, errors=errors)
    return rows, profile, info

"""The outputs of `reptile-tf bench`: throughput.csv, profile.csv and the Markdown README.md
(throughput, targets, published implementations, per-op profile, GPU projection). No TensorFlow
here: everything is rendered from the measured rows."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import pandas as pd

from reptile_tf import flops
from reptile_tf.bench.plan import CONFIGS, Case
from reptile_tf.bench.peers import WORKLOADS, peer_label
from reptile_tf.bench.targets import PUBLISHED_TIMES, REFERENCE_PEAK_GFLOPS, Target, evaluate_targets, our_seconds
from reptile_tf.cost import A100_FP32_TFLOPS  # the GPU projection's assumption, shared with the workflow's
from reptile_tf.io import write_text_atomic
from reptile_tf.settings import paper_settings

CSV_COLUMNS = [
    "algorithm", "dataset", "ways", "shots", "xla", "meta_batch", "inner_steps", "sec_per_meta_iter",
    "meta_iter_per_s", "gflop_per_meta_iter", "gflops_per_s", "fraction_of_peak", "peak_gflops_per_s",
    "loop_sec_per_meta_iter", "speedup_vs_loop", "eval_tasks_per_s", "eval_10k_tasks_min",
    "peak_rss_mb", "step_rss_mb", "trace_s", "repeats",
]
PROFILE_COLUMNS = ["dataset", "ways", "tasks", "batch", "op", "ms", "gflop", "gflops_per_s"]
GPU_EFFICIENCIES = (0.5, 0.2, 0.05)  # rows of the GPU projection

# Why XLA-on rows lose on CPU; written under the throughput table.
XLA_ON_CPU_NOTE = (
    "XLA on CPU is slow here: the model's float32 convolution is one grouped `tf.nn.conv2d` (tasks folded "
    "into channels), and XLA's CPU backend compiles grouped convolutions (`feature_group_count`) into slow "
    "code. The CPU fast path is therefore XLA off (the grouped convolution runs on oneDNN's kernels); "
    "`--xla` (`reptile-tf train --xla`, `jit_compile=True`) is meant for GPUs.")

Cell = Callable[[Any], str]  # one record -> the text of its cell in one column


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def markdown_table(records: Iterable[Any], columns: dict[str, Cell]) -> list[str]:
    """The lines of a Markdown table: one row per record, `columns` maps each header to its cell."""
    frame = pd.DataFrame([[cell(record) for cell in columns.values()] for record in records], columns=list(columns))
    # The cells are formatted already: without disable_numparse tabulate would reformat "0.000" as "0".
    return frame.to_markdown(index=False, disable_numparse=True).splitlines()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _key(name: str, fmt: Callable[[Any], str] = str) -> Cell:
    """The cell showing `record[name]` through `fmt`."""
    return lambda record: fmt(record[name])


THROUGHPUT_TABLE: dict[str, Cell] = {
    "algorithm": _key("algorithm"), "dataset": _key("dataset"), "ways": _key("ways"),
    "XLA": _key("xla", lambda on: "on" if on else "off"), "meta-batch": _key("meta_batch"),
    "inner steps": _key("inner_steps"), "s / meta-iter": _key("sec_per_meta_iter", "{:.4f}".format),
    "meta-iter / s": _key("meta_iter_per_s", _fmt), "GFLOP / iter": _key("gflop_per_meta_iter", _fmt),
    "GFLOP/s": _key("gflops_per_s", _fmt), "fraction of peak": _key("fraction_of_peak", "{:.1%}".format),
    "loop s / iter": _key("loop_sec_per_meta_iter", _fmt), "speed-up vs loop": _key("speedup_vs_loop", _fmt),
    "eval tasks / s": _key("eval_tasks_per_s", _fmt), "10k eval tasks (min)": _key("eval_10k_tasks_min", _fmt),
    "peak RSS (MB)": _key("peak_rss_mb", "{:.0f}".format), "step RSS (MB)": _key("step_rss_mb", "{:.0f}".format),
    "trace (s)": _key("trace_s", "{:.1f}".format),
}

PROFILE_TABLE: dict[str, Cell] = {
    "dataset": _key("dataset"), "ways": _key("ways"), "tasks x batch": lambda p: f"{p['tasks']} x {p['batch']}",
    "op": _key("op"), "ms": _key("ms", "{:.2f}".format), "GFLOP": _key("gflop", "{:.3f}".format),
    "GFLOP/s": _key("gflops_per_s", "{:.1f}".format),
}

PRESET_TABLE: dict[str, Cell] = {
    "algorithm": _key("algorithm"), "dataset": _key("dataset"), "ways": _key("ways"), "shots": _key("shots"),
    "iterations": _key("iterations"), "train PFLOP": _key("train_pflop", "{:.3f}".format),
    "eval PFLOP": _key("eval_pflop", "{:.3f}".format),
}


def _as_percent(target: Target) -> bool:
    return target.unit == "" and target.threshold < 1


def _threshold_cell(target: Target) -> str:
    sign = ">=" if target.higher_is_better else "<="
    value = f"{target.threshold:.0%}" if _as_percent(target) else f"{target.threshold:g}{target.unit}"
    return f"{sign} {value}"


def _measured_cell(target: Target) -> str:
    if target.met is None:
        return "—"
    return f"{target.measured:.1%}" if _as_percent(target) else f"{target.measured:.3g}{target.unit}"


TARGET_TABLE: dict[str, Cell] = {
    "target": lambda t: t.name, "threshold": _threshold_cell, "measured": _measured_cell,
    "status": lambda t: t.gap(), "notes": lambda t: t.detail,
}


class Comparison(NamedTuple):
    """One published time beside ours."""

    implementation: str
    workload: str
    theirs: float  # seconds
    ours: float | None  # seconds, None = not measured
    note: str


def comparisons(rows: list[dict[str, Any]], peers: dict[str, Any] | None = None) -> list[Comparison]:
    """The peers timed in this run, then the published times of what cannot run here, each with our
    time of the same workload (the faster XLA mode)."""
    out = []
    if peers:
        label = peer_label(peers)
        for name, seconds in peers["seconds"].items():
            spec = WORKLOADS[name]
            note = " (per task, batched)" if spec.kind == "eval" else ""
            out.append(Comparison(label, spec.description, seconds, our_seconds(rows, spec.case, spec.kind), note))
    for name, workload, seconds, (algorithm, dataset, ways) in PUBLISHED_TIMES:
        if peers and name.startswith("learn2learn"):
            continue  # measured above
        kind = "eval" if algorithm == "eval" else "train"
        case = Case("reptile" if kind == "eval" else algorithm, dataset, ways)
        note = " (per task, batched)" if kind == "eval" else ""
        out.append(Comparison(f"{name}: published (docs/reference.md), not run here", workload, seconds,
                              our_seconds(rows, case, kind), note))
    return out


def _versus(comparison: Comparison) -> str:
    theirs, ours = comparison.theirs, comparison.ours
    if ours is None:
        return "—"
    return f"{theirs / ours:.2f}x faster" if ours < theirs else f"{ours / theirs:.2f}x slower"


COMPARISON_TABLE: dict[str, Cell] = {
    "implementation": lambda c: c.implementation, "workload": lambda c: c.workload,
    "their seconds": lambda c: _fmt(c.theirs), "ours (s)": lambda c: f"{_fmt(c.ours)}{c.note}",
    "ours vs theirs": _versus,
}


def paper_preset_flops() -> list[dict[str, Any]]:
    """Training + evaluation FLOPs of every paper setting (3 algorithms x 6 settings)."""
    out = []
    for algorithm in ("reptile", "fomaml", "maml"):
        for dataset, ways in CONFIGS:
            for shots in (1, 5):
                settings = paper_settings(algorithm, dataset, ways, shots)
                train = flops.meta_iteration_flops(settings).total * settings.iterations
                # Both evaluation modes, on `eval_tasks` tasks.
                evaluate = settings.eval_tasks * (flops.eval_task_flops(settings, True).total
                                                  + flops.eval_task_flops(settings, False).total)
                out.append({"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": shots,
                            "iterations": settings.iterations, "train_pflop": train / 1e15,
                            "eval_pflop": evaluate / 1e15})
    return out


def render_readme(command: str, rows: list[dict[str, Any]], profile: list[dict[str, Any]],
                  info: dict[str, Any]) -> str:
    """The Markdown report: command, machine, throughput, targets, comparisons, GPU projection."""
    peak = info["peak_gflops"]
    lines = [f"`{command}`", "", "# Throughput benchmarks", ""]
    if info.get("tiny"):
        lines += ["**Tiny workloads (test run): the numbers below are not the paper settings.**", ""]
    floor_gflop = flops.meta_iteration_flops(paper_settings("reptile", "omniglot", 5, 1)).matmul / 1e9
    lines += [
        f"Machine: {info['cpu']} (class {info.get('cpu_class', '?')}; flags {info.get('cpu_flags', '?')}), "
        f"{info['cores']} cores, TensorFlow {info['tf_version']}, Python {info['python']}, "
        f"oneDNN {info['onednn']}, conv path {info.get('conv_path', '?')}; {info['date_utc']}; "
        f"load average at the end: {info['load_average']}.",
        "",
        f"Matmul peak measured in this run: **{peak:.1f} GFLOP/s** (float32 {info['matmul_size']}x"
        f"{info['matmul_size']} `tf.matmul`, median of {info['matmul_repeats']}, the higher of the start "
        f"({info.get('peak_start', peak):.1f}) and end ({info.get('peak_end', peak):.1f}) of the run; docs/reference.md: "
        f"{REFERENCE_PEAK_GFLOPS:.0f} GFLOP/s on an idle machine).",
        "",
        f"Method: compiled meta-step (`meta.meta_step` in one `tf.function`, XLA off/on) on a fixed random "
        f"meta-batch at the paper's 1-shot hyperparameters (1-shot is enough: the training cost of Reptile/"
        f"FOMAML does not depend on the test shots); median of {info['repeats']} meta-iterations after "
        f"{info['warmup']} warm-up iterations, tracing/compilation excluded (`trace_s`). GFLOP from "
        f"`reptile_tf/flops.py` (conv/dense/BN multiply-adds x2, backward = 2x forward, MAML second order "
        f"= 3x (forward + backward) per inner step, an approximation). Memory: {info['memory_method']}. "
        "`maml_fo` = MAML with `first_order=True` at the MAML settings.",
        "",
        "## Meta-training throughput",
        "",
        *markdown_table(rows, THROUGHPUT_TABLE),
        "", XLA_ON_CPU_NOTE,
        "", "## Targets (2-core CPU, float32)", "",
        *markdown_table(evaluate_targets(rows, info.get("peers")), TARGET_TABLE),
        "", "## Beside existing implementations", "",
        *markdown_table(comparisons(rows, info.get("peers")), COMPARISON_TABLE),
        "", f"Floor: the Reptile Omniglot 5-way meta-iteration's {floor_gflop:.2f} GFLOP "
            f"(conv + dense) at this run's peak = {floor_gflop / peak:.3f} s.",
    ]
    lines += _profile_section(profile) + _gpu_section(rows)
    if info.get("errors"):
        lines += ["", "## Failed measurements", ""] + [f"- {error}" for error in info["errors"]]
    return "\n".join(lines) + "\n"


def _profile_section(profile: list[dict[str, Any]]) -> list[str]:
    if not profile:
        return []
    return ["", "## Where the time goes (per-op timing of one inner step, all tasks of the meta-batch)", "",
            "Forward + backward of each piece at the training shapes, timed alone (median, XLA off unless "
            "stated). `conv path NAME` is one formulation of `models.CONV_PATHS` (the one marked `(model)` "
            "runs in float32 here): `grouped`, the tasks folded into the channels (`[B, H, W, T*C]`, kept from "
            "the first layer to the last) of one grouped `tf.nn.conv2d` (a gradient only on oneDNN/cuDNN); "
            "`split`, the same layout with one `tf.nn.conv2d` per task; `sliced`, 9 shifted slices + one einsum "
            "(the float64 path); the batch norm is one fused kernel on the folded layout; "
            "`per task (unrolled)` is one `tf.nn.conv2d` per task; `shared kernel` is a single `tf.nn.conv2d` "
            "on all T x B images (what oneDNN reaches on these shapes, not a valid per-task computation).", "",
            *markdown_table(profile, PROFILE_TABLE)]


def _gpu_section(rows: list[dict[str, Any]]) -> list[str]:
    preset = paper_preset_flops()
    total = sum(p["train_pflop"] + p["eval_pflop"] for p in preset)

    def hours(efficiency: float) -> float:
        return total * 1e15 / (A100_FP32_TFLOPS * 1e12 * efficiency) / 3600

    lines = ["", "## GPU projection (a projection from the FLOP count, not a measurement)", "",
             f"Paper preset = 3 algorithms x (Omniglot 5/20-way, Mini-ImageNet 5-way) x (1, 5 shots) = 18 runs at "
             f"the paper's iterations, plus evaluation in both modes on each run's evaluation tasks. Total "
             f"**{total:.1f} PFLOP**. On an A100 (~{A100_FP32_TFLOPS} TFLOP/s float32, no TF32):", "",
             *markdown_table(GPU_EFFICIENCIES, {"assumed efficiency": "{:.0%} of peak".format,
                                                "GPU hours (1 A100)": lambda e: f"{hours(e):.1f}"}),
             "", "These small networks (batch 5-20 per task, 32-64 channels) keep a GPU far from its peak; 5-20% "
             "is the realistic range, 50% an optimistic bound. Per setting (PFLOP):", "",
             *markdown_table(preset, PRESET_TABLE)]
    measured = [r["gflops_per_s"] for r in rows if r.get("gflops_per_s")]
    if measured:
        rate = statistics.median(measured)
        lines += ["", f"For comparison, this CPU at the median measured rate ({rate:.1f} GFLOP/s) would need "
                  f"{total * 1e15 / (rate * 1e9) / 3600:.0f} hours for the whole preset."]
    return lines


def write_outputs(out_dir: Path, command: str, rows: list[dict[str, Any]], profile: list[dict[str, Any]],
                  info: dict[str, Any]) -> None:
    """throughput.csv, profile.csv and README.md into `out_dir`."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "throughput.csv", rows_to_csv(rows, CSV_COLUMNS))
    write_text_atomic(out_dir / "profile.csv", rows_to_csv(profile, PROFILE_COLUMNS))
    write_text_atomic(out_dir / "README.md", render_readme(command, rows, profile, info))

"""How fast could the Reptile Omniglot 5-way meta-iteration be on this machine with TensorFlow's kernels?

Times the whole compiled meta-step (`meta.meta_step` in one `tf.function`, XLA off, the paper's
1-shot settings, a fixed random meta-batch as `reptile-tf bench` uses) with variants of the network
that each remove one cost. Every variant is a `models.Model` with the model's own `init` and a
different `apply` built here (models.py is not changed):

- `model`: the real network (the conv path the model runs here, `models.choose_conv_path`);
- `shared-kernel conv`: every conv one plain `tf.nn.conv2d` on all T x B images with task 0's
  kernel (the same FLOPs; NOT a valid per-task computation: an upper bound on conv speed), on the
  `[T*B, H, W, C]` layout (no fold/unfold transposes), fused batch norm over that layout;
- `no batch norm`: the model's grouped conv stack without its batch norms;
- `shared-kernel conv, no batch norm`: both;
- `FLOP floor`: the meta-iteration's conv + dense FLOPs at the float32 matmul peak measured in
  the same run (no measurement of the network: the bound of any formulation).

The variants and a 2048x2048 matmul are timed interleaved (one call of each per round,
`--repeats` rounds after `--warmup`), so a change of load hits all of them alike; median per
variant. On a shared machine the seconds are not the machine's, so each variant's ratio to the
model is scaled to the idle `reptile-tf bench` run of the same CPU class (`IDLE_RUNS`: our model,
learn2learn and the matmul peak, all measured there together): see `table`. learn2learn is also
timed now when the peers' Python exists (`benchmarks/peers/setup.sh`).
Writes `<out>/floor.csv` and `<out>/floor.md`; `--rescale` rewrites them from the measured
seconds already in `<out>/floor.csv` (after `IDLE_RUNS` changes), measuring nothing.

    .venv/bin/python benchmarks/floor.py [--out results/benchmarks/avx512] [--repeats 15]
    .venv/bin/python benchmarks/floor.py --out results/benchmarks/avx2 --rescale
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import reptile_tf  # noqa: E402,F401  (before TensorFlow: it chooses the oneDNN default)
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from reptile_tf import datasets, flops, models, runtime  # noqa: E402
from reptile_tf.bench import peers  # noqa: E402
from reptile_tf.bench.measure import interleaved_medians, machine_info, measure_matmul_peak  # noqa: E402
from reptile_tf.bench.plan import Case, case_settings  # noqa: E402
from reptile_tf.bench.workloads import make_meta_runner  # noqa: E402
from reptile_tf.io import write_text_atomic  # noqa: E402
from reptile_tf.networks import BLOCKS, CONV_NETS  # noqa: E402
from reptile_tf.settings import Settings  # noqa: E402

CASE = Case("reptile", "omniglot", 5)
PEER_WORKLOAD = "reptile_omniglot_5way"


class IdleRun(NamedTuple):
    """One class's `reptile-tf bench` run, measured with nothing else running: the anchors of
    `table`'s idle scale (our model's meta-iteration, learn2learn's in the same run, the matmul peak)."""
    model_s: float
    learn2learn_s: float
    peak_gflops: float
    source: str


# A floor run is scaled to the bench run of its own class (`--out`'s last part): the classes' step
# times differ 2x, so another class's anchors would misstate the fraction of peak and the ratio.
IDLE_RUNS = {
    "avx512": IdleRun(0.0599, 0.117, 219.1, "results/benchmarks/avx512/README.md (an earlier run, not this one)"),
    "avx2": IdleRun(0.1249, 0.315, 149.5, "results/benchmarks/avx2/README.md (an earlier run, not this one)"),
}
TARGET_SPEEDUP = 4.0
FLOP_FLOOR = "FLOP floor (conv + dense FLOPs at the matmul peak)"
TARGET_PEAK_FRACTION = 0.5


# ----------------------------------------------------------------------------- network variants


def variant_apply(arch: str, shared_conv: bool, batch_norm: bool) -> Callable[..., tf.Tensor]:
    """A float32 `apply` of the conv net `arch` with the conv and/or the batch norm swapped out.

    shared_conv: each conv is one `tf.nn.conv2d` of all T x B images with task 0's kernel
    (`[T*B, H, W, C]` layout); else the model's grouped conv on the folded layout.
    batch_norm: keep the fused batch norm after each conv (else conv -> ReLU).
    """
    input_shape, filters, stride, pool = (datasets.DATASETS[arch].input_shape, CONV_NETS[arch].filters,
                                          CONV_NETS[arch].stride, CONV_NETS[arch].max_pool)
    features = flops.flatten_size(arch)

    def apply(params: models.Params, x: tf.Tensor, compute_dtype=None) -> tf.Tensor:
        tasks, batch = tf.shape(x)[0], tf.shape(x)[1]
        out = tf.reshape(x, tf.concat([[-1], input_shape], axis=0))  # [T*B, H, W, C]
        if not shared_conv:
            out = models.fold_tasks(tf.reshape(out, tf.concat([[tasks, batch], input_shape], axis=0)))
        for block in range(BLOCKS):
            kernel = params[f"conv{block}/kernel"]
            scale, offset = params[f"bn{block}/scale"], params[f"bn{block}/offset"]
            if shared_conv:
                out = tf.nn.conv2d(out, kernel[0], stride, "SAME")
                scale, offset = scale[:1], offset[:1]  # one task's: the layout has C channels
            else:
                out = models.folded_conv3x3(out, kernel, stride)
            if batch_norm:
                out = models.folded_batch_norm(out, scale, offset)
            if pool:
                out = tf.nn.max_pool2d(out, 2, 2, "SAME")
            out = tf.nn.relu(out)
        if not shared_conv:
            out = models.unfold_tasks(out, filters)
        out = tf.reshape(out, tf.stack([tasks, batch, features]))
        logits = models.dense(out, params["dense/kernel"], params["dense/bias"])
        if not batch_norm:  # unused batch norm params still need a (zero) gradient for the optimizer
            unused = tf.add_n([tf.reduce_sum(params[f"bn{b}/{p}"], axis=-1) for b in range(BLOCKS)
                               for p in ("scale", "offset")])
            logits += 0.0 * unused[:, None, None]
        return logits

    return apply


def variants(settings: Settings) -> dict[str, models.Model]:
    """The networks to time: the real model, then the ones that each remove one cost."""
    model = models.get_model(settings.dataset, settings.ways)
    built = {f"model (conv path {model.conv_path})": model}
    for name, shared, norm in (("shared-kernel conv (invalid math: conv upper bound)", True, True),
                               ("no batch norm", False, False),
                               ("shared-kernel conv, no batch norm", True, False)):
        built[name] = dataclasses.replace(model, apply=variant_apply(settings.dataset, shared, norm))
    return built


# ----------------------------------------------------------------------------- timing






MATMUL = "matmul"
MATMUL_SIZE = 2048


def matmul_runner(size: int) -> Callable[[], float]:
    """One float32 size x size matmul (as `measure.measure_matmul_peak` times it)."""
    a = tf.random.stateless_uniform([size, size], seed=[1, 2])
    b = tf.random.stateless_uniform([size, size], seed=[3, 4])
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]), autograph=False)
    return lambda: float(matmul(a, b))


def time_learn2learn(python: Path, warmup: int, repeats: int) -> tuple[float, str]:
    """(seconds, label) of learn2learn's Reptile Omniglot 5-way meta-iteration, run now."""
    command = [str(python), str(peers.LEARN2LEARN_SCRIPT), "--threads", str(os.cpu_count() or 1),
               "--warmup", str(warmup), "--repeats", str(repeats), "--only", PEER_WORKLOAD,
               "--workloads", json.dumps(peers.peer_workloads())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=peers.TIMEOUT_S, check=True)
    result = json.loads(done.stdout)
    return float(result["seconds"][PEER_WORKLOAD]), peers.peer_label(result)


# ----------------------------------------------------------------------------- report


def table(seconds: dict[str, float], work: float, peak: float, peer_s: float | None, idle_run: IdleRun) -> pd.DataFrame:
    """One row per variant, measured here and scaled to the class's idle run.

    A shared machine changes the seconds of everything, and not alike (the 2048 matmul suffers more
    from a competing process than the small ops of the meta-step), so the absolute numbers of a
    busy run are not the machine's. The ratio of each variant to the model, measured interleaved,
    is robust; `idle_seconds` = that ratio x the model's time in `idle_run` (the same run as
    learn2learn's time and the peak there), and the fraction of peak and the speed-up over
    learn2learn follow from it. The FLOP floor is the work at that run's peak.
    """
    model_s = next(iter(seconds.values()))
    rows = []
    for name, s in seconds.items():
        floor = name.startswith("FLOP floor")
        idle = work / (idle_run.peak_gflops * 1e9) if floor else idle_run.model_s * s / model_s
        rows.append({"variant": name, "seconds_this_run": s, "ratio_to_model": None if floor else s / model_s,
                     "fraction_of_peak_this_run": work / s / 1e9 / peak,
                     "idle_seconds": idle, "fraction_of_peak": work / idle / 1e9 / idle_run.peak_gflops,
                     "speedup_vs_learn2learn": idle_run.learn2learn_s / idle,
                     "speedup_vs_learn2learn_this_run": peer_s / s if peer_s else None})
    return pd.DataFrame(rows)


def conclusion(frame: pd.DataFrame) -> list[str]:
    """Three lines: is 4x learn2learn / 50% of peak reachable with TF's CPU kernels at these shapes?"""
    model, conv_bound, no_norm, bound = (frame.iloc[i] for i in range(4))

    def verdict(row: pd.Series) -> str:
        return (f"{row.fraction_of_peak:.0%} of peak ({'meets' if row.fraction_of_peak >= TARGET_PEAK_FRACTION else 'misses'} 50%), "
                f"{row.speedup_vs_learn2learn:.2f}x learn2learn ({'meets' if row.speedup_vs_learn2learn >= TARGET_SPEEDUP else 'misses'} 4x)")

    reachable = bound.fraction_of_peak >= TARGET_PEAK_FRACTION and bound.speedup_vs_learn2learn >= TARGET_SPEEDUP
    return [
        f"- The model: {verdict(model)}. Shared-kernel convs of the same FLOPs (invalid math): {verdict(conv_bound)}; "
        f"no batch norm: {verdict(no_norm)}.",
        f"- Both removed (only the convs' FLOPs + ReLU + dense + the optimizer left, no valid network is cheaper with "
        f"TF's kernels): {verdict(bound)}.",
        "- So with TensorFlow's CPU kernels at these shapes the targets are "
        + ("reachable in principle (the bound meets both)." if reachable else
           "not reachable by any formulation of this network: even the invalid lower-cost bound misses them; "
           "closing the gap needs kernels that run these small convolutions (10 images per task, 64 channels) "
           "near matmul peak, which TF's oneDNN kernels do not."),
    ]


def header(machine: dict[str, Any], command: str, peak: dict[str, float], work: float) -> list[str]:
    """The command, title, machine and peak paragraphs of floor.md (what `--rescale` keeps)."""
    return [
        f"`{command}`", "", "# The floor of the Reptile Omniglot 5-way meta-iteration", "",
        f"Machine: {machine['cpu']} (class {machine['cpu_class']}; flags {machine['cpu_flags']}), "
        f"{machine['cores']} cores, TensorFlow {machine['tf_version']}, oneDNN {machine['onednn']}; "
        f"{machine['date_utc']}; load average at the start {machine['load_average_start']}, at the end "
        f"{machine['load_average']}.", "",
        f"Matmul peak measured in this run: **{peak['peak']:.1f} GFLOP/s** (float32 2048x2048 `tf.matmul`, "
        f"timed in every round beside the variants; alone at the start {peak['start']:.1f}, at the end "
        f"{peak['end']:.1f}). Work: "
        f"{work / 1e9:.2f} GFLOP per meta-iteration (conv + dense, `reptile_tf/flops.py`; batch norm not "
        "counted, so every variant is rated on the same work). The matmul is timed in every round with the "
        "variants, so the fraction of peak is measured under the same load.", ""]


SCALE_PARAGRAPH = "The machine was shared (see the load)"


def to_markdown(frame: pd.DataFrame, head: list[str], idle_run: IdleRun, peer_label: str, notes: list[str]) -> str:
    shown = frame.copy()
    for column in ("seconds_this_run", "idle_seconds"):
        shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    shown["ratio_to_model"] = shown["ratio_to_model"].map(lambda v: f"{v:.3f}" if pd.notna(v) else "-")
    for column in ("fraction_of_peak_this_run", "fraction_of_peak"):
        shown[column] = shown[column].map(lambda v: f"{v:.1%}")
    for column in ("speedup_vs_learn2learn_this_run", "speedup_vs_learn2learn"):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "-")
    return "\n".join([
        *head,
        f"{SCALE_PARAGRAPH}: seconds of a busy run are not the machine's, and the matmul "
        "suffers more from a competing process than the small ops of the meta-step, so `fraction_of_peak_this_run` "
        "flatters every variant. The ratio of each variant to the model (`ratio_to_model`, measured interleaved) "
        f"is what this run contributes: `idle_seconds` = that ratio x our model's {idle_run.model_s} s in "
        f"{idle_run.source}, the run of this CPU class that measured learn2learn at {idle_run.learn2learn_s} s and "
        f"the matmul peak at {idle_run.peak_gflops} GFLOP/s; `fraction_of_peak` and `speedup_vs_learn2learn` "
        f"follow from it. `speedup_vs_learn2learn_this_run`: over {peer_label} (PyTorch's OpenMP threads slow "
        "down far more than TensorFlow on a shared machine, so this ratio flatters us when the machine is busy).", "",
        "Method: the whole compiled meta-step (`meta.meta_step` in one `tf.function`, XLA off) at the "
        "paper's Reptile Omniglot 5-way 1-shot settings on a fixed random meta-batch; each variant is a "
        "`Model` with the same `init` and a different `apply` (see the script's docstring); variants timed "
        "interleaved, median of the rounds after warm-up.", "",
        shown.to_markdown(index=False), "", "## Conclusion", "", *notes, ""])


def idle_run_of(out: Path) -> IdleRun:
    """The idle bench run of the class `out` is for (its last part, as `reptile-tf bench --out`)."""
    try:
        return IDLE_RUNS[out.name]
    except KeyError:
        raise SystemExit(f"floor.py: no idle bench run known for class {out.name!r} (known: {', '.join(IDLE_RUNS)}); "
                         "run `benchmarks/run_full.sh` on that class idle and add its numbers to IDLE_RUNS") from None


def rescale(out: Path) -> str:
    """floor.md/.csv again from the seconds measured in `out`/floor.csv, with the current `IDLE_RUNS`."""
    measured = pd.read_csv(out / "floor.csv")
    old = (out / "floor.md").read_text().splitlines()
    head = old[:old.index(next(line for line in old if line.startswith(SCALE_PARAGRAPH)))]
    seconds = dict(zip(measured["variant"], measured["seconds_this_run"]))
    seconds.pop(FLOP_FLOOR)
    work, peak = flops.meta_iteration_flops(case_settings(CASE)).matmul, float(measured["matmul_peak_gflops"].iloc[0])
    seconds[FLOP_FLOOR] = work / (peak * 1e9)
    peer_s = measured["learn2learn_s_this_run"].iloc[0]
    peer_s = None if pd.isna(peer_s) else float(peer_s)
    peer_label = re.search(r"`speedup_vs_learn2learn_this_run`: over (.*?) \(PyTorch's", "\n".join(old)).group(1)
    return write_outputs(out, seconds, work, peak, peer_s, peer_label, head)


def write_outputs(out: Path, seconds: dict[str, float], work: float, peak: float, peer_s: float | None,
                  peer_label: str, head: list[str]) -> str:
    idle_run = idle_run_of(out)
    frame = table(seconds, work, peak, peer_s, idle_run)
    markdown = to_markdown(frame, head, idle_run, peer_label, conclusion(frame))
    frame["learn2learn_s_this_run"] = peer_s
    frame["matmul_peak_gflops"] = peak
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "floor.csv", frame.to_csv(index=False, float_format="%.5f"))
    write_text_atomic(out / "floor.md", markdown)
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks") / runtime.cpu_class())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--peer-python", type=Path, default=peers.DEFAULT_PEER_PYTHON)
    parser.add_argument("--rescale", action="store_true",
                        help="rewrite <out>/floor.md and floor.csv from the seconds in floor.csv; measure nothing")
    args = parser.parse_args(argv)
    if args.rescale:
        print(rescale(args.out))
        return
    idle_run_of(args.out)  # fail before measuring
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    settings = case_settings(CASE)
    work = flops.meta_iteration_flops(settings).matmul
    peak_start = measure_matmul_peak(2048, args.matmul_repeats)
    runners = {name: make_meta_runner(settings, xla=False, model=model) for name, model in variants(settings).items()}
    runners[MATMUL] = matmul_runner(MATMUL_SIZE)
    seconds = interleaved_medians(runners, args.warmup + 1, args.repeats)  # + 1: the first call traces
    peak_rounds = flops.matmul_flops(MATMUL_SIZE) / seconds.pop(MATMUL) / 1e9
    peer_s, peer_label = None, "learn2learn not run (no peers' Python)"
    if args.peer_python.exists():
        peer_s, peer_label = time_learn2learn(args.peer_python, args.warmup, args.repeats)
        peer_label = f"{peer_s:.3f} s, {peer_label}"
    peak_end = measure_matmul_peak(2048, args.matmul_repeats)
    peak = {"start": peak_start, "end": peak_end, "rounds": peak_rounds, "peak": peak_rounds}
    seconds[FLOP_FLOOR] = work / (peak["peak"] * 1e9)
    machine = dict(machine_info(), load_average_start=load_start)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(write_outputs(args.out, seconds, work, peak["peak"], peer_s, peer_label,
                        header(machine, command, peak, work)))


if __name__ == "__main__":
    main()

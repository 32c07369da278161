"""Several seeds in one compiled call: time per meta-iteration of S seeds trained together
(`meta.meta_step_seeds`, S*T tasks on the folded axis) against the same S seeds one after another
(`meta.meta_step`, T tasks each), at the papers' settings, in one run on this machine.

For every workload: the conv path of each shape is the autotuner's (`autotune.training_model`, as
`reptile-tf train` picks it: T tasks alone, S*T together), timed afresh in this run (a cache of
the run's own, unless --autotune-cache names one), so both shapes are tuned under the same load.
Both variants run on fixed random meta-batches (`bench.workloads.random_batch`, one per seed) with
their states carried over;
rounds interleave the two (one round = the S seeds alone, then the group), median over the rounds
after warm-up, so load changes hit both alike. Also checks, on the alone variant's conv path, that
two iterations of the group leave every seed's state and metrics bit for bit as alone.

Writes `<out>/seed_groups.csv` and `<out>/seed_groups.md` (atomically):

    .venv/bin/python benchmarks/seed_groups.py [--out results/benchmarks/<cpu class>] [--seeds 3]
        [--repeats 10] [--warmup 3] [--workloads reptile:1,reptile:5,fomaml:1,maml:1]
"""

from __future__ import annotations

import argparse
import csv
import io as stdio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import reptile_tf  # noqa: E402,F401  (before TensorFlow: it chooses the oneDNN default)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from reptile_tf import io, meta, runtime  # noqa: E402
from reptile_tf.autotune import CACHE_ENV, training_model  # noqa: E402
from reptile_tf.bench.measure import interleaved_medians, machine_info  # noqa: E402
from reptile_tf.bench.workloads import random_batch  # noqa: E402
from reptile_tf.settings import Settings, paper_settings  # noqa: E402

DEFAULT_WORKLOADS = "reptile:1,reptile:5,fomaml:1,maml:1"
COLUMNS = ("workload", "algorithm", "dataset", "ways", "shots", "meta_batch", "seeds", "conv_path_alone",
           "conv_path_group", "alone_ms", "group_ms", "alone_ms_per_seed", "group_ms_per_seed", "gain",
           "repeats", "bit_identical")


def parse_workloads(text: str) -> list[tuple[str, int]]:
    """"reptile:1,maml:1" -> [("reptile", 1), ("maml", 1)] (Omniglot 5-way, the shots given)."""
    workloads = []
    for item in text.split(","):
        algorithm, _, shots = item.partition(":")
        workloads.append((algorithm.strip(), int(shots)))
    return workloads


def outer_lr(settings: Settings) -> tf.Tensor:
    return tf.constant(settings.outer_lr if settings.outer_optimizer == "adam" else 0.5, tf.float32)


def make_runners(settings: Settings, seeds: list[int], alone_model, group_model):
    """(run the seeds one after another, run them as one group): each a no-argument callable that
    waits for its result, with the states carried over from call to call."""
    batches = [{k: tf.constant(v) for k, v in random_batch(settings, seed).items()} for seed in seeds]
    lr = outer_lr(settings)
    # autograph=False: meta's code branches only on static settings (as bench.workloads does).
    one = tf.function(lambda s, b, lr: meta.meta_step(alone_model, settings, s, b, lr), autograph=False)
    group = tf.function(lambda s, b, lr: meta.meta_step_seeds(group_model, settings, s, b, lr), autograph=False)
    alone_states = [meta.init_meta_state(alone_model, alone_model.init(seed), settings, seed) for seed in seeds]
    group_states = [meta.init_meta_state(group_model, group_model.init(seed), settings, seed) for seed in seeds]
    holder = {"alone": alone_states, "group": group_states}

    def run_alone() -> None:
        out = []
        for state, batch in zip(holder["alone"], batches):
            new_state, metrics = one(state, batch, lr)
            float(metrics["loss"])  # fetching a value waits for the step
            out.append(new_state)
        holder["alone"] = out

    def run_group() -> None:
        holder["group"], metrics = group(holder["group"], batches, lr)
        [float(m["loss"]) for m in metrics]

    return run_alone, run_group


def bit_identical(settings: Settings, seeds: list[int], model, iterations: int = 2) -> bool:
    """Whether `iterations` group steps leave each seed's state and metrics exactly as alone (same model)."""
    batches = [{k: tf.constant(v) for k, v in random_batch(settings, seed).items()} for seed in seeds]
    lr = outer_lr(settings)
    one = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr), autograph=False)
    group = tf.function(lambda s, b, lr: meta.meta_step_seeds(model, settings, s, b, lr), autograph=False)
    alone = [meta.init_meta_state(model, model.init(seed), settings, seed) for seed in seeds]
    together = list(alone)
    for _ in range(iterations):
        stepped = [one(state, batch, lr) for state, batch in zip(alone, batches)]
        alone, alone_metrics = [s for s, _ in stepped], [m for _, m in stepped]
        together, together_metrics = group(together, batches, lr)
    same = all(np.array_equal(a[k].numpy(), b[k].numpy()) for a, b in zip(alone, together) for k in a)
    return same and all(np.array_equal(a[k].numpy(), b[k].numpy())
                        for a, b in zip(alone_metrics, together_metrics) for k in a)


def measure(algorithm: str, shots: int, seeds: list[int], repeats: int, warmup: int) -> dict:
    settings = paper_settings(algorithm, "omniglot", 5, shots)
    alone_model = training_model(settings)
    group_model = training_model(settings, seeds=len(seeds))
    run_alone, run_group = make_runners(settings, seeds, alone_model, group_model)
    # + 1: the first call traces
    seconds = interleaved_medians({"alone": run_alone, "group": run_group}, 1 + warmup, repeats)
    alone_s, group_s = seconds["alone"], seconds["group"]
    return {"workload": f"{algorithm} omniglot 5-way {shots}-shot", "algorithm": algorithm, "dataset": "omniglot",
            "ways": 5, "shots": shots, "meta_batch": settings.meta_batch, "seeds": len(seeds),
            "conv_path_alone": alone_model.conv_path, "conv_path_group": group_model.conv_path,
            "alone_ms": round(1000 * alone_s, 2), "group_ms": round(1000 * group_s, 2),
            "alone_ms_per_seed": round(1000 * alone_s / len(seeds), 2),
            "group_ms_per_seed": round(1000 * group_s / len(seeds), 2), "gain": round(alone_s / group_s, 3),
            "repeats": repeats, "bit_identical": bit_identical(settings, seeds, alone_model)}


def to_csv(rows: list[dict]) -> str:
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict], command: str, machine: dict, load_end: str) -> str:
    header = "| workload | tasks alone / together | conv path alone / together | S alone, one after another (ms) " \
             "| S together (ms) | gain | bit-identical |\n|---|---|---|---|---|---|---|\n"
    lines = "".join(
        f"| {r['workload']} | {r['meta_batch']} / {r['meta_batch'] * r['seeds']} | {r['conv_path_alone']} / "
        f"{r['conv_path_group']} | {r['alone_ms']:.1f} | {r['group_ms']:.1f} | {r['gain']:.2f}x | "
        f"{'yes' if r['bit_identical'] else 'NO'} |\n" for r in rows)
    return (f"`{command}`\n\n# Several seeds in one compiled call\n\n"
            f"Machine: {machine['cpu']} (CPU class {machine['cpu_class']}; flags {machine['cpu_flags']}), "
            f"{machine['cores']} cores, TensorFlow {machine['tf_version']}, oneDNN {machine['onednn']}, "
            f"{machine['intra_op_threads'] or 'default'} intra-op threads; {machine['date_utc']}; load average at the "
            f"start {machine['load_average']}, at the end {load_end}.\n\n"
            f"Method: `benchmarks/seed_groups.py` (its docstring): the compiled meta-step at the papers' settings on "
            f"fixed random meta-batches, {rows[0]['seeds'] if rows else 0} seeds one after another "
            f"(`meta.meta_step`) against the same seeds in one call (`meta.meta_step_seeds`), conv paths autotuned "
            f"for each shape, rounds interleaved, median of {rows[0]['repeats'] if rows else 0} rounds after warm-up; "
            "op determinism on, as `reptile-tf train` runs. gain = time alone / time together (> 1: the group "
            "is faster). Conv paths timed afresh in this run for both shapes (same load). bit-identical: two group "
            "iterations on the alone conv path leave every seed's state and metrics exactly as alone.\n\n"
            + header + lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: results/benchmarks/<cpu class>)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per group (the paper presets train 3)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help="algorithm:shots items, Omniglot 5-way at the papers' settings")
    parser.add_argument("--autotune-cache", type=Path, default=None,
                        help="conv-path cache to use (default: a fresh one, every shape timed in this run)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ[CACHE_ENV] = str(args.autotune_cache or Path(scratch) / "conv_paths.json")
        return run(args, argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    runtime.deterministic_runtime()
    machine = machine_info()
    out = args.out or Path("results/benchmarks") / machine["cpu_class"]
    command = "python benchmarks/seed_groups.py " + " ".join(argv if argv is not None else sys.argv[1:])
    seeds = list(range(args.seeds))
    rows = []
    for algorithm, shots in parse_workloads(args.workloads):
        row = measure(algorithm, shots, seeds, args.repeats, args.warmup)
        print(f"{row['workload']}: alone {row['alone_ms']:.1f} ms, together {row['group_ms']:.1f} ms, "
              f"gain {row['gain']:.2f}x, bit-identical {row['bit_identical']}", file=sys.stderr, flush=True)
        rows.append(row)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    io.write_text_atomic(out / "seed_groups.csv", to_csv(rows))
    io.write_text_atomic(out / "seed_groups.md", to_markdown(rows, command.strip(), machine, load_end))
    print(out / "seed_groups.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

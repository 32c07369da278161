"""Time per Reptile meta-iteration of the two inner-Adam modes at 1 and 2 intra-op threads: the
parallel-mean mode (the meta-batch's tasks in one batched call, Adam moments averaged) against the
official code's sequential mode (tasks one after another, one Adam state carried), at the paper's
Omniglot 5-way settings with the official summed inner loss, as `workflow/config/config.yaml`
trains them.

The intra-op pool is fixed when TensorFlow starts, so each (mode, threads) pair runs in its own
child process (`--child`): the autotuned conv path (`autotune.training_model`, as `reptile-tf
train` picks it), the compiled `meta.meta_step` on a fixed random meta-batch with its state carried
over, the median of `--repeats` timed calls after tracing and `--warmup` calls. Rounds interleave
the pairs (one child of each per round; the reported time is the median over rounds), so a load
change hits every pair alike. Op determinism on, as `reptile-tf train` runs.

Writes `<out>/inner_adam_threads.csv` and `.md` (atomically):

    .venv/bin/python benchmarks/inner_adam_threads.py [--out results/benchmarks/<cpu class>]
        [--shots 1,5] [--threads 1,2] [--rounds 3] [--repeats 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODES = ("parallel_mean", "sequential")
COLUMNS = ("shots", "inner_adam_mode", "threads", "conv_path", "ms_per_meta_iteration", "round_ms", "repeats")


def child(mode: str, shots: int, repeats: int, warmup: int) -> dict:
    """One (mode, threads) measurement in this process (TF_NUM_INTRAOP_THREADS set by the parent)."""
    import reptile_tf  # noqa: F401  (before TensorFlow: it chooses the oneDNN default)
    from reptile_tf import runtime
    from reptile_tf.autotune import training_model
    from reptile_tf.bench.measure import interleaved_medians
    from reptile_tf.bench.workloads import make_meta_runner
    from reptile_tf.settings import paper_settings

    runtime.deterministic_runtime()
    settings = paper_settings("reptile", "omniglot", 5, shots).replace(loss_reduction="sum", inner_adam_mode=mode)
    model = training_model(settings)
    run = make_meta_runner(settings, xla=False, model=model)
    seconds = interleaved_medians({"step": run}, 1 + warmup, repeats)["step"]  # + 1: the first call traces
    return {"ms": 1000 * seconds, "conv_path": model.conv_path}


def measure(mode: str, threads: int, shots: int, repeats: int, warmup: int) -> dict:
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(shots), str(repeats), str(warmup)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def to_markdown(rows: list[dict], command: str, machine: dict, load_end: str, rounds: int) -> str:
    best = {}
    for r in rows:
        key = r["shots"]
        if key not in best or r["ms_per_meta_iteration"] < best[key]["ms_per_meta_iteration"]:
            best[key] = r
    lines = "".join(
        f"| 5-way {r['shots']}-shot | {r['inner_adam_mode']} | {r['threads']} | {r['conv_path']} | "
        f"{r['ms_per_meta_iteration']:.1f} | {r['round_ms']} | "
        f"{r['ms_per_meta_iteration'] / best[r['shots']]['ms_per_meta_iteration']:.2f}x |\n" for r in rows)
    return (f"`{command}`\n\n# Reptile's inner Adam modes at 1 and 2 intra-op threads\n\n"
            f"Machine: {machine['cpu']} (CPU class {machine['cpu_class']}; flags {machine['cpu_flags']}), "
            f"{machine['cores']} cores, TensorFlow {machine['tf_version']}, oneDNN {machine['onednn']}; "
            f"{machine['date_utc']}; load average at the start {machine['load_average']}, at the end {load_end}.\n\n"
            "Method: `benchmarks/inner_adam_threads.py` (its docstring): the compiled Reptile meta-step at the "
            "paper's Omniglot settings with the summed inner loss, one child process per (mode, threads) pair, "
            f"median of {rows[0]['repeats'] if rows else 0} calls after warm-up in each; {rounds} interleaved "
            "rounds, the reported time the median over them (each round's in `round_ms`). "
            "`vs best` = time / the fastest pair of the same shots.\n\n"
            "| setting | inner Adam mode | threads | conv path | ms / meta-iteration | each round (ms) | vs best |\n"
            "|---|---|---|---|---|---|---|\n" + lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        mode, shots, repeats, warmup = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(child(mode, shots, repeats, warmup)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: results/benchmarks/<cpu class>)")
    parser.add_argument("--shots", default="1,5", help="comma-separated shot counts (Omniglot 5-way)")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    import reptile_tf  # noqa: F401
    from reptile_tf import io
    from reptile_tf.bench.measure import machine_info
    from reptile_tf.bench.report import rows_to_csv

    machine = machine_info()
    out = args.out or Path("results/benchmarks") / machine["cpu_class"]
    pairs = [(int(s), m, int(t)) for s in args.shots.split(",") for m in MODES for t in args.threads.split(",")]
    times: dict[tuple, list[float]] = {pair: [] for pair in pairs}
    paths: dict[tuple, str] = {}
    for round_ in range(args.rounds):
        for shots, mode, threads in pairs:
            result = measure(mode, threads, shots, args.repeats, args.warmup)
            times[(shots, mode, threads)].append(result["ms"])
            paths[(shots, mode, threads)] = result["conv_path"]
            print(f"round {round_ + 1}: 5-way {shots}-shot {mode} {threads} thread(s): {result['ms']:.1f} ms",
                  file=sys.stderr, flush=True)
    rows = [{"shots": s, "inner_adam_mode": m, "threads": t, "conv_path": paths[(s, m, t)],
             "ms_per_meta_iteration": round(statistics.median(times[(s, m, t)]), 2),
             "round_ms": " / ".join(f"{x:.1f}" for x in times[(s, m, t)]), "repeats": args.repeats}
            for s, m, t in pairs]
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = ("python benchmarks/inner_adam_threads.py " + " ".join(argv)).strip()
    out.mkdir(parents=True, exist_ok=True)
    io.write_text_atomic(out / "inner_adam_threads.csv", rows_to_csv(rows, list(COLUMNS)))
    io.write_text_atomic(out / "inner_adam_threads.md", to_markdown(rows, command, machine, load_end, args.rounds))
    print(out / "inner_adam_threads.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

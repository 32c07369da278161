"""Does the official sequential inner Adam act through training or through the state evaluation starts from?

Issue 11: Reptile Omniglot 5-way 1-shot seed 0 trained with `--inner-adam-mode sequential` scores
0.2-0.3 points above the same seed trained with `parallel_mean`, paired on the same 10,000 test
tasks. Both evaluate from the end-of-training inner Adam moments (`eval_adam_state: training`, as
the official code), and those moments differ between the modes. This swaps them: each run's
meta-parameters with the other run's inner Adam state, scored on the same first `--tasks` fixed
test tasks in both batch-norm modes, paired with each run's committed per-task accuracies. If the
swap moves a run by the gap, the effect lives in the evaluation's starting state; if not, in the
trained weights.

    nice -n 19 .venv/bin/python benchmarks/adam_state_swap.py \\
        --sequential results/paper_cpu/runs/paper_cpu/omniglot_5w1s/reptile/seed0 \\
        --parallel results/paper_cpu/reptile_parallel_mean_adam/omniglot_5w1s/seed0 \\
        --data-dir data/tfds_nearest --tasks 10000 \\
        --out results/paper_cpu/reptile_5w1s_sequential_adam/adam_state_swap

(The run directories moved there on 2026-12-04, when the paper presets switched Reptile to the
sequential inner Adam; the committed results were made at their earlier paths, the same runs.)
Runtime: about 11 min per hybrid at two threads on an idle Zen 4 (0.066 s a task for both modes).
Writes `<out>/<hybrid>_<mode>.csv` (per-task accuracy) and `<out>/README.md` (the comparison).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from reptile_tf import io, runtime
from reptile_tf.autotune import evaluation_model
from reptile_tf.data.tasks import episode_source
from reptile_tf.evaluate import per_task_csv
from reptile_tf.rundir import EVAL_MODES, eval_csv_name, read_config
from reptile_tf.run_state import load_run_state
from reptile_tf.scoring import default_chunk_size, score_chunks_by_mode
from reptile_tf.settings import settings_from_config

INNER_ADAM = "inner_adam/"


def swap_inner_adam(weights_state: dict, adam_state: dict) -> dict:
    """`weights_state` with every inner-Adam entry (m, v, t) taken from `adam_state`."""
    ours = {k for k in weights_state if k.startswith(INNER_ADAM)}
    theirs = {k for k in adam_state if k.startswith(INNER_ADAM)}
    if not ours or ours != theirs:
        raise SystemExit("both runs must keep an inner Adam state of the same layout (Reptile/FOMAML with Adam)")
    return {k: (adam_state[k] if k in ours else v) for k, v in weights_state.items()}


def committed_per_task(run_dir: Path, mode: str, tasks: int) -> np.ndarray:
    return pd.read_csv(run_dir / eval_csv_name(mode))["accuracy"].to_numpy()[:tasks]


def paired_row(label: str, new: np.ndarray, old: np.ndarray) -> dict:
    delta = new - old
    return {"comparison": label, "new": round(float(new.mean()), 3), "old": round(float(old.mean()), 3),
            "delta": round(float(delta.mean()), 3),
            "delta_ci95": round(float(1.96 * delta.std(ddof=1) / np.sqrt(len(delta))), 3),
            "p_value": float(f"{stats.ttest_rel(new, old).pvalue:.2g}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=Path, required=True, help="run trained with --inner-adam-mode sequential")
    parser.add_argument("--parallel", type=Path, required=True, help="the same seed trained with parallel_mean")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runtime.deterministic_runtime(xla=False)
    runs = {"sequential": args.sequential, "parallel": args.parallel}
    configs = {name: read_config(path) for name, path in runs.items()}
    states = {name: load_run_state(path, configs[name])[0] for name, path in runs.items()}
    hybrids = {"sequential_weights_parallel_adam": ("sequential", "parallel"),
               "parallel_weights_sequential_adam": ("parallel", "sequential")}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for hybrid, (weights_of, adam_of) in hybrids.items():
        settings = settings_from_config(configs[weights_of])
        chunk = min(default_chunk_size(settings), args.tasks)
        model = evaluation_model(settings, chunk, False, None)
        get_chunk, _ = episode_source(settings, "test", args.tasks, args.data_dir, configs[weights_of].get("protocol"))
        files = {mode: args.out / f"{hybrid}_{mode}.csv" for mode in EVAL_MODES}
        if not all(f.exists() for f in files.values()):  # resumable: a finished hybrid is read back
            state = swap_inner_adam(states[weights_of], states[adam_of])
            by_mode = score_chunks_by_mode(model, settings, state, get_chunk, args.tasks, EVAL_MODES, chunk, "lines")
            for mode, per_task in by_mode.items():
                io.write_text_atomic(files[mode], per_task_csv(per_task, settings))  # percent, as evaluate writes
        by_mode = {mode: pd.read_csv(f)["accuracy"].to_numpy() for mode, f in files.items()}
        for mode in EVAL_MODES:
            rows.append({"mode": mode, **paired_row(f"{hybrid} vs {weights_of} as trained", by_mode[mode],
                                                    committed_per_task(runs[weights_of], mode, args.tasks))})
    for mode in EVAL_MODES:
        rows.append({"mode": mode, **paired_row("sequential vs parallel as trained (reference)",
                                                committed_per_task(runs["sequential"], mode, args.tasks),
                                                committed_per_task(runs["parallel"], mode, args.tasks))})
    table = pd.DataFrame(rows).sort_values(["mode", "comparison"]).to_markdown(index=False)
    machine = runtime.runtime_info()
    io.write_text_atomic(args.out / "README.md", f"""# Inner Adam state swap (issue 11)

Command (from the repository root; the exact text is `benchmarks/adam_state_swap.py`'s docstring):

    nice -n 19 .venv/bin/python benchmarks/adam_state_swap.py --sequential {args.sequential} \\
        --parallel {args.parallel} --data-dir {args.data_dir} --tasks {args.tasks} --out {args.out}

Machine: {machine['cpu_model']} ({machine['cpu_class']}), oneDNN {'on' if machine['onednn'] else 'off'}.
Accuracies in %, the first {args.tasks:,} fixed test tasks, paired by task (t-test); "as trained" =
the run's committed `eval_<mode>.csv` (its own weights and inner Adam state).

{table}
""")
    print(table)


if __name__ == "__main__":
    main()

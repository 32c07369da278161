"""How much a test split's choice of characters moves a cell: per-character error rates of one
trained run on its fixed test tasks, and the spread they imply between two random test splits.

A cell compared with a published value measured on a different random split of the same dataset
(Finn's MAML code tests on 423 Omniglot characters of its own shuffle, the Reptile code on 423 of
another) carries, beyond both evaluations' task-sampling noise, the difference between the two
character sets.
This script measures the run's error rate on each test character (the transductive predictions of
`reptile-tf evaluate`: the same fixed tasks, adaptation and batch-norm mode, checked task by task
against the run's `eval_transductive.csv` when that covers the tasks scored here), estimates the
between-character spread of the true error rates (method of moments: the observed variance minus
the binomial part; errors cluster within a task, so this over- rather than under-estimates it),
and projects the standard deviation of the difference between two independent random test splits
of `--ours` and `--theirs` characters: tau * sqrt(1/ours + 1/theirs).

Writes `<out>/character_errors.csv` (one row per test character) and `<out>/character_spread.md`:

    .venv/bin/python benchmarks/character_spread.py RUN_DIR --data-dir data/tfds_nearest \
        --out results/paper_cpu/maml_5w5s_diagnosis [--tasks 10000] [--theirs 423]
"""

from __future__ import annotations

import argparse
import csv
import io as stdio
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import reptile_tf  # noqa: E402,F401  (before TensorFlow: it chooses the oneDNN default)
import numpy as np  # noqa: E402

from reptile_tf import io, meta, runtime  # noqa: E402
from reptile_tf.autotune import evaluation_model  # noqa: E402
from reptile_tf.data.tasks import fixed_eval_episodes  # noqa: E402
from reptile_tf.rundir import read_config, read_eval  # noqa: E402
from reptile_tf.run_state import load_run_state  # noqa: E402
from reptile_tf.scoring import adaptation_adam_state, adapted_query_outputs, task_seeds  # noqa: E402
from reptile_tf.settings import settings_from_config  # noqa: E402

MODE = "transductive"


def per_query_correct(run_dir: Path, data_dir: Path, num_tasks: int, chunk: int) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray, int]:
    """(correct [tasks, queries] bool, query class [tasks, queries], per-task accuracy in %, classes)."""
    config = read_config(run_dir)
    settings = settings_from_config(config)
    runtime.deterministic_runtime(xla=False)
    # The fixed tasks of `reptile-tf evaluate`, kept whole for their class indices.
    images, fixed, _ = fixed_eval_episodes(settings, "test", num_tasks, data_dir, config.get("protocol"))
    num_classes = fixed.num_classes
    model = evaluation_model(settings, chunk, bool(config.get("mixed_precision")), None)
    state, _ = load_run_state(run_dir, config)
    params, opt_state = meta.params_from_state(state), adaptation_adam_state(settings, state)
    correct = []
    for start in range(0, num_tasks, chunk):
        stop = min(start + chunk, num_tasks)
        part = fixed.gather(images, start, stop)
        logits = adapted_query_outputs(model, settings, params, opt_state, task_seeds(start, stop - start),
                                       part["support_x"], part["support_y"], part["query_x"], MODE)
        correct.append(np.argmax(logits.numpy(), axis=-1) == part["query_y"].numpy())
        print(f"{stop}/{num_tasks} tasks", file=sys.stderr, flush=True)
    correct = np.concatenate(correct)
    return correct, fixed.query_class[:num_tasks], 100.0 * correct.mean(axis=1), num_classes


def spread(errors: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Between-character SD of the true error rate (points), method of moments."""
    rate = errors / queries
    mean = errors.sum() / queries.sum()
    observed = float(np.var(rate, ddof=1))
    binomial = float(np.mean(mean * (1 - mean) / queries))
    return {"mean_error": 100 * mean, "observed_sd": 100 * np.sqrt(observed),
            "binomial_sd": 100 * np.sqrt(binomial), "tau": 100 * np.sqrt(max(observed - binomial, 0.0))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--theirs", type=int, default=423,
                        help="characters in the other test split (Finn's MAML code with --test_set: the 423 after "
                             "the first 1,200 of its shuffle, of which it trains on 1,100)")
    args = parser.parse_args()

    correct, query_class, per_task, num_classes = per_query_correct(args.run_dir, args.data_dir, args.tasks,
                                                                    args.chunk_size)
    try:
        listed = read_eval(args.run_dir).get(MODE, {})
    except ValueError:
        listed = {}
    csv_path = args.run_dir / listed.get("per_task_csv", "eval_transductive.csv")
    if listed.get("tasks", 0) >= args.tasks and csv_path.is_file():
        with open(csv_path) as f:
            reference = np.array([float(r["accuracy"]) for r in csv.DictReader(f)])[: args.tasks]
        if not np.allclose(reference, per_task, atol=1e-3):
            raise SystemExit(f"per-task accuracies differ from {csv_path}: not the evaluation's predictions")
        check = f"equal, task by task, to `{csv_path}` ({args.tasks} tasks)"
    else:
        check = "not checked (the run's eval.json does not cover these tasks)"

    queries = np.bincount(query_class.ravel(), minlength=num_classes)
    errors = np.bincount(query_class.ravel(), weights=(~correct).ravel(), minlength=num_classes)
    seen = queries > 0
    stats = spread(errors[seen], queries[seen])
    ours = int(seen.sum())
    sd_diff = stats["tau"] * np.sqrt(1 / ours + 1 / args.theirs)
    machine = runtime.runtime_info()

    rows = stdio.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["test_class", "queries", "errors", "error_rate_percent"])
    for c in np.flatnonzero(seen):
        writer.writerow([int(c), int(queries[c]), int(errors[c]), f"{100 * errors[c] / queries[c]:.4f}"])
    worst = np.argsort(-(errors / np.maximum(queries, 1)))[:10]
    report = f"""# Per-character error rates and the test-split spread they imply

Run: `{args.run_dir}`, {args.tasks:,} fixed test tasks, {MODE} batch norm
(`{' '.join(sys.argv)}`). Machine: {machine['cpu_model']} ({machine['cpu_class']}), oneDNN
{'on' if machine['onednn'] else 'off'}. Per-task accuracies: {check}.

| quantity | value |
| --- | --- |
| accuracy (mean over tasks) | {per_task.mean():.3f}% |
| test characters scored | {ours} (each in {queries[seen].min()}-{queries[seen].max()} queries) |
| mean error rate | {stats['mean_error']:.3f}% |
| observed SD of per-character error rates | {stats['observed_sd']:.3f} points |
| of which binomial (finite queries) | {stats['binomial_sd']:.3f} points |
| between-character SD of true error rates, tau | **{stats['tau']:.3f} points** |
| SD of the difference between random test splits of {ours} and {args.theirs} characters | {sd_diff:.3f} points |
| its 95% half-width (1.96 x SD) | **{1.96 * sd_diff:.3f} points** |
| characters with no error | {int((errors[seen] == 0).sum())} of {ours} |

The ten hardest characters (test class index: errors / queries): {', '.join(
        f"{int(c)}: {int(errors[c])}/{int(queries[c])}" for c in worst)}.

Per character: `character_errors.csv`. Errors cluster within tasks (a confusable pair costs
several queries of one task), so tau over-estimates the spread of independent per-character
rates, and the half-width is an upper estimate of what the choice of test characters alone moves.
"""
    args.out.mkdir(parents=True, exist_ok=True)
    io.write_text_atomic(args.out / "character_errors.csv", rows.getvalue())
    io.write_text_atomic(args.out / "character_spread.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Paper-style tables from run directories, and a cell-by-cell diff of two table CSVs.

`reptile-tf tables --runs runs/<preset> --out results/<preset>` reads every run directory
below `--runs` (config.json + eval.json + metrics.jsonl, docs/interfaces.md) and writes:

- `table1_mini_imagenet.{md,csv}` and `table2_omniglot.{md,csv}` (the Reptile paper's Table 1
  and Table 2 shapes; a table is written only when runs of its dataset exist; the Markdown lists
  the cells of two or more seeds seed by seed below the table), each with
  `<table>_tasks.csv` beside it (per-task scores of every seed, for the paired diff),
- `learning_curves_<dataset>_<ways>w<shots>s.png` (training and validation accuracy per algorithm and seed, `curves.curve_points`).

The CSV has one row per table cell that we measured (method x setting), with our mean, our
95% interval, the published value, the difference, whether the published value is inside
our interval, and whether the two agree once the published ± is counted too
(`published_agrees`, see `agrees_with_published`), and, where a third party reran the official code,
those reruns' count, mean and range and whether our mean lies within it (`rerun_*`,
`official_code_reruns`). `reptile-tf tables diff OLD.csv NEW.csv --tolerance X` compares two such CSVs.

Tables read run directories only, never MLflow (the run directory is the source of truth).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import scipy.stats

from reptile_tf.curves import ALGORITHM_LABELS, plot_learning_curves, setting_label
from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, write_text_atomic
from reptile_tf.rundir import REPORT_MODES, RunRecord, eval_csv_name, find_runs
from reptile_tf.settings import OFFICIAL_CODE_RERUNS, PUBLISHED
from reptile_tf.stats import INTERVAL_METHOD, SeedResult, combine_seeds

# Paper row order: MAML and FOMAML in both batch-norm modes, then Reptile in both.
METHOD_ROWS = tuple((algo, transductive) for algo in ("maml", "fomaml", "reptile") for transductive in (False, True))
# table file stem, title, settings (ways, shots) as the paper's columns
TABLES = {
    "mini_imagenet": ("table1_mini_imagenet", "Table 1: Mini-ImageNet 5-way", ((5, 1), (5, 5))),
    "omniglot": ("table2_omniglot", "Table 2: Omniglot", ((5, 1), (5, 5), (20, 1), (20, 5))),
}
KEY_COLUMNS = ("dataset", "method", "ways", "shots")
# Derived columns (functions of the compared ones and the keys) are shown by `diff` but never compared.
DERIVED_COLUMNS = ("difference", "published_inside", "published_agrees",
                   "rerun_runs", "rerun_mean", "rerun_min", "rerun_max", "rerun_inside")
# Measurements: compared by --tolerance, or (ours_mean) by the paired test with --paired, where
# ours_ci95 (an estimate of the noise itself) is not compared. Every other column is compared
# exactly (text) or within the tolerance (numbers).
MEASURED_COLUMNS = ("ours_mean", "ours_ci95")
# The per-task accuracies behind a table: `<table stem>_tasks.csv` (see `tasks_path`).
TASKS_SUFFIX = "_tasks"
TASK_COLUMNS = ("dataset", "method", "ways", "shots", "seed", "task", "accuracy")
DEFAULT_ALPHA = 0.001
CSV_COLUMNS = (
    "dataset", "method", "algorithm", "transductive", "ways", "shots", "setting",
    "ours_mean", "ours_ci95", "seeds", "tasks_per_seed", "interval_basis",
    "published_mean", "published_pm", "difference", "published_inside", "published_agrees",
    "rerun_runs", "rerun_mean", "rerun_min", "rerun_max", "rerun_inside",
)
# One seed's evaluation in one mode (`per_seed_frame`): what the cells combine.
SEED_COLUMNS = (
    "dataset", "method", "algorithm", "transductive", "ways", "shots", "seed",
    "ours_mean", "ours_ci95", "tasks", "published_mean", "published_pm", "difference", "published_agrees",
)


# ---------------------------------------------------------------------------------------------
# Aggregation


def method_label(algorithm: str, transductive: bool) -> str:
    return ALGORITHM_LABELS.get(algorithm, algorithm) + (" +T" if transductive else "")


def agrees_with_published(difference: float, ours_ci95: float, published_pm: float) -> bool:
    """Whether our estimate and the published one are consistent: |ours - published| within the
    95% half-width of their difference, sqrt(ours_ci95^2 + published_pm^2), reading both ± as 95%
    half-widths of independent estimates (a two-sided z-test at 5%). `published_inside` asks more:
    it counts our noise only, as if the published mean were exact."""
    return abs(difference) <= math.hypot(ours_ci95, published_pm)


def official_code_reruns(algorithm: str, transductive: bool, dataset: str, ways: int, shots: int,
                         ours_mean: float) -> dict[str, Any]:
    """The rerun_* columns of a cell: how many independent reruns of the official code
    (`settings.OFFICIAL_CODE_RERUNS`) it has, their mean and range, and whether our mean lies
    within that range (None without reruns)."""
    reruns = OFFICIAL_CODE_RERUNS.get((algorithm, transductive, dataset, ways, shots), ())
    if not reruns:
        return {"rerun_runs": 0, "rerun_mean": math.nan, "rerun_min": math.nan, "rerun_max": math.nan,
                "rerun_inside": None}
    low, high = min(reruns), max(reruns)
    return {"rerun_runs": len(reruns), "rerun_mean": round(sum(reruns) / len(reruns), 4), "rerun_min": low,
            "rerun_max": high, "rerun_inside": low <= ours_mean <= high}


def protocol_diagnostic(run: RunRecord, result: dict[str, Any]) -> str | None:
    """Why one eval.json entry is not on the tables' test protocol (the run's own evaluation
    settings on the test split, classes unrotated), or None when it is."""
    if result.get("split", "test") != "test":
        return f"tasks of the {result['split']} split (evaluate --split)"
    if result.get("class_rotations"):
        return "rotated test classes (evaluate --rotate-classes)"
    steps, own = result.get("inner_steps"), run.config.get("eval_inner_steps")
    if steps is not None and own is not None and int(steps) != int(own):
        return f"{steps} inner steps instead of the run's {own} (evaluate --inner-steps)"
    return None


def check_test_protocol(runs: Iterable[RunRecord]) -> None:
    """UserError naming the first run whose eval.json is a protocol diagnostic: a table cell
    must not mix protocols silently."""
    for run in runs:
        for mode in REPORT_MODES:
            result = run.evaluation.get(mode)
            why = protocol_diagnostic(run, result) if result else None
            if why:
                raise UserError(f"{run.path}/eval.json ({mode}) was computed on {why}, not the tables' test "
                                f"protocol; re-run `reptile-tf evaluate {run.path}` without that option "
                                "(evaluate a copy of the run for a diagnostic)")


def per_seed_frame(runs: Iterable[RunRecord]) -> "pandas.DataFrame":  # noqa: F821
    """One row per evaluated (run, batch-norm mode): SEED_COLUMNS, each seed's own mean and
    task-sampling interval beside the published value. The table cells combine these rows
    (`aggregate`); the Markdown lists them for cells of two or more seeds."""

    rows = []
    for run in runs:
        if run.dataset not in TABLES:  # e.g. sine regression: no paper table, metric is MSE
            continue
        for mode in REPORT_MODES:
            result = run.evaluation.get(mode)
            if not result:
                continue
            transductive = mode == "transductive"
            published = PUBLISHED.get((run.method, transductive, run.dataset, run.ways, run.shots))
            pub_mean, pub_pm = published if published else (math.nan, math.nan)
            accuracy, ci95 = float(result["accuracy"]), float(result.get("ci95", 0.0))
            rows.append({
                "dataset": run.dataset, "method": method_label(run.method, transductive), "algorithm": run.method,
                "transductive": transductive, "ways": run.ways, "shots": run.shots, "seed": run.seed,
                "ours_mean": accuracy, "ours_ci95": ci95, "tasks": int(result.get("tasks", 0)),
                "published_mean": pub_mean, "published_pm": pub_pm,
                "difference": accuracy - pub_mean if published else math.nan,
                "published_agrees": agrees_with_published(accuracy - pub_mean, ci95, pub_pm) if published else None,
            })
    frame = pd.DataFrame(rows, columns=list(SEED_COLUMNS))
    return frame.sort_values(["dataset", "algorithm", "transductive", "ways", "shots", "seed"]).reset_index(drop=True)


def aggregate(seed_rows: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    """One row per measured (dataset, method, ways, shots) cell, CSV_COLUMNS order, combining the
    seeds of `per_seed_frame(runs)`."""

    rows = []
    for (dataset, algorithm, transductive, ways, shots), group in seed_rows.groupby(
            ["dataset", "algorithm", "transductive", "ways", "shots"], sort=False):
        cell = combine_seeds([SeedResult(r.ours_mean, r.ours_ci95, r.tasks) for r in group.itertuples()])
        pub_mean, pub_pm = group["published_mean"].iloc[0], group["published_pm"].iloc[0]
        published = not math.isnan(pub_mean)
        rows.append({
            "dataset": dataset, "method": method_label(algorithm, transductive), "algorithm": algorithm,
            "transductive": transductive, "ways": ways, "shots": shots, "setting": setting_label(ways, shots),
            "ours_mean": round(cell.mean, 4), "ours_ci95": round(cell.ci95, 4), "seeds": cell.seeds,
            "tasks_per_seed": cell.tasks_per_seed, "interval_basis": cell.basis,
            "published_mean": pub_mean, "published_pm": pub_pm,
            "difference": round(cell.mean - pub_mean, 4) if published else math.nan,
            "published_inside": (abs(pub_mean - cell.mean) <= cell.ci95) if published else None,
            "published_agrees": agrees_with_published(cell.mean - pub_mean, cell.ci95, pub_pm) if published else None,
            **official_code_reruns(algorithm, transductive, dataset, ways, shots, cell.mean),
        })
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    order = {m: i for i, m in enumerate(METHOD_ROWS)}
    if not frame.empty:
        frame["_order"] = [order.get((a, t), 99) for a, t in zip(frame["algorithm"], frame["transductive"])]
        frame = frame.sort_values(["dataset", "_order", "ways", "shots"]).drop(columns="_order")
    return frame.reset_index(drop=True)


def tasks_path(table_csv: str | Path) -> Path:
    """Where the per-task accuracies behind a table CSV live: `<stem>_tasks.csv` beside it."""
    table_csv = Path(table_csv)
    return table_csv.with_name(f"{table_csv.stem}{TASKS_SUFFIX}.csv")


def per_task_frame(runs: Iterable[RunRecord]) -> "pandas.DataFrame":  # noqa: F821
    """Every evaluation task's accuracy (%) behind the table cells: TASK_COLUMNS, one row per
    (cell, seed, task), read from each run's `eval_<mode>.csv`. The evaluation episodes are fixed
    (`seeds.EVAL_SEED`), so task i is the same episode in every run and on every machine:
    what makes the paired test of `diff --paired` possible."""

    frames = []
    for run in runs:
        for mode in REPORT_MODES:
            result = run.evaluation.get(mode)
            if not result:
                continue
            path = run.path / str(result.get("per_task_csv") or eval_csv_name(mode))
            if not path.is_file():
                raise UserError(f"{path} is missing (eval.json names it); re-run `reptile-tf evaluate {run.path}`")
            tasks = pd.read_csv(path)
            if list(tasks.columns) != ["task", "accuracy"]:
                raise UserError(f"{path} has columns {list(tasks.columns)}, expected ['task', 'accuracy']; "
                                f"re-run `reptile-tf evaluate {run.path}`")
            frames.append(tasks.assign(dataset=run.dataset, method=method_label(run.method, mode == "transductive"),
                                       ways=run.ways, shots=run.shots, seed=run.seed))
    if not frames:
        return pd.DataFrame(columns=list(TASK_COLUMNS))
    frame = pd.concat(frames, ignore_index=True)[list(TASK_COLUMNS)]
    return frame.sort_values(list(TASK_COLUMNS[:-1])).reset_index(drop=True)


def _format_cell(row: Any) -> str:
    ours = f"{row.ours_mean:.2f} ± {row.ours_ci95:.2f}"
    if math.isnan(row.published_mean):
        return f"{ours} (paper: —)"
    inside = "yes" if row.published_inside else "no"
    agrees = "yes" if row.published_agrees else "no"
    return (f"{ours} (paper {row.published_mean:g} ± {row.published_pm:g}; Δ {row.difference:+.2f}; "
            f"in? {inside}; agrees? {agrees})")


def render_markdown(frame: "pandas.DataFrame", dataset: str, command: str,  # noqa: F821
                    seed_rows: "pandas.DataFrame | None" = None) -> str:  # noqa: F821
    """The paper's table shape: methods as rows, settings as columns; '—' where not measured.
    With `seed_rows` (`per_seed_frame`), each cell of two or more seeds is listed seed by seed below."""
    _, title, settings = TABLES[dataset]
    sub = frame[frame["dataset"] == dataset]
    lines = [
        f"<!-- Regenerate: {command} -->",
        f"# {title} (ours vs published)",
        "",
        f"Regenerate with `{command}`.",
        "",
        INTERVAL_METHOD,
        "",
        "Cell: ours mean ± 95% half-width (paper mean ± published ±; Δ = ours − paper; in? = paper inside ours; "
        "agrees? = |Δ| within the 95% half-width of the difference, √(ours ± ² + published ± ²), "
        "i.e. the two estimates are consistent by a two-sided z-test at 5%).",
        "",
        "| method | " + " | ".join(setting_label(w, s) for w, s in settings) + " | seeds |",
        "| --- | " + " | ".join("---" for _ in settings) + " | --- |",
    ]
    for algorithm, transductive in METHOD_ROWS:
        cells, seeds = [], set()
        for ways, shots in settings:
            match = sub[(sub["algorithm"] == algorithm) & (sub["transductive"] == transductive)
                        & (sub["ways"] == ways) & (sub["shots"] == shots)]
            published = PUBLISHED.get((algorithm, transductive, dataset, ways, shots))
            if len(match):
                row = next(match.itertuples())
                cells.append(_format_cell(row))
                seeds.add(int(row.seeds))
            elif published:
                cells.append(f"— (paper {published[0]:g} ± {published[1]:g})")
            else:
                cells.append("—")
        seed_text = ", ".join(str(s) for s in sorted(seeds)) or "—"
        lines.append(f"| {method_label(algorithm, transductive)} | " + " | ".join(cells) + f" | {seed_text} |")
    lines += _rerun_lines(sub)
    if seed_rows is not None:
        lines += _seed_lines(seed_rows[seed_rows["dataset"] == dataset])
    return "\n".join(lines) + "\n"


def _rerun_lines(cells: "pandas.DataFrame") -> list[str]:  # noqa: F821
    """Markdown lines setting each cell with reruns of the official code beside those reruns."""
    cells = cells[cells["rerun_runs"] > 0]
    if cells.empty:
        return []
    lines = ["", "## Against reruns of the official code", "",
             "Independent training runs of the official code at the README's commands, by a third party "
             "(`settings.OFFICIAL_CODE_RERUNS`, sources in docs/reference.md): their spread is the official "
             "code's own run-to-run variation, which the published ± does not cover. Inside? = our mean lies "
             "within the reruns' range.", "",
             "| method | setting | ours | official code reruns | their mean | Δ (ours − their mean) | inside? |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in cells.itertuples():
        reruns = OFFICIAL_CODE_RERUNS[(row.algorithm, bool(row.transductive), row.dataset, row.ways, row.shots)]
        values = ", ".join(f"{v:.2f}" for v in reruns)
        inside = "yes" if row.rerun_inside else "no"
        lines.append(f"| {row.method} | {row.setting} | {row.ours_mean:.2f} ± {row.ours_ci95:.2f} | {values} | "
                     f"{row.rerun_mean:.2f} | {row.ours_mean - row.rerun_mean:+.2f} | {inside} |")
    return lines


def _seed_lines(seeds: "pandas.DataFrame") -> list[str]:  # noqa: F821
    """Markdown lines listing each seed of the cells that combine two or more seeds."""
    keys = ["algorithm", "transductive", "ways", "shots"]
    multi = seeds[seeds.groupby(keys)["seed"].transform("size") >= 2]
    if multi.empty:
        return []
    lines = ["", "## Seed by seed", "",
             "The cells above that combine two or more seeds, each seed on its own: its mean over its evaluation "
             "tasks ± the task-sampling half-width (1.96 · se), and whether that one seed agrees with the "
             "published value by the same z-test.", "",
             "| method | setting | seed | ours | Δ | agrees? |", "| --- | --- | --- | --- | --- | --- |"]
    for row in multi.itertuples():
        ours = f"{row.ours_mean:.2f} ± {row.ours_ci95:.2f}"
        if math.isnan(row.published_mean):
            delta, agrees = "—", "—"
        else:
            delta, agrees = f"{row.difference:+.2f}", "yes" if row.published_agrees else "no"
        lines.append(f"| {row.method} | {setting_label(row.ways, row.shots)} | {row.seed} | {ours} | {delta} | {agrees} |")
    return lines


def write_csv_atomic(frame: "pandas.DataFrame", path: Path) -> None:  # noqa: F821
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")


def build_tables(runs_root: str | Path, out_dir: str | Path, command: str | None = None) -> list[Path]:
    """Write tables and learning curves for every dataset with evaluated runs; return written paths."""
    runs = find_runs(runs_root)
    out_dir = Path(out_dir)
    if command is None:
        command = f"reptile-tf tables --runs {runs_root} --out {out_dir}"
    evaluated = [r for r in runs if r.evaluation and r.dataset in TABLES]
    if not evaluated:
        raise UserError(f"no evaluated Omniglot / Mini-ImageNet runs (run directories with eval.json) below {runs_root}; run "
                        "`reptile-tf evaluate RUN` first")
    check_test_protocol(evaluated)
    seed_rows = per_seed_frame(evaluated)
    frame = aggregate(seed_rows)
    written = []
    for dataset, (stem, _, _) in TABLES.items():
        sub = frame[frame["dataset"] == dataset]
        if sub.empty:
            continue
        write_text_atomic(out_dir / f"{stem}.md", render_markdown(frame, dataset, command, seed_rows))
        write_csv_atomic(sub, out_dir / f"{stem}.csv")
        write_csv_atomic(per_task_frame([r for r in evaluated if r.dataset == dataset]), tasks_path(out_dir / f"{stem}.csv"))
        written += [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", tasks_path(out_dir / f"{stem}.csv")]
    for dataset, ways, shots in sorted({(r.dataset, r.ways, r.shots) for r in runs if r.dataset in TABLES}):
        png = out_dir / f"learning_curves_{dataset}_{ways}w{shots}s.png"
        if plot_learning_curves(runs, dataset, ways, shots, png):
            written.append(png)
    return written


# ---------------------------------------------------------------------------------------------
# Diff


PAIRED_TEST_METHOD = (
    "Paired test (`tables diff --paired`): the evaluation episodes are fixed (same tasks, same support and "
    "query images on every run and machine), so each cell is compared task by task. For a cell with "
    "per-task accuracies a_i (reference) and b_i (new), d_i = b_i - a_i over the n tasks (x seeds) both "
    "sides hold; a two-sided paired t-test (scipy.stats.ttest_rel) asks whether mean(d) = 0. The cells "
    "of one comparison are tested together with Holm's step-down correction at family-wise level "
    "alpha (default {alpha:g}): a cell has moved only when its difference is larger than the task "
    "sampling noise explains at that level. A cell whose task lists differ cannot be paired and "
    "counts as moved."
)


@dataclass(frozen=True)
class TableDiff:
    # one row per compared cell that changed at all: KEY_COLUMNS, column, old, new, delta,
    # p_value (paired test only), beyond
    changes: "pandas.DataFrame"  # noqa: F821
    added: list[tuple]
    removed: list[tuple]
    tolerance: float
    alpha: float | None = None  # paired mode: family-wise level of the paired tests

    @property
    def beyond_tolerance(self) -> "pandas.DataFrame":  # noqa: F821
        return self.changes[self.changes["beyond"]]

    @property
    def failed(self) -> bool:
        return bool(self.added or self.removed or len(self.beyond_tolerance))


def read_table_csv(path: str | Path, columns: tuple[str, ...] = KEY_COLUMNS, what: str = "table CSV") -> "pandas.DataFrame":  # noqa: F821

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a {what}; pass the CSV file inside it "
                        "(e.g. results/smoke/table2_omniglot.csv)")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; generate it with `reptile-tf tables`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV ({err}); pass a {what} written by `reptile-tf tables`") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {missing}; pass a {what} written by `reptile-tf tables`")
    if frame.duplicated(list(columns if columns != TASK_COLUMNS else TASK_COLUMNS[:-1])).any():
        raise UserError(f"{path} has duplicate rows for the same {list(columns)}; regenerate it")
    return frame


def read_tasks_csv(table_csv: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """The per-task accuracies beside a table CSV (`tasks_path`), for `diff --paired`."""
    path = tasks_path(table_csv)
    if not path.is_file():
        raise UserError(f"{path} (the per-task accuracies behind {table_csv}) does not exist, so the paired test "
                        "cannot run; regenerate the table with `reptile-tf tables`, or compare with --tolerance")
    return read_table_csv(path, TASK_COLUMNS, "per-task CSV")


def compared_columns(old: "pandas.DataFrame", new: "pandas.DataFrame") -> list[str]:  # noqa: F821
    """Every column of either table except the keys and the derived columns, in order."""
    columns: list[str] = []
    for frame in (old, new):
        columns += [c for c in frame.columns if c not in KEY_COLUMNS and c not in DERIVED_COLUMNS and c not in columns]
    return columns


def _is_number_column(frame: "pandas.DataFrame", column: str) -> bool:  # noqa: F821

    if column not in frame.columns:
        return True  # judged by the other side
    series = frame[column]
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def paired_tests(old_tasks: "pandas.DataFrame", new_tasks: "pandas.DataFrame",  # noqa: F821
                 keys: list[tuple], alpha: float) -> list[dict[str, Any]]:
    """One row per cell in `keys`: old/new mean over the paired tasks, delta, p-value, and whether
    the cell moved under Holm's correction at family-wise level `alpha` (PAIRED_TEST_METHOD)."""

    key_columns = list(KEY_COLUMNS)
    index = ["seed", "task"]
    groups_old = {k: g for k, g in old_tasks.groupby(key_columns)}
    groups_new = {k: g for k, g in new_tasks.groupby(key_columns)}
    rows = []
    for key in keys:
        old_cell, new_cell = groups_old.get(key), groups_new.get(key)
        row = {**dict(zip(key_columns, key)), "column": "ours_mean (paired test)"}
        if old_cell is None or new_cell is None:
            rows.append({**row, "old": math.nan, "new": math.nan, "delta": math.nan, "p_value": 0.0,
                         "note": "per-task accuracies missing on one side"})
            continue
        a = old_cell.set_index(index)["accuracy"].sort_index()
        b = new_cell.set_index(index)["accuracy"].sort_index()
        if not a.index.equals(b.index):
            rows.append({**row, "old": a.mean(), "new": b.mean(), "delta": b.mean() - a.mean(), "p_value": 0.0,
                         "note": f"different evaluation tasks ({len(a)} vs {len(b)}): cannot be paired"})
            continue
        d = (b - a).to_numpy(dtype=float)
        if not d.any():
            p_value = 1.0
        elif d.std() == 0:
            p_value = 0.0  # every task moved by the same amount
        else:
            p_value = float(scipy.stats.ttest_rel(b.to_numpy(dtype=float), a.to_numpy(dtype=float)).pvalue)
        rows.append({**row, "old": float(a.mean()), "new": float(b.mean()), "delta": float(d.mean()),
                     "p_value": p_value, "note": f"{len(d)} paired tasks"})
    # Holm's step-down: the i-th smallest p-value (0-based) is compared with alpha / (m - i).
    order = sorted(range(len(rows)), key=lambda i: rows[i]["p_value"])
    rejecting = True
    for rank, i in enumerate(order):
        rejecting = rejecting and rows[i]["p_value"] <= alpha / (len(rows) - rank)
        rows[i]["beyond"] = rejecting
    return rows


def diff_tables(old: "pandas.DataFrame", new: "pandas.DataFrame", tolerance: float = 0.0,  # noqa: F821
                old_tasks: "pandas.DataFrame | None" = None, new_tasks: "pandas.DataFrame | None" = None,  # noqa: F821
                alpha: float | None = None) -> TableDiff:
    """Compare two table frames column by column, matching rows on KEY_COLUMNS.

    Text columns must be equal. Number columns move when |new - old| > tolerance or when present
    (non-NaN) on one side only; a column present on one side only counts as every cell changed.
    With `alpha` (and the per-task frames), the measurement `ours_mean` is judged by the paired
    test instead (PAIRED_TEST_METHOD) and `ours_ci95` is not compared.
    """

    if tolerance < 0 or math.isnan(tolerance):
        raise UserError(f"--tolerance must be >= 0 (got {tolerance})")
    paired = alpha is not None
    if paired and not 0 < alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1 (got {alpha})")
    keys = list(KEY_COLUMNS)
    old_keys = set(map(tuple, old[keys].itertuples(index=False)))
    new_keys = set(map(tuple, new[keys].itertuples(index=False)))
    merged = old.merge(new, on=keys, how="inner", suffixes=("_old", "_new"))
    rows = []
    for column in compared_columns(old, new):
        if paired and column in MEASURED_COLUMNS:
            continue
        numeric = _is_number_column(old, column) and _is_number_column(new, column)
        for i in range(len(merged)):
            a = merged[f"{column}_old"].iloc[i] if column in old.columns else math.nan
            b = merged[f"{column}_new"].iloc[i] if column in new.columns else math.nan
            key = {k: merged[k].iloc[i] for k in keys}
            if numeric:
                a, b = _as_float(a), _as_float(b)
                if math.isnan(a) and math.isnan(b):
                    continue
                delta = b - a
                if delta == 0:
                    continue
                beyond = math.isnan(delta) or abs(delta) > tolerance
                rows.append({**key, "column": column, "old": a, "new": b, "delta": delta, "p_value": math.nan,
                             "beyond": beyond, "note": ""})
            elif _as_text(a) != _as_text(b):
                rows.append({**key, "column": column, "old": _as_text(a), "new": _as_text(b), "delta": math.nan,
                             "p_value": math.nan, "beyond": True, "note": "text differs"})
    if paired:
        if old_tasks is None or new_tasks is None:
            raise ValueError("the paired test needs the per-task frames of both tables")
        common = sorted(old_keys & new_keys, key=str)
        rows += paired_tests(old_tasks, new_tasks, common, alpha)
    columns = keys + ["column", "old", "new", "delta", "p_value", "beyond", "note"]
    changes = pd.DataFrame(rows, columns=columns)
    return TableDiff(changes, sorted(new_keys - old_keys, key=str), sorted(old_keys - new_keys, key=str),
                     tolerance, alpha)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _show(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_diff(result: TableDiff) -> str:
    """A human-readable report: changed cells ('!' = moved), added/removed rows, a verdict."""

    lines = []
    criterion = (f"paired t-test, Holm family-wise alpha {result.alpha:g}; other numbers within {result.tolerance:g}"
                 if result.alpha is not None else f"tolerance {result.tolerance:g}")
    if len(result.changes):
        shown = result.changes.copy()
        shown.insert(0, "moved", ["!" if b else "" for b in shown["beyond"]])
        shown = shown.drop(columns=["beyond"])
        if result.alpha is None:
            shown = shown.drop(columns=["p_value"])
        else:
            shown["p_value"] = [("" if math.isnan(p) else f"{p:.2g}") for p in shown["p_value"]]
        for column in ("old", "new"):
            shown[column] = [_show(v) for v in shown[column]]
        shown["delta"] = ["" if math.isnan(v) else f"{v:+.4f}" for v in shown["delta"].astype(float)]
        lines.append(f"compared cells ({criterion}; '!' = moved):")
        lines.append(pd.DataFrame(shown).to_string(index=False))
    for label, keys in (("rows only in NEW (appeared)", result.added), ("rows only in OLD (disappeared)", result.removed)):
        if keys:
            lines.append(f"{label}:")
            lines += ["  " + ", ".join(f"{k}={v}" for k, v in zip(KEY_COLUMNS, key)) for key in keys]
    beyond = len(result.beyond_tolerance)
    if result.failed:
        lines.append(f"DIFFERENT: {beyond} cell(s) moved ({criterion}), "
                     f"{len(result.added)} row(s) appeared, {len(result.removed)} disappeared")
    else:
        differ = int((result.changes["delta"] != 0).sum())  # paired rows are listed even when equal
        lines.append(f"SAME ({criterion}; {differ} cell(s) differ within it)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", metavar="DIR",
                        help="directory holding run directories (searched recursively), e.g. runs/quick; "
                             "required unless `diff`")
    parser.add_argument("--out", metavar="DIR",
                        help="output directory for the tables (Markdown, CSV, per-task CSV) and learning curves, "
                             "e.g. results/quick; required unless `diff`")
    sub = parser.add_subparsers(dest="tables_command", metavar="diff", title="compare two tables")
    diff = sub.add_parser(
        "diff", help="compare two table CSVs cell by cell (exit 1 when they differ)",
        formatter_class=parser.formatter_class,
        description="Compare two table CSVs cell by cell; exit 1 when a cell moved or a row appeared or "
                    "disappeared, 0 otherwise. Default: exact same-machine check (--tolerance). With --paired: "
                    "a cell moved only when a paired t-test on its per-task accuracies (`<table>_tasks.csv` "
                    "beside each table) rejects 'no change' at family-wise level --alpha (Holm): the check "
                    "that holds across machines, whose floating-point results legitimately differ.")
    diff.add_argument("old", metavar="OLD.csv", help="reference table CSV, e.g. results/smoke/table2_omniglot.csv")
    diff.add_argument("new", metavar="NEW.csv", help="fresh table CSV (its <table>_tasks.csv beside it for --paired)")
    diff.add_argument("--tolerance", type=float, default=0.0, metavar="X",
                      help="largest allowed absolute change of a number, in the table's units (default 0: exact, "
                           "for two runs on the same machine)")
    diff.add_argument("--paired", action="store_true",
                      help="judge our accuracies by the paired test on per-task accuracies instead of --tolerance "
                           "(default: off)")
    diff.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                      help=f"family-wise level of the paired tests (default {DEFAULT_ALPHA:g})")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "tables_command", None) == "diff":
        old, new = read_table_csv(args.old), read_table_csv(args.new)
        if args.paired:
            result = diff_tables(old, new, args.tolerance, read_tasks_csv(args.old), read_tasks_csv(args.new),
                                 args.alpha)
        else:
            result = diff_tables(old, new, args.tolerance)
        print(format_diff(result))
        return 1 if result.failed else 0
    if not args.runs or not args.out:
        raise UserError("pass both --runs DIR and --out DIR (e.g. `reptile-tf tables --runs runs/quick "
                        "--out results/quick`), or use `reptile-tf tables diff OLD.csv NEW.csv`")
    for path in build_tables(args.runs, args.out):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from reptile_tf.cli import main as cli_main

    sys.exit(cli_main(["tables", *sys.argv[1:]]))

"""Paper-style tables from run directories, and a cell-by-cell diff of two table CSVs.

`reptile-tf tables --runs runs/<preset> --out results/<preset>` reads every run directory
below `--runs` (config.json + eval.json + metrics.jsonl, docs/interfaces.md) and writes:

- `table1_mini_imagenet.{md,csv}` and `table2_omniglot.{md,csv}` (the Reptile paper's Table 1
  and Table 2 shapes; a table is written only when runs of its dataset exist),
- `learning_curves_<dataset>_<ways>w<shots>s.png` (training accuracy per algorithm).

The CSV has one row per table cell that we measured (method x setting), with our mean, our
95% interval, the published value, the difference and whether the published value is inside
our interval. `reptile-tf tables diff OLD.csv NEW.csv --tolerance X` compares two such CSVs.

Tables read run directories only, never MLflow (the run directory is the source of truth).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, read_json, write_text_atomic
from reptile_tf.settings import PUBLISHED

EVAL_MODES = ("non_transductive", "transductive")
ALGORITHM_LABELS = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}
# Paper row order: MAML and FOMAML in both batch-norm modes, then Reptile in both.
METHOD_ROWS = tuple((algo, transductive) for algo in ("maml", "fomaml", "reptile") for transductive in (False, True))
# table file stem, title, settings (ways, shots) as the paper's columns
TABLES = {
    "mini_imagenet": ("table1_mini_imagenet", "Table 1: Mini-ImageNet 5-way", ((5, 1), (5, 5))),
    "omniglot": ("table2_omniglot", "Table 2: Omniglot", ((5, 1), (5, 5), (20, 1), (20, 5))),
}
KEY_COLUMNS = ("dataset", "method", "ways", "shots")
# Derived columns (functions of the compared ones) are shown by `diff` but never compared.
DERIVED_COLUMNS = ("difference", "published_inside")
CSV_COLUMNS = (
    "dataset", "method", "algorithm", "transductive", "ways", "shots", "setting",
    "ours_mean", "ours_ci95", "seeds", "tasks_per_seed", "interval_basis",
    "published_mean", "published_pm", "difference", "published_inside",
)

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)

INTERVAL_METHOD = (
    "Each cell: mean over seeds of each seed's mean test accuracy over its evaluation tasks, ± the "
    "half-width of a 95% interval for that mean. With S >= 2 seeds the half-width is "
    "t(0.975, S-1) * sd(seed means) / sqrt(S): by the law of total variance the spread of the seed "
    "means already contains both the training-seed variation and the task-sampling noise of each "
    "seed's evaluation. It is floored at the task-sampling-only half-width "
    "1.96 * sqrt(sum_s se_s^2) / S (se_s = a seed's ci95 / 1.96, from eval.json), which the true "
    "variance can never be below. With one seed only task sampling is measurable and the "
    "interval is 1.96 * se (column `interval_basis` says which applies). Published values are "
    "the Reptile paper's (REFERENCE.md); `in?` = the published mean lies inside our interval."
)


def t_quantile_975(dof: int) -> float:
    """Student-t 0.975 quantile; normal approximation beyond the table (error < 0.005)."""
    if dof < 1:
        raise ValueError("degrees of freedom must be >= 1")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof


@dataclass(frozen=True)
class SeedResult:
    """One run's final evaluation in one batch-norm mode (accuracy, ci95 in %)."""

    accuracy: float
    ci95: float
    tasks: int


@dataclass(frozen=True)
class Cell:
    mean: float
    ci95: float
    seeds: int
    tasks_per_seed: int
    basis: str  # "seeds+tasks" or "tasks"


def combine_seeds(results: Iterable[SeedResult]) -> Cell:
    """Mean over seeds with a 95% interval over seeds and tasks (see INTERVAL_METHOD)."""
    results = list(results)
    if not results:
        raise ValueError("no results to combine")
    count = len(results)
    means = [r.accuracy for r in results]
    mean = sum(means) / count
    # task-sampling-only standard error of the grand mean: sqrt(sum se_s^2) / S
    task_se = math.sqrt(sum((r.ci95 / 1.96) ** 2 for r in results)) / count
    task_half_width = 1.96 * task_se
    tasks = min(r.tasks for r in results)
    if count == 1:
        return Cell(mean, task_half_width, 1, tasks, "tasks")
    seed_sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (count - 1))
    seed_half_width = t_quantile_975(count - 1) * seed_sd / math.sqrt(count)
    return Cell(mean, max(seed_half_width, task_half_width), count, tasks, "seeds+tasks")


# ---------------------------------------------------------------------------------------------
# Run directories


def _first(mapping: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return default


def flatten_config(config: dict) -> dict:
    """config.json with its settings block (if nested) merged in at the top level.

    Why: the contract fixes the content of config.json (resolved Settings + seed, data digest,
    code version, TF version, device), not whether Settings is nested; accept both.
    """
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for key in ("settings", "config", "hyperparameters"):
        if isinstance(config.get(key), dict):
            for inner_key, value in config[key].items():
                flat.setdefault(inner_key, value)
    for key, value in config.items():
        if isinstance(value, dict) and key not in ("settings", "config", "hyperparameters"):
            flat.setdefault(key, value)
    return flat


@dataclass(frozen=True)
class RunRecord:
    path: Path
    config: dict  # flattened config.json
    evaluation: dict  # eval.json ({} when not evaluated yet)

    @property
    def algorithm(self) -> str:
        return str(self.config["algorithm"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def ways(self) -> int:
        return int(self.config["ways"])

    @property
    def shots(self) -> int:
        return int(self.config["shots"])

    @property
    def seed(self) -> int:
        return int(_first(self.config, "seed", default=0))


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory (config.json required; eval.json optional)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json); pass a directory written by "
                        "`reptile-tf train --out`")
    try:
        config = flatten_config(read_json(config_path))
        evaluation = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else {}
    except json.JSONDecodeError as err:
        raise UserError(f"{run_dir}: unreadable JSON ({err}); re-run the job that writes it") from None
    missing = [k for k in ("algorithm", "dataset", "ways", "shots") if k not in config]
    if missing:
        raise UserError(f"{config_path} lacks {missing}; re-run `reptile-tf train` to rewrite it")
    return RunRecord(run_dir, config, evaluation)


def find_runs(runs_root: str | Path) -> list[RunRecord]:
    """All run directories (those holding config.json) below `runs_root`, in path order."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise UserError(f"runs directory {runs_root} does not exist; pass --runs runs/<preset> after training")
    return [load_run(p.parent) for p in sorted(runs_root.rglob("config.json"))]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl as a list of dicts (missing file -> []); a torn last line is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a job killed mid-write leaves a partial last line
    return rows


# ---------------------------------------------------------------------------------------------
# Aggregation


def setting_label(ways: int, shots: int) -> str:
    return f"{shots}-shot {ways}-way"


def method_label(algorithm: str, transductive: bool) -> str:
    return ALGORITHM_LABELS.get(algorithm, algorithm) + (" +T" if transductive else "")


def aggregate(runs: Iterable[RunRecord]) -> "pandas.DataFrame":  # noqa: F821
    """One row per measured (dataset, method, ways, shots) cell, CSV_COLUMNS order."""
    import pandas as pd

    groups: dict[tuple, list[SeedResult]] = {}
    for run in runs:
        if run.dataset not in TABLES:  # e.g. sine regression: no paper table, metric is MSE
            continue
        for mode in EVAL_MODES:
            result = run.evaluation.get(mode)
            if not result:
                continue
            key = (run.dataset, run.algorithm, mode == "transductive", run.ways, run.shots)
            groups.setdefault(key, []).append(
                SeedResult(float(result["accuracy"]), float(result.get("ci95", 0.0)), int(result.get("tasks", 0))))
    rows = []
    for (dataset, algorithm, transductive, ways, shots), results in groups.items():
        cell = combine_seeds(results)
        published = PUBLISHED.get((algorithm, transductive, dataset, ways, shots))
        pub_mean, pub_pm = published if published else (math.nan, math.nan)
        inside = (abs(pub_mean - cell.mean) <= cell.ci95) if published else None
        rows.append({
            "dataset": dataset, "method": method_label(algorithm, transductive), "algorithm": algorithm,
            "transductive": transductive, "ways": ways, "shots": shots, "setting": setting_label(ways, shots),
            "ours_mean": round(cell.mean, 4), "ours_ci95": round(cell.ci95, 4), "seeds": cell.seeds,
            "tasks_per_seed": cell.tasks_per_seed, "interval_basis": cell.basis,
            "published_mean": pub_mean, "published_pm": pub_pm,
            "difference": round(cell.mean - pub_mean, 4) if published else math.nan,
            "published_inside": inside,
        })
    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    order = {m: i for i, m in enumerate(METHOD_ROWS)}
    if not frame.empty:
        frame["_order"] = [order.get((a, t), 99) for a, t in zip(frame["algorithm"], frame["transductive"])]
        frame = frame.sort_values(["dataset", "_order", "ways", "shots"]).drop(columns="_order")
    return frame.reset_index(drop=True)


def _format_cell(row: Any) -> str:
    ours = f"{row.ours_mean:.2f} ± {row.ours_ci95:.2f}"
    if math.isnan(row.published_mean):
        return f"{ours} (paper: —)"
    flag = "yes" if row.published_inside else "no"
    return f"{ours} (paper {row.published_mean:g} ± {row.published_pm:g}; Δ {row.difference:+.2f}; in? {flag})"


def render_markdown(frame: "pandas.DataFrame", dataset: str, command: str) -> str:  # noqa: F821
    """The paper's table shape: methods as rows, settings as columns; '—' where not measured."""
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
        "Cell: ours mean ± 95% half-width (paper mean ± published ±; Δ = ours − paper; in? = paper inside ours).",
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
    return "\n".join(lines) + "\n"


def write_csv_atomic(frame: "pandas.DataFrame", path: Path) -> None:  # noqa: F821
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window shrinks at the start), for readable noisy curves."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_learning_curves(runs: list[RunRecord], dataset: str, ways: int, shots: int, path: Path) -> bool:
    """Training (and validation, if logged) accuracy vs iteration, one line per algorithm and seed.

    Returns False (and writes nothing) when no run of this setting logged metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = [r for r in runs if (r.dataset, r.ways, r.shots) == (dataset, ways, shots)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {"reptile": "tab:green", "fomaml": "tab:orange", "maml": "tab:blue"}
    drew = False
    for run in sorted(selected, key=lambda r: (r.algorithm, r.seed)):
        metrics = [m for m in read_metrics(run.path) if "iteration" in m]
        train = [(m["iteration"], m["accuracy"]) for m in metrics if m.get("accuracy") is not None]
        if not train:
            continue
        steps, acc = zip(*train)
        label = f"{ALGORITHM_LABELS.get(run.algorithm, run.algorithm)} seed {run.seed}"
        color = colors.get(run.algorithm)
        ax.plot(steps, moving_average([100 * a if a <= 1 else a for a in acc], 10), color=color, lw=1,
                label=f"{label} (train)")
        val = [(m["iteration"], m["val_accuracy"]) for m in metrics if m.get("val_accuracy") is not None]
        if val:
            vsteps, vacc = zip(*val)
            ax.plot(vsteps, [100 * a if a <= 1 else a for a in vacc], color=color, lw=1, ls="--",
                    label=f"{label} (val)")
        drew = True
    if not drew:
        plt.close(fig)
        return False
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%), moving average of 10 logs")
    ax.set_title(f"{dataset} {setting_label(ways, shots)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True


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
    frame = aggregate(evaluated)
    written = []
    for dataset, (stem, _, _) in TABLES.items():
        sub = frame[frame["dataset"] == dataset]
        if sub.empty:
            continue
        write_text_atomic(out_dir / f"{stem}.md", render_markdown(frame, dataset, command))
        write_csv_atomic(sub, out_dir / f"{stem}.csv")
        written += [out_dir / f"{stem}.md", out_dir / f"{stem}.csv"]
    for dataset, ways, shots in sorted({(r.dataset, r.ways, r.shots) for r in runs if r.dataset in TABLES}):
        png = out_dir / f"learning_curves_{dataset}_{ways}w{shots}s.png"
        if plot_learning_curves(runs, dataset, ways, shots, png):
            written.append(png)
    return written


# ---------------------------------------------------------------------------------------------
# Diff


@dataclass(frozen=True)
class TableDiff:
    changes: "pandas.DataFrame"  # one row per compared cell that changed at all  # noqa: F821
    added: list[tuple]
    removed: list[tuple]
    tolerance: float

    @property
    def beyond_tolerance(self) -> "pandas.DataFrame":  # noqa: F821
        return self.changes[self.changes["beyond"]]

    @property
    def failed(self) -> bool:
        return bool(self.added or self.removed or len(self.beyond_tolerance))


def read_table_csv(path: str | Path) -> "pandas.DataFrame":  # noqa: F821
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"table CSV {path} does not exist; generate it with `reptile-tf tables`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV ({err}); pass a table written by `reptile-tf tables`") from None
    missing = [c for c in KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks key column(s) {missing}; pass a table CSV written by `reptile-tf tables`")
    if frame.duplicated(list(KEY_COLUMNS)).any():
        raise UserError(f"{path} has duplicate rows for the same {list(KEY_COLUMNS)}; regenerate it")
    return frame


def compared_columns(old: "pandas.DataFrame", new: "pandas.DataFrame") -> list[str]:  # noqa: F821
    """Numeric measurement columns present in either table (keys and derived columns excluded)."""
    import pandas as pd

    columns = []
    for frame in (old, new):
        for column in frame.columns:
            if column in KEY_COLUMNS or column in DERIVED_COLUMNS or column in columns:
                continue
            series = frame[column]
            if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
                columns.append(column)
    return columns


def diff_tables(old: "pandas.DataFrame", new: "pandas.DataFrame", tolerance: float) -> TableDiff:  # noqa: F821
    """Compare two table frames cell by cell, matching rows on KEY_COLUMNS.

    A cell is beyond tolerance when |new - old| > tolerance, or when it is present (non-NaN)
    on one side only. A column present on one side only counts as every cell changed.
    """
    import pandas as pd

    if tolerance < 0 or math.isnan(tolerance):
        raise UserError(f"--tolerance must be >= 0 (got {tolerance})")
    keys = list(KEY_COLUMNS)
    old_keys = set(map(tuple, old[keys].itertuples(index=False)))
    new_keys = set(map(tuple, new[keys].itertuples(index=False)))
    merged = old.merge(new, on=keys, how="inner", suffixes=("_old", "_new"))
    rows = []
    for column in compared_columns(old, new):
        old_values = merged[f"{column}_old"] if f"{column}_old" in merged else merged.get(column)
        new_values = merged[f"{column}_new"] if f"{column}_new" in merged else merged.get(column)
        if column not in old.columns:
            old_values = pd.Series([math.nan] * len(merged))
        if column not in new.columns:
            new_values = pd.Series([math.nan] * len(merged))
        for i in range(len(merged)):
            a, b = _as_float(old_values.iloc[i]), _as_float(new_values.iloc[i])
            if math.isnan(a) and math.isnan(b):
                continue
            delta = b - a
            if delta == 0:
                continue
            beyond = math.isnan(delta) or abs(delta) > tolerance
            rows.append({**{k: merged[k].iloc[i] for k in keys}, "column": column, "old": a, "new": b,
                         "delta": delta, "beyond": beyond})
    changes = pd.DataFrame(rows, columns=keys + ["column", "old", "new", "delta", "beyond"])
    return TableDiff(changes, sorted(new_keys - old_keys, key=str), sorted(old_keys - new_keys, key=str), tolerance)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def format_diff(result: TableDiff) -> str:
    """A human-readable report: changed cells (marked when beyond tolerance), added/removed rows."""
    lines = []
    if len(result.changes):
        lines.append(f"changed cells (tolerance {result.tolerance:g}; '!' = beyond tolerance):")
        header = ["", *KEY_COLUMNS, "column", "old", "new", "delta"]
        table = [header]
        for row in result.changes.itertuples(index=False):
            table.append(["!" if row.beyond else " ", *(str(getattr(row, k)) for k in KEY_COLUMNS), row.column,
                          f"{row.old:.4f}", f"{row.new:.4f}", f"{row.delta:+.4f}"])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for label, keys in (("rows only in NEW (appeared)", result.added), ("rows only in OLD (disappeared)", result.removed)):
        if keys:
            lines.append(f"{label}:")
            lines += ["  " + ", ".join(f"{k}={v}" for k, v in zip(KEY_COLUMNS, key)) for key in keys]
    beyond = len(result.beyond_tolerance)
    if result.failed:
        lines.append(f"DIFFERENT: {beyond} cell(s) beyond tolerance {result.tolerance:g}, "
                     f"{len(result.added)} row(s) appeared, {len(result.removed)} disappeared")
    else:
        lines.append(f"SAME within tolerance {result.tolerance:g} ({len(result.changes)} cell(s) moved within it)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", help="directory holding run directories, e.g. runs/quick")
    parser.add_argument("--out", help="output directory for tables and figures, e.g. results/quick")
    sub = parser.add_subparsers(dest="tables_command", metavar="diff")
    diff = sub.add_parser("diff", help="compare two table CSVs cell by cell (exit 1 when they differ)",
                          description="Compare two table CSVs cell by cell; exit 1 when a cell moved beyond "
                                      "the tolerance or a row appeared or disappeared, 0 otherwise.")
    diff.add_argument("old", help="reference table CSV")
    diff.add_argument("new", help="fresh table CSV")
    diff.add_argument("--tolerance", type=float, default=0.0,
                      help="largest allowed absolute change of a cell, in the table's units (default 0)")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "tables_command", None) == "diff":
        result = diff_tables(read_table_csv(args.old), read_table_csv(args.new), args.tolerance)
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

"""Tables on synthetic run directories (the run-directory contract), and `tables diff`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from reptile_tf import tables
from reptile_tf.cli import main as cli_main
from reptile_tf.errors import UserError


def make_run(root: Path, algorithm: str, dataset: str, ways: int, shots: int, seed: int,
             accuracies: dict[str, tuple[float, float]] | None, tasks: int = 100, curve: int = 5) -> Path:
    """A run directory as `reptile-tf train` + `evaluate` write it (docs/interfaces.md)."""
    run = root / f"{dataset}_{ways}w{shots}s" / algorithm / f"seed{seed}"
    (run / "checkpoints").mkdir(parents=True)
    # Flat, as train's build_config writes it; no data.train_shape, so tracking logs no dataset
    # inputs (tests/test_tracking.py adds them where it checks them).
    config = {"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": shots,
              "inner_lr": 0.001, "iterations": 10 * curve, "seed": seed,
              "data": {"train_split": "train", "digest": "abc123"},
              "environment": {"git_commit": "deadbeef", "tensorflow": "2.21.0", "device": "CPU"}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": 10 * i, "loss": 1.0 / (i + 1), "accuracy": 0.2 + 0.1 * i, "wall_time": 0.5 * i}) + "\n"
        for i in range(curve)))
    (run / "DONE").write_text("")
    if accuracies is not None:
        (run / "eval.json").write_text(json.dumps({
            mode: {"accuracy": acc, "ci95": ci, "tasks": tasks, "inner_steps": 50, "per_task_csv": f"eval_{mode}.csv"}
            for mode, (acc, ci) in accuracies.items()}))
        for mode, (acc, _) in accuracies.items():
            (run / f"eval_{mode}.csv").write_text("task,accuracy\n" + "".join(f"{i},{acc}\n" for i in range(tasks)))
    return run


def test_tables_values_published_and_inside_flag(tmp_path):
    runs = tmp_path / "runs" / "demo"
    # Reptile 5w1s, 3 seeds: non-transductive around 95.4 (published 95.39), transductive far off.
    for seed, acc in enumerate((95.0, 95.5, 95.8)):
        make_run(runs, "reptile", "omniglot", 5, 1, seed,
                 {"non_transductive": (acc, 0.3), "transductive": (acc - 10, 0.3)})
    make_run(runs, "maml", "omniglot", 5, 1, 0, {"transductive": (98.0, 0.2), "non_transductive": (90.0, 0.4)})
    make_run(runs, "maml", "omniglot", 5, 5, 0, None)  # trained, not evaluated: not in the table
    sine = make_run(runs, "maml", "sine", 1, 10, 0, None)  # no paper table (metric is MSE): ignored
    (sine / "eval.json").write_text(json.dumps({"transductive": {"metric": "mse", "mse": 0.4, "ci95": 0.1, "tasks": 5}}))
    out = tmp_path / "results"
    assert cli_main(["tables", "--runs", str(runs), "--out", str(out)]) == 0

    frame = pd.read_csv(out / "table2_omniglot.csv")
    assert not (out / "table1_mini_imagenet.csv").exists()  # no Mini-ImageNet runs
    row = frame[(frame["method"] == "Reptile") & (frame["shots"] == 1)].iloc[0]
    assert row["ours_mean"] == pytest.approx((95.0 + 95.5 + 95.8) / 3, abs=1e-4)
    assert row["seeds"] == 3
    assert row["published_mean"] == pytest.approx(95.39)
    assert row["published_pm"] == pytest.approx(0.09)
    assert row["difference"] == pytest.approx(row["ours_mean"] - 95.39, abs=1e-3)
    assert bool(row["published_inside"]) is True
    assert bool(row["published_agrees"]) is True
    far = frame[frame["method"] == "Reptile +T"].iloc[0]
    assert bool(far["published_inside"]) is False and bool(far["published_agrees"]) is False
    assert far["published_mean"] == pytest.approx(97.68)
    # MAML non-transductive has no published value: present, published empty
    maml_plain = frame[frame["method"] == "MAML"].iloc[0]
    assert math.isnan(maml_plain["published_mean"]) and maml_plain["ours_mean"] == pytest.approx(90.0)
    assert set(frame["method"]) == {"MAML", "MAML +T", "Reptile", "Reptile +T"}
    assert set(frame["dataset"]) == {"omniglot"}
    assert len(frame[frame["shots"] == 5]) == 0

    markdown = (out / "table2_omniglot.md").read_text()
    assert markdown.splitlines()[0].startswith(f"<!-- Regenerate: reptile-tf tables --runs {runs}")
    assert "95.39" in markdown and "t(0.975, S-1)" in markdown
    # rows in the paper's order, all six methods, every Table 2 column
    table, rest = markdown.split("## Against reruns of the official code")
    reruns, seed_section = rest.split("## Seed by seed")
    assert [line.split("|")[1].strip() for line in reruns.splitlines() if line.startswith("| R")] == [
        "Reptile", "Reptile +T"]  # the cells with reruns, after the table, before the seeds
    methods = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]
    assert methods == ["MAML", "MAML +T", "FOMAML", "FOMAML +T", "Reptile", "Reptile +T"]
    # the 3-seed Reptile cells seed by seed (MAML has one seed: not listed); 95.0 is 0.39 below
    # 95.39, beyond the z-test's hypot(0.3, 0.09) = 0.31, though the 3-seed mean agrees
    seed_lines = [line for line in seed_section.splitlines() if line.startswith("| Reptile")]
    assert seed_lines[:3] == ["| Reptile | 1-shot 5-way | 0 | 95.00 ± 0.30 | -0.39 | no |",
                              "| Reptile | 1-shot 5-way | 1 | 95.50 ± 0.30 | +0.11 | yes |",
                              "| Reptile | 1-shot 5-way | 2 | 95.80 ± 0.30 | +0.41 | no |"]
    assert len(seed_lines) == 6 and "MAML" not in seed_section
    assert "1-shot 20-way" in markdown and "5-shot 20-way" in markdown
    per_task = pd.read_csv(out / "table2_omniglot_tasks.csv")
    assert list(per_task.columns) == list(tables.TASK_COLUMNS)
    assert len(per_task) == 100 * (3 * 2 + 2)  # 100 tasks x (3 Reptile seeds + 1 MAML run) x 2 modes
    png = out / "learning_curves_omniglot_5w1s.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maml_trained_first_order_reports_in_the_fomaml_row(tmp_path):
    # The papers' FOMAML cells are Finn's MAML code run first-order: the workflow trains a FOMAML
    # cell as `--algorithm maml --first-order` (train_as: maml_first_order) into its fomaml/ run
    # directory, and the tables read the row from config.json, not from the path.
    runs = tmp_path / "runs"
    fomaml = make_run(runs, "fomaml", "omniglot", 5, 1, 0, {"transductive": (98.4, 0.1)})
    config = json.loads((fomaml / "config.json").read_text())
    (fomaml / "config.json").write_text(json.dumps({**config, "algorithm": "maml", "first_order": True}))
    make_run(runs, "maml", "omniglot", 5, 1, 0, {"transductive": (97.0, 0.2)})  # second order: MAML row
    out = tmp_path / "results"
    assert cli_main(["tables", "--runs", str(runs), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "table2_omniglot.csv").set_index("method")
    assert frame.loc["FOMAML +T", "algorithm"] == "fomaml" and frame.loc["FOMAML +T", "seeds"] == 1
    assert frame.loc["FOMAML +T", "ours_mean"] == pytest.approx(98.4)
    assert frame.loc["FOMAML +T", "published_mean"] == pytest.approx(98.3)
    assert frame.loc["MAML +T", "ours_mean"] == pytest.approx(97.0) and frame.loc["MAML +T", "seeds"] == 1
    per_task = pd.read_csv(out / "table2_omniglot_tasks.csv")
    assert set(per_task["method"]) == {"FOMAML +T", "MAML +T"}
    assert "Seed by seed" not in (out / "table2_omniglot.md").read_text()  # one seed a cell: nothing to list


def test_cells_set_beside_reruns_of_the_official_code(tmp_path):
    # Reptile 5w5s: non-transductive 99.11 inside the reruns' 98.898..99.148, transductive 99.59
    # above their 99.52..99.534; MAML has no reruns: no rerun columns filled, not listed.
    runs = tmp_path / "runs"
    make_run(runs, "reptile", "omniglot", 5, 5, 0, {"non_transductive": (99.11, 0.08), "transductive": (99.59, 0.06)})
    make_run(runs, "maml", "omniglot", 5, 5, 0, {"transductive": (99.5, 0.1)})
    out = tmp_path / "results"
    assert cli_main(["tables", "--runs", str(runs), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "table2_omniglot.csv").set_index("method")
    assert frame.loc["Reptile", "rerun_runs"] == 3
    assert frame.loc["Reptile", "rerun_mean"] == pytest.approx((98.898 + 99.01 + 99.148) / 3, abs=1e-4)
    assert (frame.loc["Reptile", "rerun_min"], frame.loc["Reptile", "rerun_max"]) == pytest.approx((98.898, 99.148))
    assert bool(frame.loc["Reptile", "rerun_inside"]) is True
    assert bool(frame.loc["Reptile +T", "rerun_inside"]) is False
    assert frame.loc["MAML +T", "rerun_runs"] == 0 and math.isnan(frame.loc["MAML +T", "rerun_mean"])
    section = (out / "table2_omniglot.md").read_text().split("## Against reruns of the official code")[1]
    lines = [line for line in section.splitlines() if line.startswith("| Reptile")]
    assert lines == ["| Reptile | 5-shot 5-way | 99.11 ± 0.08 | 98.90, 99.01, 99.15 | 99.02 | +0.09 | yes |",
                     "| Reptile +T | 5-shot 5-way | 99.59 ± 0.06 | 99.52, 99.53, 99.53 | 99.53 | +0.06 | no |"]
    assert "MAML" not in section
    # a reference table of its own: every rerun cell has a published value to stand beside
    assert set(tables.OFFICIAL_CODE_RERUNS) <= set(tables.PUBLISHED)


def test_tables_without_evaluated_runs_is_user_error(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "reptile", "omniglot", 5, 1, 0, None)
    with pytest.raises(UserError, match="no evaluated Omniglot"):
        tables.build_tables(runs, tmp_path / "out")
    assert cli_main(["tables", "--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("entry,why", [
    ({"class_rotations": "random quarter turn per class and task"}, "rotated test classes"),
    ({"inner_steps": 10}, "10 inner steps instead of the run's 50"),
    ({"split": "train"}, "tasks of the train split"),
])
def test_tables_refuse_an_evaluation_off_the_test_protocol(tmp_path, entry, why):
    runs = tmp_path / "runs"
    make_run(runs, "reptile", "omniglot", 5, 1, 0, {"transductive": (97.0, 0.3)})
    run = make_run(runs, "maml", "omniglot", 5, 5, 0, {"transductive": (99.6, 0.1)})
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, eval_inner_steps=50)))
    assert tables.build_tables(runs, tmp_path / "ok")  # inner_steps 50 = the run's own: on the protocol
    evaluation = json.loads((run / "eval.json").read_text())
    evaluation["transductive"].update(entry)
    (run / "eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(UserError, match=f"{why}.*re-run `reptile-tf evaluate {run}` without that option"):
        tables.build_tables(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _table(tmp_path: Path, name: str, rows: list[tuple[str, int, float, float]]) -> Path:
    frame = pd.DataFrame([{"dataset": "omniglot", "method": m, "algorithm": "reptile", "transductive": False,
                           "ways": 5, "shots": s, "setting": f"{s}-shot 5-way", "ours_mean": mean,
                           "ours_ci95": ci, "seeds": 1, "tasks_per_seed": 100, "interval_basis": "tasks",
                           "published_mean": 95.39, "published_pm": 0.09, "difference": mean - 95.39,
                           "published_inside": False} for m, s, mean, ci in rows])
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_diff_same_within_tolerance_exit_0(tmp_path, capsys):
    old = _table(tmp_path, "old.csv", [("Reptile", 1, 50.0, 1.0), ("Reptile +T", 1, 60.0, 1.0)])
    new = _table(tmp_path, "new.csv", [("Reptile", 1, 50.05, 1.0), ("Reptile +T", 1, 60.0, 1.0)])
    assert cli_main(["tables", "diff", str(old), str(new), "--tolerance", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "SAME" in out and "ours_mean" in out  # the small move is still shown
    assert cli_main(["tables", "diff", str(old), str(old)]) == 0


def test_diff_beyond_tolerance_exit_1(tmp_path, capsys):
    old = _table(tmp_path, "old.csv", [("Reptile", 1, 50.0, 1.0), ("Reptile +T", 1, 60.0, 1.0)])
    new = _table(tmp_path, "new.csv", [("Reptile", 1, 50.0, 1.0), ("Reptile +T", 1, 61.0, 1.0)])
    assert cli_main(["tables", "diff", str(old), str(new), "--tolerance", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT: 1 cell(s)" in out
    line = next(line for line in out.splitlines() if line.lstrip().startswith("!"))
    assert "Reptile +T" in line and "60.0000" in line and "61.0000" in line and "+1.0000" in line


def test_diff_row_appeared_or_disappeared_exit_1(tmp_path, capsys):
    old = _table(tmp_path, "old.csv", [("Reptile", 1, 50.0, 1.0)])
    new = _table(tmp_path, "new.csv", [("Reptile", 1, 50.0, 1.0), ("Reptile", 5, 70.0, 1.0)])
    assert cli_main(["tables", "diff", str(old), str(new), "--tolerance", "5"]) == 1
    assert "appeared" in capsys.readouterr().out
    assert cli_main(["tables", "diff", str(new), str(old), "--tolerance", "5"]) == 1
    assert "disappeared" in capsys.readouterr().out


def test_diff_nan_on_one_side_is_a_change(tmp_path):
    old = _table(tmp_path, "old.csv", [("Reptile", 1, 50.0, 1.0)])
    new = _table(tmp_path, "new.csv", [("Reptile", 1, float("nan"), 1.0)])
    result = tables.diff_tables(tables.read_table_csv(old), tables.read_table_csv(new), tolerance=100.0)
    assert result.failed and list(result.beyond_tolerance["column"]) == ["ours_mean"]


def test_diff_bad_input_is_user_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli_main(["tables", "diff", str(bad), str(bad)]) == 2
    assert cli_main(["tables", "diff", str(tmp_path / "nope.csv"), str(bad)]) == 2
    good = _table(tmp_path, "good.csv", [("Reptile", 1, 50.0, 1.0)])
    assert cli_main(["tables", "diff", str(good), str(good), "--tolerance", "-1"]) == 2


def test_tables_requires_runs_and_out():
    assert cli_main(["tables", "--runs", "x"]) == 2


# ------------------------------------------------------------------------------- paired test


def _paired_tables(tmp_path: Path, name: str, cells: dict[str, list[float]]) -> Path:
    """A table CSV and its per-task CSV: one 5-way 1-shot cell per method with these task accuracies."""
    rows = [(method, 1, sum(acc) / len(acc), 1.0) for method, acc in cells.items()]
    path = _table(tmp_path, name, rows)
    tasks = pd.DataFrame([{"dataset": "omniglot", "method": method, "ways": 5, "shots": 1, "seed": 0, "task": i,
                           "accuracy": a} for method, acc in cells.items() for i, a in enumerate(acc)])
    tasks.to_csv(tables.tasks_path(path), index=False)
    return path


def _task_accuracies(seed: int, mean: float, tasks: int = 200) -> list[float]:
    """5-query tasks: accuracies in steps of 20%, like 5-way 1-shot evaluation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return list(100.0 * rng.binomial(5, mean / 100.0, size=tasks) / 5)


def test_paired_diff_passes_noise_and_catches_a_real_move(tmp_path, capsys):
    base = _task_accuracies(0, 60.0)
    # Rounding-sized disturbance: 6 tasks gain one query, 4 lose one (the mean moves by 0.2).
    wobble = list(base)
    up = [i for i, a in enumerate(base) if a <= 80][:6]
    down = [i for i, a in enumerate(base) if a >= 20 and i not in up][:4]
    for i in up:
        wobble[i] += 20
    for i in down:
        wobble[i] -= 20
    old = _paired_tables(tmp_path, "old.csv", {"Reptile": base, "Reptile +T": base})
    same = _paired_tables(tmp_path, "same.csv", {"Reptile": wobble, "Reptile +T": base})
    worse = _paired_tables(tmp_path, "worse.csv", {"Reptile": [max(0.0, a - 20) for a in base], "Reptile +T": base})
    assert cli_main(["tables", "diff", str(old), str(same), "--paired"]) == 0
    out = capsys.readouterr().out
    assert "SAME (paired t-test" in out
    # The exact check still sees the wobble: that is what --paired is for.
    assert cli_main(["tables", "diff", str(old), str(same)]) == 1
    capsys.readouterr()
    assert cli_main(["tables", "diff", str(old), str(worse), "--paired"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT: 1 cell(s) moved" in out
    result = tables.diff_tables(tables.read_table_csv(old), tables.read_table_csv(worse), 0.0,
                                tables.read_tasks_csv(old), tables.read_tasks_csv(worse), 0.001)
    moved = result.beyond_tolerance
    assert list(moved["method"]) == ["Reptile"] and moved["p_value"].iloc[0] < 1e-6


def test_paired_diff_uses_holm_over_the_cells():
    import pandas as pd

    keys = [("omniglot", m, 5, 1) for m in ("A", "B")]
    def frame(values):
        return pd.DataFrame([{"dataset": "omniglot", "method": m, "ways": 5, "shots": 1, "seed": 0, "task": i,
                              "accuracy": v} for m, vals in values.items() for i, v in enumerate(vals)])
    base = [float(i % 7) for i in range(50)]
    shifted = [v + (0.4 if i % 2 else -0.1) for i, v in enumerate(base)]  # small, consistent move
    rows = tables.paired_tests(frame({"A": base, "B": base}), frame({"A": shifted, "B": base}), keys, alpha=0.05)
    p_a = next(r["p_value"] for r in rows if r["method"] == "A")
    assert 0 < p_a < 0.05
    assert [r["beyond"] for r in rows] == [True, False]
    # Holm with 2 cells compares the smallest p-value with alpha / 2.
    rows = tables.paired_tests(frame({"A": base, "B": base}), frame({"A": shifted, "B": base}), keys, alpha=p_a * 1.5)
    assert [r["beyond"] for r in rows] == [False, False]


def test_paired_diff_needs_the_same_tasks_and_the_per_task_file(tmp_path, capsys):
    old = _paired_tables(tmp_path, "old.csv", {"Reptile": _task_accuracies(1, 50.0)})
    fewer = _paired_tables(tmp_path, "fewer.csv", {"Reptile": _task_accuracies(1, 50.0)[:150]})
    assert cli_main(["tables", "diff", str(old), str(fewer), "--paired"]) == 1
    assert "cannot be paired" in capsys.readouterr().out
    tables.tasks_path(fewer).unlink()
    assert cli_main(["tables", "diff", str(old), str(fewer), "--paired"]) == 2
    assert "fewer_tasks.csv" in capsys.readouterr().err


def test_diff_compares_text_columns_and_names_a_directory(tmp_path, capsys):
    old = _table(tmp_path, "old.csv", [("Reptile", 1, 50.0, 1.0)])
    frame = pd.read_csv(old)
    frame["interval_basis"] = "seeds+tasks"
    new = tmp_path / "new.csv"
    frame.to_csv(new, index=False)
    assert cli_main(["tables", "diff", str(old), str(new), "--tolerance", "100"]) == 1
    out = capsys.readouterr().out
    assert "interval_basis" in out and "text differs" in out
    assert cli_main(["tables", "diff", str(tmp_path), str(new)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_agreement_counts_the_published_uncertainty_too():
    """Outside our interval but within the interval of the difference (the Reptile 5-shot cell of
    results/paper_cpu: 99.03 ± 0.09 against 98.90 ± 0.10) agrees; a gap beyond both does not."""
    assert tables.agrees_with_published(0.13, 0.0871, 0.10) and not 0.13 <= 0.0871
    assert not tables.agrees_with_published(-0.21, 0.14, 0.04)  # 0.21 > hypot(0.14, 0.04) = 0.146
    assert tables.agrees_with_published(-0.145, 0.14, 0.04)

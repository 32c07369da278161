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
    config = {"settings": {"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": shots,
                           "inner_lr": 0.001, "iterations": 10 * curve},
              "seed": seed, "data_digest": "abc123", "code_version": "deadbeef", "tensorflow_version": "2.21.0",
              "device": "cpu"}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": 10 * i, "loss": 1.0 / (i + 1), "accuracy": 0.2 + 0.1 * i, "wall_time": 0.5 * i}) + "\n"
        for i in range(curve)))
    (run / "DONE").write_text("")
    if accuracies is not None:
        (run / "eval.json").write_text(json.dumps({
            mode: {"accuracy": acc, "ci95": ci, "tasks": tasks, "inner_steps": 50, "per_task_csv": f"eval_{mode}.csv"}
            for mode, (acc, ci) in accuracies.items()}))
    return run


def test_combine_one_seed_uses_task_interval():
    cell = tables.combine_seeds([tables.SeedResult(90.0, 0.5, 100)])
    assert (cell.mean, cell.seeds, cell.basis) == (90.0, 1, "tasks")
    assert cell.ci95 == pytest.approx(0.5)


def test_combine_seeds_uses_t_interval_over_seed_means():
    results = [tables.SeedResult(a, 0.1, 1000) for a in (90.0, 92.0, 94.0)]
    cell = tables.combine_seeds(results)
    assert cell.mean == pytest.approx(92.0)
    # sd of seed means = 2, t(0.975, 2) = 4.303, S = 3
    assert cell.ci95 == pytest.approx(4.303 * 2.0 / math.sqrt(3))
    assert cell.basis == "seeds+tasks"


def test_combine_seeds_floored_by_task_noise():
    # identical seed means: the seed spread is 0, yet task sampling noise remains
    cell = tables.combine_seeds([tables.SeedResult(80.0, 1.2, 100)] * 4)
    assert cell.ci95 == pytest.approx(1.96 * math.sqrt(4 * (1.2 / 1.96) ** 2) / 4)


def test_t_quantile_table_and_tail():
    assert tables.t_quantile_975(1) == pytest.approx(12.706)
    assert tables.t_quantile_975(30) == pytest.approx(2.042)
    assert 1.96 < tables.t_quantile_975(100) < 2.0


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
    far = frame[frame["method"] == "Reptile +T"].iloc[0]
    assert bool(far["published_inside"]) is False
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
    methods = [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("| ")][2:]
    assert methods == ["MAML", "MAML +T", "FOMAML", "FOMAML +T", "Reptile", "Reptile +T"]
    assert "1-shot 20-way" in markdown and "5-shot 20-way" in markdown
    png = out / "learning_curves_omniglot_5w1s.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_without_evaluated_runs_is_user_error(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "reptile", "omniglot", 5, 1, 0, None)
    with pytest.raises(UserError, match="no evaluated Omniglot"):
        tables.build_tables(runs, tmp_path / "out")
    assert cli_main(["tables", "--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


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
    line = next(line for line in out.splitlines() if line.startswith("!"))
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

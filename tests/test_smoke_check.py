"""The CI table check catches a real regression at the smoke budget.

`.ci/run` compares a fresh `smoke` run with the committed reference `results/smoke/` by the
paired test (`reptile-tf tables diff --paired`), which lets rounding differences between CPU
classes through. Here an outer update is broken on purpose (it leaves the meta-parameters where
they are, as a forgotten assignment would), the algorithm is trained and evaluated exactly as
the smoke preset does, and the check must report its cells as moved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reptile_tf import evaluate, meta, tables, train

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "smoke" / "table2_omniglot.csv"
SMOKE = yaml.safe_load((ROOT / "workflow" / "config" / "smoke.yaml").read_text())

# Each outer update, broken the same way: the meta-parameters never move.
BROKEN_UPDATES = {
    "reptile": ("reptile_update", lambda params, task_params, epsilon: params),
    "fomaml": ("fomaml_update", lambda params, task_params, task_prev_params, epsilon: params),
    "maml": ("maml_update", lambda params, meta_grad, adam_state, lr, optimizer="adam": (params, adam_state)),
}


def smoke_run(algorithm: str, run_dir: Path, data_dir: Path, train_images) -> Path:
    """Train and evaluate one algorithm of the smoke preset (its budget and run options)."""
    setting = SMOKE["grid"]["settings"][0]
    settings = train.resolve_settings(algorithm, setting["dataset"], setting["ways"], setting["shots"],
                                      {"iterations": SMOKE["budget"]["iterations"]})
    options = train.RunOptions(**{k: SMOKE["train"][k] for k in ("checkpoint_every", "log_every", "val_every",
                                                                   "val_tasks")})
    train.train(settings, SMOKE["grid"]["seeds"][0], run_dir, options, data_dir=data_dir, progress=False,
                train_images=train_images)
    evaluate.evaluate_run(run_dir, tuple(SMOKE["grid"]["eval_modes"]), tasks=SMOKE["budget"]["eval_tasks"],
                          data_dir=data_dir, progress=False)
    return run_dir


@pytest.mark.parametrize("algorithm", sorted(BROKEN_UPDATES))
def test_paired_check_fails_when_an_outer_update_is_broken(algorithm, tmp_path, monkeypatch, omniglot_data_dir,
                                                           omniglot_train_images):
    name, broken = BROKEN_UPDATES[algorithm]
    monkeypatch.setattr(meta, name, broken)
    smoke_run(algorithm, tmp_path / "runs" / algorithm / "seed0", omniglot_data_dir, omniglot_train_images)
    out = tmp_path / "results"
    tables.build_tables(tmp_path / "runs", out)

    reference = tables.read_table_csv(REFERENCE)
    fresh = tables.read_table_csv(out / REFERENCE.name)
    mine = reference["algorithm"] == algorithm
    result = tables.diff_tables(reference[mine], fresh, 0.0, tables.read_tasks_csv(REFERENCE),
                                tables.read_tasks_csv(out / REFERENCE.name), tables.DEFAULT_ALPHA)
    moved = result.beyond_tolerance
    # Both batch-norm modes of the broken algorithm moved, and downwards.
    assert sorted(moved["method"]) == sorted(reference[mine]["method"]), tables.format_diff(result)
    assert (moved["delta"] < 0).all(), tables.format_diff(result)

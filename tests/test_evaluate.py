"""`reptile-tf evaluate`: eval.json and per-task CSVs, the two prediction modes, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tensorflow as tf

from reptile_tf import cli, evaluate, meta, rundir, scoring, train
from reptile_tf.data.tasks import CLASS_ROTATIONS, episode_source
from reptile_tf.errors import UserError
from reptile_tf.run_state import build_model, load_run_state
from reptile_tf.seeds import EVAL_SEED
from reptile_tf.settings import settings_from_config


@pytest.fixture(scope="module")
def omniglot_run(tmp_path_factory, omniglot_data_dir, omniglot_train_images) -> Path:
    """A finished (tiny) Reptile Omniglot 5-way 1-shot run; 5 evaluation inner steps keep it fast."""
    settings = train.resolve_settings("reptile", "omniglot", 5, 1, {"iterations": 10, "eval_inner_steps": 5})
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    return train.train(settings, 0, run_dir, train.RunOptions(log_every=5, checkpoint_every=10, val_every=0),
                       data_dir=omniglot_data_dir, progress=False, train_images=omniglot_train_images)


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    for name in (rundir.EVAL_FILE, *map(rundir.eval_csv_name, rundir.EVAL_MODES)):
        (target / name).unlink(missing_ok=True)
    return target


def read_csv(path: Path) -> list[float]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [float(r["accuracy"]) for r in rows]


def test_evaluate_refuses_omniglot_prepared_otherwise_than_the_run_trained_on(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    config = json.loads((run / rundir.CONFIG_FILE).read_text())
    config["data"]["omniglot_inverted"] = True  # as a run trained on `prepare omniglot --invert` records it
    (run / rundir.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"trained on Omniglot prepared with --invert, .*pass the --data-dir it "
                                        r"trained on, or build one with `reptile-tf prepare omniglot --invert"):
        evaluate.evaluate_run(run, ("transductive",), tasks=2, chunk_size=2, progress=False)
    assert not (run / rundir.EVAL_FILE).exists()


def test_eval_json_for_both_modes(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    result = evaluate.evaluate_run(run, rundir.EVAL_MODES, tasks=12, chunk_size=5, progress=False)
    on_disk = json.loads((run / "eval.json").read_text())
    assert on_disk == result and set(on_disk) == {"transductive", "non_transductive"}
    for mode, entry in on_disk.items():
        assert entry["metric"] == "accuracy" and entry["tasks"] == 12 and entry["inner_steps"] == 5
        assert entry["per_task_csv"] == f"eval_{mode}.csv" and entry["split"] == "test"
        assert entry["eval_seed"] == EVAL_SEED and entry["checkpoint_iteration"] == 10
        per_task = read_csv(run / entry["per_task_csv"])
        assert len(per_task) == 12
        # 5-way, 1 query per class: each task's accuracy is a multiple of 20%.
        assert all(round(v / 20) * 20 == pytest.approx(v) and 0 <= v <= 100 for v in per_task)
        assert entry["accuracy"] == pytest.approx(np.mean(per_task))
        assert entry["ci95"] == pytest.approx(1.96 * np.std(per_task) / np.sqrt(12))

    # Padding the last chunk (12 = 5 + 5 + 2) does not change the first tasks' results.
    twelve = read_csv(run / "eval_transductive.csv")
    five = evaluate.evaluate_run(run, ("transductive",), tasks=5, chunk_size=5, progress=False)
    assert read_csv(run / "eval_transductive.csv") == twelve[:5]
    assert five["transductive"]["tasks"] == 5
    # Evaluating one mode keeps the other mode's earlier entry.
    assert json.loads((run / "eval.json").read_text())["non_transductive"] == on_disk["non_transductive"]


def test_a_tasks_score_does_not_depend_on_the_chunk_size(omniglot_run, tmp_path):
    """Each task's adaptation minibatches come from its own seed (its index), not its chunk's."""
    run = copy_run(omniglot_run, tmp_path)
    evaluate.evaluate_run(run, ("transductive",), tasks=6, chunk_size=6, progress=False)
    whole = read_csv(run / "eval_transductive.csv")
    evaluate.evaluate_run(run, ("transductive",), tasks=6, chunk_size=4, progress=False)
    assert read_csv(run / "eval_transductive.csv") == whole
    # The per-task schedules really differ between tasks and really follow the task's seed.
    seeds = scoring.task_seeds(3, 4)
    schedule = meta.minibatch_schedule(10, 5, 6, seeds, num_tasks=4).numpy()
    alone = meta.minibatch_schedule(10, 5, 6, seeds[1:2], num_tasks=1).numpy()
    np.testing.assert_array_equal(schedule[1], alone[0])
    assert not np.array_equal(schedule[0], schedule[1])
    assert tf.reduce_all(scoring.task_seeds(3, 4)[:, 1] == [3, 4, 5, 6])


def test_evaluation_is_deterministic_and_on_the_same_tasks(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    first = evaluate.evaluate_run(run, ("transductive",), tasks=6, progress=False)
    per_task = read_csv(run / "eval_transductive.csv")
    second = evaluate.evaluate_run(run, ("transductive",), tasks=6, progress=False)
    assert first == second and read_csv(run / "eval_transductive.csv") == per_task


def test_non_transductive_prediction_ignores_the_other_queries(omniglot_run, omniglot_data_dir):
    config = rundir.read_config(omniglot_run)
    settings = settings_from_config(config).replace(eval_queries=3)
    state, _ = load_run_state(omniglot_run, config)
    get_chunk, _ = episode_source(settings, "test", 2, omniglot_data_dir, "reptile")
    chunk = get_chunk(0, 2)
    model = build_model(settings)
    params, opt_state = meta.params_from_state(state), meta.inner_adam_from_state(state)
    # Same first query, all other queries replaced by (very different) noise images.
    noise = tf.random.stateless_uniform(chunk["query_x"].shape, seed=[1, 2])
    changed = tf.concat([chunk["query_x"][:, :1], noise[:, 1:]], axis=1)

    def outputs(query_x, mode):
        return scoring.adapted_query_outputs(model, settings, params, opt_state, scoring.task_seeds(0, 2),
                                             chunk["support_x"], chunk["support_y"], query_x, mode).numpy()

    original_nt, changed_nt = outputs(chunk["query_x"], "non_transductive"), outputs(changed, "non_transductive")
    np.testing.assert_allclose(original_nt[:, 0], changed_nt[:, 0], rtol=1e-5, atol=1e-5)
    original_t, changed_t = outputs(chunk["query_x"], "transductive"), outputs(changed, "transductive")
    # Transductive batch norm uses the query batch's statistics: query 0's logits move.
    assert np.abs(original_t[:, 0] - changed_t[:, 0]).max() > 1e-2
    assert not np.allclose(original_t, original_nt, atol=1e-3)  # the two modes really differ


def test_inner_steps_override_changes_the_adaptation_and_is_recorded(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    default = evaluate.evaluate_run(run, ("non_transductive",), tasks=4, progress=False)["non_transductive"]
    default_tasks = read_csv(run / "eval_non_transductive.csv")
    assert cli.main(["evaluate", str(run), "--tasks", "4", "--mode", "non_transductive", "--inner-steps", "1",
                     "--no-progress"]) == 0
    one = json.loads((run / "eval.json").read_text())["non_transductive"]
    assert default["inner_steps"] == 5 and one["inner_steps"] == 1
    assert rundir.read_config(run)["eval_inner_steps"] == 5  # the run's own setting is untouched
    # One Adam step instead of five adapts less: the per-task results differ (4 tasks x 5 queries).
    assert read_csv(run / "eval_non_transductive.csv") != default_tasks


def test_rotate_classes_turns_the_test_classes_and_is_recorded(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    default = evaluate.evaluate_run(run, ("transductive",), tasks=20, progress=False)["transductive"]
    default_tasks = read_csv(run / "eval_transductive.csv")
    assert "class_rotations" not in default
    assert cli.main(["evaluate", str(run), "--tasks", "20", "--mode", "transductive", "--rotate-classes",
                     "--no-progress"]) == 0
    rotated = json.loads((run / "eval.json").read_text())["transductive"]
    assert rotated["class_rotations"] == CLASS_ROTATIONS and rotated["tasks"] == 20
    assert read_csv(run / "eval_transductive.csv") != default_tasks  # other images, other scores


def test_rotate_classes_is_refused_off_omniglot(tmp_path):
    settings = train.resolve_settings("reptile", "sine", 1, 5, {})
    with pytest.raises(UserError, match="Omniglot test protocol.*drop --rotate-classes"):
        episode_source(settings, "test", 2, tmp_path, None, rotate_classes=True)


def test_cli_evaluate(omniglot_run, tmp_path, capsys):
    run = copy_run(omniglot_run, tmp_path)
    assert cli.main(["evaluate", str(run), "--tasks", "4", "--mode", "non_transductive", "--no-progress"]) == 0
    assert "non_transductive: accuracy" in capsys.readouterr().out
    assert set(json.loads((run / "eval.json").read_text())) == {"non_transductive"}
    assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _expect_user_error(run: Path, match: str, **kwargs) -> None:
    with pytest.raises(UserError, match=match):
        evaluate.evaluate_run(run, progress=False, **kwargs)
    assert not (run / "eval.json").exists()
    assert not list(run.glob("eval_*.csv"))


def test_bad_inputs_write_nothing(omniglot_run, tmp_path):
    run = copy_run(omniglot_run, tmp_path)
    _expect_user_error(run, "--tasks must be at least 1", tasks=0)
    _expect_user_error(run, "--inner-steps must be at least 1", inner_steps=0, tasks=2)
    _expect_user_error(run, "unknown evaluation mode", modes=("sometimes",))
    _expect_user_error(run, "no val split|unknown split", split="val", tasks=2)

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, shots=20)))  # 20 shots + 1 query > 20 images
    _expect_user_error(run, "images per class", tasks=2)
    (run / "config.json").write_text(json.dumps(dict(config, ways=20)))  # dense layer 5 -> 20 outputs
    _expect_user_error(run, "does not match", tasks=2)
    (run / "config.json").write_text(json.dumps(config))

    data = next((run / "checkpoints").glob("ckpt-10.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated checkpoint
    _expect_user_error(run, "corrupt", tasks=2)
    shutil.rmtree(run / "checkpoints")
    _expect_user_error(run, "no checkpoint", tasks=2)
    (run / "DONE").unlink()
    _expect_user_error(run, "has not finished", tasks=2)
    (run / "config.json").unlink()
    _expect_user_error(run, "not a run directory", tasks=2)

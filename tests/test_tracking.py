"""MLflow mirroring of run directories: idempotency, content, and a real `mlflow server` over HTTP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reptile_tf import evaluate, rundir, tracking, train
from reptile_tf.data.tasks import episode_source
from reptile_tf.settings import settings_from_config
from reptile_tf.stats import SeedResult, combine_seeds
from reptile_tf.cli import main as cli_main
from test_tables import make_run

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def add_checkpoint_and_csv(run: Path) -> None:
    ckpt = run / "checkpoints"
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-40"\nall_model_checkpoint_paths: "ckpt-40"\n')
    (ckpt / "ckpt-40.index").write_bytes(b"index")
    (ckpt / "ckpt-40.data-00000-of-00001").write_bytes(b"data")
    (ckpt / "ckpt-20.index").write_bytes(b"old")
    for mode in ("transductive", "non_transductive"):
        (run / f"eval_{mode}.csv").write_text("task,accuracy\n0,1.0\n1,0.0\n")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds)."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture()
def store(store_dir, tmp_path):
    """A fresh run directory; tests use distinct experiment names in the shared store."""
    run = make_run(tmp_path / "runs", "reptile", "omniglot", 5, 1, 0,
                   {"transductive": (97.5, 0.2), "non_transductive": (95.0, 0.3)}, curve=5)
    add_checkpoint_and_csv(run)
    return run, f"sqlite:///{store_dir / 'mlflow' / 'mlflow.db'}", store_dir


def search(uri: str, experiment: str, kind: str = "seed"):
    """(client, the experiment's active runs of `kind`: "seed" runs, "setting" (parent) runs)."""
    client = tracking.make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.KIND_TAG}` = '{kind}'")


def test_track_twice_gives_one_run_with_full_content(store):
    run, uri, tmp_path = store
    assert cli_main(["track", "--init", "--experiment", "smoke", "--tracking-uri", uri,
                     "--marker", str(tmp_path / "init.json")]) == 0
    assert json.loads((tmp_path / "init.json").read_text())["experiment"] == "smoke"
    assert cli_main(["track", str(run), "--experiment", "smoke", "--tracking-uri", uri]) == 0
    first = json.loads((run / "mlflow.json").read_text())
    assert first["new_metric_points"] > 0
    assert cli_main(["track", str(run), "--experiment", "smoke", "--tracking-uri", uri]) == 0
    second = json.loads((run / "mlflow.json").read_text())
    assert second["run_id"] == first["run_id"] and second["new_metric_points"] == 0

    client, runs = search(uri, "smoke")
    assert len(runs) == 1
    logged = runs[0]
    tags = logged.data.tags
    assert (tags["algorithm"], tags["dataset"], tags["ways"], tags["shots"], tags["seed"], tags["preset"]) == \
        ("reptile", "omniglot", "5", "1", "0", "smoke")
    assert (tags["git_commit"], tags["data_digest"], tags["tensorflow_version"], tags["device"]) == \
        ("deadbeef", "abc123", "2.21.0", "CPU")
    assert logged.data.params["inner_lr"] == "0.001"
    assert logged.data.metrics["test_accuracy_transductive"] == pytest.approx(97.5)
    assert logged.data.metrics["test_ci95_non_transductive"] == pytest.approx(0.3)
    # evaluation counts are params, not metrics
    assert logged.data.params["test_tasks_transductive"] == "100"
    assert logged.data.params["test_inner_steps_non_transductive"] == "50"
    assert not any(k.startswith("test_tasks") for k in logged.data.metrics)
    # MLflow's source tags, from the commit recorded in config.json
    assert (tags["mlflow.source.git.commit"], tags["reptile_tf.source_commit_from"], tags["mlflow.source.name"],
            tags["mlflow.source.type"]) == ("deadbeef", "config.json", "reptile-tf train", "LOCAL")
    assert "97.50% ± 0.20% over 100 tasks" in tags["mlflow.note.content"]
    history = client.get_metric_history(logged.info.run_id, "train/accuracy")
    assert sorted(m.step for m in history) == [0, 10, 20, 30, 40]  # no duplicates after two logs
    assert sorted(m.value for m in history) == pytest.approx([20.0, 30.0, 40.0, 50.0, 60.0])  # percent
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.json", "learning_curve.png", "per_task", "checkpoint"} <= artifacts
    # one setting run holds it as its child
    _, parents = search(uri, "smoke", "setting")
    assert len(parents) == 1 and tags[tracking.PARENT_TAG] == parents[0].info.run_id == first["parent_run_id"]
    assert second["parent_run_id"] == first["parent_run_id"]
    # the experiment says how to read it
    note = client.get_experiment_by_name("smoke").tags["mlflow.note.content"]
    assert "percent" in note and "parent run per setting" in note
    ckpt = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoint")}
    assert ckpt == {"checkpoint/checkpoint", "checkpoint/ckpt-40.index", "checkpoint/ckpt-40.data-00000-of-00001"}
    # artifacts land beside the SQLite file by default
    assert (tmp_path / "mlflow" / "artifacts" / "smoke").is_dir()


def test_retrained_run_with_other_params_replaces_the_stale_run(store):
    run, uri, _ = store
    first = tracking.track_run(run, "exp", uri, artifacts=False)
    config = json.loads((run / "config.json").read_text())
    config["inner_lr"] = 0.002
    (run / "config.json").write_text(json.dumps(config))
    second = tracking.track_run(run, "exp", uri, artifacts=False)
    assert second["run_id"] != first["run_id"]
    _, runs = search(uri, "exp")
    assert [r.info.run_id for r in runs] == [second["run_id"]]
    assert runs[0].data.params["inner_lr"] == "0.002"
    # the old configuration's setting run went with its only seed; the new one has its own
    _, parents = search(uri, "exp", "setting")
    assert [p.info.run_id for p in parents] == [second["parent_run_id"]] != [first["parent_run_id"]]


def test_cli_without_run_dirs_is_user_error(store):
    _, uri, _ = store
    assert cli_main(["track", "--experiment", "x", "--tracking-uri", uri]) == 2


def test_same_key_in_another_run_directory_never_touches_the_first_run(store, tmp_path):
    """Issue 14 item 6: the second directory (same dataset/ways/shots/algorithm/seed, other
    iterations) used to soft-delete the first directory's MLflow run."""
    first_dir, uri, _ = store
    second_dir = make_run(tmp_path / "other", "reptile", "omniglot", 5, 1, 0,
                          {"transductive": (90.0, 0.5), "non_transductive": (88.0, 0.5)}, curve=3)
    # The same configuration in a third directory: still its own MLflow run.
    third_dir = make_run(tmp_path / "third", "reptile", "omniglot", 5, 1, 0,
                         {"transductive": (97.5, 0.2), "non_transductive": (95.0, 0.3)}, curve=5)
    first = tracking.track_run(first_dir, "keys", uri, artifacts=False)
    second = tracking.track_run(second_dir, "keys", uri, artifacts=False)
    third = tracking.track_run(third_dir, "keys", uri, artifacts=False)
    assert first[tracking.RUN_KEY_TAG] == second[tracking.RUN_KEY_TAG] == third[tracking.RUN_KEY_TAG]
    assert first[tracking.CONFIG_HASH_TAG] != second[tracking.CONFIG_HASH_TAG]
    assert first[tracking.CONFIG_HASH_TAG] == third[tracking.CONFIG_HASH_TAG]
    assert len({first["run_id"], second["run_id"], third["run_id"]}) == 3
    client, runs = search(uri, "keys")
    assert {r.info.run_id for r in runs} == {first["run_id"], second["run_id"], third["run_id"]}  # none deleted
    assert client.get_run(first["run_id"]).data.params["iterations"] == "50"
    assert client.get_run(second["run_id"]).data.params["iterations"] == "30"
    # Tracking each again: the same runs, nothing new, nothing deleted.
    again = [tracking.track_run(d, "keys", uri, artifacts=False) for d in (first_dir, second_dir, third_dir)]
    assert [a["run_id"] for a in again] == [first["run_id"], second["run_id"], third["run_id"]]
    assert all(a["new_metric_points"] == 0 for a in again)
    assert len(search(uri, "keys")[1]) == 3


def test_config_hash_ignores_the_environment_block(tmp_path):
    run = make_run(tmp_path, "maml", "omniglot", 5, 1, 0, None)
    config = json.loads((run / "config.json").read_text())
    before = tracking.config_hash(run)
    (run / "config.json").write_text(json.dumps(dict(config, environment={"cpu_model": "elsewhere"})))
    assert tracking.config_hash(run) == before
    config["iterations"] += 1
    (run / "config.json").write_text(json.dumps(config))
    assert tracking.config_hash(run) != before


def test_incomplete_runs_are_tracked_with_a_status_tag_and_a_warning(store, capsys):
    """Used to be refused (no DONE) or logged as FINISHED without test metrics (no eval.json)."""
    run, uri, _ = store
    eval_json = (run / "eval.json").read_text()
    (run / "DONE").unlink()
    (run / "eval.json").unlink()
    assert cli_main(["track", str(run), "--experiment", "status", "--tracking-uri", uri]) == 0
    assert "warning" in capsys.readouterr().err
    marker = json.loads((run / "mlflow.json").read_text())
    assert marker["status"] == "training_incomplete" and "no DONE" in marker["warnings"][0]
    client = tracking.make_client(uri)
    logged = client.get_run(marker["run_id"])
    assert logged.data.tags[tracking.STATUS_TAG] == "training_incomplete"
    assert logged.info.status == "RUNNING"  # not ended: the run is not finished
    assert "test_accuracy_transductive" not in logged.data.metrics

    (run / "DONE").write_text("")
    info = tracking.track_run(run, "status", uri, artifacts=False)
    assert info["status"] == "not_evaluated" and "no eval.json" in info["warnings"][0]
    assert info["run_id"] == marker["run_id"]

    (run / "eval.json").write_text(eval_json)
    info = tracking.track_run(run, "status", uri, artifacts=False)
    assert (info["status"], info["warnings"], info["run_id"]) == ("complete", [], marker["run_id"])
    logged = client.get_run(info["run_id"])
    assert logged.data.tags[tracking.STATUS_TAG] == "complete" and logged.info.status == "FINISHED"
    assert logged.data.metrics["test_accuracy_transductive"] == pytest.approx(97.5)


def test_dropped_lines_and_nonfinite_values_are_reported(store, capsys):
    """Used to be skipped silently (corrupt lines) or logged as NaN (re-logged on every call)."""
    run, uri, _ = store
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, '{"iteration": 15, "loss"')  # damaged in the middle
    lines.append(json.dumps({"iteration": 50, "loss": float("nan"), "accuracy": 0.5, "wall_time": 3.0}))
    lines.append("not json at all")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    info = tracking.track_run(run, "quality", uri, artifacts=False)
    err = capsys.readouterr().err
    assert "2 line(s) are not valid metric records" in err and "lines 3, 8" in err
    assert "1 non-finite value(s) not logged (train/loss at 50)" in err
    assert len(info["warnings"]) == 2
    client = tracking.make_client(uri)
    tags = client.get_run(info["run_id"]).data.tags
    assert tags[tracking.DROPPED_TAG] == "2 (lines 3, 8)"
    assert tags[tracking.NONFINITE_TAG] == "1 (train/loss at 50)"
    assert [m.step for m in client.get_metric_history(info["run_id"], "train/loss")] == [0, 10, 20, 30, 40]
    assert 50 in [m.step for m in client.get_metric_history(info["run_id"], "train/accuracy")]
    assert tracking.track_run(run, "quality", uri, artifacts=False)["new_metric_points"] == 0


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_server_serves_tracked_runs_over_http(store, free_port, stop_process_group):
    run, uri, tmp_path = store
    tracking.track_run(run, "served", uri, artifacts=False)
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server_log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--default-artifact-root", (tmp_path / "served-artifacts").as_uri()],
        stdout=server_log, stderr=subprocess.STDOUT,
        # no background job runner: it only slows start-up and shutdown here
        env=dict(os.environ, MLFLOW_TRACKING_URI="", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        experiment = None
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served",
                                            timeout=5) as response:
                    experiment = json.loads(response.read())["experiment"]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert experiment is not None, "mlflow server did not answer within 90 s"
        found = post_json(f"{base}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [experiment["experiment_id"]],
                           "filter": "tags.algorithm = 'reptile' and tags.seed = '0'"})
        assert len(found["runs"]) == 1
        metrics = {m["key"]: m["value"] for m in found["runs"][0]["data"]["metrics"]}
        assert metrics["test_accuracy_non_transductive"] == pytest.approx(95.0)
    finally:
        stop_process_group(server, timeout=20)
        server_log.close()


# ------------------------------------------------------------------- issue 13 item 4: MLflow as expected

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: the training's clock


def timed_run(root: Path, seed: int = 0, accuracy: float = 97.5, config_extra: dict | None = None,
              iterations: tuple[int, ...] = (10, 20, 30, 40, 50), seconds_per_iteration: float = 2.0) -> Path:
    """A run directory whose metrics.jsonl carries real wall times (10 s of set-up not logged)."""
    run = make_run(root, "reptile", "omniglot", 5, 1, seed,
                   {"transductive": (accuracy, 0.5), "non_transductive": (accuracy - 2, 0.6)}, curve=5)
    config = json.loads((run / "config.json").read_text())
    config["meta_batch"] = 5
    config.update(config_extra or {})
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "loss": 1.0 / i, "accuracy": 0.01 * i, "val_accuracy": 0.5,
                    "wall_time": T0 + seconds_per_iteration * i}) + "\n" for i in iterations))
    return run


def test_run_times_are_the_trainings_and_throughput_is_logged(store):
    _, uri, tmp_path = store
    run = timed_run(tmp_path / "timed")
    info = tracking.track_run(run, "times", uri, artifacts=False)
    client = tracking.make_client(uri)
    logged = client.get_run(info["run_id"])
    # start: first line (iteration 10 at T0 + 20 s) minus 10 iterations at the pace of 10 -> 20 (2 s each)
    assert logged.info.start_time == int(1000 * T0)
    assert logged.info.end_time == int(1000 * (T0 + 100))  # the last line, not the time of tracking
    assert logged.info.status == "FINISHED"
    metrics = logged.data.metrics
    assert metrics["train_wall_time_s"] == pytest.approx(100.0)
    assert metrics["train_iterations_per_s"] == pytest.approx(0.5)
    assert metrics["train_tasks_per_s"] == pytest.approx(2.5)  # x meta_batch 5
    assert [m.value for m in client.get_metric_history(info["run_id"], "train/iterations_per_s")] == \
        pytest.approx([0.5] * 4)
    # one accuracy unit: percent, like the test accuracies and the tables
    assert metrics["train/accuracy"] == pytest.approx(50.0) and metrics["val_accuracy"] == pytest.approx(50.0)
    assert metrics["test_accuracy_transductive"] == pytest.approx(97.5)
    assert logged.data.tags["reptile_tf.accuracy_unit"] == "percent"

    # Re-tracking changes nothing; a recorded start (config.json environment.started) wins.
    again = tracking.track_run(run, "times", uri, artifacts=False)
    assert (again["run_id"], again["new_metric_points"]) == (info["run_id"], 0)
    config = json.loads((run / "config.json").read_text())
    config["environment"]["started"] = T0 - 30.0
    (run / "config.json").write_text(json.dumps(config))
    moved = tracking.track_run(run, "times", uri, artifacts=False)
    assert moved["run_id"] != info["run_id"]  # MLflow cannot move a start: the run is recreated
    logged = client.get_run(moved["run_id"])
    assert logged.info.start_time == int(1000 * (T0 - 30))
    assert logged.data.metrics["train_wall_time_s"] == pytest.approx(130.0)
    assert len(search(uri, "times")[1]) == 1


def test_runs_written_by_the_previous_tracking_version_are_replaced(store):
    """Version 1 logged fractions and counts as metrics: its points cannot be fixed in place."""
    _, uri, tmp_path = store
    run = timed_run(tmp_path / "old")
    first = tracking.track_run(run, "versions", uri, artifacts=False)
    client = tracking.make_client(uri)
    client.set_tag(first["run_id"], tracking.VERSION_TAG, "1")
    second = tracking.track_run(run, "versions", uri, artifacts=False)
    assert second["run_id"] != first["run_id"]
    assert client.get_run(first["run_id"]).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in search(uri, "versions")[1]] == [second["run_id"]]


def test_seeds_of_a_setting_are_children_of_one_run_holding_their_mean(store):
    _, uri, tmp_path = store
    accuracies = {0: 90.0, 1: 92.0, 2: 94.0}
    runs = {seed: timed_run(tmp_path / "seeds", seed, acc, seconds_per_iteration=1.0 + seed)
            for seed, acc in accuracies.items()}
    infos = {seed: tracking.track_run(runs[seed], "grouped", uri, artifacts=False) for seed in (2, 0, 1)}
    client, parents = search(uri, "grouped", "setting")
    assert len(parents) == 1
    parent = parents[0]
    assert {i["parent_run_id"] for i in infos.values()} == {parent.info.run_id}
    children = search(uri, "grouped")[1]
    assert {c.data.tags[tracking.PARENT_TAG] for c in children} == {parent.info.run_id}
    assert parent.data.tags["seeds"] == "0, 1, 2" and parent.info.run_name.startswith("omniglot_5w1s-reptile-")
    assert "seed" not in parent.data.params and parent.data.params["inner_lr"] == "0.001"
    cell = combine_seeds([SeedResult(a, 0.5, 100) for a in accuracies.values()])
    assert parent.data.metrics["test_accuracy_transductive"] == pytest.approx(cell.mean) == pytest.approx(92.0)
    assert parent.data.metrics["test_ci95_transductive"] == pytest.approx(cell.ci95)
    assert parent.data.metrics["test_accuracy_non_transductive"] == pytest.approx(90.0)
    assert parent.data.metrics["seeds"] == 3
    assert parent.data.metrics["train_wall_time_s"] == pytest.approx((50 + 100 + 150) / 3)
    # the parent spans its seeds' training: earliest start to latest end
    assert parent.info.start_time == min(c.info.start_time for c in children) == int(1000 * T0)
    assert parent.info.end_time == max(c.info.end_time for c in children) == int(1000 * (T0 + 150))
    assert parent.info.status == "FINISHED"
    # the mean over 1, 2 and 3 seeds, as seeds arrived, at step = number of seeds
    history = client.get_metric_history(parent.info.run_id, "test_accuracy_transductive")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(1, pytest.approx(94.0)), (2, pytest.approx(92.0)), (3, pytest.approx(92.0))]

    # Idempotent: tracking every seed again leaves one parent with the same points.
    for seed in accuracies:
        assert tracking.track_run(runs[seed], "grouped", uri, artifacts=False)["parent_run_id"] == parent.info.run_id
    assert len(search(uri, "grouped", "setting")[1]) == 1
    assert len(client.get_metric_history(parent.info.run_id, "test_accuracy_transductive")) == 3

    # Seed 2 retrained with another configuration: it leaves the group, whose mean is recomputed.
    config = json.loads((runs[2] / "config.json").read_text())
    config["inner_lr"] = 0.002
    (runs[2] / "config.json").write_text(json.dumps(config))
    moved = tracking.track_run(runs[2], "grouped", uri, artifacts=False)
    parents = {p.data.tags["seeds"]: p for p in search(uri, "grouped", "setting")[1]}
    assert sorted(parents) == ["0, 1", "2"] and parents["2"].info.run_id == moved["parent_run_id"]
    # The old setting's parent is recreated (its history must end in the mean of the seeds it has).
    assert parent.info.run_id not in {p.info.run_id for p in parents.values()}
    assert parents["0, 1"].data.metrics["test_accuracy_transductive"] == pytest.approx(91.0)
    assert [m.step for m in client.get_metric_history(parents["0, 1"].info.run_id, "test_accuracy_transductive")] == [2]
    assert {c.data.tags[tracking.PARENT_TAG] for c in search(uri, "grouped")[1] if c.data.tags["seed"] != "2"} == \
        {parents["0, 1"].info.run_id}


def test_dataset_inputs_name_split_and_digest(store):
    _, uri, tmp_path = store
    train_digest, test_digest = "a" * 64, "b" * 64
    run = timed_run(tmp_path / "data", config_extra={
        "protocol": "reptile",
        "data": {"train_split": "train", "train_shape": [4800, 20, 28, 28, 1], "digest": train_digest},
        "environment": {"data_dir": str(tmp_path / "tfds"), "git_commit": "c0ffee-dirty"}})
    evaluation = json.loads((run / "eval.json").read_text())
    for entry in evaluation.values():
        entry.update(split="test", data_digest=test_digest)
    (run / "eval.json").write_text(json.dumps(evaluation))
    info = tracking.track_run(run, "data", uri, artifacts=False)
    tracking.track_run(run, "data", uri, artifacts=False)  # not logged twice
    client = tracking.make_client(uri)
    logged = client.get_run(info["run_id"])
    inputs = {(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"]): i.dataset
              for i in logged.inputs.dataset_inputs}
    assert set(inputs) == {("omniglot/train", "a" * 16, "training"), ("omniglot/test", "b" * 16, "test")}
    train_set = inputs[("omniglot/train", "a" * 16, "training")]
    assert json.loads(train_set.profile) == {"sha256": train_digest, "split": "train", "protocol": "reptile",
                                             "shape": [4800, 20, 28, 28, 1]}
    assert json.loads(train_set.source) == {"uri": str(tmp_path / "tfds" / "omniglot")}
    assert "mlflow_tensorspec" in json.loads(train_set.schema)
    # the setting run lists its seeds' data sets
    parent = client.get_run(info["parent_run_id"])
    assert {(i.dataset.name, i.dataset.digest) for i in parent.inputs.dataset_inputs} == \
        {("omniglot/train", "a" * 16), ("omniglot/test", "b" * 16)}
    # the commit recorded at training time, its -dirty suffix as a tag
    assert logged.data.tags["mlflow.source.git.commit"] == "c0ffee"
    assert logged.data.tags["reptile_tf.git_dirty"] == "true"


def test_without_a_recorded_commit_the_source_is_the_checkouts_head(store):
    _, uri, tmp_path = store
    run = timed_run(tmp_path / "nocommit")
    config = json.loads((run / "config.json").read_text())
    del config["environment"]["git_commit"]
    (run / "config.json").write_text(json.dumps(config))
    tags = tracking.make_client(uri).get_run(tracking.track_run(run, "head", uri, artifacts=False)["run_id"]).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(tracking.__file__).parent, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert (tags["mlflow.source.git.commit"], tags["reptile_tf.source_commit_from"]) == (head, "tracking-time HEAD")


def test_experiment_description_is_set_and_a_users_edit_is_kept(store):
    _, uri, _ = store
    client = tracking.make_client(uri)
    experiment_id = tracking.init_store(uri, "described")
    note = client.get_experiment(experiment_id).tags["mlflow.note.content"]
    assert note == tracking.experiment_description("described")
    client.set_experiment_tag(experiment_id, "mlflow.note.content", "my notes")
    tracking.init_store(uri, "described")
    assert client.get_experiment(experiment_id).tags["mlflow.note.content"] == "my notes"


# ------------------------------------------------------------------- the model in MLflow's format


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, omniglot_data_dir, omniglot_train_images):
    """A tiny trained and evaluated Reptile Omniglot 5-way 1-shot run. Evaluation minibatches of 2
    of the 5 support images make each task's adaptation depend on its seed (its index)."""
    settings = train.resolve_settings("reptile", "omniglot", 5, 1,
                                      {"iterations": 10, "eval_inner_steps": 5, "eval_inner_batch": 2})
    run_dir = tmp_path_factory.mktemp("model") / "run"
    train.train(settings, 0, run_dir, train.RunOptions(log_every=5, checkpoint_every=10, val_every=0),
                data_dir=omniglot_data_dir, progress=False, train_images=omniglot_train_images)
    evaluate.evaluate_run(run_dir, rundir.EVAL_MODES, tasks=EPISODES, data_dir=omniglot_data_dir, progress=False)
    return run_dir


EPISODES = 12


def test_logged_model_loads_back_and_scores_episodes_as_evaluate_does(evaluated_run, store, omniglot_data_dir):
    import mlflow
    import numpy as np
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    _, uri, _ = store
    info = tracking.track_run(evaluated_run, "model", uri)
    assert info["model_uri"].startswith("models:/")
    client = tracking.make_client(uri)
    assert client.get_run(info["run_id"]).data.tags[tracking.MODEL_TAG] == info["model_uri"]
    # logged once per checkpoint
    assert tracking.track_run(evaluated_run, "model", uri)["model_uri"] == info["model_uri"]
    experiment_id = info["experiment_id"]
    assert len(client.search_logged_models([experiment_id])) == 1

    with _use_tracking_uri(uri):
        model = mlflow.pyfunc.load_model(info["model_uri"])
    config = rundir.read_config(evaluated_run)
    settings = settings_from_config(config)
    get_chunk, _ = episode_source(settings, "test", EPISODES, omniglot_data_dir, config.get("protocol"))
    episodes = {k: np.asarray(v) for k, v in get_chunk(0, EPISODES).items()}
    inputs = {"support_x": episodes["support_x"], "support_y": episodes["support_y"], "query_x": episodes["query_x"]}
    evaluation = json.loads((evaluated_run / "eval.json").read_text())
    queries = episodes["query_y"].shape[1]
    for mode in rundir.EVAL_MODES:
        labels = model.predict(inputs, params={"mode": mode})
        assert labels.shape == episodes["query_y"].shape and labels.dtype == np.int64
        correct = (labels == episodes["query_y"]).sum(axis=1)
        expected = [round(float(r["accuracy"]) * queries / 100)
                    for r in csv.DictReader(open(evaluated_run / f"eval_{mode}.csv"))]
        assert correct.tolist() == expected, mode  # task by task, the same as `reptile-tf evaluate`
        assert 100 * correct.mean() / queries == pytest.approx(evaluation[mode]["accuracy"], abs=1e-4)
        # one episode alone, scored as task i of the evaluation
        i = 7
        alone = model.predict({k: v[i:i + 1] for k, v in inputs.items()}, params={"mode": mode, "first_task": i})
        assert alone[0].tolist() == labels[i].tolist()


def test_eval_params_name_how_the_test_was_run_and_the_class_rotations_only_when_used():
    from types import SimpleNamespace
    plain = {"tasks": 600, "inner_steps": 3, "split": "test", "checkpoint_iteration": 60000}
    run = SimpleNamespace(evaluation={"transductive": dict(plain, class_rotations="random quarter turn"),
                                      "non_transductive": plain})
    params = tracking.eval_params(run)
    assert params["test_class_rotations_transductive"] == "random quarter turn"
    assert "test_class_rotations_non_transductive" not in params
    assert (params["test_tasks_non_transductive"], params["test_inner_steps_non_transductive"],
            params["test_checkpoint_iteration_transductive"]) == ("600", "3", "60000")

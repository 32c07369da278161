"""MLflow mirroring of run directories: idempotency, content, and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reptile_tf import tracking
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


def search(uri: str, experiment: str):
    client = tracking.make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


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
        ("deadbeef", "abc123", "2.21.0", "cpu")
    assert logged.data.params["inner_lr"] == "0.001"
    assert logged.data.metrics["test_accuracy_transductive"] == pytest.approx(97.5)
    assert logged.data.metrics["test_ci95_non_transductive"] == pytest.approx(0.3)
    history = client.get_metric_history(logged.info.run_id, "train/accuracy")
    assert sorted(m.step for m in history) == [0, 10, 20, 30, 40]  # no duplicates after two logs
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.json", "learning_curve.png", "per_task", "checkpoint"} <= artifacts
    ckpt = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoint")}
    assert ckpt == {"checkpoint/checkpoint", "checkpoint/ckpt-40.index", "checkpoint/ckpt-40.data-00000-of-00001"}
    # artifacts land beside the SQLite file by default
    assert (tmp_path / "mlflow" / "artifacts" / "smoke").is_dir()


def test_retrained_run_with_other_params_replaces_the_stale_run(store):
    run, uri, _ = store
    first = tracking.track_run(run, "exp", uri, artifacts=False)
    config = json.loads((run / "config.json").read_text())
    config["settings"]["inner_lr"] = 0.002
    (run / "config.json").write_text(json.dumps(config))
    second = tracking.track_run(run, "exp", uri, artifacts=False)
    assert second["run_id"] != first["run_id"]
    _, runs = search(uri, "exp")
    assert [r.info.run_id for r in runs] == [second["run_id"]]
    assert runs[0].data.params["inner_lr"] == "0.002"


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
    config["settings"]["iterations"] += 1
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_mlflow_server_serves_tracked_runs_over_http(store):
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
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        server_log.close()

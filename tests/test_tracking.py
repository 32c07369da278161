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


def test_unfinished_run_is_user_error(store):
    run, uri, _ = store
    (run / "DONE").unlink()
    assert cli_main(["track", str(run), "--experiment", "x", "--tracking-uri", uri]) == 2
    assert cli_main(["track", "--experiment", "x", "--tracking-uri", uri]) == 2


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

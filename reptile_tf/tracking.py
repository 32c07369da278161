"""`reptile-tf track`: mirror run directories into MLflow.

    reptile-tf track --init --experiment quick [--tracking-uri URI]   # once, before any job logs
    reptile-tf track RUN_DIR --experiment quick [--tracking-uri URI]  # after `reptile-tf evaluate`

The run directory is the source of truth; MLflow mirrors it. One experiment per preset, one
MLflow run per run directory and resolved configuration: its identity is the
`reptile_tf.run_key` tag (dataset, ways, shots, algorithm, seed), the `run_dir` tag and the
`reptile_tf.config_hash` tag (sha256 of config.json without its `environment` block). Logging
is idempotent: tracking the same directory twice updates the same run (params are checked,
training-curve steps already present are skipped, artifacts are overwritten). When the same
directory was retrained with a different configuration, its stale MLflow run is deleted and a
fresh one created; an MLflow run of another directory is never touched, even when its
run_key is the same (e.g. the same setting trained for another number of iterations).

Nothing is skipped silently: a run without DONE or eval.json is tracked with the tag
`reptile_tf.status` = `training_incomplete` / `not_evaluated` (else `complete`) and a warning;
metrics.jsonl lines that do not parse and non-finite values (not logged: MLflow cannot compare
NaN) are counted in the tags `reptile_tf.metrics_dropped_lines` / `reptile_tf.metrics_nonfinite`
with a warning. Warnings go to stderr and into the returned info (and the marker file).

Default store: SQLite at results/mlflow/mlflow.db with artifacts under results/mlflow/artifacts.
Browse it with `mlflow ui --backend-store-uri sqlite:///results/mlflow/mlflow.db --port 5000`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from reptile_tf.errors import UserError
from reptile_tf.io import write_json_atomic
from reptile_tf.tables import EVAL_MODES, RunRecord, load_run, plot_learning_curves

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow/mlflow.db"
RUN_KEY_TAG = "reptile_tf.run_key"
CONFIG_HASH_TAG = "reptile_tf.config_hash"
RUN_DIR_TAG = "run_dir"
STATUS_TAG = "reptile_tf.status"
DROPPED_TAG = "reptile_tf.metrics_dropped_lines"
NONFINITE_TAG = "reptile_tf.metrics_nonfinite"
# How many problem locations a tag lists (MLflow tag values are bounded; the count is exact).
_LISTED = 10
MARKER_NAME = "mlflow.json"
# metrics.jsonl keys that are not curve values
_NOT_CURVES = {"iteration", "wall_time"}
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


# ------------------------------------------------------------------------------- store


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a SQLite store: `<db dir>/artifacts/<experiment>` (else the server's default)."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    return (db.parent / "artifacts" / experiment).resolve().as_uri()


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise writers of a local SQLite store (parallel Snakemake jobs would hit 'database is locked').

    Remote stores (http, postgres, ...) handle concurrency themselves: no lock.
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_client(tracking_uri: str):
    # Why: mlflow prints telemetry/banners and tries network calls for some defaults; keep it quiet.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client: Any, tracking_uri: str, experiment: str) -> str:
    """The id of `experiment`, created (with its artifact location) if absent; restored if deleted."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri, experiment))


def init_store(tracking_uri: str, experiment: str) -> str:
    """Create the store (schema migrations run here, once) and the experiment; return its id."""
    with store_lock(tracking_uri):
        return ensure_experiment(make_client(tracking_uri), tracking_uri, experiment)


# ------------------------------------------------------------------------------- run content


def run_key(run: RunRecord) -> str:
    return f"{run.dataset}_{run.ways}w{run.shots}s/{run.algorithm}/seed{run.seed}"


def config_hash(run_dir: Path) -> str:
    """sha256 of config.json without `environment` (where and on what it ran, which a resume on
    another machine changes): the resolved configuration a run directory was trained with."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    config = {k: v for k, v in config.items() if k != "environment"}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def run_status(run: RunRecord) -> str:
    """`complete` (DONE and eval.json), `not_evaluated` (DONE only) or `training_incomplete`."""
    if not (run.path / "DONE").exists():
        return "training_incomplete"
    return "complete" if (run.path / "eval.json").is_file() else "not_evaluated"


def run_tags(run: RunRecord, experiment: str) -> dict[str, str]:
    """Identity and provenance tags, all from config.json."""
    environment = run.config.get("environment") or {}
    data = run.config.get("data") or {}
    values = {
        RUN_KEY_TAG: run_key(run),
        CONFIG_HASH_TAG: config_hash(run.path),
        STATUS_TAG: run_status(run),
        "algorithm": run.algorithm, "dataset": run.dataset, "ways": run.ways, "shots": run.shots,
        "seed": run.seed, "preset": experiment,
        "git_commit": environment.get("git_commit") or run.config.get("git_commit") or run.config.get("code_version"),
        "data_digest": data.get("digest") or run.config.get("data_digest"),
        "tensorflow_version": environment.get("tensorflow") or run.config.get("tensorflow_version"),
        "device": environment.get("device") or run.config.get("device"),
        "conv_path": environment.get("conv_path"),
        "onednn": environment.get("onednn"),
        "cpu_class": environment.get("cpu_class"),
        "cpu_model": environment.get("cpu_model"),
        RUN_DIR_TAG: str(run.path.resolve()),
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def run_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Every hyperparameter and run option (nested dicts as dotted keys); environment is in tags."""
    params: dict[str, str] = {}
    for key, value in sorted(config.items()):
        if not prefix and key == "environment":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(run_params(value, f"{name}."))
        else:
            params[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return params


def read_metrics_lines(run_dir: Path) -> tuple[list[dict], list[int]]:
    """(records, 1-based numbers of the lines that are not a JSON object with an iteration).

    Unlike `tables.read_metrics`, which only needs the curve, this says what it dropped: a torn
    last line is expected in a killed run, anything else means the file was damaged.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return [], []
    records, dropped = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "iteration" in record:
            records.append(record)
        else:
            dropped.append(number)
    return records, dropped


def curve_rows(records: list[dict]) -> tuple[list[tuple[str, float, int, int]], list[tuple[str, int]]]:
    """((key, value, timestamp_ms, step) for every finite numeric value, (key, step) of the
    non-finite ones, which are not logged: NaN != NaN would re-log them on every call)."""
    rows, nonfinite = [], []
    for record in records:
        step = int(record["iteration"])
        # Timestamps come from the file (not the clock) so re-logging is recognisably identical.
        timestamp = int(1000 * float(record.get("wall_time") or 0))
        for key, value in record.items():
            if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = f"train/{key}" if not key.startswith("val_") else key
            if math.isfinite(value):
                rows.append((name, float(value), timestamp, step))
            else:
                nonfinite.append((name, step))
    return rows, nonfinite


def curve_metrics(run_dir: Path) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp_ms, step) for every finite numeric value in metrics.jsonl."""
    return curve_rows(read_metrics_lines(run_dir)[0])[0]


def _listed(items: list[str]) -> str:
    return ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")


def data_quality(run: RunRecord, dropped: list[int],
                 nonfinite: list[tuple[str, int]]) -> tuple[dict[str, str], list[str]]:
    """(tags, warnings) saying what was not logged as it is and why; the tags are always set, so
    a run fixed later reads 0 again."""
    tags = {DROPPED_TAG: str(len(dropped)), NONFINITE_TAG: str(len(nonfinite))}
    warnings = []
    status = run_status(run)
    if status == "training_incomplete":
        warnings.append(f"{run.path}: training has not finished (no DONE); tracked with {STATUS_TAG}={status}")
    elif status == "not_evaluated":
        warnings.append(f"{run.path}: no eval.json (not evaluated yet); tracked with {STATUS_TAG}={status} "
                        "and no test metrics")
    if dropped:
        lines = _listed([str(n) for n in dropped])
        tags[DROPPED_TAG] += f" (lines {lines})"
        warnings.append(f"{run.path / 'metrics.jsonl'}: {len(dropped)} line(s) are not valid metric records and "
                        f"were not logged (lines {lines}); tag {DROPPED_TAG}")
    if nonfinite:
        where = _listed([f"{key} at {step}" for key, step in nonfinite])
        tags[NONFINITE_TAG] += f" ({where})"
        warnings.append(f"{run.path / 'metrics.jsonl'}: {len(nonfinite)} non-finite value(s) not logged ({where}); "
                        f"tag {NONFINITE_TAG}")
    return tags, warnings


def final_metrics(run: RunRecord) -> list[tuple[str, float, int, int]]:
    """Test accuracy and 95% interval per batch-norm mode (eval.json), at step = iterations."""
    step = int(run.config.get("iterations") or 0)
    eval_path = run.path / "eval.json"
    timestamp = int(1000 * eval_path.stat().st_mtime) if eval_path.exists() else 0
    rows = []
    for mode in EVAL_MODES:
        result = run.evaluation.get(mode)
        if not result:
            continue
        metric = result.get("metric", "accuracy")
        for key, value in ((f"test_{metric}_{mode}", result.get(metric, result.get("accuracy"))),
                           (f"test_ci95_{mode}", result.get("ci95")), (f"test_tasks_{mode}", result.get("tasks"))):
            if value is not None:
                rows.append((key, float(value), timestamp, step))
    return rows


def latest_checkpoint_files(run_dir: Path) -> list[Path]:
    """The files of the newest checkpoint in checkpoints/ (tf.train.CheckpointManager layout)."""
    ckpt_dir = run_dir / "checkpoints"
    index = ckpt_dir / "checkpoint"
    if not index.is_file():
        return []
    prefix = None
    for line in index.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            prefix = line.split(":", 1)[1].strip().strip('"')
    if not prefix:
        return []
    name = Path(prefix).name
    return [index] + sorted(p for p in ckpt_dir.iterdir() if p.name.startswith(name + "."))


# ------------------------------------------------------------------------------- logging


def same_training(candidate_tags: dict[str, str], candidate_params: dict[str, str], tags: dict[str, str],
                  params: dict[str, str]) -> bool:
    """Whether an MLflow run mirrors this directory's configuration (runs logged before the
    config hash existed are recognised by their params)."""
    logged_hash = candidate_tags.get(CONFIG_HASH_TAG)
    if logged_hash is not None and logged_hash != tags[CONFIG_HASH_TAG]:
        return False
    # A param can be logged once per run: a retrained directory with other values needs a new run.
    return all(candidate_params.get(k, v) == v for k, v in params.items())


def find_or_create_run(client: Any, experiment_id: str, run: RunRecord, tags: dict[str, str],
                       params: dict[str, str]) -> str:
    """The one active MLflow run of this run directory and configuration.

    Only runs of the same directory are candidates: one with the same configuration is reused,
    others (the directory was retrained with other values) are deleted as stale. Runs of other
    directories with the same run_key are left alone.
    """
    from mlflow.entities import ViewType

    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{tags[RUN_KEY_TAG]}'",
                               run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time ASC"])
    keep = None
    for candidate in found:
        if candidate.data.tags.get(RUN_DIR_TAG) != tags[RUN_DIR_TAG]:
            continue  # another run directory's MLflow run: never ours to reuse or delete
        if keep is None and same_training(candidate.data.tags, candidate.data.params, tags, params):
            keep = candidate.info.run_id
        else:
            client.delete_run(candidate.info.run_id)
    if keep is not None:
        return keep
    name = f"{tags[RUN_KEY_TAG].replace('/', '-')}-{tags[CONFIG_HASH_TAG][:8]}"
    return client.create_run(experiment_id, tags=tags, run_name=name).info.run_id


def log_new_metrics(client: Any, run_id: str, rows: list[tuple[str, float, int, int]]) -> int:
    """Log metric points not already in the run (same key, step and value); return how many."""
    from mlflow.entities import Metric

    existing: dict[str, set[tuple[int, float]]] = {}
    fresh = []
    for key, value, timestamp, step in rows:
        if key not in existing:
            existing[key] = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
        if (step, value) not in existing[key]:
            fresh.append(Metric(key, value, timestamp, step))
            existing[key].add((step, value))
    for start in range(0, len(fresh), _BATCH):
        client.log_batch(run_id, metrics=fresh[start:start + _BATCH], synchronous=True)
    return len(fresh)


def log_artifacts(client: Any, run_id: str, run: RunRecord) -> None:
    """Resolved config, eval.json, per-task CSVs, learning curve PNG and the final checkpoint."""
    for name in ("config.json", "eval.json", "metrics.jsonl"):
        if (run.path / name).is_file():
            client.log_artifact(run_id, str(run.path / name))
    for mode in EVAL_MODES:
        csv_name = (run.evaluation.get(mode) or {}).get("per_task_csv")
        if csv_name and (run.path / csv_name).is_file():
            client.log_artifact(run_id, str(run.path / csv_name), artifact_path="per_task")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "learning_curve.png"
        if plot_learning_curves([run], run.dataset, run.ways, run.shots, png):
            client.log_artifact(run_id, str(png))
    for path in latest_checkpoint_files(run.path):
        client.log_artifact(run_id, str(path), artifact_path="checkpoint")


def track_run(run_dir: str | Path, experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI,
              artifacts: bool = True) -> dict[str, Any]:
    """Mirror one run directory into MLflow; return {run_id, experiment_id, ..., warnings} (idempotent).

    An unfinished or unevaluated run is tracked too, tagged with its status and warned about.
    """
    run = load_run(run_dir)
    tags = run_tags(run, experiment)
    params = run_params(run.config)
    records, dropped = read_metrics_lines(run.path)
    curve, nonfinite = curve_rows(records)
    quality_tags, warnings = data_quality(run, dropped, nonfinite)
    tags.update(quality_tags)
    for warning in warnings:
        print(f"reptile-tf track: warning: {warning}", file=sys.stderr)
    with store_lock(tracking_uri):
        client = make_client(tracking_uri)
        experiment_id = ensure_experiment(client, tracking_uri, experiment)
        run_id = find_or_create_run(client, experiment_id, run, tags, params)
        from mlflow.entities import Param, RunTag

        logged = client.get_run(run_id).data.params
        new_params = [Param(k, v) for k, v in params.items() if k not in logged]
        for start in range(0, len(new_params), 100):  # MLflow: at most 100 params per batch
            client.log_batch(run_id, params=new_params[start:start + 100], synchronous=True)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        logged_points = log_new_metrics(client, run_id, curve + final_metrics(run))
        if artifacts:
            log_artifacts(client, run_id, run)
        if tags[STATUS_TAG] == "complete":
            client.set_terminated(run_id, "FINISHED")
        # else the MLflow run stays RUNNING (not ended): the status tag says what is missing
    return {"run_id": run_id, "experiment_id": experiment_id, "experiment": experiment,
            "tracking_uri": tracking_uri, RUN_KEY_TAG: tags[RUN_KEY_TAG], CONFIG_HASH_TAG: tags[CONFIG_HASH_TAG],
            "status": tags[STATUS_TAG], "new_metric_points": logged_points, "warnings": warnings}


# ------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR",
                        help="run directories to mirror (after `reptile-tf evaluate`)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (one per preset)")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
    parser.add_argument("--init", action="store_true",
                        help="create the store and the experiment (run once before parallel jobs log)")
    parser.add_argument("--marker", type=Path, default=None,
                        help=f"JSON file to write on success (default: RUN_DIR/{MARKER_NAME}; none for --init)")
    parser.add_argument("--no-artifacts", action="store_true", help="log tags, params and metrics only")


def resolve_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def main(args: argparse.Namespace) -> int:
    uri = resolve_uri(args)
    if args.init:
        if args.run_dirs:
            raise UserError("--init creates the store and experiment only; call `reptile-tf track RUN_DIR` separately")
        experiment_id = init_store(uri, args.experiment)
        print(f"MLflow experiment {args.experiment!r} (id {experiment_id}) ready at {uri}")
        if args.marker:
            write_json_atomic(args.marker, {"experiment": args.experiment, "experiment_id": experiment_id,
                                            "tracking_uri": uri, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())})
        return 0
    if not args.run_dirs:
        raise UserError("pass at least one RUN_DIR to track, or --init to create the experiment")
    if args.marker and len(args.run_dirs) > 1:
        raise UserError("--marker names one file; pass one RUN_DIR with it")
    for run_dir in args.run_dirs:
        info = track_run(run_dir, args.experiment, uri, artifacts=not args.no_artifacts)
        write_json_atomic(args.marker or Path(run_dir) / MARKER_NAME, info)
        print(f"{run_dir}: MLflow run {info['run_id']} in experiment {args.experiment!r} "
              f"({info['new_metric_points']} new metric points)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from reptile_tf.cli import main as cli_main

    sys.exit(cli_main(["track", *sys.argv[1:]]))

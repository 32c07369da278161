"""`reptile-tf track`: mirror run directories into MLflow.

    reptile-tf track --init --experiment quick [--tracking-uri URI]   # once, before any job logs
    reptile-tf track RUN_DIR --experiment quick [--tracking-uri URI]  # after `reptile-tf evaluate`

The run directory is the source of truth; MLflow mirrors it. One experiment per preset (its
description says how to read it), one MLflow run per run directory and resolved configuration
(a "seed run"), and one parent run per setting (a "setting run": the seed runs of one
configuration that differ only in the seed are its children and it holds their mean).

Seed run identity: the `reptile_tf.run_key` tag (dataset, ways, shots, algorithm, seed), the
`run_dir` tag and the `reptile_tf.config_hash` tag (sha256 of config.json without its
`environment` block). Setting run identity: the `reptile_tf.group_hash` tag (sha256 of
config.json without `environment` and `seed`). Logging is idempotent: tracking the same
directory twice updates the same runs (params are checked, curve steps already present are
skipped, artifacts are overwritten, dataset inputs and the model are logged once). When the same
directory was retrained with a different configuration or re-evaluated with other evaluation
params, or its MLflow run was written by an older version of this module
(`reptile_tf.tracking_version`), or does not start when the training started, its stale MLflow
run is deleted and a fresh one created (MLflow cannot change a param or a start time); an
MLflow run of another directory is never touched, even when its run_key is the same (e.g. the
same setting trained for another number of iterations).

What a seed run holds:
- start, end and duration of the training itself, from metrics.jsonl: end = the last logged
  line's `wall_time`; start = `environment.started` of config.json when recorded, else the first
  logged line's wall time minus its iterations at the pace of the next logged interval (the
  tf.function tracing before the first line is not seen, so that start is a little late). A run
  resumed after an interruption counts the pause in its duration (tag `reptile_tf.resumed`);
- `train_wall_time_s` (end - start), `train_iterations_per_s` and `train_tasks_per_s` (iterations,
  and iterations x meta_batch, over that time) and the curve `train/iterations_per_s` (between
  consecutive logged lines);
- accuracies in percent everywhere (`train/accuracy`, `train/query_accuracy`, `val_accuracy` are
  fractions in metrics.jsonl, read in percent through `reptile_tf.rundir`; `test_accuracy_<mode>`
  and `test_ci95_<mode>` come from eval.json in percent); `test_mse_<mode>` for sine;
- evaluation settings as params: `test_tasks_<mode>`, `test_inner_steps_<mode>`, `test_split_<mode>`,
  `test_checkpoint_iteration_<mode>`, and `test_class_rotations_<mode>` when the test classes were
  rotated (`evaluate --rotate-classes`); every hyperparameter and run option as params;
- MLflow's source tags: `mlflow.source.git.commit` is the commit config.json's `environment`
  recorded at training time (tag `reptile_tf.source_commit_from` = `config.json`), else the
  HEAD of this checkout at tracking time (`tracking-time HEAD`); a `-dirty` suffix becomes
  `reptile_tf.git_dirty` = true; `mlflow.source.name` = `reptile-tf train`, type LOCAL;
- dataset inputs (`mlflow.data`): the training split (context `training`), the validation split
  when training validated on its own split (`validation`) and the evaluation split (`test`),
  each named `<dataset>/<split>` with the first 16 hex digits of the split's sha256 as digest
  (the full one is in the profile);
- artifacts: config.json, eval.json, metrics.jsonl, per-task CSVs, learning curve, the final
  checkpoint, and the trained model in MLflow's model format (`model`, a pyfunc that adapts to a
  support set and labels queries: `reptile_tf/mlflow_model.py`), logged once per checkpoint.
A setting run holds the shared params, the mean over its seeds of the test accuracies (95%
interval over seeds and tasks, as the tables compute it: `stats.combine_seeds`) and of the
timing metrics, logged at step = number of seeds, and spans its seeds' training.

Nothing is skipped silently: a run without DONE or eval.json is tracked with the tag
`reptile_tf.status` = `training_incomplete` / `not_evaluated` (else `complete`) and a warning;
metrics.jsonl lines that do not parse and non-finite values (not logged: MLflow cannot compare
NaN) are counted in the tags `reptile_tf.metrics_dropped_lines` / `reptile_tf.metrics_nonfinite`
with a warning. Warnings go to stderr and into the returned info (and the marker file).

Default store: SQLite at results/mlflow/mlflow.db with artifacts under results/mlflow/artifacts.
Browse it with `make ui` (`mlflow ui --backend-store-uri sqlite:///results/mlflow/mlflow.db`).
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

from reptile_tf import mlflow_model
from reptile_tf.curves import plot_learning_curves
from reptile_tf.datasets import DEFAULT_DATA_DIR
from reptile_tf.errors import UserError
from reptile_tf.io import write_json_atomic
from reptile_tf.rundir import (CONFIG_FILE, ENVIRONMENT_KEY, EVAL_FILE, METRICS_FILE, REPORT_MODES, RunRecord,
                               latest_checkpoint_files, load_run, read_config, read_metrics_lines)
from reptile_tf.runtime import git_commit
from reptile_tf.stats import SeedResult, combine_seeds

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow/mlflow.db"
RUN_KEY_TAG = "reptile_tf.run_key"
CONFIG_HASH_TAG = "reptile_tf.config_hash"
GROUP_KEY_TAG = "reptile_tf.group_key"
GROUP_HASH_TAG = "reptile_tf.group_hash"
KIND_TAG = "reptile_tf.run_kind"  # "seed" (one run directory) or "setting" (the parent of its seeds)
VERSION_TAG = "reptile_tf.tracking_version"
# What this module writes into a run; a run written by another version is recreated (MLflow
# cannot rewrite logged points: version 1 logged fractions and test task counts as metrics).
TRACKING_VERSION = "2"
RUN_DIR_TAG = "run_dir"
STATUS_TAG = "reptile_tf.status"
DROPPED_TAG = "reptile_tf.metrics_dropped_lines"
NONFINITE_TAG = "reptile_tf.metrics_nonfinite"
MODEL_TAG = "reptile_tf.model"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
NOTE_SHA_TAG = "reptile_tf.note_sha256"  # of the description this module wrote (a user's edit is kept)
SOURCE_NAME = "reptile-tf train"
# A model bigger than this is not logged (a warning says so; the checkpoint artifact still is).
MODEL_MAX_BYTES = 512 * 2**20
# Wall times before this (2001-09-09) are not real clock readings (e.g. hand-made test files).
_MIN_WALL_TIME = 1e9
# How many problem locations a tag lists (MLflow tag values are bounded; the count is exact).
_LISTED = 10
MARKER_NAME = "mlflow.json"
# metrics.jsonl keys that are not curve values
_NOT_CURVES = {"iteration", "wall_time"}
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
# Summary metrics a setting run averages over its seeds (test_* are combined with their intervals).
_TIMING_METRICS = ("train_wall_time_s", "train_iterations_per_s", "train_tasks_per_s")


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

    Remote stores (http, postgres, ...) handle concurrency themselves: no lock. (Two jobs tracking
    seeds of one setting at the same moment into a remote store could then both create its parent
    run; tracking either again deletes the extra one.)
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
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_description(experiment: str) -> str:
    """The experiment's description (Markdown, shown on its page in the UI)."""
    return "\n".join([
        f"**reptile-tf, preset `{experiment}`**: Reptile, first-order MAML (FOMAML) and MAML meta-trained on "
        "Omniglot / Mini-ImageNet by the reptile-tf Snakemake pipeline, to reproduce Tables 1 and 2 of the "
        "Reptile paper (Nichol, Achiam and Schulman 2018, arXiv:1803.02999).",
        "",
        "- **Runs**: one parent run per setting (dataset, ways, shots, algorithm and configuration; named "
        "`<dataset>_<ways>w<shots>s-<algorithm>-<hash>`) holding the mean over its seeds; its children are the "
        "seeds, one per training run directory (tag `run_dir`, the source of truth).",
        "- **Units**: every accuracy is in percent (`train/accuracy`, `val_accuracy`, `test_accuracy_<mode>`, "
        "`test_ci95_<mode>` = half-width of the 95% interval). `<mode>`: `transductive` (batch norm over the "
        "query batch, the paper's +T rows) or `non_transductive`.",
        "- **Time**: a run's start, end and duration are the training's (from `metrics.jsonl`); "
        "`train_wall_time_s`, `train_iterations_per_s`, `train_tasks_per_s`.",
        "- **Test**: the final checkpoint on fixed evaluation episodes (`reptile-tf evaluate`); the evaluation "
        "settings are params `test_tasks_<mode>`, `test_inner_steps_<mode>`, `test_split_<mode>`.",
        "- **Model**: each finished run logs `model` (MLflow pyfunc): `mlflow.pyfunc.load_model(uri).predict("
        "{'support_x', 'support_y', 'query_x'})` adapts to each support set and returns the query labels "
        "(see `reptile_tf/mlflow_model.py`).",
        "- **Source**: `mlflow.source.git.commit` = the commit the run was trained from.",
    ])


def ensure_experiment(client: Any, tracking_uri: str, experiment: str) -> str:
    """The id of `experiment`, created (with its artifact location) if absent; restored if deleted.

    Its description is set unless a user has edited the one this module wrote.
    """
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        experiment_id, tags = found.experiment_id, found.tags
    else:
        experiment_id = client.create_experiment(
            experiment, artifact_location=default_artifact_location(tracking_uri, experiment))
        tags = {}
    note = experiment_description(experiment)
    current = tags.get(NOTE_TAG)
    written_by_us = current is None or _sha256(current) == tags.get(NOTE_SHA_TAG)
    if written_by_us and current != note:
        client.set_experiment_tag(experiment_id, NOTE_TAG, note)
        client.set_experiment_tag(experiment_id, NOTE_SHA_TAG, _sha256(note))
    return experiment_id


def init_store(tracking_uri: str, experiment: str) -> str:
    """Create the store (schema migrations run here, once) and the experiment; return its id."""
    with store_lock(tracking_uri):
        return ensure_experiment(make_client(tracking_uri), tracking_uri, experiment)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------- run content


def run_key(run: RunRecord) -> str:
    return f"{run.dataset}_{run.ways}w{run.shots}s/{run.method}/seed{run.seed}"


def group_key(run: RunRecord) -> str:
    return f"{run.dataset}_{run.ways}w{run.shots}s/{run.method}"


def _config_without(run_dir: Path, *keys: str) -> str:
    config = {k: v for k, v in read_config(run_dir).items() if k not in keys}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def config_hash(run_dir: Path) -> str:
    """sha256 of config.json without `environment` (where and on what it ran, which a resume on
    another machine changes): the resolved configuration a run directory was trained with."""
    return _config_without(run_dir, ENVIRONMENT_KEY)


def group_hash(run_dir: Path) -> str:
    """sha256 of config.json without `environment` and `seed`: the setting its seeds share."""
    return _config_without(run_dir, ENVIRONMENT_KEY, "seed")


def run_status(run: RunRecord) -> str:
    """`complete` (DONE and eval.json), `not_evaluated` (DONE only) or `training_incomplete`."""
    if not run.done:
        return "training_incomplete"
    return "complete" if (run.path / EVAL_FILE).is_file() else "not_evaluated"


def source_tags(run: RunRecord) -> dict[str, str]:
    """MLflow's source tags: the commit recorded in config.json at training time, else this
    checkout's HEAD now (the tag `reptile_tf.source_commit_from` says which)."""
    environment = run.config.get(ENVIRONMENT_KEY) or {}
    commit = environment.get("git_commit")
    origin = "config.json"
    if not commit:
        commit, origin = git_commit(), "tracking-time HEAD"
    tags = {"mlflow.source.name": SOURCE_NAME, "mlflow.source.type": "LOCAL"}
    if commit:
        dirty = commit.endswith("-dirty")
        tags.update({"mlflow.source.git.commit": commit.removesuffix("-dirty"),
                     "reptile_tf.git_dirty": str(dirty).lower(), "reptile_tf.source_commit_from": origin})
    return tags


def run_tags(run: RunRecord, experiment: str) -> dict[str, str]:
    """Identity, provenance and source tags, all from config.json."""
    environment = run.config.get(ENVIRONMENT_KEY) or {}
    data = run.config.get("data") or {}
    values = {
        RUN_KEY_TAG: run_key(run),
        CONFIG_HASH_TAG: config_hash(run.path),
        GROUP_KEY_TAG: group_key(run),
        GROUP_HASH_TAG: group_hash(run.path),
        KIND_TAG: "seed",
        VERSION_TAG: TRACKING_VERSION,
        STATUS_TAG: run_status(run),
        "algorithm": run.algorithm, "method": run.method, "dataset": run.dataset, "ways": run.ways, "shots": run.shots,
        "seed": run.seed, "preset": experiment,
        "git_commit": environment.get("git_commit"),
        "data_digest": data.get("digest"),
        "tensorflow_version": environment.get("tensorflow"),
        "device": environment.get("device"),
        "conv_path": environment.get("conv_path"),
        "onednn": environment.get("onednn"),
        "cpu_class": environment.get("cpu_class"),
        "cpu_model": environment.get("cpu_model"),
        "reptile_tf.resumed": len(environment.get("resumed") or []) or None,
        "reptile_tf.accuracy_unit": "percent",
        RUN_DIR_TAG: str(run.path.resolve()),
    }
    tags = {k: str(v) for k, v in values.items() if v is not None}
    tags.update(source_tags(run))
    return tags


def run_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Every hyperparameter and run option (nested dicts as dotted keys); environment is in tags."""
    params: dict[str, str] = {}
    for key, value in sorted(config.items()):
        if not prefix and key == ENVIRONMENT_KEY:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(run_params(value, f"{name}."))
        else:
            params[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return params


def eval_params(run: RunRecord) -> dict[str, str]:
    """How the test metrics were computed, per batch-norm mode (eval.json): counts are params."""
    params = {}
    for mode in REPORT_MODES:
        result = run.evaluation.get(mode) or {}
        for key, name in (("tasks", "tasks"), ("inner_steps", "inner_steps"), ("split", "split"),
                          ("class_rotations", "class_rotations"), ("checkpoint_iteration", "checkpoint_iteration")):
            if result.get(key) is not None:
                params[f"test_{name}_{mode}"] = str(result[key])
    return params


def _wall_time(record: dict) -> float | None:
    value = record.get("wall_time")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if value >= _MIN_WALL_TIME else None


def curve_rows(records: list[dict]) -> tuple[list[tuple[str, float, int, int]], list[tuple[str, int]]]:
    """((key, value, timestamp_ms, step) for every finite numeric value of `records` (as
    `rundir.read_metrics_lines` gives them: accuracies in percent), plus the throughput between
    consecutive lines; (key, step) of the non-finite values, which are not logged: NaN != NaN
    would re-log them on every call)."""
    rows, nonfinite = [], []
    previous = None
    for record in sorted(records, key=lambda r: int(r["iteration"])):
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
        wall = _wall_time(record)
        if previous is not None and wall is not None and wall > previous[1] and step > previous[0]:
            rows.append(("train/iterations_per_s", (step - previous[0]) / (wall - previous[1]), timestamp, step))
        if wall is not None:
            previous = (step, wall)
    return rows, nonfinite


def curve_metrics(run_dir: Path) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp_ms, step) for every finite numeric value in metrics.jsonl."""
    return curve_rows(read_metrics_lines(run_dir)[0])[0]


def training_span(run: RunRecord, records: list[dict]) -> dict[str, Any]:
    """When the training ran, from the run directory: {"start_ms", "end_ms", "wall_time_s"} (None
    where unknown). See the module docstring for how the start is found."""
    timed = sorted((int(r["iteration"]), _wall_time(r)) for r in records if _wall_time(r) is not None)
    environment = run.config.get(ENVIRONMENT_KEY) or {}
    started = environment.get("started")
    recorded = isinstance(started, (int, float)) and not isinstance(started, bool) and started >= _MIN_WALL_TIME
    start = float(started) if recorded else None
    known = recorded
    if start is None and len(timed) >= 2:
        (it0, w0), (it1, w1) = timed[0], timed[1]
        if it1 > it0 and w1 >= w0:
            start, known = w0 - it0 * (w1 - w0) / (it1 - it0), True
    if start is None and timed:
        start = timed[0][1]  # the first line is all there is: no wall time is derived from it
    end = timed[-1][1] if timed and run.done else None
    known = known and end is not None
    return {"start_ms": None if start is None else int(1000 * start),
            "end_ms": None if end is None else int(1000 * end),
            "wall_time_s": (end - start) if known and end >= start else None}


def timing_metrics(run: RunRecord, span: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """Training wall time and throughput at step = iterations (none while unknown)."""
    seconds = span["wall_time_s"]
    if not seconds:
        return []
    iterations = int(run.config.get("iterations") or 0)
    per_s = iterations / seconds
    rows = [("train_wall_time_s", seconds, span["end_ms"], iterations),
            ("train_iterations_per_s", per_s, span["end_ms"], iterations)]
    if run.config.get("meta_batch"):
        rows.append(("train_tasks_per_s", per_s * float(run.config["meta_batch"]), span["end_ms"], iterations))
    return rows


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
        warnings.append(f"{run.path / METRICS_FILE}: {len(dropped)} line(s) are not valid metric records and "
                        f"were not logged (lines {lines}); tag {DROPPED_TAG}")
    if nonfinite:
        where = _listed([f"{key} at {step}" for key, step in nonfinite])
        tags[NONFINITE_TAG] += f" ({where})"
        warnings.append(f"{run.path / METRICS_FILE}: {len(nonfinite)} non-finite value(s) not logged ({where}); "
                        f"tag {NONFINITE_TAG}")
    return tags, warnings


def final_metrics(run: RunRecord) -> list[tuple[str, float, int, int]]:
    """Test accuracy (%) and 95% interval per batch-norm mode (eval.json), at step = iterations."""
    step = int(run.config.get("iterations") or 0)
    eval_path = run.path / EVAL_FILE
    timestamp = int(1000 * eval_path.stat().st_mtime) if eval_path.exists() else 0
    rows = []
    for mode in REPORT_MODES:
        result = run.evaluation.get(mode)
        if not result:
            continue
        metric = result.get("metric", "accuracy")
        for key, value in ((f"test_{metric}_{mode}", result.get(metric, result.get("accuracy"))),
                           (f"test_ci95_{mode}", result.get("ci95"))):
            if value is not None:
                rows.append((key, float(value), timestamp, step))
    return rows


def run_note(run: RunRecord, span: dict[str, Any]) -> str:
    """The run's description: what was trained, for how long, and the test result."""
    lines = [f"{run.algorithm} on {run.dataset} {run.ways}-way {run.shots}-shot, seed {run.seed}, "
             f"{run.config.get('iterations')} meta-iterations (run directory `{run.path}`)."]
    if span["wall_time_s"]:
        lines.append(f"Training took {span['wall_time_s'] / 60:.1f} min.")
    for mode in REPORT_MODES:
        result = run.evaluation.get(mode) or {}
        metric = result.get("metric", "accuracy")
        if result.get(metric) is not None:
            unit = "%" if metric == "accuracy" else ""
            lines.append(f"Test {metric} ({mode}): {float(result[metric]):.2f}{unit} "
                         f"± {float(result.get('ci95') or 0):.2f}{unit} over {result.get('tasks')} tasks.")
    return " ".join(lines)


# ------------------------------------------------------------------------------- datasets


def dataset_inputs(run: RunRecord) -> list[Any]:
    """`mlflow.entities.DatasetInput`s of the run: training, validation (own split only) and test data.

    Each is an `mlflow.data` MetaDataset named `<dataset>/<split>`, its digest the first 16 hex
    digits of the split array's sha256 (config.json `data`, eval.json `data_digest`), the full
    digest in its profile, the prepared TFDS directory as its source.
    """
    data = run.config.get("data") or {}
    if not data.get("train_shape"):
        return []  # sine: synthetic tasks, no data set
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    class SplitDataset(MetaDataset):
        def __init__(self, profile: dict, **kwargs: Any):
            self._profile = profile
            super().__init__(**kwargs)

        @property
        def profile(self) -> dict:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            config = super().to_dict()
            config["schema"] = json.dumps(self.schema.to_dict())  # tensor schema, as NumpyDataset writes it
            config["profile"] = json.dumps(self._profile)
            return config

    environment = run.config.get(ENVIRONMENT_KEY) or {}
    data_dir = Path(environment.get("data_dir") or DEFAULT_DATA_DIR)
    source = LocalArtifactDatasetSource(str(data_dir / run.dataset))
    image_shape = tuple(data["train_shape"][2:])  # [class, image, H, W, C] as train recorded it
    schema = TensorDatasetSchema(features=Schema(
        [TensorSpec(np.dtype(np.uint8), (-1, -1, *image_shape), "images [class, image, H, W, C]")]))
    protocol = run.config.get("protocol")
    wanted: list[tuple[str, str, str, dict]] = [  # (split, digest, context, profile extras)
        (data["train_split"], str(data["digest"]), "training", {"shape": data["train_shape"]})]
    if data.get("val_digest"):
        wanted.append(("val", str(data["val_digest"]), "validation", {"used_for": data.get("validation")}))
    for mode in REPORT_MODES:
        result = run.evaluation.get(mode) or {}
        if result.get("data_digest"):
            wanted.append((str(result.get("split") or "test"), str(result["data_digest"]), "test",
                           {"eval_seed": result.get("eval_seed")}))
    inputs, seen = [], set()
    for split, digest, context, extras in wanted:
        if (split, digest, context) in seen:
            continue
        seen.add((split, digest, context))
        profile = {"sha256": digest, "split": split, "protocol": protocol,
                   **{k: v for k, v in extras.items() if v is not None}}
        dataset = SplitDataset(profile, source=source, name=f"{run.dataset}/{split}", digest=digest[:16],
                               schema=schema)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def log_new_inputs(client: Any, run_id: str, inputs: list[Any]) -> int:
    """Log the dataset inputs the run does not hold yet (same name, digest and context); return how many."""
    logged = client.get_run(run_id).inputs
    have = {(i.dataset.name, i.dataset.digest, tuple(sorted((t.key, t.value) for t in i.tags)))
            for i in (logged.dataset_inputs if logged else [])}
    fresh = [i for i in inputs
             if (i.dataset.name, i.dataset.digest, tuple(sorted((t.key, t.value) for t in i.tags))) not in have]
    if fresh:
        client.log_inputs(run_id, datasets=fresh)
    return len(fresh)


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


def reusable(candidate: Any, tags: dict[str, str], params: dict[str, str], start_ms: int | None) -> bool:
    """Whether an MLflow run of this directory can be updated in place (else it is recreated)."""
    if candidate.data.tags.get(VERSION_TAG) != TRACKING_VERSION:
        return False  # written by an older version of this module (other units, counts as metrics)
    if start_ms is not None and candidate.info.start_time != start_ms:
        return False  # MLflow cannot move a run's start
    return same_training(candidate.data.tags, candidate.data.params, tags, params)


def find_or_create_run(client: Any, experiment_id: str, run: RunRecord, tags: dict[str, str],
                       params: dict[str, str], start_ms: int | None = None) -> tuple[str, set[str]]:
    """(the one active MLflow run of this run directory and configuration, group hashes of the
    runs deleted as stale).

    Only runs of the same directory are candidates: one with the same configuration is reused,
    others (the directory was retrained with other values) are deleted as stale. Runs of other
    directories with the same run_key are left alone.
    """
    from mlflow.entities import ViewType

    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{tags[RUN_KEY_TAG]}'",
                               run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time ASC"])
    keep, stale_groups = None, set()
    for candidate in found:
        if candidate.data.tags.get(RUN_DIR_TAG) != tags[RUN_DIR_TAG]:
            continue  # another run directory's MLflow run: never ours to reuse or delete
        if keep is None and reusable(candidate, tags, params, start_ms):
            keep = candidate.info.run_id
        else:
            client.delete_run(candidate.info.run_id)
            if candidate.data.tags.get(GROUP_HASH_TAG):
                stale_groups.add(candidate.data.tags[GROUP_HASH_TAG])
    if keep is not None:
        return keep, stale_groups
    name = f"{tags[RUN_KEY_TAG].replace('/', '-')}-{tags[CONFIG_HASH_TAG][:8]}"
    return client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info.run_id, stale_groups


def log_new_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    new_params = [Param(k, v) for k, v in params.items() if k not in logged]
    for start in range(0, len(new_params), 100):  # MLflow: at most 100 params per batch
        client.log_batch(run_id, params=new_params[start:start + 100], synchronous=True)


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
    for name in (CONFIG_FILE, EVAL_FILE, METRICS_FILE):
        if (run.path / name).is_file():
            client.log_artifact(run_id, str(run.path / name))
    for mode in REPORT_MODES:
        csv_name = (run.evaluation.get(mode) or {}).get("per_task_csv")
        if csv_name and (run.path / csv_name).is_file():
            client.log_artifact(run_id, str(run.path / csv_name), artifact_path="per_task")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "learning_curve.png"
        if plot_learning_curves([run], run.dataset, run.ways, run.shots, png):
            client.log_artifact(run_id, str(png))
    for path in latest_checkpoint_files(run.path):
        client.log_artifact(run_id, str(path), artifact_path="checkpoint")


def log_model(client: Any, tracking_uri: str, experiment_id: str, run_id: str,
              run: RunRecord) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's final checkpoint as an MLflow pyfunc model (once per checkpoint): (info, warnings)."""
    if not run.done or not mlflow_model.checkpoint_files(run.path):
        return None, []
    size = mlflow_model.model_bytes(run.path)
    if size > MODEL_MAX_BYTES:
        message = (f"{run.path}: model not logged ({size / 2**20:.0f} MiB > {MODEL_MAX_BYTES / 2**20:.0f} MiB); "
                   "the checkpoint artifact holds the weights")
        client.set_tag(run_id, MODEL_TAG, "skipped: too large")
        return None, [message]
    info = mlflow_model.log_model(client, tracking_uri, experiment_id, run_id, run.path)
    client.set_tag(run_id, MODEL_TAG, info["model_uri"])
    return info, []


def track_run(run_dir: str | Path, experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI,
              artifacts: bool = True, model: bool = True) -> dict[str, Any]:
    """Mirror one run directory into MLflow and update its setting run; return {run_id,
    experiment_id, parent_run_id, ..., warnings} (idempotent).

    An unfinished or unevaluated run is tracked too, tagged with its status and warned about.
    `model`: log the final checkpoint as an MLflow model (needs `artifacts`).
    """
    run = load_run(run_dir)
    tags = run_tags(run, experiment)
    params = {**run_params(run.config), **eval_params(run)}
    records, dropped = read_metrics_lines(run.path)
    curve, nonfinite = curve_rows(records)
    span = training_span(run, records)
    quality_tags, warnings = data_quality(run, dropped, nonfinite)
    tags.update(quality_tags)
    tags["mlflow.note.content"] = run_note(run, span)
    model_info = None
    with store_lock(tracking_uri):
        client = make_client(tracking_uri)
        experiment_id = ensure_experiment(client, tracking_uri, experiment)
        run_id, stale_groups = find_or_create_run(client, experiment_id, run, tags, params, span["start_ms"])
        from mlflow.entities import RunTag

        log_new_params(client, run_id, params)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        logged_points = log_new_metrics(client, run_id, curve + timing_metrics(run, span) + final_metrics(run))
        log_new_inputs(client, run_id, dataset_inputs(run))
        if artifacts:
            log_artifacts(client, run_id, run)
            if model:
                model_info, model_warnings = log_model(client, tracking_uri, experiment_id, run_id, run)
                warnings += model_warnings
        if tags[STATUS_TAG] == "complete":
            client.set_terminated(run_id, "FINISHED", end_time=span["end_ms"])
        # else the MLflow run stays RUNNING (not ended): the status tag says what is missing
        parent_id = sync_setting_run(client, experiment_id, tags[GROUP_HASH_TAG])
        for stale in stale_groups - {tags[GROUP_HASH_TAG]}:
            sync_setting_run(client, experiment_id, stale)
    for warning in warnings:
        print(f"reptile-tf track: warning: {warning}", file=sys.stderr)
    return {"run_id": run_id, "parent_run_id": parent_id, "experiment_id": experiment_id, "experiment": experiment,
            "tracking_uri": tracking_uri, RUN_KEY_TAG: tags[RUN_KEY_TAG], CONFIG_HASH_TAG: tags[CONFIG_HASH_TAG],
            "status": tags[STATUS_TAG], "new_metric_points": logged_points,
            "model_uri": model_info["model_uri"] if model_info else None, "warnings": warnings}


# ------------------------------------------------------------------------------- setting runs


def setting_content(children: list[Any]) -> dict[str, Any]:
    """What the parent of these seed runs should hold: tags, params, metrics, span, status."""
    first = children[0].data
    seeds = sorted(int(c.data.tags.get("seed", 0)) for c in children)
    shared_tags = {k: v for k, v in first.tags.items()
                   if k in ("algorithm", "dataset", "ways", "shots", "preset", "data_digest", "mlflow.source.name",
                            "mlflow.source.type", "reptile_tf.accuracy_unit", GROUP_KEY_TAG, GROUP_HASH_TAG)}
    for key in ("mlflow.source.git.commit", "git_commit", "tensorflow_version", "cpu_model", "conv_path"):
        values = {c.data.tags.get(key) for c in children} - {None}
        if values:
            shared_tags[key] = values.pop() if len(values) == 1 else "mixed: " + ", ".join(sorted(values))
    statuses = {c.data.tags.get(STATUS_TAG) for c in children}
    status = "complete" if statuses == {"complete"} else "incomplete"
    shared_tags.update({KIND_TAG: "setting", VERSION_TAG: TRACKING_VERSION, STATUS_TAG: status,
                        "seeds": ", ".join(map(str, seeds))})
    # Params every seed shares with the same value (the seed, and eval params that differ, are not).
    params = {k: v for k, v in first.params.items()
              if k != "seed" and all(c.data.params.get(k) == v for c in children)}
    metrics = []
    count = len(children)
    timestamp = max(c.info.end_time or c.info.start_time or 0 for c in children)
    for name in sorted({k for c in children for k in c.data.metrics if k.startswith("test_")
                        and not k.startswith("test_ci95_")}):
        mode = name.split("_", 2)[2] if name.count("_") >= 2 else ""
        results = [SeedResult(c.data.metrics[name], c.data.metrics.get(f"test_ci95_{mode}", 0.0),
                              int(c.data.params.get(f"test_tasks_{mode}", 0)))
                   for c in children if name in c.data.metrics]
        if len(results) != count:
            continue  # a seed not evaluated yet: no mean that would silently leave it out
        cell = combine_seeds(results)
        metrics += [(name, cell.mean, timestamp, count), (f"test_ci95_{mode}", cell.ci95, timestamp, count)]
    for name in _TIMING_METRICS:
        values = [c.data.metrics[name] for c in children if name in c.data.metrics]
        if len(values) == count:
            metrics.append((name, sum(values) / count, timestamp, count))
    metrics.append(("seeds", float(count), timestamp, count))
    starts = [c.info.start_time for c in children]
    ends = [c.info.end_time for c in children]
    note = (f"Mean over seeds {', '.join(map(str, seeds))} of {first.tags.get('algorithm')} on "
            f"{first.tags.get('dataset')} {first.tags.get('ways')}-way {first.tags.get('shots')}-shot (its child "
            "runs); test_ci95_* = 95% interval over seeds and tasks, as in the tables. Metrics are logged at "
            "step = number of seeds.")
    shared_tags[NOTE_TAG] = note
    return {"tags": shared_tags, "params": params, "metrics": metrics, "start_ms": min(starts),
            "end_ms": max(ends) if status == "complete" and all(ends) else None, "status": status}


def _history_extends(client: Any, run_id: str, rows: list[tuple[str, float, int, int]]) -> bool:
    """Whether logging `rows` keeps each metric's latest point the one wanted: no point at a
    higher step, and none at the same step with another value (after a seed left the setting or
    was re-evaluated, the parent is recreated instead)."""
    for key, value, _, step in rows:
        for point in client.get_metric_history(run_id, key):
            if point.step > step or (point.step == step and point.value != value):
                return False
    return True


def sync_setting_run(client: Any, experiment_id: str, group: str) -> str | None:
    """Create or update the parent run of the seed runs with group hash `group`; return its id.

    Without seed runs left, the parent is deleted. A parent is recreated when it cannot be updated
    in place: its start (the earliest seed's) moved, a param it holds no longer holds for every
    seed (MLflow cannot change either), or its metrics would no longer end in the current mean
    (a seed left the setting or was re-evaluated): a parent's history is the mean over 1, 2, ...
    seeds as they arrived.
    """
    from mlflow.entities import Param, RunTag, ViewType

    def search(kind: str) -> list[Any]:
        return client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  filter_string=f"tags.`{GROUP_HASH_TAG}` = '{group}' AND tags.`{KIND_TAG}` = '{kind}'",
                                  order_by=["attributes.start_time ASC"])

    children, parents = search("seed"), search("setting")
    if not children:
        for parent in parents:
            client.delete_run(parent.info.run_id)
        return None
    want = setting_content(children)
    keep = None
    for parent in parents:
        fits = (keep is None and parent.info.start_time == want["start_ms"]
                and parent.data.tags.get(VERSION_TAG) == TRACKING_VERSION
                and all(want["params"].get(k) == v for k, v in parent.data.params.items())
                and _history_extends(client, parent.info.run_id, want["metrics"]))
        if fits:
            keep = parent.info.run_id
        else:
            client.delete_run(parent.info.run_id)
    if keep is None:
        name = f"{want['tags'][GROUP_KEY_TAG].replace('/', '-')}-{group[:8]}"
        keep = client.create_run(experiment_id, start_time=want["start_ms"], tags=want["tags"],
                                 run_name=name).info.run_id
    logged = client.get_run(keep).data.params
    new_params = [Param(k, v) for k, v in want["params"].items() if k not in logged]
    for start in range(0, len(new_params), 100):
        client.log_batch(keep, params=new_params[start:start + 100], synchronous=True)
    client.log_batch(keep, tags=[RunTag(k, v) for k, v in want["tags"].items()], synchronous=True)
    log_new_metrics(client, keep, want["metrics"])
    # the seeds' data sets (dataset inputs are per run: the parent lists them too)
    inputs = {}
    for child in children:
        child_inputs = client.get_run(child.info.run_id).inputs
        for item in (child_inputs.dataset_inputs if child_inputs else []):
            key = (item.dataset.name, item.dataset.digest, tuple((t.key, t.value) for t in item.tags))
            inputs.setdefault(key, item)
    log_new_inputs(client, keep, list(inputs.values()))
    for child in children:
        if child.data.tags.get(PARENT_TAG) != keep:
            client.set_tag(child.info.run_id, PARENT_TAG, keep)
    if want["status"] == "complete":
        client.set_terminated(keep, "FINISHED", end_time=want["end_ms"])
    elif client.get_run(keep).info.status != "RUNNING":
        client.update_run(keep, status="RUNNING")  # a seed was added that has not finished
    return keep


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
    parser.add_argument("--no-artifacts", action="store_true",
                        help="log tags, params, metrics and dataset inputs only (no files, no model)")
    parser.add_argument("--no-model", action="store_true",
                        help="do not log the trained model in MLflow's model format (it is logged once per "
                             f"checkpoint, up to {MODEL_MAX_BYTES // 2**20} MiB)")


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
        info = track_run(run_dir, args.experiment, uri, artifacts=not args.no_artifacts, model=not args.no_model)
        write_json_atomic(args.marker or Path(run_dir) / MARKER_NAME, info)
        print(f"{run_dir}: MLflow run {info['run_id']} (setting run {info['parent_run_id']}) in experiment "
              f"{args.experiment!r} ({info['new_metric_points']} new metric points"
              f"{', model ' + info['model_uri'] if info['model_uri'] else ''})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from reptile_tf.cli import main as cli_main

    sys.exit(cli_main(["track", *sys.argv[1:]]))

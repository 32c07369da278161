"""A trained run in MLflow's model format: a pyfunc model that adapts to a support set and labels queries.

`reptile-tf track` logs it (name `model`) into the run's MLflow run; load it back with

    import mlflow
    model = mlflow.pyfunc.load_model("models:/<model_id>")   # or "runs:/<run_id>/model"
    labels = model.predict({"support_x": sx, "support_y": sy, "query_x": qx},
                           params={"mode": "transductive", "first_task": 0})

Input: one or more episodes, as a dict of numpy arrays with a leading task dimension T
(one episode: T = 1, e.g. `sx[None]`):

- `support_x` float32 `[T, ways*shots, H, W, C]`, pixel values in [0, 1] (Omniglot 28x28x1,
  Mini-ImageNet 84x84x3; sine: `[T, shots, 1]`),
- `support_y` int32 `[T, ways*shots]`, labels 0..ways-1 (sine: float32 `[T, shots, 1]`),
- `query_x` float32 `[T, Q, H, W, C]`.

Output: int64 query labels `[T, Q]` (sine: float32 predictions `[T, Q, 1]`).

Params: `mode` = `transductive` (default; the queries of a task form one batch, batch norm uses
their statistics) or `non_transductive` (each query in a batch of the whole support set plus that
query); `first_task` (default 0) = the index of the first episode in `reptile-tf evaluate`'s fixed
episode list: task i adapts with the minibatch seed `scoring.task_seeds` gives task i there, so
episode i of the evaluation scores exactly as `reptile-tf evaluate` scores it.

The prediction runs `reptile-tf evaluate`'s code path (`scoring.adapted_query_outputs`: the
evaluation inner loop `meta.adapt` from the final checkpoint's meta-parameters and, for an Adam
inner loop, its inner Adam moments per `eval_adam_state`; then `meta.predict`), compiled in one
`tf.function` per mode and batch shape. The model's artifacts are the run's config.json and its
final checkpoint (`artifacts/run/`); its code is `mlflow_model_code.py` (MLflow's "models from
code": nothing is pickled) with the `reptile_tf` package stored beside it (`code/`), so loading
needs only TensorFlow, numpy and MLflow (the versions it was logged with are pinned in the
model's requirements.txt). `reptile-tf track` logs it once per checkpoint (the LoggedModel tag
`reptile_tf.checkpoint_digest`), linked to the run's metrics at step = iterations.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import tensorflow as tf

import reptile_tf
from reptile_tf import datasets, meta, runtime
from reptile_tf.rundir import (CHECKPOINT_DIR, CHECKPOINT_STATE_FILE, CONFIG_FILE, EVAL_MODES, latest_checkpoint_files,
                               read_config)
from reptile_tf.run_state import build_model, load_run_state
from reptile_tf.scoring import adaptation_adam_state, adapted_query_outputs, task_seeds
from reptile_tf.settings import settings_from_config

MODEL_NAME = "model"
RUN_ARTIFACT = "run"  # the artifact directory: config.json + checkpoints/ (newest checkpoint only)
CHECKPOINT_DIGEST_TAG = "reptile_tf.checkpoint_digest"
MODEL_TYPE = "reptile_tf.meta_learner"


# MLflow warns, when the class is defined, that predict has no type hints: on purpose, the input
# is described by the tensor signature logged with the model (type hints cannot express its
# shapes). Its own warning filter ("once") overrides the caller's, so that one message is dropped here.
_show_warning = warnings.showwarning


def _without_type_hint_advice(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    if "type hints" not in str(message):
        _show_warning(message, category, *args, **kwargs)


warnings.showwarning = _without_type_hint_advice
try:
    class MetaLearnerModel(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper of a run directory's final checkpoint (see the module docstring)."""

        def load_context(self, context: Any) -> None:
            run_dir = Path(context.artifacts[RUN_ARTIFACT])
            self._config = read_config(run_dir)
            self._settings = settings_from_config(self._config)
            runtime.deterministic_runtime(xla=False)  # as `reptile-tf evaluate`
            self._model = build_model(self._settings)
            state, self.iteration = load_run_state(run_dir, self._config)
            self._params = meta.params_from_state(state)
            self._opt_state = adaptation_adam_state(self._settings, state)
            self._functions: dict[str, Any] = {}

        def _function(self, mode: str) -> Any:
            if mode not in self._functions:
                model, settings = self._model, self._settings

                @tf.function
                def outputs(params, opt_state, seed, support_x, support_y, query_x):
                    return adapted_query_outputs(model, settings, params, opt_state, seed, support_x, support_y,
                                                 query_x, mode)

                self._functions[mode] = outputs
            return self._functions[mode]

        def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
            params = dict(params or {})
            mode = str(params.get("mode") or "transductive")
            if mode not in EVAL_MODES:
                raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(EVAL_MODES)}")
            first_task = int(params.get("first_task") or 0)
            episodes = _episodes(model_input)
            classifier = self._model.is_classifier
            label_dtype = tf.int32 if classifier else tf.float32
            support_x = tf.convert_to_tensor(np.asarray(episodes["support_x"], dtype=np.float32))
            support_y = tf.convert_to_tensor(np.asarray(episodes["support_y"]), dtype=label_dtype)
            query_x = tf.convert_to_tensor(np.asarray(episodes["query_x"], dtype=np.float32))
            tasks = int(support_x.shape[0])
            if support_x.shape.rank < 3 or int(support_y.shape[0]) != tasks or int(query_x.shape[0]) != tasks:
                raise ValueError("support_x, support_y and query_x need the same leading task dimension T "
                                 "(one episode: add an axis, e.g. support_x[None])")
            with runtime.precision_policy(bool(self._config.get("mixed_precision"))):
                outputs = self._function(mode)(self._params, self._opt_state, task_seeds(first_task, tasks),
                                               support_x, support_y, query_x)
            if classifier:
                return np.argmax(outputs.numpy(), axis=-1).astype(np.int64)
            return outputs.numpy().astype(np.float32)
finally:
    warnings.showwarning = _show_warning


def _episodes(model_input: Any) -> dict[str, Any]:
    """The three arrays of the input (a dict; a one-row DataFrame of arrays is accepted too)."""
    if hasattr(model_input, "to_dict") and not isinstance(model_input, dict):
        model_input = {k: v[0] if len(v) == 1 else v for k, v in model_input.to_dict(orient="list").items()}
    missing = [k for k in ("support_x", "support_y", "query_x") if k not in model_input]
    if missing:
        raise ValueError(f"model input lacks {missing}; pass a dict with support_x, support_y and query_x")
    return model_input


# ------------------------------------------------------------------------------- logging


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The newest checkpoint's data and index files (no `checkpoint` state file), [] if none."""
    return [p for p in latest_checkpoint_files(run_dir) if p.name != CHECKPOINT_STATE_FILE]


def checkpoint_digest(run_dir: Path) -> str:
    """sha256 over the newest checkpoint's file names and bytes: which weights a model holds."""
    digest = hashlib.sha256()
    for path in checkpoint_files(run_dir):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in checkpoint_files(run_dir)) + (Path(run_dir) / CONFIG_FILE).stat().st_size


def stage_run(run_dir: Path, dest: Path) -> Path:
    """Copy config.json and the newest checkpoint into `dest` (a run directory holding only that)."""
    files = checkpoint_files(run_dir)
    (dest / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy2(Path(run_dir) / CONFIG_FILE, dest / CONFIG_FILE)
    for path in files:
        shutil.copy2(path, dest / CHECKPOINT_DIR / path.name)
    prefix = files[0].name.split(".", 1)[0]
    (dest / CHECKPOINT_DIR / CHECKPOINT_STATE_FILE).write_text(
        f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return dest


def signature(config: dict) -> Any:
    """Tensor signature (leading task dimension T, any support/query count) and the two params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    dataset = datasets.get(config.get("dataset"))
    image = dataset.input_shape
    if not dataset.is_classifier:
        label, out = TensorSpec(np.dtype(np.float32), (-1, -1, 1), "support_y"), \
            TensorSpec(np.dtype(np.float32), (-1, -1, 1), "query_predictions")
    else:
        label, out = TensorSpec(np.dtype(np.int32), (-1, -1), "support_y"), \
            TensorSpec(np.dtype(np.int64), (-1, -1), "query_labels")
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, -1, *image), "support_x"), label,
                     TensorSpec(np.dtype(np.float32), (-1, -1, *image), "query_x")])
    params = ParamSchema([ParamSpec("mode", "string", "transductive"), ParamSpec("first_task", "long", 0)])
    return ModelSignature(inputs=inputs, outputs=Schema([out]), params=params)


def requirements() -> list[str]:
    """Pinned versions of what loading the model imports (reptile_tf itself travels in code/)."""
    pins = []
    for name in ("tensorflow-cpu", "tensorflow", "numpy", "mlflow", "tqdm"):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if any(p.startswith("tensorflow-cpu==") for p in pins):
        pins = [p for p in pins if not p.startswith("tensorflow==")]
    return pins


def find_logged_model(client: Any, experiment_id: str, run_id: str, digest: str) -> Any:
    """The READY model this run already holds for these weights, or None."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND tags.`{CHECKPOINT_DIGEST_TAG}` = '{digest}'")
    for model in found:
        if model.status == LoggedModelStatus.READY:
            return model
    return None


def log_model(client: Any, tracking_uri: str, experiment_id: str, run_id: str, run_dir: Path) -> dict[str, Any]:
    """Log the run's final checkpoint as a pyfunc model of `run_id`, once per checkpoint (idempotent).

    Returns {"model_id", "model_uri", "logged": bool (False: already there)}.
    """
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    run_dir = Path(run_dir)
    digest = checkpoint_digest(run_dir)
    existing = find_logged_model(client, experiment_id, run_id, digest)
    if existing is not None:
        return {"model_id": existing.model_id, "model_uri": f"models:/{existing.model_id}", "logged": False}
    config = read_config(run_dir)
    iteration = int(config.get("iterations") or 0)
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                        tags={CHECKPOINT_DIGEST_TAG: digest}, model_type=MODEL_TYPE)
    try:
        with tempfile.TemporaryDirectory() as tmp, _use_tracking_uri(tracking_uri), warnings.catch_warnings():
            # Chosen on purpose: a tensor signature instead of type hints and of an input example
            # (an example episode would be megabytes and its validation would load TensorFlow here).
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*input example was not provided.*", category=UserWarning)
            staged = stage_run(run_dir, Path(tmp) / RUN_ARTIFACT)
            # Model.log (what mlflow.pyfunc.log_model calls) with an explicit run_id and model_id: no
            # active run is started or ended, so the run's start/end times stay the training's.
            Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                      model_id=logged.model_id,
                      python_model=str(Path(__file__).with_name("mlflow_model_code.py")),  # models from code
                      artifacts={RUN_ARTIFACT: str(staged)},
                      code_paths=[str(Path(reptile_tf.__file__).parent)], pip_requirements=requirements(),
                      signature=signature(config), step=iteration,
                      metadata={"reptile_tf": {"checkpoint_digest": digest, "iterations": iteration,
                                               "docs": "reptile_tf/mlflow_model.py"}})
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return {"model_id": logged.model_id, "model_uri": f"models:/{logged.model_id}", "logged": True}

"""A run's model and its checkpointed training state: built from Settings, held in tf.Variables,
saved by `train`, restored by `train` (resume), `evaluate` and the MLflow model.

Checkpoint (`checkpoints/ckpt-<iteration>`, docs/interfaces.md): `tf.train.Checkpoint(state=<meta
state as variables>, iteration=<int64 completed iterations>, seed=<int64>)`. The file layout and
its names are `reptile_tf.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf

from reptile_tf import meta
from reptile_tf.errors import UserError
from reptile_tf.models import Model, get_model
from reptile_tf.rundir import CHECKPOINT_DIR, CHECKPOINT_PREFIX, checkpoint_state, latest_checkpoint
from reptile_tf.settings import Settings, settings_from_config


def build_model(settings: Settings) -> Model:
    return get_model(settings.dataset, settings.num_outputs, network=settings.network)


def initial_state(model: Model, settings: Settings, seed: int) -> dict:
    return meta.init_meta_state(model, model.init(seed), settings, seed=seed)


@dataclasses.dataclass
class TrainingVariables:
    """The checkpointed training state: meta state variables, iteration counter and seed."""

    state: Any  # nested dict of tf.Variable, same structure as meta.init_meta_state
    iteration: tf.Variable  # int64 scalar: completed meta-iterations
    seed: tf.Variable  # int64 scalar: the run's seed (task seeds derive from seed + iteration)

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(state=self.state, iteration=self.iteration, seed=self.seed)

    def read_state(self) -> Any:
        return tf.nest.map_structure(lambda v: v.read_value(), self.state)


def make_variables(state: Any, seed: int) -> TrainingVariables:
    variables = tf.nest.map_structure(lambda t: tf.Variable(t, trainable=False), state)
    return TrainingVariables(state=variables, iteration=tf.Variable(0, dtype=tf.int64, trainable=False),
                             seed=tf.Variable(seed, dtype=tf.int64, trainable=False))


def checkpoint_manager(variables: TrainingVariables, run_dir: Path, keep: int = 3) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(variables.checkpoint(), str(run_dir / CHECKPOINT_DIR), max_to_keep=keep)


def restore_checkpoint(variables: TrainingVariables, path: str, run_dir: Path) -> None:
    """Restore every variable from `path`; UserError on a corrupt or mismatched checkpoint."""
    try:
        status = variables.checkpoint().restore(path)
        status.assert_existing_objects_matched()
        # Every state variable must come from the checkpoint (no silently fresh values).
        status.assert_consumed()
    except Exception as err:  # noqa: BLE001 - a damaged file surfaces as IndexError, DataLossError, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"checkpoint {path} in {run_dir} does not match this run's configuration or is corrupt "
            f"({first_line[:300]}); delete {run_dir / CHECKPOINT_DIR} to start over, or use a new --out") from None


def load_run_state(run_dir: Path, config: dict[str, Any]) -> tuple[dict, int]:
    """Restore the final checkpoint of a run: (meta state dict of tensors, iteration)."""
    settings = settings_from_config(config)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"no checkpoint in {run_dir / CHECKPOINT_DIR}; train the run first "
                        "(`reptile-tf train ... --out RUN_DIR`)")
    seed = int(config.get("seed", 0))
    model = build_model(settings)
    variables = make_variables(initial_state(model, settings, seed), seed)
    restore_checkpoint(variables, str(path), run_dir)
    return variables.read_state(), int(variables.iteration.numpy())


def _tf_error_reason(err: BaseException) -> str:
    """The OS-level reason at the end of a TensorFlow I/O error ('...; No space left on device [Op:SaveV2]')."""
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    last = text[-1] if text else type(err).__name__
    last = last.split(" [Op:")[0]
    return last.rsplit("; ", 1)[-1].strip() or type(err).__name__


def referenced_checkpoints(run_dir: Path) -> set[str]:
    """Prefix names (`ckpt-N`) the manager's state file lists; empty without a state file."""
    newest, kept = checkpoint_state(run_dir)
    return {name for name in [*kept, newest] if name}


def clean_checkpoint_dir(run_dir: Path) -> list[str]:
    """Remove what a killed or failed save left behind; return the removed names.

    A save writes `ckpt-N_temp/` and merges it into `ckpt-N.index` + `ckpt-N.data-*`, then
    rewrites the `checkpoint` state file (via `checkpoint.tmp<hex>`), then deletes the oldest
    checkpoint. Interrupted anywhere, it can leave the temp directory, a temp state file, or
    checkpoint files the state file does not list (never restored, never deleted by the
    manager). Referenced checkpoints are never touched.
    """
    directory = run_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    keep = referenced_checkpoints(run_dir)
    removed = []
    for path in sorted(directory.iterdir()):
        name = path.name
        stale = (name.startswith(CHECKPOINT_PREFIX) and name.endswith("_temp")) or name.startswith("checkpoint.tmp")
        if not stale and name.startswith(CHECKPOINT_PREFIX) and (name.endswith(".index") or ".data-" in name):
            stale = name.split(".", 1)[0] not in keep
        if stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(name)
    return removed


def save_checkpoint(manager: tf.train.CheckpointManager, iteration: int, run_dir: Path, last_saved: int) -> None:
    """`manager.save` as checkpoint `iteration`; a failed write (disk full, permissions) is a
    UserError and leaves no partial `ckpt-N` files or `ckpt-N_temp` directory."""
    try:
        manager.save(checkpoint_number=iteration)
    except (tf.errors.OpError, OSError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _tf_error_reason(err)
        try:
            clean_checkpoint_dir(run_dir)
        except OSError:
            pass  # the save error is the one to report
        resume = f"iteration {last_saved}" if last_saved else "the start"
        raise UserError(f"cannot write checkpoint {iteration} to {run_dir / CHECKPOINT_DIR} ({reason}); free disk "
                        f"space or fix the permissions, then re-run the same command to resume from {resume}") from None

"""`reptile-tf train`: meta-train Reptile, FOMAML or MAML into one run directory.

Run directory layout (docs/interfaces.md):
  config.json    resolved Settings (flat) + seed + run options + data digest + environment
  checkpoints/   tf.train.CheckpointManager: meta state variables, iteration counter, seed
  metrics.jsonl  one JSON object per logged iteration (appended; trimmed on resume)
  DONE           written last, when every iteration has run

The whole meta-batch (in-graph task sampling + `meta.meta_step`) is one `tf.function`;
the iteration counter is a variable read inside it, so the function is traced once.
Task sampling uses a stateless seed derived from (seed, iteration), so a resumed run
sees exactly the tasks an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable

from reptile_tf import io
from reptile_tf import settings as settings_table
from reptile_tf.errors import UserError
from reptile_tf.settings import ALGORITHMS, DATASETS, Settings, paper_settings

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DONE_FILE = "DONE"
DEFAULT_DATA_DIR = Path("data/tfds")
PROTOCOLS = ("reptile", "vinyals")

# Settings fields chosen by positional-style flags, not generated as overrides.
_IDENTITY_FIELDS = ("algorithm", "dataset", "ways", "shots")
_NOT_A_FLAG = set(_IDENTITY_FIELDS) | {"source"}
# Keys of config.json that describe where/how the run happened, not what was requested;
# they may differ when a run is resumed (e.g. on another machine or after a commit).
ENVIRONMENT_KEY = "environment"

# Stream separation for stateless seeds: training tasks use (seed, TRAIN_STREAM) folded with
# the iteration; validation tasks use a fixed key independent of the training seed, so every
# algorithm and seed is validated on the same tasks and no training seed produces them.
TRAIN_STREAM = 0
VALIDATION_SEED = (20180308, 1)  # fixed; (x, 1) never equals a training key (seed, 0)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is executed and recorded (everything that is not a Settings field)."""

    xla: bool = False
    mixed_precision: bool = False
    checkpoint_every: int = 1000
    log_every: int = 100
    val_every: int = 0  # 0 = no periodic validation
    val_tasks: int = 100
    protocol: str = "reptile"  # Omniglot split protocol (ignored for other datasets)
    keep_checkpoints: int = 3  # checkpoints kept on disk (1: only the latest, for committed runs)


# --------------------------------------------------------------------------- CLI


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _flag_type(annotation: Any) -> Any:
    """`float | None` -> float; plain types unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from reptile_tf import flag_help

    parser.add_argument("--algorithm", required=True, choices=ALGORITHMS,
                        help="reptile, fomaml (first-order MAML, Reptile paper settings) or maml (MAML paper settings)")
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="omniglot (28x28), mini_imagenet (84x84), or sine (MAML's regression toy, no data)")
    parser.add_argument("--ways", type=int, required=True, metavar="N",
                        help="classes per task (paper: Omniglot 5 or 20, Mini-ImageNet 5)")
    parser.add_argument("--shots", type=int, required=True, metavar="K",
                        help="support examples per class (paper: 1 or 5)")
    parser.add_argument("--seed", type=int, required=True,
                        help="fixes initialisation, task sampling and data order (the paper presets use 0, 1, 2)")
    parser.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                        help="run directory; re-running into it resumes (default: "
                             "runs/<dataset>/<algorithm>_<ways>way_<shots>shot_seed<seed>)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help=f"prepared TFDS data directory (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="reptile",
                        help="Omniglot split protocol: reptile (1,200 training characters, 423 test, as the Reptile "
                             "paper) or vinyals (train/val/test splits)")
    parser.add_argument("--xla", action="store_true",
                        help="compile the meta-step with XLA (jit_compile=True); for GPUs, slow on a CPU (default: off)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in bfloat16 (float32 parameters and updates; recorded in config.json) "
                             "(default: off)")
    parser.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                        help="write a checkpoint every N iterations (and at the end): the point a killed run "
                             "resumes from")
    parser.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                        help="checkpoints kept on disk, newest first (1 keeps only the latest, for run "
                             "directories committed to git)")
    parser.add_argument("--log-every", type=int, default=100, metavar="N",
                        help="append the meta-batch's loss and accuracy to metrics.jsonl every N iterations")
    parser.add_argument("--val-every", type=int, default=None, metavar="N",
                        help="validation accuracy every N iterations (default: iterations/10; 0 = off)")
    parser.add_argument("--val-tasks", type=int, default=100, metavar="N",
                        help="number of fixed validation tasks")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: a plain line every 5%% (and 5 min) instead, as when stderr is not a "
                             "terminal (logs)")
    group = parser.add_argument_group(
        "hyperparameter overrides",
        "Default: the published value for the chosen algorithm, dataset, ways and shots (reptile_tf/settings.py, "
        "from docs/reference.md); the values below are the papers' for Omniglot 5/20-way and Mini-ImageNet "
        "5-way (sine: reptile_tf/settings.py). A setting the papers did not publish needs every value given.")
    for name, annotation in _field_types().items():
        if name in _NOT_A_FLAG:
            continue
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(annotation)
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=flag_help.override_help(name))
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, metavar=flag_help.flag_metavar(name),
                               help=flag_help.override_help(name))


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields given explicitly on the command line."""
    return {name: getattr(args, name) for name in _field_types()
            if name not in _NOT_A_FLAG and getattr(args, name, None) is not None}


def resolve_settings(algorithm: str, dataset: str, ways: int, shots: int,
                     overrides: dict[str, Any] | None = None) -> Settings:
    """Paper settings for the setting, then the explicit overrides on top, validated.

    A setting without a published configuration works when every hyperparameter without a
    default is given explicitly.
    """
    settings = merge_settings(algorithm, dataset, ways, shots, overrides)
    validate_settings(settings)
    return settings


def merge_settings(algorithm: str, dataset: str, ways: int, shots: int,
                   overrides: dict[str, Any] | None = None) -> Settings:
    """`resolve_settings` without the value checks (the workflow reports them per config key)."""
    overrides = dict(overrides or {})
    try:
        base = paper_settings(algorithm, dataset, ways, shots)
    except UserError:
        required = [f.name for f in dataclasses.fields(Settings)
                    if f.name not in _NOT_A_FLAG and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if overrides.get(name) is None]
        if missing or algorithm not in ALGORITHMS or dataset not in DATASETS:
            raise
        return Settings(algorithm=algorithm, dataset=dataset, ways=ways, shots=shots,
                        **{k: v for k, v in overrides.items() if v is not None})
    return base.replace(**overrides)


# Settings fields that count something: at least 1.
POSITIVE_FIELDS = ("ways", "shots", "inner_steps", "meta_batch", "iterations", "train_shots", "queries",
                   "eval_inner_steps", "eval_tasks", "eval_queries")
# Fields that may be 0 (inner_batch/eval_inner_batch 0 = the whole support set; tail_shots 0 = no tail).
NON_NEGATIVE_FIELDS = ("inner_batch", "eval_inner_batch", "tail_shots")
LEARNING_RATE_FIELDS = ("inner_lr", "outer_lr", "eval_inner_lr")
OPTIMIZERS = ("adam", "sgd")


def flag_fields() -> list[str]:
    """The Settings fields that are hyperparameter flags / workflow `overrides` keys."""
    return [name for name in _field_types() if name not in _NOT_A_FLAG]


def _type_problem(name: str, value: Any) -> str | None:
    """Why `value` does not have the type Settings declares for `name` (None: it does)."""
    annotation = _field_types()[name]
    kind = _flag_type(annotation)
    if value is None:
        return None if type(None) in typing.get_args(annotation) else f"{name} is missing (null)"
    if kind is bool:
        return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
    if isinstance(value, bool):  # bool is an int subclass: True is not a learning rate
        return f"{name}={value!r} must be a number ({kind.__name__}), not a boolean"
    if kind is float:
        return None if isinstance(value, (int, float)) else f"{name}={value!r} must be a number"
    if kind is int:
        return None if isinstance(value, int) else f"{name}={value!r} must be an integer"
    return None if isinstance(value, kind) else f"{name}={value!r} must be a {kind.__name__}"


def settings_problems(settings: Settings) -> list[tuple[str, str]]:
    """(field, what is wrong) for every problem that needs no data; [] for usable settings.

    Pure and shared by the CLI (`validate_settings`) and the workflow's config check, so both
    reject the same values with the same words.
    """
    problems: list[tuple[str, str]] = []
    typed_ok = set()
    for name in _field_types():
        problem = _type_problem(name, getattr(settings, name))
        if problem:
            problems.append((name, problem))
        else:
            typed_ok.add(name)

    def value(name: str) -> Any:
        return getattr(settings, name) if name in typed_ok else None

    for name in POSITIVE_FIELDS:
        if value(name) is not None and value(name) < 1:
            problems.append((name, f"{name}={value(name)} must be at least 1"))
    for name in NON_NEGATIVE_FIELDS:
        if value(name) is not None and value(name) < 0:
            problems.append((name, f"{name}={value(name)} must be >= 0 (0 = "
                                   f"{'no tail minibatch' if name == 'tail_shots' else 'the whole support set'})"))
    # `nan <= 0` is False: without this a NaN learning rate passes and trains NaN parameters.
    for name in (n for n, kind in _field_types().items() if _flag_type(kind) is float):
        if value(name) is not None and not math.isfinite(value(name)):
            problems.append((name, f"{name}={value(name)} is not a finite number"))
            typed_ok.discard(name)
    for name in LEARNING_RATE_FIELDS:
        if value(name) is not None and value(name) <= 0:
            problems.append((name, f"{name}={value(name)} must be positive (a learning rate)"))
    if value("adam_beta1") is not None and not 0 <= value("adam_beta1") < 1:
        problems.append(("adam_beta1", f"adam_beta1={value('adam_beta1')} must be in [0, 1)"))
    if value("adam_beta2") is not None and not 0 <= value("adam_beta2") < 1:
        problems.append(("adam_beta2", f"adam_beta2={value('adam_beta2')} must be in [0, 1)"))
    if value("adam_epsilon") is not None and value("adam_epsilon") <= 0:
        problems.append(("adam_epsilon", f"adam_epsilon={value('adam_epsilon')} must be positive"))
    for name in ("inner_optimizer", "outer_optimizer"):
        if value(name) is not None and value(name) not in OPTIMIZERS:
            problems.append((name, f"{name}={value(name)!r} is not supported; use 'adam' or 'sgd'"))
    # Choices added by other settings modules (e.g. the fidelity options): their allowed values.
    for name, (_, allowed) in getattr(settings_table, "FIDELITY_OPTIONS", {}).items():
        if value(name) is not None and value(name) not in allowed:
            problems.append((name, f"{name}={value(name)!r} is not supported; use one of {', '.join(allowed)}"))
    if (value("algorithm") == "fomaml" and (value("tail_shots") or 0) > 0 and value("train_shots") is not None
            and value("train_shots") <= value("tail_shots")):
        problems.append(("train_shots", f"FOMAML with tail_shots={value('tail_shots')} needs train_shots > "
                                        f"tail_shots (got train_shots={value('train_shots')})"))
    return problems


def validate_settings(settings: Settings) -> None:
    """Checks that need no data (the data-dependent ones are in `check_task_shape`)."""
    problems = settings_problems(settings)
    if problems:
        raise UserError(f"invalid hyperparameters: {'; '.join(message for _, message in problems)}. "
                        "Pass other values (`reptile-tf train --help` lists the flags).")


def override_value(name: str, value: Any) -> Any:
    """`value` as `reptile-tf train --<name> <value>` would receive it; UserError naming `name`
    when the CLI would reject it or `name` is not a hyperparameter.

    The workflow checks its `overrides` with this before any job runs, so the config and the
    CLI accept exactly the same names and values (both come from the Settings table).
    """
    known = flag_fields()
    if name not in known:
        raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(known)}")
    kind = _flag_type(_field_types()[name])
    if value is None:
        raise UserError(f"{name}: null is not a value; remove the key to keep the paper's value")
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}={value!r} must be true or false")
        return value
    if isinstance(value, bool):
        raise UserError(f"{name}={value!r} must be a {kind.__name__}, not a boolean")
    try:
        # What argparse does with the flag's text (YAML 1.1 reads `1e-3` as a string; the CLI takes it).
        converted = kind(str(value))
    except ValueError:
        raise UserError(f"{name}={value!r} is not {'an' if kind is int else 'a'} {kind.__name__}") from None
    if kind is float and not math.isfinite(converted):
        raise UserError(f"{name}={value!r} is not a finite number")
    return converted


def check_task_shape(settings: Settings, num_classes: int, images_per_class: int, split: str,
                     shots: int, queries: int) -> None:
    """UserError unless tasks of `ways` classes with shots+queries images each fit the split."""
    if settings.ways > num_classes:
        raise UserError(f"{settings.ways}-way tasks need {settings.ways} classes but the {settings.dataset} "
                        f"{split} split has {num_classes}; use --ways <= {num_classes}")
    if shots + queries > images_per_class:
        raise UserError(f"tasks need {shots} shots + {queries} queries = {shots + queries} images per class, "
                        f"but the {settings.dataset} {split} split has {images_per_class}; "
                        "lower --shots/--train-shots/--queries/--eval-queries")


def default_run_dir(settings: Settings, seed: int) -> Path:
    return Path("runs") / settings.dataset / (
        f"{settings.algorithm}_{settings.ways}way_{settings.shots}shot_seed{seed}")


# ---------------------------------------------------------------- config / run dir


def git_commit() -> str | None:
    """The commit of the source tree this package runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment_info(model: Any = None) -> dict[str, Any]:
    """Where and how the run executes: commit, Python, TensorFlow, device, CPU model and flags,
    the real oneDNN state and the conv path (`runtime.runtime_info`). May change on resume."""
    from reptile_tf import runtime

    return {"git_commit": git_commit(), "python": sys.version.split()[0], **runtime.runtime_info(),
            "conv_path": getattr(model, "conv_path", None)}


def build_config(settings: Settings, seed: int, options: RunOptions, data_info: dict[str, Any],
                 environment: dict[str, Any]) -> dict[str, Any]:
    """config.json: every Settings field at the top level, then run options, data and environment."""
    config = settings.to_dict()
    config.update(
        seed=seed,
        xla=options.xla,
        op_determinism=not options.xla,
        mixed_precision=options.mixed_precision,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        val_every=options.val_every,
        val_tasks=options.val_tasks,
        protocol=options.protocol if settings.dataset == "omniglot" else None,
        data=data_info,
    )
    config[ENVIRONMENT_KEY] = environment
    return json.loads(json.dumps(config))  # normalise (tuples -> lists) so comparisons are exact


def config_differences(existing: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Keys (dotted for nested dicts) whose values differ, ignoring the environment record."""
    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if not prefix and key == ENVIRONMENT_KEY:
                continue
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    old, new = flatten(existing), flatten(requested)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))


def prepare_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """Create the run directory and config.json, or check that an existing one matches."""
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        try:
            existing = io.read_json(config_path)
        except (OSError, ValueError) as err:
            raise UserError(f"{config_path} is unreadable ({err}); delete the run directory or use a new --out") from None
        differing = config_differences(existing, config)
        if differing:
            shown = ", ".join(f"{k} ({_lookup(existing, k)!r} -> {_lookup(config, k)!r})" for k in differing[:8])
            raise UserError(
                f"run directory {run_dir} holds a different run; differing config keys: {shown}"
                f"{' ...' if len(differing) > 8 else ''}. Use a new --out for a new run, or repeat "
                "the original arguments to resume it.")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_json_atomic(config_path, config)


# What identifies the machine and code a stretch of training ran on (config.json "environment").
RESUME_KEYS = ("git_commit", "cpu_model", "cpu_class", "onednn", "conv_path", "device", "tensorflow")


def record_resume(run_dir: Path, iteration: int, environment: dict[str, Any]) -> None:
    """A run resumed from `iteration` on another machine or commit: append where, so a result
    that was trained in several stretches says which machines produced it."""
    config_path = run_dir / CONFIG_FILE
    config = io.read_json(config_path)
    recorded = config.get(ENVIRONMENT_KEY) or {}
    history = recorded.get("resumed", [])
    latest = history[-1] if history else recorded
    here = {key: environment.get(key) for key in RESUME_KEYS}
    if all(latest.get(key) == value for key, value in here.items()):
        return
    recorded["resumed"] = history + [dict(here, from_iteration=iteration)]
    config[ENVIRONMENT_KEY] = recorded
    io.write_json_atomic(config_path, config)


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "<absent>"
        value = value[part]
    return value


# --------------------------------------------------------------------- metrics file


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete JSON lines (a torn last line from a killed process is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def trim_metrics(path: Path, last_iteration: int) -> None:
    """Drop lines after the checkpointed iteration so a resumed run never duplicates them."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("iteration", 0) <= last_iteration]
    io.write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    # One write of one full line; a kill can only tear the last line, which readers skip.
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()


def outer_lr_at(settings: Settings, iteration: Any, iterations: int | None = None) -> Any:
    """Outer step size: linear annealing to 0 for SGD outer loops (official Reptile code:
    frac_done = i / iterations; cur = frac_done * 0 + (1 - frac_done) * initial); constant for Adam."""
    import tensorflow as tf

    if settings.outer_optimizer != "sgd":
        return tf.constant(settings.outer_lr, tf.float32)
    total = float(iterations or settings.iterations)
    frac_done = tf.cast(iteration, tf.float32) / total
    return (1.0 - frac_done) * settings.outer_lr


def task_seed(seed: int, iteration: Any) -> Any:
    """Stateless RNG seed (int32 [2]) of one training iteration: a function of (seed, iteration)."""
    import tensorflow as tf

    key = tf.constant([seed, TRAIN_STREAM], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(key, tf.cast(iteration, tf.int64))
    return tf.cast(folded % (2**31 - 1), tf.int32)


# ------------------------------------------------------------------------- data


@dataclasses.dataclass
class TaskSource:
    """Everything `train` needs from the data: a sampler usable inside tf.function."""

    sample: Callable[[int, Any], dict]  # (num_tasks, seed int32[2]) -> Episodes, training tasks
    validation: Callable[[int], dict]  # (num_tasks) -> fixed validation Episodes (eager)
    info: dict[str, Any]  # goes into config.json["data"]


def array_digest(array: Any) -> str:
    """sha256 of an array's shape, dtype and bytes: identifies a split's content."""
    import numpy as np

    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def load_images(dataset: str, split: str, data_dir: Path, protocol: str | None) -> Any:
    from reptile_tf.data import episodes

    try:
        return episodes.load_split(dataset, split, data_dir, protocol=protocol)
    except UserError:
        raise
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UserError(f"cannot load the {dataset} {split} split from {data_dir} ({err}); run "
                        f"`reptile-tf fetch {dataset}` and `reptile-tf prepare {dataset}` or pass --data-dir") from None


def validation_source(settings: Settings, protocol: str) -> str:
    """Which data the periodic validation tasks come from (recorded in config.json)."""
    if settings.dataset == "sine":
        return "sine tasks from a fixed validation seed"
    if settings.dataset == "omniglot" and protocol == "reptile":
        # The Reptile protocol has no val split; the test split stays untouched until evaluate.
        return "train split tasks from a fixed validation seed (disjoint from training seeds)"
    return "val split"


def training_task_shape(settings: Settings) -> tuple[int, int]:
    """(support shots, queries) per class of a training task, as `meta.meta_step` expects.

    Reptile: `train_shots` support images (queries unused). MAML: `train_shots` (= shots)
    support + `queries` query images. FOMAML with a tail (official `--foml-tail`): the
    task's `train_shots` images per class are split into `train_shots - tail_shots` for the
    inner minibatches and `tail_shots` for the final tail minibatch (query_x).
    """
    if settings.algorithm == "fomaml" and settings.tail_shots > 0:
        support = settings.train_shots - settings.tail_shots
        if support < 1:
            raise UserError(f"FOMAML with tail_shots={settings.tail_shots} needs train_shots > tail_shots "
                            f"(got train_shots={settings.train_shots}); raise --train-shots or lower --tail-shots")
        return support, settings.tail_shots
    return settings.train_shots, settings.queries


def make_task_source(settings: Settings, data_dir: Path | None, protocol: str,
                     train_images: Any = None) -> TaskSource:
    """Load the training split (or use `train_images`) and build samplers for training and validation."""
    import tensorflow as tf

    val_seed = tf.constant(VALIDATION_SEED, tf.int32)
    if settings.dataset == "sine":
        from reptile_tf.sine import sample_sine_tasks

        probe = sample_sine_tasks(2, 5, 5, tf.constant([0, 0], tf.int32))
        digest = hashlib.sha256(b"".join(
            tf.convert_to_tensor(probe[k]).numpy().tobytes() for k in sorted(probe))).hexdigest()
        return TaskSource(
            sample=lambda n, seed: sample_sine_tasks(n, *training_task_shape(settings), seed),
            validation=lambda n: sample_sine_tasks(n, settings.shots, settings.eval_queries, val_seed),
            info={"train_split": "synthetic", "digest": digest,
                  "validation": validation_source(settings, protocol)},
        )

    from reptile_tf.data import episodes

    split_protocol = protocol if settings.dataset == "omniglot" else None
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    images = train_images if train_images is not None else load_images(settings.dataset, "train", data_dir, split_protocol)
    images = tf.convert_to_tensor(images)
    num_classes, per_class = int(images.shape[0]), int(images.shape[1])
    train_support, train_queries = training_task_shape(settings)
    check_task_shape(settings, num_classes, per_class, "train", train_support, train_queries)
    info = {"train_split": "train", "train_shape": list(images.shape), "digest": array_digest(images.numpy()),
            "validation": validation_source(settings, protocol)}
    if settings.dataset == "omniglot" and train_images is None:
        resize_filter = episodes.omniglot_resize_filter(data_dir)
        if resize_filter != "lanczos":  # recorded only when not the default, so older configs stay as they were
            info["omniglot_resize_filter"] = resize_filter
    if settings.dataset == "omniglot" and protocol == "reptile":
        val_images = images
    else:
        val_images = tf.convert_to_tensor(load_images(settings.dataset, "val", data_dir, split_protocol))
        info["val_digest"] = array_digest(val_images.numpy())
    check_task_shape(settings, int(val_images.shape[0]), int(val_images.shape[1]), "validation",
                     settings.shots, settings.eval_queries)
    return TaskSource(
        sample=lambda n, seed: episodes.sample_tasks(images, n, settings.ways, train_support, train_queries, seed),
        validation=lambda n: episodes.sample_tasks(val_images, n, settings.ways, settings.shots,
                                                   settings.eval_queries, val_seed),
        info=info,
    )


# ------------------------------------------------------------------ state / checkpoints


def num_outputs(settings: Settings) -> int:
    return 1 if settings.dataset == "sine" else settings.ways


def build_model(settings: Settings):
    from reptile_tf.models import get_model

    return get_model(settings.dataset, num_outputs(settings))


def initial_state(model: Any, settings: Settings, seed: int) -> dict:
    from reptile_tf import meta

    return meta.init_meta_state(model, model.init(seed), settings, seed=seed)


@dataclasses.dataclass
class TrainingVariables:
    """The checkpointed training state: meta state variables, iteration counter and seed."""

    state: Any  # nested dict of tf.Variable, same structure as meta.init_meta_state
    iteration: Any  # int64 scalar tf.Variable: completed meta-iterations
    seed: Any  # int64 scalar tf.Variable: the run's seed (task seeds derive from seed + iteration)

    def checkpoint(self):
        import tensorflow as tf

        return tf.train.Checkpoint(state=self.state, iteration=self.iteration, seed=self.seed)

    def read_state(self) -> Any:
        import tensorflow as tf

        return tf.nest.map_structure(lambda v: v.read_value(), self.state)


def make_variables(state: Any, seed: int) -> TrainingVariables:
    import tensorflow as tf

    variables = tf.nest.map_structure(lambda t: tf.Variable(t, trainable=False), state)
    return TrainingVariables(state=variables, iteration=tf.Variable(0, dtype=tf.int64, trainable=False),
                             seed=tf.Variable(seed, dtype=tf.int64, trainable=False))


def checkpoint_manager(variables: TrainingVariables, run_dir: Path, keep: int = 3):
    import tensorflow as tf

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


def latest_checkpoint(run_dir: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(run_dir / CHECKPOINT_DIR))


def _tf_error_reason(err: BaseException) -> str:
    """The OS-level reason at the end of a TensorFlow I/O error ('...; No space left on device [Op:SaveV2]')."""
    text = str(getattr(err, "message", None) or err).strip().splitlines()
    last = text[-1] if text else type(err).__name__
    last = last.split(" [Op:")[0]
    return last.rsplit("; ", 1)[-1].strip() or type(err).__name__


def referenced_checkpoints(run_dir: Path) -> set[str]:
    """Prefix names (`ckpt-N`) the manager's state file lists; empty without a state file."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(run_dir / CHECKPOINT_DIR))
    if state is None:
        return set()
    return {Path(p).name for p in [*state.all_model_checkpoint_paths, state.model_checkpoint_path] if p}


def clean_checkpoint_dir(run_dir: Path) -> list[str]:
    """Remove what a killed or failed save left behind; return the removed names.

    A save writes `ckpt-N_temp/` and merges it into `ckpt-N.index` + `ckpt-N.data-*`, then
    rewrites the `checkpoint` state file (via `checkpoint.tmp<hex>`), then deletes the oldest
    checkpoint. Interrupted anywhere, it can leave the temp directory, a temp state file, or
    checkpoint files the state file does not list (never restored, never deleted by the
    manager). Referenced checkpoints are never touched.
    """
    import shutil

    directory = run_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    keep = referenced_checkpoints(run_dir)
    removed = []
    for path in sorted(directory.iterdir()):
        name = path.name
        stale = (name.startswith("ckpt-") and name.endswith("_temp")) or name.startswith("checkpoint.tmp")
        if not stale and name.startswith("ckpt-") and (name.endswith(".index") or ".data-" in name):
            stale = name.split(".", 1)[0] not in keep
        if stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(name)
    return removed


def save_checkpoint(manager: Any, iteration: int, run_dir: Path, last_saved: int) -> None:
    """`manager.save` as checkpoint `iteration`; a failed write (disk full, permissions) is a
    UserError and leaves no partial `ckpt-N` files or `ckpt-N_temp` directory."""
    import tensorflow as tf

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
    restore_checkpoint(variables, path, run_dir)
    return variables.read_state(), int(variables.iteration.numpy())


def settings_from_config(config: dict[str, Any]) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    missing = [n for n in ("algorithm", "dataset", "ways", "shots") if n not in config]
    if missing:
        raise UserError(f"config.json lacks {missing}; it was not written by reptile-tf train")
    try:
        return Settings(**{k: v for k, v in config.items() if k in names})
    except TypeError as err:
        raise UserError(f"config.json does not describe a complete run ({err}); re-run reptile-tf train") from None


# ----------------------------------------------------------------------- the step


def build_step(model: Any, settings: Settings, variables: TrainingVariables, sample: Callable,
               seed: int, xla: bool = False) -> Callable[[], dict]:
    """One compiled meta-iteration: sample a meta-batch in-graph, meta_step, assign, count.

    No arguments: the iteration comes from `variables.iteration`, so there is one trace.
    """
    import tensorflow as tf
    from reptile_tf import meta

    @tf.function(jit_compile=xla)
    def step():
        iteration = variables.iteration.read_value()
        batch = sample(settings.meta_batch, task_seed(seed, iteration))
        state = tf.nest.map_structure(lambda v: v.read_value(), variables.state)
        new_state, metrics = meta.meta_step(model, settings, state, batch, outer_lr_at(settings, iteration))
        tf.nest.map_structure(lambda v, t: v.assign(t), variables.state, new_state)
        variables.iteration.assign_add(1)
        return metrics, health_signals(metrics, new_state)

    return step


# ------------------------------------------------------------------ numerical health

# A healthy run never comes near these: the cross-entropy starts at log(ways) (1.6 for 5-way)
# and falls, the sine MSE starts near 4, and conv-net weights stay O(1). `--inner-lr 1e8`
# reached a loss of 6e17 with every value still finite, so finiteness alone misses it.
LOSS_LIMIT = 1e6
PARAM_LIMIT = 1e6
LOSS_KEYS = ("loss", "query_loss")


def health_signals(metrics: dict, state: dict) -> dict:
    """In-graph scalars saying whether a meta-step stayed numerically sound (a few reductions
    over the state: cheap next to the step, so every iteration is checked, not only logged ones)."""
    import tensorflow as tf

    def all_finite(tensors: list) -> Any:
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])) if tensors \
            else tf.constant(True)

    losses = tf.stack([tf.cast(metrics[k], tf.float32) for k in LOSS_KEYS if k in metrics])
    params = [v for k, v in state.items() if k.startswith("params/")]
    slots = [v for k, v in state.items() if not k.startswith("params/") and v.dtype.is_floating]
    return {
        "loss_finite": all_finite([losses]),
        "params_finite": all_finite(params),
        "slots_finite": all_finite(slots),
        "max_loss": tf.reduce_max(tf.abs(losses)),
        "max_param": tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(tf.cast(v, tf.float32))) for v in params])),
    }


class TrainingDiverged(UserError):
    """Training stopped because the loss or the parameters stopped being usable numbers."""


def likely_cause(settings: Settings) -> str:
    """Which flag to change: the learning rate furthest above the paper's value, else both."""
    try:
        paper = paper_settings(settings.algorithm, settings.dataset, settings.ways, settings.shots)
    except UserError:
        paper = None
    labels = {"inner_lr": "the inner-loop step is too large", "outer_lr": "the outer (meta) step is too large"}
    if paper is not None:
        ratios = {name: getattr(settings, name) / getattr(paper, name) for name in labels}
        name = max(ratios, key=ratios.get)
        if ratios[name] > 1:
            return (f"likely cause: {labels[name]}; lower --{name.replace('_', '-')} (now {getattr(settings, name):g}, "
                    f"the paper's value for this setting is {getattr(paper, name):g})")
    return (f"likely cause: a step size too large for this setting; lower --inner-lr (now {settings.inner_lr:g}) "
            f"or --outer-lr (now {settings.outer_lr:g})")


def diagnose(health: dict[str, Any], iteration: int, settings: Settings) -> str | None:
    """One line naming the iteration, the quantity and the likely cause; None when healthy."""
    if not health["loss_finite"]:
        quantity = f"the training loss is not finite ({float(health['max_loss'])})"
    elif not health["params_finite"]:
        quantity = "the meta-parameters are not finite"
    elif not health["slots_finite"]:
        quantity = "the optimizer's Adam moments are not finite"
    elif float(health["max_loss"]) > LOSS_LIMIT:
        quantity = f"the training loss reached {float(health['max_loss']):.3g} (limit {LOSS_LIMIT:g})"
    elif float(health["max_param"]) > PARAM_LIMIT:
        quantity = f"a meta-parameter reached {float(health['max_param']):.3g} in magnitude (limit {PARAM_LIMIT:g})"
    else:
        return None
    return f"training diverged at iteration {iteration}: {quantity}; {likely_cause(settings)}"


def make_validator(model: Any, settings: Settings, val_episodes: dict) -> Callable[[dict], dict[str, float]]:
    """state -> {"val_accuracy": mean accuracy (fraction)} (or {"val_mse": ...} for sine) on the
    fixed validation tasks: transductive, evaluation inner loop, one compiled scorer reused."""
    from reptile_tf import evaluate

    scorer = evaluate.make_chunk_scorer(model, settings, "transductive")
    key = "val_mse" if settings.dataset == "sine" else "val_accuracy"

    def validate(state: dict) -> dict[str, float]:
        per_task = evaluate.score_episodes(model, settings, state, val_episodes, "transductive",
                                           chunk_size=evaluate.default_chunk_size(settings), scorer=scorer)
        return {key: float(per_task.mean())}

    return validate


# ------------------------------------------------------------------------ training


def train(settings: Settings, seed: int, run_dir: Path, options: RunOptions = RunOptions(),
          data_dir: Path | None = None, progress: bool | str = True, train_images: Any = None) -> Path:
    """Meta-train into `run_dir` (resuming from its last checkpoint); returns run_dir.

    `progress`: True = a bar on a terminal, plain lines otherwise; False = silent; or a
    `reptile_tf.progress` mode ("bar", "lines", "off").

    `train_images` lets callers (tests) pass an already loaded training split.
    Disk-full and permission errors of any write are UserErrors (one line, no traceback).
    """
    validate_settings(settings)
    validate_options(options)
    from reptile_tf import runtime

    runtime.deterministic_runtime(options.xla)
    run_dir = Path(run_dir)
    model = build_model(settings)
    state = initial_state(model, settings, seed)
    if not (run_dir / DONE_FILE).exists():  # a finished run is only compared, never written
        # Before the data is loaded (a minute or more): a bad --out fails now, not at the first write.
        io.check_output_dir(run_dir, "--out", needed_bytes(settings, options, state), subdirs=(CHECKPOINT_DIR,),
                            appended=(METRICS_FILE,))
    with io.write_errors_as_user_errors(f"free disk space or fix the permissions of {run_dir}, then re-run "
                                        "the same command to resume from the last checkpoint"):
        return _train_into(settings, seed, run_dir, options, data_dir, progress, train_images, model, state)


def validate_options(options: RunOptions) -> None:
    for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if options.val_every < 0 or options.val_tasks < 1:
        raise UserError("--val-every must be >= 0 and --val-tasks >= 1")


# Room for config.json, metrics lines beyond the estimate, the DONE marker and file-system slack.
OUTPUT_MARGIN_BYTES = 1 << 20
METRICS_LINE_BYTES = 300


def needed_bytes(settings: Settings, options: RunOptions, state: dict) -> int:
    """Disk space a run needs at most: `keep_checkpoints` checkpoints plus the one being written
    (the manager deletes the oldest only after the new one is complete), metrics.jsonl, margin."""
    import numpy as np

    state_bytes = sum(np.asarray(value).nbytes for value in state.values())
    lines = settings.iterations // options.log_every + 1
    return state_bytes * (options.keep_checkpoints + 1) + lines * METRICS_LINE_BYTES + OUTPUT_MARGIN_BYTES


def _train_into(settings: Settings, seed: int, run_dir: Path, options: RunOptions, data_dir: Path | None,
                progress: bool, train_images: Any, model: Any, state: dict) -> Path:
    from reptile_tf import runtime

    source = make_task_source(settings, data_dir, options.protocol, train_images)
    # `started` (epoch seconds): when this stretch of training began; MLflow shows it as the run's start.
    environment = dict(environment_info(model), started=time.time(),
                       data_dir=None if settings.dataset == "sine" else str(Path(data_dir or DEFAULT_DATA_DIR).resolve()))
    config = build_config(settings, seed, options, source.info, environment)
    prepare_run_dir(run_dir, config)
    if (run_dir / DONE_FILE).exists():
        print(f"reptile-tf train: {run_dir} is already complete (DONE exists)", file=sys.stderr)
        return run_dir

    # Leftovers of a save or an atomic write that a kill interrupted.
    clean_checkpoint_dir(run_dir)
    io.remove_stale_temp_files(run_dir, (CONFIG_FILE, METRICS_FILE, DONE_FILE))
    variables = make_variables(state, seed)
    manager = checkpoint_manager(variables, run_dir, options.keep_checkpoints)
    if manager.latest_checkpoint:
        restore_checkpoint(variables, manager.latest_checkpoint, run_dir)
        if int(variables.seed.numpy()) != seed:
            raise UserError(f"checkpoint seed {int(variables.seed.numpy())} differs from --seed {seed}; "
                            "use a new --out")
    start = int(variables.iteration.numpy())
    # metrics.jsonl is appended before each checkpoint (so a kill between the two loses no
    # line); lines past the checkpoint a resume starts from are dropped here, before any append.
    trim_metrics(run_dir / METRICS_FILE, start)
    if start > 0:
        record_resume(run_dir, start, environment)

    with runtime.precision_policy(options.mixed_precision):
        _train_loop(settings, model, variables, manager, source, options, seed, start, run_dir, progress)
    io.write_text_atomic(run_dir / DONE_FILE, f"{settings.iterations}\n")
    return run_dir


def _train_loop(settings: Settings, model: Any, variables: TrainingVariables, manager: Any, source: TaskSource,
                options: RunOptions, seed: int, start: int, run_dir: Path, progress: bool) -> None:
    """Iterations start+1 .. settings.iterations: step, check health, log, validate, checkpoint."""
    import numpy as np
    from reptile_tf.progress import Progress, resolve_mode

    metrics_path = run_dir / METRICS_FILE
    step = build_step(model, settings, variables, source.sample, seed, options.xla)
    validate = make_validator(model, settings, source.validation(options.val_tasks)) if options.val_every else None
    total = settings.iterations
    last_saved = start
    # A bar on a terminal; in logs a plain line every 5% (and 5 min) with the latest logged metrics.
    bar = Progress(total, f"train {settings.algorithm} {settings.dataset} {settings.ways}-way {settings.shots}-shot",
                   mode=resolve_mode(progress), unit="it", initial=start)
    try:
        for iteration in range(start + 1, total + 1):
            metrics, health = step()
            # Every iteration, before anything is logged or saved: a diverged state never
            # reaches metrics.jsonl or a checkpoint, and the run stops at once.
            problem = diagnose({k: v.numpy() for k, v in health.items()}, iteration, settings)
            if problem:
                kept = (f"the last good checkpoint (iteration {last_saved}) is kept" if last_saved
                        else "no checkpoint was written")
                raise TrainingDiverged(f"{problem}. Stopped without DONE; {kept}. Retrain with other values "
                                       "into a new --out.")
            record: dict[str, Any] = {}
            if iteration % options.log_every == 0 or iteration == total:
                # The logged iteration's own meta-batch metrics (not a window mean), so a
                # resumed run writes exactly the lines an uninterrupted run would.
                record = {k: float(np.mean(v)) for k, v in metrics.items()}
            if validate is not None and (iteration % options.val_every == 0 or iteration == total):
                record.update(validate(variables.read_state()))
            if record:
                record.update(iteration=iteration, wall_time=time.time())
                append_metrics(metrics_path, record)
                bar.set_postfix({k: v for k, v in record.items() if k in ("loss", "accuracy", "val_accuracy",
                                                                          "val_mse")})
            if iteration % options.checkpoint_every == 0 or iteration == total:
                save_checkpoint(manager, iteration, run_dir, last_saved)
                last_saved = iteration
            bar.update(1)
    finally:
        bar.close()
    if int(variables.iteration.numpy()) != total:
        raise RuntimeError("iteration counter out of step with the loop")  # a bug, not user input


def options_from_args(args: argparse.Namespace, settings: Settings) -> RunOptions:
    val_every = args.val_every if args.val_every is not None else max(1, settings.iterations // 10)
    return RunOptions(xla=args.xla, mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every,
                      log_every=args.log_every, val_every=val_every, val_tasks=args.val_tasks,
                      protocol=args.protocol, keep_checkpoints=args.keep_checkpoints)


def main(args: argparse.Namespace) -> int:
    from reptile_tf.progress import cli_mode

    settings = resolve_settings(args.algorithm, args.dataset, args.ways, args.shots, settings_overrides(args))
    options = options_from_args(args, settings)
    run_dir = args.out if args.out is not None else default_run_dir(settings, args.seed)
    train(settings, args.seed, run_dir, options, data_dir=args.data_dir, progress=cli_mode(args.no_progress))
    print(run_dir)
    return 0

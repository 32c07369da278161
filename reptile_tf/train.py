"""`reptile-tf train`: meta-train Reptile, FOMAML or MAML into one run directory.

Run directory layout (docs/interfaces.md, `reptile_tf.rundir`):
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
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from reptile_tf import datasets, flag_help, io, meta, rundir, runtime
from reptile_tf.autotune import add_conv_path_flag, requested_path, training_model
from reptile_tf.datasets import DEFAULT_DATA_DIR
from reptile_tf.data.tasks import TaskSource, make_task_source
from reptile_tf.errors import UserError
from reptile_tf.models import Model
from reptile_tf.progress import Progress, cli_mode, resolve_mode
from reptile_tf.rundir import CHECKPOINT_DIR, CONFIG_FILE, DONE_FILE, ENVIRONMENT_KEY, METRICS_FILE
from reptile_tf.run_state import (TrainingVariables, checkpoint_manager, clean_checkpoint_dir,
                                  initial_state, make_variables, restore_checkpoint, save_checkpoint)
from reptile_tf.scoring import default_chunk_size, make_chunk_scorer, score_episodes
from reptile_tf.seeds import TRAIN_STREAM
from reptile_tf.settings import (ALGORITHMS, DATASETS, NOT_A_FLAG, Settings, field_types, flag_type, merge_settings,
                                 paper_settings)

PROTOCOLS = tuple(datasets.DATASETS["omniglot"].protocols)  # --protocol: Omniglot's split protocols


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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", required=True, choices=ALGORITHMS,
                        help="reptile, fomaml (first-order MAML, Reptile paper settings) or maml (MAML paper settings)")
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="omniglot (28x28), mini_imagenet (84x84), or sine (MAML's regression toy, no data)")
    parser.add_argument("--ways", type=int, required=True, metavar="N",
                        help="classes per task (paper: Omniglot 5 or 20, Mini-ImageNet 5)")
    parser.add_argument("--shots", type=int, required=True, metavar="K",
                        help="support examples per class (paper: 1 or 5)")
    seeds = parser.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=int,
                       help="fixes initialisation, task sampling and data order (the paper presets use 0, 1, 2)")
    seeds.add_argument("--seeds", type=parse_seeds, metavar="S,S,...",
                       help="several seeds trained together in one compiled call (their tasks side by side: more "
                            "work per kernel), each into its own run directory, each bit for bit as trained alone "
                            "with the same --conv-path; --out then needs a {seed} placeholder")
    parser.add_argument("--out", type=str, default=None, metavar="RUN_DIR",
                        help="run directory; re-running into it resumes (default: "
                             "runs/<dataset>/<algorithm>_<ways>way_<shots>shot_seed<seed>); with --seeds a pattern "
                             "such as runs/x/seed{seed}")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help=f"prepared TFDS data directory (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="reptile",
                        help="Omniglot split protocol: reptile (1,200 training characters, 423 test, as the Reptile "
                             "paper) or vinyals (train/val/test splits)")
    add_conv_path_flag(parser)
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
    for name, annotation in field_types().items():
        if name in NOT_A_FLAG:
            continue
        flag = "--" + name.replace("_", "-")
        kind = flag_type(annotation)
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=flag_help.override_help(name))
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, metavar=flag_help.flag_metavar(name),
                               help=flag_help.override_help(name))


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings fields given explicitly on the command line."""
    return {name: getattr(args, name) for name in field_types()
            if name not in NOT_A_FLAG and getattr(args, name, None) is not None}


def resolve_settings(algorithm: str, dataset: str, ways: int, shots: int,
                     overrides: dict[str, Any] | None = None) -> Settings:
    """Paper settings for the setting, then the explicit overrides on top, validated.

    A setting without a published configuration works when every hyperparameter without a
    default is given explicitly.
    """
    settings = merge_settings(algorithm, dataset, ways, shots, overrides)
    settings.validate()
    return settings


def default_run_dir(settings: Settings, seed: int) -> Path:
    return Path("runs") / settings.dataset / (
        f"{settings.algorithm}_{settings.ways}way_{settings.shots}shot_seed{seed}")


SEED_PLACEHOLDER = "{seed}"


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2] (distinct integers)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2 (got {text!r})") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers such as 0,1,2 (got {text!r})")
    return seeds


def run_dirs_for(out: str | None, settings: Settings, seeds: list[int], pattern: bool) -> list[Path]:
    """The run directory of each seed: `out` as given (`--seed`), `out` with {seed} filled in
    (`--seeds`), or `default_run_dir`."""
    if out is None:
        return [default_run_dir(settings, seed) for seed in seeds]
    if not pattern:
        return [Path(out)]
    if SEED_PLACEHOLDER not in out:
        if len(seeds) > 1:
            raise UserError(f"--out {out} is one directory for {len(seeds)} seeds; put {SEED_PLACEHOLDER} in it "
                            f"(e.g. --out '{out.rstrip('/')}/seed{SEED_PLACEHOLDER}')")
        return [Path(out)]
    return [Path(out.replace(SEED_PLACEHOLDER, str(seed))) for seed in seeds]


# ---------------------------------------------------------------- config / run dir


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


def prepare_run_dir(run_dir: Path, config: dict[str, Any]) -> None:
    """Create the run directory and config.json, or check that an existing one matches."""
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        try:
            existing = rundir.read_config(run_dir)
        except (OSError, ValueError) as err:
            raise UserError(f"{config_path} is unreadable ({err}); delete the run directory or use a new --out") from None
        differing = rundir.config_differences(existing, config)
        if differing:
            shown = ", ".join(f"{k} ({_lookup(existing, k)!r} -> {_lookup(config, k)!r})" for k in differing[:8])
            raise UserError(
                f"run directory {run_dir} holds a different run; differing config keys: {shown}"
                f"{' ...' if len(differing) > 8 else ''}. Use a new --out for a new run, or repeat "
                "the original arguments to resume it.")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, config)


# What identifies the machine and code a stretch of training ran on (config.json "environment").
RESUME_KEYS = ("git_commit", "cpu_model", "cpu_class", "onednn", "conv_path", "device", "tensorflow")


def record_resume(run_dir: Path, iteration: int, environment: dict[str, Any]) -> None:
    """A run resumed from `iteration` on another machine or commit: append where, so a result
    that was trained in several stretches says which machines produced it."""
    config = rundir.read_config(run_dir)
    recorded = config.get(ENVIRONMENT_KEY) or {}
    history = recorded.get("resumed", [])
    latest = history[-1] if history else recorded
    here = {key: environment.get(key) for key in RESUME_KEYS}
    if all(latest.get(key) == value for key, value in here.items()):
        return
    recorded["resumed"] = history + [dict(here, from_iteration=iteration)]
    config[ENVIRONMENT_KEY] = recorded
    rundir.write_config(run_dir, config)


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return "<absent>"
        value = value[part]
    return value


# ----------------------------------------------------------------------- the step


def outer_lr_at(settings: Settings, iteration: Any, iterations: int | None = None) -> tf.Tensor:
    """Outer step size: linear annealing to 0 for SGD outer loops (official Reptile code:
    frac_done = i / iterations; cur = frac_done * 0 + (1 - frac_done) * initial); constant for Adam."""
    if settings.outer_optimizer != "sgd":
        return tf.constant(settings.outer_lr, tf.float32)
    return meta.linear_anneal(settings.outer_lr, 0.0, iteration, iterations or settings.iterations)


def task_seed(seed: int, iteration: Any) -> tf.Tensor:
    """Stateless RNG seed (int32 [2]) of one training iteration: a function of (seed, iteration)."""
    key = tf.constant([seed, TRAIN_STREAM], tf.int64)
    folded = tf.random.experimental.stateless_fold_in(key, tf.cast(iteration, tf.int64))
    return tf.cast(folded % (2**31 - 1), tf.int32)


def _group_step(model: Model, settings: Settings, variables: list[TrainingVariables], sample: Callable,
                seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """The body of a compiled meta-iteration of one or more seeds: each samples its own meta-batch
    (`task_seed(seed, iteration)`), `meta.meta_step_seeds` runs them in one inner loop, each assigns
    its own state and counts its own iteration. One seed: exactly `meta.meta_step`."""
    iterations = [v.iteration.read_value() for v in variables]
    batches = [sample(settings.meta_batch, task_seed(seed, iteration)) for seed, iteration in zip(seeds, iterations)]
    states = [tf.nest.map_structure(lambda v: v.read_value(), v.state) for v in variables]
    # Seeds of a group are at the same iteration (train_seeds), so one outer step size serves all.
    new_states, metrics = meta.meta_step_seeds(model, settings, states, batches, outer_lr_at(settings, iterations[0]))
    for v, new_state in zip(variables, new_states):
        tf.nest.map_structure(lambda var, t: var.assign(t), v.state, new_state)
        v.iteration.assign_add(1)
    return metrics, [health_signals(m, new_state) for m, new_state in zip(metrics, new_states)]


def build_step(model: Model, settings: Settings, variables: TrainingVariables, sample: Callable,
               seed: int, xla: bool = False) -> Callable[[], dict]:
    """One compiled meta-iteration: sample a meta-batch in-graph, meta_step, assign, count.

    No arguments: the iteration comes from `variables.iteration`, so there is one trace.
    Returns (metrics, health) of the run.
    """
    @tf.function(jit_compile=xla)
    def step():
        metrics, health = _group_step(model, settings, [variables], sample, [seed])
        return metrics[0], health[0]

    return step


def build_group_step(model: Model, settings: Settings, variables: list[TrainingVariables], sample: Callable,
                     seeds: list[int], xla: bool = False) -> Callable[[], tuple[list[dict], list[dict]]]:
    """`build_step` of several seeds at the same iteration in one compiled call; returns one
    (metrics, health) list entry per seed."""
    @tf.function(jit_compile=xla)
    def step():
        return _group_step(model, settings, variables, sample, seeds)

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
    def all_finite(tensors: list) -> tf.Tensor:
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


def make_validator(model: Model, settings: Settings, val_episodes: dict) -> Callable[[dict], dict[str, float]]:
    """state -> {"val_accuracy": mean accuracy (fraction)} (or {"val_mse": ...} for sine) on the
    fixed validation tasks: transductive, evaluation inner loop, one compiled scorer reused."""
    scorer = make_chunk_scorer(model, settings, "transductive")
    key = f"val_{settings.metric_name}"

    def validate(state: dict) -> dict[str, float]:
        per_task = score_episodes(model, settings, state, val_episodes, "transductive",
                                  chunk_size=default_chunk_size(settings), scorer=scorer)
        return {key: float(per_task.mean())}

    return validate


# ------------------------------------------------------------------------ training


def train(settings: Settings, seed: int, run_dir: Path, options: RunOptions = RunOptions(),
          data_dir: Path | None = None, progress: bool | str = True,
          train_images: np.ndarray | tf.Tensor | None = None, conv_path: str | None = None) -> Path:
    """Meta-train into `run_dir` (resuming from its last checkpoint); returns run_dir.

    `conv_path`: a `models.CONV_PATHS` name to force; None = the fastest measured here (`autotune`),
    recorded in config.json `environment.conv_path`.

    `progress`: True = a bar on a terminal, plain lines otherwise; False = silent; or a
    `reptile_tf.progress` mode ("bar", "lines", "off").

    `train_images` lets callers (tests) pass an already loaded training split.
    Disk-full and permission errors of any write are UserErrors (one line, no traceback).
    The seed group of one (`train_seeds`).
    """
    return train_seeds(settings, [seed], [run_dir], options, data_dir, progress, train_images, conv_path)[0]


def train_seeds(settings: Settings, seeds: Sequence[int], run_dirs: Sequence[Path], options: RunOptions = RunOptions(),
                data_dir: Path | None = None, progress: bool | str = True,
                train_images: np.ndarray | tf.Tensor | None = None, conv_path: str | None = None) -> list[Path]:
    """`train` of several seeds of one setting together: one compiled call per meta-iteration runs
    every seed's tasks side by side (`meta.meta_step_seeds`), each seed into its own run directory
    (config.json, checkpoints, metrics.jsonl, validation, DONE as `train` writes them alone; the
    group is recorded in `environment.seed_group`). A seed's numbers are the ones it computes alone
    with the same conv path (tests/test_seed_groups.py; the autotuner tunes the path for the
    group's shape, so force --conv-path to compare with a run trained alone).

    Resume: each seed from its own last checkpoint; seeds that are behind train (together) until
    they reach the others, then all go on as one group. A finished seed (DONE) is left as is.
    Returns the run directories.
    """
    seeds, run_dirs = [int(seed) for seed in seeds], [Path(run_dir) for run_dir in run_dirs]
    check_seed_group(settings, seeds, run_dirs)
    settings.validate()
    validate_options(options)
    runtime.deterministic_runtime(options.xla)
    model = training_model(settings, options.mixed_precision, conv_path, seeds=len(seeds))
    states = [initial_state(model, settings, seed) for seed in seeds]
    for run_dir, state in zip(run_dirs, states):
        if not (run_dir / DONE_FILE).exists():  # a finished run is only compared, never written
            # Before the data is loaded (a minute or more): a bad --out fails now, not at the first write.
            io.check_output_dir(run_dir, "--out", needed_bytes(settings, options, state), subdirs=(CHECKPOINT_DIR,),
                                appended=(METRICS_FILE,))
    where = run_dirs[0] if len(run_dirs) == 1 else ", ".join(str(run_dir) for run_dir in run_dirs)
    with io.write_errors_as_user_errors(f"free disk space or fix the permissions of {where}, then re-run "
                                        "the same command to resume from the last checkpoint"):
        runs = _open_runs(settings, seeds, run_dirs, options, data_dir, train_images, model, states)
        if runs.active:
            with runtime.precision_policy(options.mixed_precision):
                _train_loop(settings, model, runs.active, runs.source, options, progress)
            for run in runs.active:
                io.write_text_atomic(run.run_dir / DONE_FILE, f"{settings.iterations}\n")
    return run_dirs


def check_seed_group(settings: Settings, seeds: list[int], run_dirs: list[Path]) -> None:
    """One run directory per seed, no seed or directory twice; several seeds only where their tasks
    can share a call."""
    if not seeds or len(seeds) != len(run_dirs):
        raise UserError(f"give one run directory per seed (got {len(seeds)} seeds, {len(run_dirs)} directories)")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seed listed twice in {seeds}; give each seed once")
    resolved = [run_dir.resolve() for run_dir in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise UserError(f"two seeds share a run directory ({', '.join(map(str, run_dirs))}); give each seed its own "
                        f"(--out with {SEED_PLACEHOLDER})")
    problem = settings.seed_group_problem(len(seeds))
    if problem:
        raise UserError(f"{problem}; train each seed alone (--seed N)")


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
    state_bytes = sum(np.asarray(value).nbytes for value in state.values())
    lines = settings.iterations // options.log_every + 1
    return state_bytes * (options.keep_checkpoints + 1) + lines * METRICS_LINE_BYTES + OUTPUT_MARGIN_BYTES


@dataclasses.dataclass
class SeedRun:
    """One seed of a (possibly one-seed) group being trained: its run directory and checkpointed state."""

    seed: int
    run_dir: Path
    variables: TrainingVariables
    manager: tf.train.CheckpointManager
    start: int  # iterations completed when this training began (its checkpoint)
    last_saved: int


class OpenRuns(NamedTuple):
    source: TaskSource
    active: list[SeedRun]  # the seeds still to train (no DONE)


def _open_runs(settings: Settings, seeds: list[int], run_dirs: list[Path], options: RunOptions,
               data_dir: Path | None, train_images: np.ndarray | tf.Tensor | None, model: Model,
               states: list[dict]) -> OpenRuns:
    """Load the data once, then per seed: config.json (written or checked), leftovers cleaned, the
    last checkpoint restored, metrics.jsonl trimmed to it."""
    source = make_task_source(settings, data_dir, options.protocol, train_images)
    # `started` (epoch seconds): when this stretch of training began; MLflow shows it as the run's start.
    environment = dict(runtime.environment_info(model.conv_path), started=time.time(),
                       data_dir=None if settings.synthetic else str(Path(data_dir or DEFAULT_DATA_DIR).resolve()))
    if len(seeds) > 1:
        environment["seed_group"] = list(seeds)  # trained in one call with these seeds (a fact, not identity)
    active = []
    for seed, run_dir, state in zip(seeds, run_dirs, states):
        prepare_run_dir(run_dir, build_config(settings, seed, options, source.info, environment))
        if (run_dir / DONE_FILE).exists():
            print(f"reptile-tf train: {run_dir} is already complete (DONE exists)", file=sys.stderr)
            continue
        active.append(_resume(seed, run_dir, state, options, environment))
    return OpenRuns(source, active)


def _resume(seed: int, run_dir: Path, state: dict, options: RunOptions, environment: dict[str, Any]) -> SeedRun:
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
    rundir.trim_metrics(run_dir, start)
    if start > 0:
        record_resume(run_dir, start, environment)
    return SeedRun(seed, run_dir, variables, manager, start, start)


def _train_loop(settings: Settings, model: Model, runs: list[SeedRun], source: TaskSource, options: RunOptions,
                progress: bool | str) -> None:
    """Iterations from the earliest checkpoint + 1 .. settings.iterations: step, check health, log,
    validate, checkpoint, for every seed. A seed joins the compiled group step once the iteration
    passes its checkpoint, so seeds resumed from different checkpoints catch up, then go together."""
    steps: dict[tuple[int, ...], Callable] = {}  # the seeds in a call -> its compiled step (one trace each)
    validate = make_validator(model, settings, source.validation(options.val_tasks)) if options.val_every else None
    total = settings.iterations
    start = min(run.start for run in runs)
    label = f"train {settings.algorithm} {settings.dataset} {settings.ways}-way {settings.shots}-shot"
    if len(runs) > 1:
        label += " seeds " + ",".join(str(run.seed) for run in runs)
    # A bar on a terminal; in logs a plain line every 5% (and 5 min) with the latest logged metrics.
    bar = Progress(total, label, mode=resolve_mode(progress), unit="it", initial=start)
    try:
        for iteration in range(start + 1, total + 1):
            members = tuple(i for i, run in enumerate(runs) if run.start < iteration)
            if members not in steps:
                steps[members] = _compiled_step(model, settings, [runs[i] for i in members], source, options.xla)
            metrics, health = steps[members]()
            group = [runs[i] for i in members]
            # Every iteration, before anything is logged or saved: a diverged state never
            # reaches metrics.jsonl or a checkpoint, and the run stops at once.
            for run, signals in zip(group, health):
                _check_health(run, signals, iteration, settings, len(runs) > 1)
            records = [_log_and_save(run, values, iteration, settings, options, validate)
                       for run, values in zip(group, metrics)]
            if records[0]:  # the bar shows the first seed's latest line
                bar.set_postfix({k: v for k, v in records[0].items() if k in PROGRESS_METRICS})
            bar.update(1)
    finally:
        bar.close()
    if any(int(run.variables.iteration.numpy()) != total for run in runs):
        raise RuntimeError("iteration counter out of step with the loop")  # a bug, not user input


# What the progress line shows. MAML's "accuracy" is the pre-adaptation accuracy, at chance by
# design (labels are permuted per task), so its post-adaptation query accuracy is shown beside it.
PROGRESS_METRICS = ("loss", "accuracy", "query_accuracy", "val_accuracy", "val_mse")


def _compiled_step(model: Model, settings: Settings, group: list[SeedRun], source: TaskSource,
                   xla: bool) -> Callable[[], tuple[list[dict], list[dict]]]:
    """The compiled meta-iteration of `group` (lists of metrics and health, one per seed); one seed
    runs the same `_group_step` graph as `build_step`, the step `train` always ran."""
    return build_group_step(model, settings, [run.variables for run in group], source.sample,
                            [run.seed for run in group], xla)


def _check_health(run: SeedRun, health: dict, iteration: int, settings: Settings, grouped: bool) -> None:
    problem = diagnose({k: v.numpy() for k, v in health.items()}, iteration, settings)
    if not problem:
        return
    kept = (f"the last good checkpoint (iteration {run.last_saved}) is kept" if run.last_saved
            else "no checkpoint was written")
    if grouped:
        raise TrainingDiverged(f"seed {run.seed} ({run.run_dir}): {problem}. Stopped every seed of the group without "
                               f"DONE; {kept}, and the other seeds resume from their last checkpoints when re-run "
                               "without this seed. Retrain it with other values into a new --out.")
    raise TrainingDiverged(f"{problem}. Stopped without DONE; {kept}. Retrain with other values "
                           "into a new --out.")


def _log_and_save(run: SeedRun, metrics: dict, iteration: int, settings: Settings, options: RunOptions,
                  validate: Callable[[dict], dict[str, float]] | None) -> dict[str, Any]:
    """One seed's metrics.jsonl line and checkpoint of `iteration`, where due; returns the line."""
    total = settings.iterations
    record: dict[str, Any] = {}
    if iteration % options.log_every == 0 or iteration == total:
        # The logged iteration's own meta-batch metrics (not a window mean), so a
        # resumed run writes exactly the lines an uninterrupted run would.
        record = {k: float(np.mean(v)) for k, v in metrics.items()}
    if validate is not None and (iteration % options.val_every == 0 or iteration == total):
        record.update(validate(run.variables.read_state()))
    if record:
        record.update(iteration=iteration, wall_time=time.time())
        rundir.append_metrics(run.run_dir, record)
    if iteration % options.checkpoint_every == 0 or iteration == total:
        save_checkpoint(run.manager, iteration, run.run_dir, run.last_saved)
        run.last_saved = iteration
    return record


def options_from_args(args: argparse.Namespace, settings: Settings) -> RunOptions:
    val_every = args.val_every if args.val_every is not None else max(1, settings.iterations // 10)
    return RunOptions(xla=args.xla, mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every,
                      log_every=args.log_every, val_every=val_every, val_tasks=args.val_tasks,
                      protocol=args.protocol, keep_checkpoints=args.keep_checkpoints)


def main(args: argparse.Namespace) -> int:
    settings = resolve_settings(args.algorithm, args.dataset, args.ways, args.shots, settings_overrides(args))
    options = options_from_args(args, settings)
    seeds = [args.seed] if args.seeds is None else args.seeds
    run_dirs = run_dirs_for(args.out, settings, seeds, pattern=args.seeds is not None)
    for run_dir in train_seeds(settings, seeds, run_dirs, options, data_dir=args.data_dir,
                               progress=cli_mode(args.no_progress), conv_path=requested_path(args.conv_path)):
        print(run_dir)
    return 0

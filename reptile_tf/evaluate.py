"""`reptile-tf evaluate RUN_DIR`: score a run's final checkpoint on fixed evaluation episodes.

Every algorithm and seed is scored on the same tasks (`data.tasks.episode_source`, from
`seeds.EVAL_SEED`, independent of the training seed). Each task is adapted from the meta
parameters with the evaluation inner loop and its queries predicted in one or both batch-norm
modes (`reptile_tf.scoring`). Writes `RUN_DIR/eval.json` (keyed by mode; existing modes from
earlier calls are kept) and `RUN_DIR/eval_<mode>.csv` (per-task metric), all atomically and only
after every requested mode has been computed. Accuracies in eval.json are in %; for `sine` the
metric is the query MSE (`"metric": "mse"`).
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
from pathlib import Path
from typing import Any

import numpy as np

from reptile_tf import io, runtime
from reptile_tf.autotune import add_conv_path_flag, evaluation_model, requested_path
from reptile_tf.datasets import DEFAULT_DATA_DIR
from reptile_tf.data.tasks import check_omniglot_recipe, episode_source
from reptile_tf.errors import UserError
from reptile_tf.progress import cli_mode
from reptile_tf.rundir import (CONFIG_FILE, DONE_FILE, ENVIRONMENT_KEY, EVAL_FILE, EVAL_MODES, eval_csv_name,
                               read_config, read_eval, to_percent)
from reptile_tf.run_state import load_run_state
from reptile_tf.scoring import default_chunk_size, score_chunks_by_mode
from reptile_tf.seeds import EVAL_SEED
from reptile_tf.settings import Settings, settings_from_config
from reptile_tf.stats import mean_and_ci95

SPLITS = ("test", "val", "train")


# ------------------------------------------------------------------------- results


def _reported(value: float, metric: str) -> float:
    """A scorer's value as eval.json and the per-task CSV report it: accuracy in %, MSE as is."""
    return to_percent(value) if metric == "accuracy" else value


def summarise(per_task: np.ndarray, settings: Settings, inner_steps: int, csv_name: str) -> dict[str, Any]:
    """One mode's eval.json entry."""
    name = settings.metric_name
    mean, ci95 = mean_and_ci95(per_task)
    return {"metric": name, name: _reported(mean, name), "ci95": _reported(ci95, name), "tasks": int(len(per_task)),
            "inner_steps": int(inner_steps), "per_task_csv": csv_name}


def per_task_csv(per_task: np.ndarray, settings: Settings) -> str:
    name = settings.metric_name
    out = _stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", name])
    for index, value in enumerate(per_task):
        writer.writerow([index, repr(_reported(float(value), name))])
    return out.getvalue()


# --------------------------------------------------------------------------- main


def evaluate_run(run_dir: Path, modes: tuple[str, ...] = EVAL_MODES, tasks: int | None = None, split: str = "test",
                 data_dir: Path | None = None, chunk_size: int | None = None, progress: bool | str = True,
                 require_done: bool = True, conv_path: str | None = None,
                 inner_steps: int | None = None, rotate_classes: bool = False) -> dict[str, Any]:
    """Score the run's final checkpoint; write eval.json and per-task CSVs; return eval.json's content.

    `conv_path`: a `models.CONV_PATHS` name to force; None = the fastest measured here (`autotune`),
    recorded in eval.json. `inner_steps`: adaptation steps per task instead of the run's
    `eval_inner_steps` (a protocol diagnostic), recorded in eval.json as `inner_steps`.
    `rotate_classes`: Omniglot test classes turned by a random multiple of 90 degrees per task, as
    Finn's MAML code tests (a protocol diagnostic), recorded in eval.json as `class_rotations`."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass the --out of "
                        "`reptile-tf train`")
    for mode in modes:
        if mode not in EVAL_MODES:
            raise UserError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(EVAL_MODES)} or both")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    try:
        config = read_config(run_dir)
    except ValueError as err:
        raise UserError(f"{config_path} is not valid JSON ({err}); re-run `reptile-tf train`") from None
    settings = settings_from_config(config)
    settings.validate()  # a hand-edited config.json fails here, with every problem named
    if inner_steps is not None:
        if inner_steps < 1:
            raise UserError(f"--inner-steps must be at least 1 (got {inner_steps})")
        settings = settings.replace(eval_inner_steps=int(inner_steps))
    if require_done and not (run_dir / DONE_FILE).exists():
        raise UserError(f"{run_dir} has not finished training (no {DONE_FILE}); re-run the same "
                        "`reptile-tf train` command to resume it first")
    num_tasks = settings.eval_tasks if tasks is None else int(tasks)
    if num_tasks < 1:
        raise UserError(f"--tasks must be at least 1 (got {num_tasks})")
    if chunk_size is not None and chunk_size < 1:
        raise UserError(f"--chunk-size must be at least 1 (got {chunk_size})")
    chunk_size = min(chunk_size or default_chunk_size(settings), num_tasks)
    if data_dir is None:
        data_dir = Path(config.get(ENVIRONMENT_KEY, {}).get("data_dir") or DEFAULT_DATA_DIR)
    runtime.deterministic_runtime(xla=False)
    # Before minutes of scoring: a run directory that cannot take eval.json fails now.
    io.check_output_dir(run_dir, "RUN_DIR")
    with io.write_errors_as_user_errors(f"free disk space or fix the permissions of {run_dir}, then re-run "
                                        "`reptile-tf evaluate`"):
        return _evaluate_into(run_dir, config, settings, modes, num_tasks, split, Path(data_dir), chunk_size,
                              progress, conv_path, rotate_classes)


def _evaluate_into(run_dir: Path, config: dict[str, Any], settings: Settings, modes: tuple[str, ...],
                   num_tasks: int, split: str, data_dir: Path, chunk_size: int, progress: bool,
                   conv_path: str | None, rotate_classes: bool) -> dict[str, Any]:
    model = evaluation_model(settings, chunk_size, bool(config.get("mixed_precision")), conv_path)
    state, iteration = load_run_state(run_dir, config)
    get_chunk, info = episode_source(settings, split, num_tasks, data_dir, config.get("protocol"), rotate_classes)
    if settings.dataset == "omniglot":
        check_omniglot_recipe(config.get("data", {}), data_dir)
    computed: dict[str, tuple[dict[str, Any], str]] = {}
    with runtime.precision_policy(bool(config.get("mixed_precision"))):
        by_mode = score_chunks_by_mode(model, settings, state, get_chunk, num_tasks, modes, chunk_size, progress)
    for mode, per_task in by_mode.items():
        csv_name = eval_csv_name(mode)
        entry = summarise(per_task, settings, settings.eval_inner_steps, csv_name)
        machine = runtime.runtime_info()
        entry.update(info, eval_seed=EVAL_SEED, checkpoint_iteration=iteration, conv_path=model.conv_path,
                     onednn=machine["onednn"], cpu_class=machine["cpu_class"], cpu_model=machine["cpu_model"])
        computed[mode] = (entry, per_task_csv(per_task, settings))

    # Only now, with every mode computed, touch the run directory.
    io.remove_stale_temp_files(run_dir, (EVAL_FILE, *(eval_csv_name(mode) for mode in EVAL_MODES)))  # from a killed run
    try:
        result = {k: v for k, v in read_eval(run_dir).items() if k in EVAL_MODES}
    except ValueError:
        result = {}  # a damaged old file is replaced
    for mode, (entry, text) in computed.items():
        io.write_text_atomic(run_dir / entry["per_task_csv"], text)
        result[mode] = entry
    io.write_json_atomic(run_dir / EVAL_FILE, result)
    return result


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by `reptile-tf train`")
    parser.add_argument("--tasks", type=int, default=None, metavar="N",
                        help="number of evaluation tasks per mode (default: eval_tasks of the run; paper: Reptile/"
                             "FOMAML 10,000, MAML 600); the first N of the fixed tasks, the same for every run")
    parser.add_argument("--mode", choices=(*EVAL_MODES, "both"), default="both",
                        help="batch norm at test time: transductive (statistics of all queries of a task, '+T' "
                             "in the paper's tables), non_transductive (each query with the support set only), "
                             "or both")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="split the tasks are drawn from (val: Mini-ImageNet and the Omniglot vinyals protocol "
                             "only; train: for diagnosing overfitting)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="prepared TFDS data directory (default: the one recorded by train, else data/tfds)")
    parser.add_argument("--chunk-size", type=int, default=None, metavar="N",
                        help="tasks per compiled call; results do not depend on it (default: from the memory a "
                             "task needs, at most 50)")
    parser.add_argument("--inner-steps", type=int, default=None, metavar="N",
                        help="adaptation steps per task (default: eval_inner_steps of the run; the MAML paper "
                             "evaluates Omniglot with 3, Finn's test() reports after each of 10); recorded in "
                             "eval.json, which `reptile-tf tables` then refuses: evaluate a copy of the run")
    parser.add_argument("--rotate-classes", action="store_true",
                        help="Omniglot: turn each class of every task by a random multiple of 90 degrees (fixed "
                             "by the evaluation seed), as Finn's MAML code tests; recorded in eval.json, which "
                             "`reptile-tf tables` then refuses: evaluate a copy of the run")
    add_conv_path_flag(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: a plain line every 5%% (and 5 min) with the accuracy so far instead, "
                             "as when stderr is not a terminal (logs)")


def main(args: argparse.Namespace) -> int:
    modes = EVAL_MODES if args.mode == "both" else (args.mode,)
    result = evaluate_run(args.run_dir, modes, args.tasks, args.split, args.data_dir, args.chunk_size,
                          progress=cli_mode(args.no_progress), conv_path=requested_path(args.conv_path),
                          inner_steps=args.inner_steps, rotate_classes=args.rotate_classes)
    for mode in modes:
        entry = result[mode]
        name = entry["metric"]
        print(f"{args.run_dir} {mode}: {name} {entry[name]:.4g} ± {entry['ci95']:.2g} ({entry['tasks']} tasks)")
    return 0

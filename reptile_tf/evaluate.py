"""`reptile-tf evaluate RUN_DIR`: score a run's final checkpoint on fixed evaluation episodes.

Every algorithm and seed is scored on the same tasks: `make_eval_episodes` with EVAL_SEED,
independent of the training seed. Each task is adapted from the meta parameters with the
evaluation inner loop (`meta.adapt`: eval_inner_steps on the support set), then its
queries are predicted in one of two modes (docs/reference.md):

- transductive: all queries of a task in one batch (batch-norm statistics from the queries);
- non_transductive: each query in a batch made of the whole support set plus that one query,
  so a query's prediction cannot depend on the other queries.

Tasks are processed in fixed-size chunks, each chunk a single `tf.function` call (adapt and
predict batched over the chunk's tasks; no per-task Python loop). Writes
`RUN_DIR/eval.json` (keyed by mode; existing modes from earlier calls are kept) and
`RUN_DIR/eval_<mode>.csv` (per-task metric), all atomically and only after every requested
mode has been computed. Accuracies in eval.json are in %; for `sine` the metric is the query
MSE (`"metric": "mse"`).
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
import math
from pathlib import Path
from typing import Any, Callable

from reptile_tf import io
from reptile_tf.errors import UserError
from reptile_tf.settings import Settings

MODES = ("transductive", "non_transductive")
EVAL_FILE = "eval.json"
EVAL_SEED = 1803_02999  # fixed (the paper's arXiv id); never derived from the training seed
SPLITS = ("test", "val", "train")


# ------------------------------------------------------------------------- statistics


def mean_and_ci95(values: Any) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (population std, as in the Reptile/MAML evaluations)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(values.size))


def metric_name(settings: Settings) -> str:
    return "mse" if settings.dataset == "sine" else "accuracy"


def summarise(per_task: Any, settings: Settings, inner_steps: int, csv_name: str) -> dict[str, Any]:
    """One mode's eval.json entry. Accuracy is reported in %, MSE as is."""
    name = metric_name(settings)
    scale = 100.0 if name == "accuracy" else 1.0
    mean, ci95 = mean_and_ci95(per_task)
    return {"metric": name, name: mean * scale, "ci95": ci95 * scale, "tasks": int(len(per_task)),
            "inner_steps": int(inner_steps), "per_task_csv": csv_name}


def per_task_csv(per_task: Any, settings: Settings) -> str:
    name = metric_name(settings)
    scale = 100.0 if name == "accuracy" else 1.0
    out = _stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", name])
    for index, value in enumerate(per_task):
        writer.writerow([index, repr(float(value) * scale)])
    return out.getvalue()


# ---------------------------------------------------------------------- scoring


def per_task_metric(model: Any, outputs: Any, query_y: Any) -> Any:
    """`[T]` accuracy (fraction) for classifiers, MSE for regression."""
    return model.accuracy(outputs, query_y) if model.is_classifier else model.loss(outputs, query_y)


def make_chunk_scorer(model: Any, settings: Settings, mode: str) -> Callable:
    """tf.function (params, opt_state, seed, episodes) -> per-task metric `[T]` for one chunk.

    Adaptation starts from the meta parameters and, for an Adam inner loop, from the
    training-time inner Adam moments (as the official Reptile code evaluates), or from fresh
    moments with `eval_adam_state="fresh"` (`adaptation_adam_state`).
    """
    import tensorflow as tf

    if mode not in MODES:
        raise UserError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)}")

    @tf.function
    def score(params, opt_state, seed, support_x, support_y, query_x, query_y):
        outputs = adapted_query_outputs(model, settings, params, opt_state, seed, support_x, support_y,
                                        query_x, mode)
        return per_task_metric(model, outputs, query_y)

    return score


def adapted_query_outputs(model: Any, settings: Settings, params: dict, opt_state: Any, seed: Any,
                          support_x: Any, support_y: Any, query_x: Any, mode: str) -> Any:
    """Adapt to each task's support set, then predict its queries in `mode` -> `[T, Q, outputs]`."""
    from reptile_tf import meta

    task_params = meta.adapt(model, settings, params, support_x, support_y, seed, opt_state)
    return meta.predict(model, task_params, support_x, query_x, transductive=(mode == "transductive"))


def _pad_tasks(episodes: dict, size: int) -> dict:
    """Pad a short last chunk to `size` tasks (repeating task 0) so the scorer is traced once."""
    import tensorflow as tf

    def pad(t):
        t = tf.convert_to_tensor(t)
        missing = size - int(t.shape[0])
        if missing <= 0:
            return t
        return tf.concat([t, tf.repeat(t[:1], missing, axis=0)], axis=0)

    return {k: pad(v) for k, v in episodes.items()}


def task_seeds(start: int, size: int) -> Any:
    """Stateless seeds `[size, 2]` of the adaptation minibatches of tasks start, ..., start+size-1.

    One seed per task (its index), so a task's score does not depend on the chunk size.
    """
    import tensorflow as tf

    indices = tf.range(start, start + size, dtype=tf.int32)
    return tf.stack([tf.fill([size], EVAL_SEED % (2**31 - 1)), indices], axis=1)


def adaptation_adam_state(settings: Settings, state: dict) -> Any:
    """The inner Adam state every evaluation task adapts from: the training-time one
    (`eval_adam_state="training"`, the official code's `_full_state` restore) or None = fresh
    moments (`"fresh"`). None as well when the run keeps no inner Adam state (SGD, MAML)."""
    from reptile_tf import meta

    choice = getattr(settings, "eval_adam_state", "training")
    if choice not in ("training", "fresh"):
        raise UserError(f"unknown eval_adam_state {choice!r}; choose training or fresh")
    if choice == "fresh":
        return None
    return meta.inner_adam_from_state(state)


def score_chunks(model: Any, settings: Settings, state: dict, get_chunk: Callable[[int, int], dict],
                 num_tasks: int, mode: str, chunk_size: int, progress: bool = True,
                 scorer: Callable | None = None) -> Any:
    """Per-task metric (numpy `[num_tasks]`) of tasks [0, num_tasks), chunk by chunk.

    `state`: the meta state (meta.init_meta_state layout) holding the parameters to adapt.
    `scorer`: a `make_chunk_scorer` result to reuse (saves retracing on repeated calls).
    """
    import numpy as np
    from reptile_tf import meta
    from reptile_tf.progress import Progress, resolve_mode

    params = meta.params_from_state(state)
    opt_state = adaptation_adam_state(settings, state)
    scorer = scorer or make_chunk_scorer(model, settings, mode)
    results = []
    total, done = 0.0, 0  # running sum for the progress line's mean so far
    name = metric_name(settings)
    # A bar on a terminal; in logs a plain line every 5% (and 5 min) with the mean so far.
    with Progress(num_tasks, f"evaluate {settings.algorithm} {settings.dataset} {mode}", mode=resolve_mode(progress),
                  unit="task") as bar:
        for start in range(0, num_tasks, chunk_size):
            stop = min(start + chunk_size, num_tasks)
            chunk = _pad_tasks(get_chunk(start, stop), chunk_size)
            values = scorer(params, opt_state, task_seeds(start, chunk_size), chunk["support_x"], chunk["support_y"],
                            chunk["query_x"], chunk["query_y"])
            results.append(np.asarray(values)[: stop - start])
            if bar.mode != "off":
                total, done = total + float(np.sum(results[-1], dtype=np.float64)), done + stop - start
                so_far = total / done
                bar.set_postfix({f"{name} so far": f"{so_far:.2%}" if name == "accuracy" else f"{so_far:.4g}"})
            bar.update(stop - start)
    return np.concatenate(results).astype(np.float64)


def score_episodes(model: Any, settings: Settings, state: dict, episodes: dict, mode: str,
                   chunk_size: int, progress: bool = False, scorer: Callable | None = None) -> Any:
    """Per-task metric of in-memory Episodes (all tasks already materialised)."""
    num_tasks = int(episodes["support_x"].shape[0])
    chunk_size = min(chunk_size, num_tasks)
    return score_chunks(model, settings, state, lambda a, b: {k: v[a:b] for k, v in episodes.items()},
                        num_tasks, mode, chunk_size, progress, scorer)


# Bytes of one image's first-layer activation (float32): the largest per-image tensor.
_FIRST_LAYER_BYTES = {"omniglot": 14 * 14 * 64 * 4, "mini_imagenet": 84 * 84 * 32 * 4}
# First-layer activations of one compiled call stay under this; the whole call peaks at a few
# times it. (A fixed 100 tasks per call ran out of 24 GB on Omniglot 20-way 5-shot.)
CALL_ACTIVATION_BUDGET = 512 * 2**20
# More tasks per call is not faster: Omniglot 5-way 1-shot (non-transductive, 2-core CPU) took
# 58, 57, 65 and 81 ms per task at 20, 50, 100 and 200 tasks per call (the grouped conv's
# working set outgrows the caches). Results do not depend on it (`task_seeds`).
MAX_CHUNK_TASKS = 50


def default_chunk_size(settings: Settings) -> int:
    """Tasks per tf.function call, from the memory of the worst mode (non-transductive).

    Non-transductive prediction pushes every query through the network with a copy of the
    whole support set, so a task costs ways*queries x (ways*shots + 1) images.
    """
    if settings.dataset == "sine":
        return 500
    support = settings.ways * settings.shots
    images_per_task = max(settings.ways * settings.eval_queries * (support + 1), support)
    per_task_bytes = images_per_task * _FIRST_LAYER_BYTES[settings.dataset]
    return max(1, min(MAX_CHUNK_TASKS, CALL_ACTIVATION_BUDGET // per_task_bytes))


# ------------------------------------------------------------------------ episodes


def episode_source(settings: Settings, split: str, num_tasks: int, data_dir: Path,
                   protocol: str | None) -> tuple[Callable[[int, int], dict], dict[str, Any]]:
    """(get_chunk(start, stop) -> Episodes, info) for the fixed evaluation tasks of `split`."""
    import tensorflow as tf
    from reptile_tf import train

    if settings.dataset == "sine":
        from reptile_tf.sine import sample_sine_tasks

        episodes = sample_sine_tasks(num_tasks, settings.shots, settings.eval_queries,
                                     tf.constant([EVAL_SEED % (2**31 - 1), 0], tf.int32))
        return (lambda a, b: {k: v[a:b] for k, v in episodes.items()}), {"split": "synthetic"}

    from reptile_tf.data import episodes as episodes_lib

    if settings.dataset == "omniglot" and protocol == "reptile" and split == "val":
        raise UserError("the Reptile Omniglot protocol has no val split; use --split test "
                        "(or train with --protocol vinyals)")
    images = tf.convert_to_tensor(train.load_images(settings.dataset, split, data_dir, protocol))
    num_classes, per_class = int(images.shape[0]), int(images.shape[1])
    train.check_task_shape(settings, num_classes, per_class, split, settings.shots, settings.eval_queries)
    fixed = episodes_lib.make_eval_episodes(num_classes, per_class, settings.ways, settings.shots,
                                            settings.eval_queries, EVAL_SEED, num_tasks,
                                            name=f"{settings.dataset}/{split}")
    info = {"split": split, "data_digest": train.array_digest(images.numpy())}
    return (lambda a, b: fixed.gather(images, a, b)), info


# --------------------------------------------------------------------------- main


def evaluate_run(run_dir: Path, modes: tuple[str, ...] = MODES, tasks: int | None = None, split: str = "test",
                 data_dir: Path | None = None, chunk_size: int | None = None, progress: bool = True,
                 require_done: bool = True) -> dict[str, Any]:
    """Score the run's final checkpoint; write eval.json and per-task CSVs; return eval.json's content."""
    import tensorflow as tf
    from reptile_tf import runtime, train

    run_dir = Path(run_dir)
    config_path = run_dir / train.CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {train.CONFIG_FILE}); pass the --out of "
                        "`reptile-tf train`")
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)} or both")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    try:
        config = io.read_json(config_path)
    except ValueError as err:
        raise UserError(f"{config_path} is not valid JSON ({err}); re-run `reptile-tf train`") from None
    settings = train.settings_from_config(config)
    if require_done and not (run_dir / train.DONE_FILE).exists():
        raise UserError(f"{run_dir} has not finished training (no {train.DONE_FILE}); re-run the same "
                        "`reptile-tf train` command to resume it first")
    num_tasks = settings.eval_tasks if tasks is None else int(tasks)
    if num_tasks < 1:
        raise UserError(f"--tasks must be at least 1 (got {num_tasks})")
    chunk_size = min(chunk_size or default_chunk_size(settings), num_tasks)
    if chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")
    if data_dir is None:
        data_dir = Path(config.get(train.ENVIRONMENT_KEY, {}).get("data_dir") or train.DEFAULT_DATA_DIR)
    runtime.deterministic_runtime(xla=False)
    # Before minutes of scoring: a run directory that cannot take eval.json fails now.
    io.check_output_dir(run_dir, "RUN_DIR")
    with io.write_errors_as_user_errors(f"free disk space or fix the permissions of {run_dir}, then re-run "
                                        "`reptile-tf evaluate`"):
        return _evaluate_into(run_dir, config, settings, modes, num_tasks, split, Path(data_dir), chunk_size,
                              progress)


def _evaluate_into(run_dir: Path, config: dict[str, Any], settings: Settings, modes: tuple[str, ...],
                   num_tasks: int, split: str, data_dir: Path, chunk_size: int, progress: bool) -> dict[str, Any]:
    from reptile_tf import runtime, train

    model = train.build_model(settings)
    state, iteration = train.load_run_state(run_dir, config)
    get_chunk, info = episode_source(settings, split, num_tasks, data_dir, config.get("protocol"))
    computed: dict[str, tuple[dict[str, Any], str]] = {}
    for mode in modes:
        with runtime.precision_policy(bool(config.get("mixed_precision"))):
            per_task = score_chunks(model, settings, state, get_chunk, num_tasks, mode, chunk_size, progress)
        csv_name = f"eval_{mode}.csv"
        entry = summarise(per_task, settings, settings.eval_inner_steps, csv_name)
        machine = runtime.runtime_info()
        entry.update(info, eval_seed=EVAL_SEED, checkpoint_iteration=iteration, conv_path=model.conv_path,
                     onednn=machine["onednn"], cpu_class=machine["cpu_class"], cpu_model=machine["cpu_model"])
        computed[mode] = (entry, per_task_csv(per_task, settings))

    # Only now, with every mode computed, touch the run directory.
    io.remove_stale_temp_files(run_dir, (EVAL_FILE, *(f"eval_{mode}.csv" for mode in MODES)))  # from a killed run
    eval_path = run_dir / EVAL_FILE
    result: dict[str, Any] = {}
    if eval_path.exists():
        try:
            result = {k: v for k, v in io.read_json(eval_path).items() if k in MODES}
        except ValueError:
            result = {}  # a damaged old file is replaced
    for mode, (entry, text) in computed.items():
        io.write_text_atomic(run_dir / entry["per_task_csv"], text)
        result[mode] = entry
    io.write_json_atomic(eval_path, result)
    return result


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by `reptile-tf train`")
    parser.add_argument("--tasks", type=int, default=None, metavar="N",
                        help="number of evaluation tasks per mode (default: eval_tasks of the run; paper: Reptile/"
                             "FOMAML 10,000, MAML 600); the first N of the fixed tasks, the same for every run")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both",
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
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: a plain line every 5%% (and 5 min) with the accuracy so far instead, "
                             "as when stderr is not a terminal (logs)")


def main(args: argparse.Namespace) -> int:
    from reptile_tf.progress import cli_mode

    modes = MODES if args.mode == "both" else (args.mode,)
    result = evaluate_run(args.run_dir, modes, args.tasks, args.split, args.data_dir, args.chunk_size,
                          progress=cli_mode(args.no_progress))
    for mode in modes:
        entry = result[mode]
        name = entry["metric"]
        print(f"{args.run_dir} {mode}: {name} {entry[name]:.4g} ± {entry['ci95']:.2g} ({entry['tasks']} tasks)")
    return 0

"""Scoring meta-parameters on tasks: adapt to each task's support set, predict its queries, and
measure the per-task metric. Shared by training's periodic validation, `reptile-tf evaluate`
and the MLflow model.

Tasks are processed in fixed-size chunks, each chunk a single `tf.function` call (adapt and
predict batched over the chunk's tasks; no per-task Python loop). Two prediction modes
(docs/reference.md):

- transductive: all queries of a task in one batch (batch-norm statistics from the queries);
- non_transductive: each query in a batch made of the whole support set plus that one query,
  so a query's prediction cannot depend on the other queries.

The adaptation does not depend on the mode (it sees only the support set), so scoring several
modes adapts each task once and predicts its queries in every mode (`score_chunks_by_mode`):
the evaluation's dominant cost, the inner loop, is paid once for both modes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from reptile_tf import flops, meta
from reptile_tf.errors import UserError
from reptile_tf.models import Model
from reptile_tf.progress import Progress, resolve_mode
from reptile_tf.rundir import EVAL_MODES
from reptile_tf.seeds import EVAL_KEY
from reptile_tf.settings import Settings

# (params, opt_state, seeds [T, 2], support_x, support_y, query_x, query_y) -> per-task metric
# [M, T], one row per mode it was made for
ChunkScorer = Callable[..., tf.Tensor]
Modes = str | tuple[str, ...]


def _as_modes(modes: Modes) -> tuple[str, ...]:
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown or not modes:
        raise UserError(f"unknown evaluation mode {(unknown or [''])[0]!r}; choose one of {', '.join(EVAL_MODES)}")
    return modes


def per_task_metric(model: Model, outputs: tf.Tensor, query_y: tf.Tensor) -> tf.Tensor:
    """`[T]` accuracy (fraction) for classifiers, MSE for regression."""
    return model.accuracy(outputs, query_y) if model.is_classifier else model.loss(outputs, query_y)


def make_chunk_scorer(model: Model, settings: Settings, modes: Modes) -> ChunkScorer:
    """tf.function (params, opt_state, seed, episodes) -> per-task metric `[M, T]` for one chunk,
    one row per mode of `modes` (a mode name or a tuple of them), each task adapted once.

    Adaptation starts from the meta parameters and, for an Adam inner loop, from the
    training-time inner Adam moments (as the official Reptile code evaluates), or from fresh
    moments with `eval_adam_state="fresh"` (`adaptation_adam_state`).
    """
    modes = _as_modes(modes)

    @tf.function
    def score(params, opt_state, seed, support_x, support_y, query_x, query_y):
        outputs = adapted_query_outputs_by_mode(model, settings, params, opt_state, seed, support_x, support_y,
                                                query_x, modes)
        return tf.stack([per_task_metric(model, out, query_y) for out in outputs])

    return score


def adapted_query_outputs_by_mode(model: Model, settings: Settings, params: dict, opt_state: Any, seed: tf.Tensor,
                                  support_x: tf.Tensor, support_y: tf.Tensor, query_x: tf.Tensor,
                                  modes: tuple[str, ...]) -> list[tf.Tensor]:
    """Adapt to each task's support set once, then predict its queries in each of `modes`
    -> one `[T, Q, outputs]` per mode."""
    task_params = meta.adapt(model, settings, params, support_x, support_y, seed, opt_state)
    return [meta.predict(model, task_params, support_x, query_x, transductive=(mode == "transductive"))
            for mode in modes]


def adapted_query_outputs(model: Model, settings: Settings, params: dict, opt_state: Any, seed: tf.Tensor,
                          support_x: tf.Tensor, support_y: tf.Tensor, query_x: tf.Tensor, mode: str) -> tf.Tensor:
    """Adapt to each task's support set, then predict its queries in `mode` -> `[T, Q, outputs]`."""
    return adapted_query_outputs_by_mode(model, settings, params, opt_state, seed, support_x, support_y, query_x,
                                         (mode,))[0]


def _pad_tasks(episodes: dict, size: int) -> dict:
    """Pad a short last chunk to `size` tasks (repeating task 0) so the scorer is traced once."""

    def pad(t):
        t = tf.convert_to_tensor(t)
        missing = size - int(t.shape[0])
        if missing <= 0:
            return t
        return tf.concat([t, tf.repeat(t[:1], missing, axis=0)], axis=0)

    return {k: pad(v) for k, v in episodes.items()}


def task_seeds(start: int, size: int) -> tf.Tensor:
    """Stateless seeds `[size, 2]` of the adaptation minibatches of tasks start, ..., start+size-1.

    One seed per task (its index), so a task's score does not depend on the chunk size.
    """
    indices = tf.range(start, start + size, dtype=tf.int32)
    return tf.stack([tf.fill([size], EVAL_KEY), indices], axis=1)


def adaptation_adam_state(settings: Settings, state: dict) -> Any:
    """The inner Adam state every evaluation task adapts from: the training-time one
    (`eval_adam_state="training"`, the official code's `_full_state` restore) or None = fresh
    moments (`"fresh"`). None as well when the run keeps no inner Adam state (SGD, MAML).
    (`Settings.validate` is the check of the value.)"""
    if settings.eval_adam_state == "fresh":
        return None
    return meta.inner_adam_from_state(state)


def score_chunks(model: Model, settings: Settings, state: dict, get_chunk: Callable[[int, int], dict],
                 num_tasks: int, mode: str, chunk_size: int, progress: bool | str = True,
                 scorer: ChunkScorer | None = None) -> np.ndarray:
    """Per-task metric (numpy `[num_tasks]`) of tasks [0, num_tasks) in one mode, chunk by chunk.

    `state`: the meta state (meta.init_meta_state layout) holding the parameters to adapt.
    `scorer`: a `make_chunk_scorer(..., mode)` result to reuse (saves retracing on repeated calls).
    """
    return score_chunks_by_mode(model, settings, state, get_chunk, num_tasks, (mode,), chunk_size, progress,
                                scorer)[mode]


def score_chunks_by_mode(model: Model, settings: Settings, state: dict, get_chunk: Callable[[int, int], dict],
                         num_tasks: int, modes: tuple[str, ...], chunk_size: int, progress: bool | str = True,
                         scorer: ChunkScorer | None = None) -> dict[str, np.ndarray]:
    """{mode: per-task metric (numpy `[num_tasks]`)} of tasks [0, num_tasks) in each of `modes`,
    every task adapted once for all of them (`scorer`: a `make_chunk_scorer(..., modes)` result)."""
    modes = _as_modes(modes)
    params = meta.params_from_state(state)
    opt_state = adaptation_adam_state(settings, state)
    scorer = scorer or make_chunk_scorer(model, settings, modes)
    results = []
    totals, done = np.zeros(len(modes)), 0  # running sums for the progress line's means so far
    name = settings.metric_name
    # A bar on a terminal; in logs a plain line every 5% (and 5 min) with the mean so far.
    with Progress(num_tasks, f"evaluate {settings.algorithm} {settings.dataset} {'+'.join(modes)}",
                  mode=resolve_mode(progress), unit="task") as bar:
        for start in range(0, num_tasks, chunk_size):
            stop = min(start + chunk_size, num_tasks)
            chunk = _pad_tasks(get_chunk(start, stop), chunk_size)
            values = scorer(params, opt_state, task_seeds(start, chunk_size), chunk["support_x"], chunk["support_y"],
                            chunk["query_x"], chunk["query_y"])
            results.append(np.asarray(values)[:, : stop - start])
            if bar.mode != "off":
                totals, done = totals + np.sum(results[-1], axis=1, dtype=np.float64), done + stop - start
                shown = [f"{t / done:.2%}" if name == "accuracy" else f"{t / done:.4g}" for t in totals]
                bar.set_postfix({f"{name} so far": " / ".join(shown)})
            bar.update(stop - start)
    per_task = np.concatenate(results, axis=1).astype(np.float64)
    return dict(zip(modes, per_task))


def score_episodes(model: Model, settings: Settings, state: dict, episodes: dict, mode: str,
                   chunk_size: int, progress: bool | str = False, scorer: ChunkScorer | None = None) -> np.ndarray:
    """Per-task metric of in-memory Episodes (all tasks already materialised)."""
    num_tasks = int(episodes["support_x"].shape[0])
    chunk_size = min(chunk_size, num_tasks)
    return score_chunks(model, settings, state, lambda a, b: {k: v[a:b] for k, v in episodes.items()},
                        num_tasks, mode, chunk_size, progress, scorer)


# Bytes of one image's first-layer activation (float32): the largest per-image tensor.
_FIRST_LAYER_BYTES = {arch: 4 * math.prod(flops.network_layers(arch, 1)[0].output_shape) for arch in flops.ARCHS}
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
    if settings.synthetic:
        return 500
    support = settings.ways * settings.shots
    images_per_task = max(settings.ways * settings.eval_queries * (support + 1), support)
    per_task_bytes = images_per_task * _FIRST_LAYER_BYTES[settings.dataset]
    return max(1, min(MAX_CHUNK_TASKS, CALL_ACTIVATION_BUDGET // per_task_bytes))

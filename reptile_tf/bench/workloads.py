"""The workloads `reptile-tf bench` times, each as a no-argument callable: one compiled
meta-iteration, one compiled evaluation chunk, one meta-iteration of the per-task reference loop;
all on fixed random batches (uint8 images scaled to [0, 1]), so no data is needed and sampling
is excluded."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import tensorflow as tf

# `models.get_model`, looked up at call time: benchmarks/compare_conv.py swaps it for each conv path.
from reptile_tf import datasets, meta, models
from reptile_tf.errors import UserError
from reptile_tf.scoring import default_chunk_size
from reptile_tf.settings import Settings

# Not part of the installed package: the source checkout's benchmarks/ (this file is reptile_tf/bench/).
REFERENCE_LOOP = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_loop.py"


def random_batch(settings: Settings, seed: int = 0) -> dict[str, Any]:
    """A meta-batch of random tasks shaped like train.py's Episodes for `settings` (numpy)."""
    support_shots, query_shots = settings.training_task_shape  # as train.py samples them
    return _episodes(np.random.default_rng(seed), settings.meta_batch, settings.ways, support_shots, query_shots,
                     datasets.get(settings.dataset).input_shape)


def _episodes(rng: np.random.Generator, tasks: int, ways: int, shots: int, queries: int,
              shape: tuple[int, ...]) -> dict[str, Any]:
    def images(per_class: int) -> np.ndarray:
        return (rng.integers(0, 256, (tasks, ways * per_class, *shape), dtype=np.uint8) / 255.0).astype(np.float32)

    def labels(per_class: int) -> np.ndarray:
        return np.tile(np.repeat(np.arange(ways, dtype=np.int32), per_class), (tasks, 1))

    return {"support_x": images(shots), "support_y": labels(shots), "query_x": images(queries),
            "query_y": labels(queries)}


def make_meta_runner(settings: Settings, xla: bool, seed: int = 0, model: models.Model | None = None) -> Callable[[], float]:
    """A no-argument callable running one compiled meta-iteration (state carried over); `model`
    replaces the default network (benchmarks/floor.py times variants of it)."""
    model = model or models.get_model(settings.dataset, settings.ways, network=settings.network)
    batch = {k: tf.constant(v) for k, v in random_batch(settings, seed).items()}
    holder = {"state": meta.init_meta_state(model, model.init(seed), settings, seed)}
    outer_lr = tf.constant(settings.outer_lr if settings.algorithm == "maml" else 0.5, tf.float32)
    # autograph=False: meta_step branches only on static settings, and autograph re-reads source
    # files at trace time (a file edited during a long run would be converted wrongly).
    step = tf.function(lambda state, batch, lr: meta.meta_step(model, settings, state, batch, lr), jit_compile=xla,
                       autograph=False)

    def run() -> float:
        holder["state"], metrics = step(holder["state"], batch, outer_lr)
        return float(metrics["loss"])  # fetching a value waits for the step to finish

    return run


def eval_chunk_size(settings: Settings, tiny: bool = False) -> int:
    """Tasks per compiled evaluation call: the chunk size `reptile-tf evaluate` uses."""
    return 2 if tiny else int(default_chunk_size(settings))


def make_eval_runner(settings: Settings, chunk: int, transductive: bool = False, seed: int = 0) -> Callable[[], float]:
    """One compiled call adapting and predicting `chunk` evaluation tasks (meta.adapt + meta.predict)."""
    model = models.get_model(settings.dataset, settings.ways, network=settings.network)
    params = model.init(seed)
    episodes = {k: tf.constant(v) for k, v in _episodes(np.random.default_rng(seed), chunk, settings.ways,
                                                        settings.shots, settings.eval_queries,
                                                        datasets.get(settings.dataset).input_shape).items()}
    rng_seed = tf.constant([seed, 7], tf.int32)

    @tf.function(autograph=False)
    def score(params, support_x, support_y, query_x, query_y):
        task_params = meta.adapt(model, settings, params, support_x, support_y, rng_seed)
        outputs = meta.predict(model, task_params, support_x, query_x, transductive)
        return tf.reduce_mean(model.accuracy(outputs, query_y))

    def run() -> float:
        return float(score(params, episodes["support_x"], episodes["support_y"], episodes["query_x"],
                           episodes["query_y"]))

    return run


def load_reference_loop() -> ModuleType:
    """The `benchmarks/reference_loop.py` module (not part of the installed package)."""
    if not REFERENCE_LOOP.is_file():
        raise UserError(f"reference loop {REFERENCE_LOOP} not found; run `reptile-tf bench` from a source "
                        "checkout (pip install -e .) or pass --skip loop")
    spec = importlib.util.spec_from_file_location("reptile_tf_reference_loop", REFERENCE_LOOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_loop_runner(settings: Settings, seed: int = 0) -> Callable[[], None]:
    """One meta-iteration of the per-task Python loop on the same random batch as the batched core."""
    trainer = load_reference_loop().ReferenceTrainer(settings, seed)
    batch = random_batch(settings, seed)
    return lambda: trainer.meta_iteration(batch, 0.5)

"""Check 4: outer updates built from different inner-loop gradients (paper section 6.2).

Omniglot 5-shot 5-way, plain SGD (lr 0.003) in the inner loop on minibatches of 25 images
(the whole 5-shot 5-way support set, reshuffled each step, so g_i differ only through phi_i),
meta-batch 1. For k = 2, 3, 4 inner steps the outer update uses g_1 alone (joint training;
independent of k, so it is run once as k = 1), g_k alone (FOMAML), sum_i g_i (Reptile) or
mean_i g_i, as phi <- phi - outer_lr * combination; by default outer_lr = the inner lr
(plain SGD everywhere, so "sum" with outer_lr = alpha lands exactly on the task-adapted
weights, i.e. Reptile with outer step 1). Accuracy on fixed held-out test tasks is
recorded along the way. The per-step gradients come from the shared inner loop
(`reptile_tf.meta.inner_loop`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from reptile_tf.data.episodes import make_eval_episodes, sample_tasks
from reptile_tf.errors import UserError
from reptile_tf.meta import InnerConfig, adapt, inner_loop, make_inner_batches, predict
from reptile_tf.models import Model, broadcast_params, get_model
from reptile_tf.settings import Settings, paper_settings

COMBINATIONS = ("g1", "gk", "sum", "mean")


@dataclass(frozen=True)
class CombinationConfig:
    iterations: int = 40_000  # paper
    eval_every: int = 1000
    eval_tasks: int = 100
    eval_inner_steps: int = 50
    eval_queries: int = 5  # per class: 25 scored queries per task
    ways: int = 5
    shots: int = 5
    inner_batch: int = 25
    inner_lr: float = 0.003
    outer_lr: float | None = None  # None = inner_lr (plain SGD throughout)
    ks: tuple[int, ...] = (2, 3, 4)
    seed: int = 0


def combination_weights(combination: str, k: int) -> list[float]:
    """w with outer 'gradient' = sum_i w_i g_i: g1 -> e_1, gk -> e_k, sum -> 1, mean -> 1/k."""
    if combination == "g1":
        return [1.0] + [0.0] * (k - 1)
    if combination == "gk":
        return [0.0] * (k - 1) + [1.0]
    if combination == "sum":
        return [1.0] * k
    if combination == "mean":
        return [1.0 / k] * k
    raise UserError(f"unknown gradient combination {combination!r}; choose one of {', '.join(COMBINATIONS)}")


def combine(grads: list[dict], weights) -> dict:
    """sum_i weights[i] * g_i over the per-step gradient dicts g_1..g_k."""
    return {name: tf.add_n([tf.cast(weights[i], g[name].dtype) * g[name] for i, g in enumerate(grads)])
            for name in grads[0]}


def runs(cfg: CombinationConfig) -> list[tuple[str, int]]:
    """(combination, k) pairs to train: g1 once (it ignores later steps), the others per k."""
    if any(k < 2 for k in cfg.ks):
        raise UserError(f"gradient combinations need k >= 2 inner steps (got ks={cfg.ks})")
    return [("g1", 1)] + [(c, k) for k in cfg.ks for c in COMBINATIONS if c != "g1"]


def _eval_settings(cfg: CombinationConfig) -> Settings:
    return paper_settings("reptile", "omniglot", cfg.ways, cfg.shots).replace(
        inner_optimizer="sgd", inner_lr=cfg.inner_lr, eval_inner_steps=cfg.eval_inner_steps, eval_inner_batch=0)


def make_train_step(model: Model, train_images: tf.Tensor, k: int, cfg: CombinationConfig):
    """A compiled outer step for k inner steps; the combination is a weight tensor (one trace per k)."""
    inner = InnerConfig(optimizer="sgd", lr=cfg.inner_lr)
    outer_lr = cfg.inner_lr if cfg.outer_lr is None else cfg.outer_lr

    @tf.function
    def compiled_step(params, step, weights, images):
        seed = tf.stack([tf.constant(cfg.seed, tf.int64), tf.cast(step, tf.int64)])
        # The task stream depends on the iteration only: every run sees the same tasks (paired comparison).
        task = sample_tasks(images, 1, cfg.ways, cfg.shots, 1, seed)
        xs, ys = make_inner_batches(task["support_x"], task["support_y"], cfg.inner_batch, k, seed + 1)
        result = inner_loop(model, broadcast_params(params, 1), xs, ys, inner)
        update = combine(result.grads, weights)
        return {name: value - outer_lr * update[name][0] for name, value in params.items()}

    def train_step(params, step, weights):
        # The images enter as an argument: captured, a 75 MB split would be baked into the graph.
        return compiled_step(params, step, weights, train_images)

    return train_step


def make_evaluate(model: Model, eval_batch: dict, cfg: CombinationConfig):
    """Compiled held-out accuracy of an initialisation: adapt on each support set, score the queries."""
    settings = _eval_settings(cfg)

    @tf.function
    def evaluate(params):
        task_params = adapt(model, settings, params, eval_batch["support_x"], eval_batch["support_y"],
                            tf.constant([cfg.seed, 7], tf.int64))
        outputs = predict(model, task_params, eval_batch["support_x"], eval_batch["query_x"], transductive=True)
        return tf.reduce_mean(model.accuracy(outputs, eval_batch["query_y"]))

    return evaluate


def train_curve(model, train_step, evaluate, combination: str, k: int, cfg: CombinationConfig) -> list[dict]:
    """Train one (combination, k) from the common initialisation; rows of held-out accuracy vs iteration."""
    weights = tf.constant(combination_weights(combination, k), tf.float32)
    params = model.init(cfg.seed)
    rows, started = [], time.perf_counter()
    for step in range(cfg.iterations + 1):
        if step % cfg.eval_every == 0 or step == cfg.iterations:
            rows.append({"combination": combination, "k": k, "iteration": step,
                         "accuracy": float(evaluate(params)), "wall_time": time.perf_counter() - started})
        if step < cfg.iterations:
            params = train_step(params, tf.constant(step, tf.int64), weights)
    return rows


def run_combinations(train_images, test_images, cfg: CombinationConfig) -> list[dict]:
    """All learning curves; rows: combination, k, label, iteration, accuracy (held-out, %), wall_time."""
    model = get_model("omniglot", cfg.ways)
    episodes = make_eval_episodes(int(test_images.shape[0]), int(test_images.shape[1]), cfg.ways, cfg.shots,
                                  cfg.eval_queries, cfg.seed, cfg.eval_tasks, name="omniglot/test")
    evaluate = make_evaluate(model, episodes.gather(test_images), cfg)
    steps = {k: make_train_step(model, train_images, k, cfg) for k in sorted({k for _, k in runs(cfg)})}
    rows = []
    for combination, k in runs(cfg):
        curve = train_curve(model, steps[k], evaluate, combination, k, cfg)
        for row in curve:
            row["label"] = label(combination, k)
            row["accuracy"] *= 100.0
        rows += curve
        print(f"  {curve[-1]['label']}: {curve[-1]['accuracy']:.1f} % after {cfg.iterations} iterations "
              f"({curve[-1]['wall_time']:.0f} s)", flush=True)
    return rows


def label(combination: str, k: int) -> str:
    """Legend text in the paper's notation."""
    if combination == "g1":
        return "g1 (joint training)"
    if combination == "gk":
        return f"g{k} (FOMAML, k={k})"
    if combination == "sum":
        return f"sum g1..g{k} (Reptile, k={k})"
    return f"mean g1..g{k} (k={k})"


def final_accuracies(rows: list[dict]) -> dict[str, float]:
    """Label -> mean accuracy over the last quarter of evaluations (less noisy than the last point)."""
    out = {}
    for name in dict.fromkeys(r["label"] for r in rows):
        acc = [r["accuracy"] for r in rows if r["label"] == name]
        out[name] = float(np.mean(acc[-max(1, len(acc) // 4):]))
    return out

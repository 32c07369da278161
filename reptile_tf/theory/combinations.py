"""Check 4: outer updates built from different inner-loop gradients (paper section 6.2).

As the official commands (supervised-reptile README, "Comparing different inner-loop gradient
combinations"; docs/reference.md): Omniglot 5-way, meta-batch 1, plain SGD (lr 0.003) on the
summed minibatch loss (the Reptile code's), k inner steps on k distinct minibatches of 25 images
(a k-step task draws 5k images per class: `--train-shots 5k`). The outer update uses g_1 alone
(joint training; independent of k, so it is run once as k = 1), g_k alone (FOMAML, `--foml`),
sum_i g_i (Reptile) or mean_i g_i, as phi <- phi - meta_step * lr * combination with the
official meta step 0.25 (phi <- phi + 0.25 (phi_k - phi) for the sum; 0.25 / k for the mean),
annealed linearly to 0 over the iterations (`--meta-step-final 0`).
Accuracy on fixed held-out 5-shot test tasks after 5 SGD steps on the support set, each query
predicted with the support set in its batch (not transductive: the commands pass no
`--transductive`), is recorded along the way. The per-step gradients come from the shared inner
loop (`reptile_tf.meta.inner_loop`).

At the paper's budget the ten curves take hours, so each checkpoints into a state directory at
every evaluation (`write_curve`: its rows so far and, until it finishes, its weights) and a rerun
resumes where it stopped. The task stream depends on the iteration only, so a resumed curve is the
curve an uninterrupted run draws (tests/theory/test_theory_combinations.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from reptile_tf.data.episodes import make_eval_episodes, sample_tasks
from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, read_json, write_json_atomic
from reptile_tf.meta import InnerConfig, adapt, inner_loop, linear_anneal, make_inner_batches, predict
from reptile_tf.models import Model, broadcast_params, get_model
from reptile_tf.runtime import machine_summary
from reptile_tf.rundir import config_differences
from reptile_tf.settings import Settings, paper_settings

COMBINATIONS = ("g1", "gk", "sum", "mean")


@dataclass(frozen=True)
class CombinationConfig:
    """Defaults: the official commands' (`--sgd --seed 0 --inner-batch 25 --learning-rate 0.003
    --meta-iters 40000 --eval-batch 25 --eval-iters 5 --meta-step-final 0`, `--inner-iters k
    --train-shots 5k --meta-step 0.25`)."""

    iterations: int = 40_000  # paper
    eval_every: int = 1000
    eval_tasks: int = 200
    eval_inner_steps: int = 5
    # Per class. The official code scores 1 per class, each predicted with the support set in its
    # batch (so more would not change the expected accuracy, only the memory of the evaluation).
    eval_queries: int = 1
    ways: int = 5
    shots: int = 5  # per class and inner step: a k-step training task draws k * shots per class
    inner_batch: int = 25
    inner_lr: float = 0.003
    # phi <- phi - step_i * inner_lr * combination, step_i linear from meta_step to meta_step_final
    # over the iterations (the official train loop's `cur_meta_step_size`)
    meta_step: float = 0.25
    meta_step_final: float = 0.0
    loss_reduction: str = "sum"  # a key of meta.LOSS_SCALES: the Reptile code minimises the summed loss
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
        inner_optimizer="sgd", inner_lr=cfg.inner_lr, eval_inner_steps=cfg.eval_inner_steps, eval_inner_batch=0,
        loss_reduction=cfg.loss_reduction)


def make_train_step(model: Model, train_images: tf.Tensor, k: int, cfg: CombinationConfig):
    """A compiled outer step for k inner steps; the combination is a weight tensor (one trace per k)."""
    inner = InnerConfig(optimizer="sgd", lr=cfg.inner_lr, loss_reduction=cfg.loss_reduction)

    @tf.function
    def compiled_step(params, step, weights, images):
        seed = tf.stack([tf.constant(cfg.seed, tf.int64), tf.cast(step, tf.int64)])
        # The task stream depends on the iteration only: every run sees the same tasks (paired comparison).
        # k * shots images per class: every inner step its own minibatch (the official --train-shots 5k)
        task = sample_tasks(images, 1, cfg.ways, k * cfg.shots, 0, seed)
        xs, ys = make_inner_batches(task["support_x"], task["support_y"], cfg.inner_batch, k, seed + 1)
        result = inner_loop(model, broadcast_params(params, 1), xs, ys, inner)
        update = combine(result.grads, weights)
        outer_lr = cfg.inner_lr * linear_anneal(cfg.meta_step, cfg.meta_step_final, step, cfg.iterations)
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
        outputs = predict(model, task_params, eval_batch["support_x"], eval_batch["query_x"], transductive=False)
        return tf.reduce_mean(model.accuracy(outputs, eval_batch["query_y"]))

    return evaluate


# ------------------------------------------------------------------ the state of an unfinished run

STATE_CONFIG = "settings.json"  # not config.json: the state may sit among run directories (rundir.find_runs)


def state_config(cfg: CombinationConfig, train_shape, test_shape) -> dict:
    """What a state directory's curves were made with: a rerun resumes them only if it matches."""
    return {"config": dataclasses.asdict(cfg) | {"ks": list(cfg.ks)},
            "train_shape": [int(d) for d in train_shape], "test_shape": [int(d) for d in test_shape]}


def open_state(state_dir: Path, expected: dict) -> None:
    """Create `state_dir` for these curves, or check that the curves in it were made the same way."""
    path = Path(state_dir) / STATE_CONFIG
    if not path.exists():
        write_json_atomic(path, expected)
        return
    differing = config_differences(read_json(path), expected)
    if differing:
        raise UserError(f"{state_dir} holds gradient-combination curves made with other settings "
                        f"(differing: {', '.join(differing)}); pass another --state "
                        "directory, or delete this one to start the curves over")


def _curve_files(state_dir: Path, combination: str, k: int) -> tuple[Path, Path]:
    """(finished curve's rows, unfinished curve's checkpoint)."""
    return Path(state_dir) / f"{combination}_k{k}.json", Path(state_dir) / f"{combination}_k{k}.npz"


def write_curve(state_dir: Path, combination: str, k: int, rows: list[dict], params: dict | None) -> None:
    """Checkpoint one curve in one atomic file: its rows and its weights at the last row's
    iteration; once finished (`params` None), its rows alone, and the checkpoint goes."""
    finished_file, checkpoint_file = _curve_files(state_dir, combination, k)
    if params is None:
        write_json_atomic(finished_file, {"rows": rows})
        checkpoint_file.unlink(missing_ok=True)
        return
    names = sorted(params)
    with atomic_path(checkpoint_file, ".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, rows=np.array(json.dumps(rows)), names=np.array(names),
                 **{f"param{i}": params[name].numpy() for i, name in enumerate(names)})


def read_curve(state_dir: Path, combination: str, k: int) -> tuple[list[dict], dict | None, bool]:
    """(rows, weights at the last row's iteration, finished) of a checkpointed curve; ([], None,
    False) when there is none."""
    finished_file, checkpoint_file = _curve_files(state_dir, combination, k)
    if finished_file.exists():
        return read_json(finished_file)["rows"], None, True
    if not checkpoint_file.exists():
        return [], None, False
    with np.load(checkpoint_file) as saved:
        names = [str(name) for name in saved["names"]]
        params = {name: tf.constant(saved[f"param{i}"]) for i, name in enumerate(names)}
        return json.loads(str(saved["rows"])), params, False


def train_curve(model, train_step, evaluate, combination: str, k: int, cfg: CombinationConfig,
                state_dir: Path | None = None) -> list[dict]:
    """Train one (combination, k) from the common initialisation; rows of held-out accuracy vs
    iteration. With `state_dir`, checkpoint at every evaluation and resume a checkpointed curve."""
    weights = tf.constant(combination_weights(combination, k), tf.float32)
    rows, params, finished = read_curve(state_dir, combination, k) if state_dir else ([], None, False)
    if finished:
        return rows
    if params is None:
        rows, params = [], model.init(cfg.seed)
    first = rows[-1]["iteration"] if rows else 0
    started = time.perf_counter() - (rows[-1]["wall_time"] if rows else 0.0)
    # Per row: a curve resumed on another machine says which stretch ran where.
    machine = machine_summary()
    for step in range(first, cfg.iterations + 1):
        if (step % cfg.eval_every == 0 or step == cfg.iterations) and not (rows and rows[-1]["iteration"] == step):
            rows.append({"combination": combination, "k": k, "iteration": step,
                         "accuracy": float(evaluate(params)), "wall_time": time.perf_counter() - started,
                         "machine": machine})
            if state_dir:
                write_curve(state_dir, combination, k, rows, params if step < cfg.iterations else None)
        if step < cfg.iterations:
            params = train_step(params, tf.constant(step, tf.int64), weights)
    return rows


def run_combinations(train_images, test_images, cfg: CombinationConfig, state_dir: Path | None = None) -> list[dict]:
    """All learning curves; rows: combination, k, label, iteration, accuracy (held-out, %), wall_time,
    machine (`runtime.machine_summary` where the row was evaluated).
    With `state_dir`, every curve checkpoints there and a rerun resumes the unfinished ones."""
    if state_dir:
        open_state(Path(state_dir), state_config(cfg, train_images.shape, test_images.shape))
    model = get_model("omniglot", cfg.ways)
    episodes = make_eval_episodes(int(test_images.shape[0]), int(test_images.shape[1]), cfg.ways, cfg.shots,
                                  cfg.eval_queries, cfg.seed, cfg.eval_tasks, name="omniglot/test")
    evaluate = make_evaluate(model, episodes.gather(test_images), cfg)
    steps = {k: make_train_step(model, train_images, k, cfg) for k in sorted({k for _, k in runs(cfg)})}
    rows = []
    for combination, k in runs(cfg):
        curve = [dict(row) for row in train_curve(model, steps[k], evaluate, combination, k, cfg, state_dir)]
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


def curve_summaries(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Label -> accuracies (%) of one learning curve: `start` (iteration 0, the common
    initialisation), `final` (mean over the last quarter of evaluations, less noisy than the last
    point), `gain` (final - start) and `mean` (over all evaluations: the area under the curve per
    iteration, higher for a curve that learns faster)."""
    out = {}
    for name in dict.fromkeys(r["label"] for r in rows):
        curve = sorted((r for r in rows if r["label"] == name), key=lambda r: r["iteration"])
        acc = [r["accuracy"] for r in curve]
        final = float(np.mean(acc[-max(1, len(acc) // 4):]))
        out[name] = {"start": float(acc[0]), "final": final, "gain": final - float(acc[0]),
                     "mean": float(np.mean(acc))}
    return out


def paper_claims(rows: list[dict]) -> list[dict]:
    """The paper's statements about its Fig. 4, checked on these curves (claim, holds, evidence):
    g1 alone (joint training) fails to learn, and summing more inner gradients learns faster,
    both across k (sum g1..gk) and against the last gradient alone at the same k (g_k, FOMAML).
    "Learns faster" compares the mean accuracy along the curve (`curve_summaries`)."""
    summary = curve_summaries(rows)
    labels = {(r["combination"], r["k"]): r["label"] for r in rows}
    claims = []
    if ("g1", 1) in labels and len(labels) > 1:
        g1 = summary[labels[("g1", 1)]]["gain"]
        others = [summary[name]["gain"] for key, name in labels.items() if key != ("g1", 1)]
        claims.append({
            "claim": "g1 alone (joint training) fails to learn: the smallest gain from iteration 0 of all curves",
            "holds": g1 < min(others),
            "evidence": f"g1 {g1:+.1f} points; the other curves {min(others):+.1f} to {max(others):+.1f}"})
    sums = sorted((k, summary[name]["mean"]) for (combination, k), name in labels.items() if combination == "sum")
    if len(sums) > 1:
        claims.append({
            "claim": "summing more inner gradients learns faster: sum g1..gk's mean accuracy rises with k",
            "holds": all(a < b for (_, a), (_, b) in zip(sums, sums[1:])),
            "evidence": f"k={sums[0][0]} {sums[0][1]:.1f}%" + "".join(
                f" {'<' if a < b else '>='} k={k} {b:.1f}%" for (_, a), (k, b) in zip(sums, sums[1:]))})
    pairs = [(k, mean, summary[labels[("gk", k)]]["mean"]) for k, mean in sums if ("gk", k) in labels]
    if pairs:
        claims.append({
            "claim": "the sum of k inner gradients learns faster than the last one alone (g_k, FOMAML) at each k",
            "holds": all(total > last for _, total, last in pairs),
            "evidence": "; ".join(f"k={k}: sum {total:.1f}% vs g{k} {last:.1f}%" for k, total, last in pairs)})
    return claims

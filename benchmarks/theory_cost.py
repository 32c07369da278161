"""Project the wall time of `reptile-tf theory`'s gradient-combination curves (section 6.2) from a
short measurement: the seconds of one training iteration of each curve and of one held-out
evaluation, times the budget's iterations and evaluations. The other theory parts take minutes.

    .venv/bin/python benchmarks/theory_cost.py [--budget paper] [--data-dir data/tfds_nearest] [--repeats 100]

Prints a Markdown table; reptile_tf/cost.py `THEORY_HOURS` quotes the result
(results/benchmarks/<CPU class>/theory_cost.md).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from reptile_tf.data.episodes import load_split, make_eval_episodes  # noqa: E402
from reptile_tf.models import get_model  # noqa: E402
from reptile_tf.theory import combinations  # noqa: E402
from reptile_tf.theory.budgets import get_budget  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="paper", choices=("smoke", "quick", "paper"))
    parser.add_argument("--data-dir", default="data/tfds")
    parser.add_argument("--repeats", type=int, default=100, help="timed training iterations per curve")
    args = parser.parse_args()
    cfg = get_budget(args.budget).combinations
    train, test = (load_split("omniglot", split, args.data_dir) for split in ("train", "test"))
    model = get_model("omniglot", cfg.ways)
    episodes = make_eval_episodes(int(test.shape[0]), int(test.shape[1]), cfg.ways, cfg.shots, cfg.eval_queries,
                                  cfg.seed, cfg.eval_tasks, name="omniglot/test")
    evaluate = combinations.make_evaluate(model, episodes.gather(test), cfg)
    params = model.init(cfg.seed)
    float(evaluate(params))  # trace
    started = time.perf_counter()
    float(evaluate(params))
    eval_s = time.perf_counter() - started
    evaluations = cfg.iterations // cfg.eval_every + 1
    print(f"budget {args.budget}: {cfg.iterations} iterations a curve, {evaluations} evaluations of "
          f"{cfg.eval_tasks} tasks x {cfg.eval_inner_steps} steps ({eval_s:.1f} s each)\n")
    print("| curve | ms per iteration | hours (training + evaluations) |\n| --- | --- | --- |")
    total = 0.0
    for combination, k in combinations.runs(cfg):
        step = combinations.make_train_step(model, train, k, cfg)
        weights = tf.constant(combinations.combination_weights(combination, k), tf.float32)
        state = step(step(params, tf.constant(0, tf.int64), weights), tf.constant(1, tf.int64), weights)  # trace
        started = time.perf_counter()
        for iteration in range(args.repeats):
            state = step(state, tf.constant(iteration, tf.int64), weights)
        float(next(iter(state.values())).numpy().ravel()[0])  # wait for the last step
        step_s = (time.perf_counter() - started) / args.repeats
        hours = (step_s * cfg.iterations + eval_s * evaluations) / 3600
        total += hours
        print(f"| {combinations.label(combination, k)} | {1000 * step_s:.1f} | {hours:.2f} |", flush=True)
    print(f"| total | | **{total:.2f}** |")


if __name__ == "__main__":
    main()

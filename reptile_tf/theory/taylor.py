"""Check 1: the leading-order (Taylor) expansion of the three meta-gradients, per task.

For fixed minibatches L_1..L_k and each alpha on a log grid, the exact meta-gradients (the
training code's k-step procedures: `meta.inner_loop` and each algorithm's outer update, see
`meta_gradients.py`) are compared with their predictions gbar + alpha * (Hessian terms).
If the expansion is right the residual is O(alpha^2): slope 2 on a log-log plot. The
zeroth-order prediction alone (no Hessian terms) is the control and must show slope 1.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from reptile_tf.theory.autodiff import ALGORITHMS, leading_order_terms
from reptile_tf.theory.meta_gradients import exact_gradients_fn
from reptile_tf.theory.problems import Problem


@functools.lru_cache(maxsize=None)
def _compiled_terms(loss_fn):
    # The predictions: one graph per (loss, k), retraced only when the minibatch shapes change.
    return tf.function(functools.partial(leading_order_terms, loss_fn))


def taylor_residuals(problem: Problem, k: int, alphas: list[float], num_tasks: int = 1,
                     seed: int = 0, compiled: bool = True) -> list[dict]:
    """One row per (task, algorithm, alpha): residual norms of the first- and zeroth-order predictions.

    compiled=False runs eagerly: for a conv net, tracing the nested-tape graphs costs far more
    than the handful of evaluations done here.
    """
    # The exact side is traced afresh on every call (it runs whatever reptile_tf.meta holds now).
    exact_fn = exact_gradients_fn(problem, compiled)
    terms_fn = _compiled_terms(problem.loss_fn) if compiled else functools.partial(leading_order_terms,
                                                                                   problem.loss_fn)
    xs, ys = problem.sample_minibatches(seed, num_tasks, k)
    rows = []
    for task in range(num_tasks):
        terms = terms_fn(problem.phi, xs[task], ys[task])
        for alpha in alphas:
            exact = exact_fn(xs[task : task + 1], ys[task : task + 1], tf.constant(alpha, problem.phi.dtype))
            for algorithm in ALGORITHMS:
                zeroth, first = terms[algorithm]
                rows.append({
                    "problem": problem.name, "task": task, "algorithm": algorithm, "k": k, "alpha": float(alpha),
                    "residual": float(tf.norm(exact[algorithm] - zeroth - alpha * first)),
                    "zeroth_order_residual": float(tf.norm(exact[algorithm] - zeroth)),
                    "first_order_term_norm": float(alpha * tf.norm(first)),
                    "gradient_norm": float(tf.norm(exact[algorithm])),
                })
    return rows


def loglog_slope(alphas, residuals) -> float:
    """Least-squares slope of log(residual) against log(alpha)."""
    alphas, residuals = np.asarray(alphas, float), np.asarray(residuals, float)
    if len(alphas) < 2 or np.any(residuals <= 0) or np.any(alphas <= 0):
        raise ValueError("a log-log slope needs >= 2 points with positive alpha and residual")
    return float(np.polyfit(np.log(alphas), np.log(residuals), 1)[0])


def slope_matches(slope: float, expected: float, tolerance: float) -> bool:
    """The check used by tests and the report: |slope - expected| <= tolerance."""
    return bool(abs(slope - expected) <= tolerance)


def summarize_slopes(rows: list[dict]) -> list[dict]:
    """Per (problem, algorithm, k): slopes fitted on the geometric mean residual over tasks."""
    out = []
    keys = sorted({(r["problem"], r["algorithm"], r["k"]) for r in rows},
                  key=lambda pak: (pak[0], ALGORITHMS.index(pak[1]), pak[2]))
    for problem, algorithm, k in keys:
        sel = [r for r in rows if r["problem"] == problem and r["algorithm"] == algorithm and r["k"] == k]
        alphas = sorted({r["alpha"] for r in sel})
        mean_log = {name: [np.mean([np.log(r[name]) for r in sel if r["alpha"] == a]) for a in alphas]
                    for name in ("residual", "zeroth_order_residual")}
        tasks = sorted({r["task"] for r in sel})
        per_task = [loglog_slope(alphas, [next(r["residual"] for r in sel if r["task"] == t and r["alpha"] == a)
                                          for a in alphas]) for t in tasks]
        out.append({
            "problem": problem, "algorithm": algorithm, "k": k,
            "slope": loglog_slope(alphas, np.exp(mean_log["residual"])),
            "zeroth_order_slope": loglog_slope(alphas, np.exp(mean_log["zeroth_order_residual"])),
            "min_task_slope": min(per_task), "max_task_slope": max(per_task),
            "tasks": len(tasks), "alpha_min": alphas[0], "alpha_max": alphas[-1],
        })
    return out

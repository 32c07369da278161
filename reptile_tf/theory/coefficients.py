"""Check 2: expected meta-gradients as combinations of AvgGrad and AvgGradInner.

In expectation over tasks and minibatches (docs/reference.md "Theory"):
  E[g_MAML]    = AvgGrad - 2(k-1) alpha AvgGradInner
  E[g_FOMAML]  = AvgGrad -  (k-1) alpha AvgGradInner
  E[g_Reptile] = k AvgGrad - k(k-1)/2 alpha AvgGradInner
Monte Carlo: per task, k minibatches give AvgGrad (mean of gbar_i), AvgGradInner (mean of
Hbar_i gbar_j over ordered pairs i != j) and the exact algorithm gradients (computed by the
training code, `meta_gradients.py`). Least squares of
the averaged algorithm gradient on [AvgGrad, AvgGradInner] recovers the two coefficients;
bootstrap over tasks gives confidence intervals.

Variance reduction: minibatches of a task are i.i.d., so every expectation is invariant to
their order. Averaging each task's algorithm gradients over the cyclic shifts of the
minibatch order and their reversals (the dihedral orderings) makes the leading-order
prediction hold per task, not just in expectation, so the regression is well posed with
few tasks (the hint in the issue: the same samples for all quantities). The orderings go
through the production outer step as the tasks of one meta-batch, whose outer update
averages over them.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from reptile_tf.theory.autodiff import ALGORITHMS, pair_statistics
from reptile_tf.theory.meta_gradients import exact_gradients_fn
from reptile_tf.theory.problems import Problem


def expected_coefficients(algorithm: str, k: int, alpha: float) -> tuple[float, float]:
    """(coefficient of AvgGrad, coefficient of AvgGradInner) predicted by the paper."""
    if algorithm == "maml":
        return 1.0, -2.0 * (k - 1) * alpha
    if algorithm == "fomaml":
        return 1.0, -(k - 1) * alpha
    if algorithm == "reptile":
        return float(k), -0.5 * k * (k - 1) * alpha
    raise ValueError(f"unknown algorithm {algorithm!r}")


def dihedral_orderings(k: int) -> list[tuple[int, ...]]:
    """Cyclic shifts of 0..k-1 and their reversals, without duplicates.

    Over these orderings the last minibatch is each one equally often and every ordered pair
    (i, j) has j before i equally often, which is what the expansion's expectation needs.
    """
    shifts = [tuple((s + i) % k for i in range(k)) for s in range(k)]
    return sorted(set(shifts) | {tuple(reversed(o)) for o in shifts})


@functools.lru_cache(maxsize=None)
def _compiled_statistics(loss_fn):
    return tf.function(functools.partial(pair_statistics, loss_fn))


def collect_samples(problem: Problem, k: int, alphas: list[float], num_tasks: int, seed: int = 0,
                    symmetrize: bool = True) -> dict:
    """Per-task Monte Carlo terms, numpy arrays [num_tasks, P].

    Returns {"avg_grad", "avg_grad_inner", "half_grad_of_dot", "gradients": {(algorithm, alpha): array}}.
    """
    exact_fn = exact_gradients_fn(problem)  # traced afresh: whatever reptile_tf.meta holds now
    stats_fn = _compiled_statistics(problem.loss_fn)
    xs, ys = problem.sample_minibatches(seed, num_tasks, k)
    orderings = dihedral_orderings(k) if symmetrize else [tuple(range(k))]
    stats = {"avg_grad": [], "avg_grad_inner": [], "half_grad_of_dot": []}
    gradients = {(a, alpha): [] for a in ALGORITHMS for alpha in alphas}
    for task in range(num_tasks):
        for name, value in stats_fn(problem.phi, xs[task], ys[task]).items():
            stats[name].append(value.numpy())
        # The orderings as the tasks of one meta-batch: the production outer step averages them.
        ordered_xs = tf.stack([tf.gather(xs[task], list(o)) for o in orderings])
        ordered_ys = tf.stack([tf.gather(ys[task], list(o)) for o in orderings])
        for alpha in alphas:
            exact = exact_fn(ordered_xs, ordered_ys, tf.constant(alpha, problem.phi.dtype))
            for algorithm in ALGORITHMS:
                gradients[(algorithm, alpha)].append(exact[algorithm].numpy())
    out = {name: np.stack(v) for name, v in stats.items()}
    out["gradients"] = {key: np.stack(v) for key, v in gradients.items()}
    return out


def fit_coefficients(avg_grad: np.ndarray, avg_grad_inner: np.ndarray, gradients: np.ndarray) -> tuple[float, float, float]:
    """Least squares of mean(gradients) on [mean(avg_grad), mean(avg_grad_inner)] over tasks.

    Returns (coef_avggrad, coef_avggradinner, relative residual norm of the fit).
    """
    design = np.stack([avg_grad.mean(0), avg_grad_inner.mean(0)], axis=1)
    target = gradients.mean(0)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = np.linalg.norm(design @ coef - target) / max(np.linalg.norm(target), 1e-300)
    return float(coef[0]), float(coef[1]), float(residual)


def bootstrap_intervals(avg_grad: np.ndarray, avg_grad_inner: np.ndarray, gradients: np.ndarray,
                        num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap over tasks for both coefficients: ((lo1, hi1), (lo2, hi2))."""
    rng = np.random.default_rng(seed)
    n = avg_grad.shape[0]
    draws = []
    for _ in range(num_resamples):
        idx = rng.integers(0, n, n)
        draws.append(fit_coefficients(avg_grad[idx], avg_grad_inner[idx], gradients[idx])[:2])
    draws = np.asarray(draws)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail], axis=0)
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def coefficients_match(fitted: tuple[float, float], expected: tuple[float, float], rtol: float) -> bool:
    """Both coefficients within rtol of the expected values (relative to each expected value)."""
    return all(abs(f - e) <= rtol * abs(e) for f, e in zip(fitted, expected))


def identity_relative_error(samples: dict) -> float:
    """|| mean Hbar_i gbar_j - 1/2 mean d/dphi(gbar_i . gbar_j) || / || mean Hbar_i gbar_j ||.

    AvgGradInner = 1/2 d/dphi E[gbar_1 . gbar_2]: the two sides are computed by different
    routes (HVPs vs differentiating the dot product); over symmetric pairs they agree exactly.
    """
    lhs, rhs = samples["avg_grad_inner"].mean(0), samples["half_grad_of_dot"].mean(0)
    return float(np.linalg.norm(lhs - rhs) / np.linalg.norm(lhs))


def coefficient_rows(samples: dict, k: int, alphas: list[float], num_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """The coefficients table for one k: fitted vs expected coefficients with bootstrap CIs."""
    rows = []
    for alpha in alphas:
        for algorithm in ALGORITHMS:
            grads = samples["gradients"][(algorithm, alpha)]
            c1, c2, residual = fit_coefficients(samples["avg_grad"], samples["avg_grad_inner"], grads)
            (lo1, hi1), (lo2, hi2) = bootstrap_intervals(samples["avg_grad"], samples["avg_grad_inner"], grads,
                                                         num_resamples=num_resamples, seed=seed)
            e1, e2 = expected_coefficients(algorithm, k, alpha)
            rows.append({
                "algorithm": algorithm, "k": k, "alpha": float(alpha), "alpha_k": float(alpha * k),
                "coef_avggrad": c1, "coef_avggrad_ci_low": lo1, "coef_avggrad_ci_high": hi1,
                "expected_avggrad": e1,
                "coef_avggradinner": c2, "coef_avggradinner_ci_low": lo2, "coef_avggradinner_ci_high": hi2,
                "expected_avggradinner": e2,
                "ratio": c2 / c1, "expected_ratio": e2 / e1,
                "ratio_relative_error": abs(c2 / c1 - e2 / e1) / abs(e2 / e1),
                "fit_relative_residual": residual, "tasks": int(samples["avg_grad"].shape[0]),
                "identity_relative_error": identity_relative_error(samples),
            })
    return rows


def ratio_ordering_holds(rows: list[dict], k: int, alpha: float) -> bool:
    """|AvgGradInner/AvgGrad| ratio ordered MAML > FOMAML > Reptile for this (k, alpha)."""
    ratio = {r["algorithm"]: abs(r["ratio"]) for r in rows if r["k"] == k and r["alpha"] == alpha}
    return ratio["maml"] > ratio["fomaml"] > ratio["reptile"]

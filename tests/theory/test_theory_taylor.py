"""Check 1: the leading-order expansion of the MAML / FOMAML / Reptile meta-gradients.

The exact meta-gradients are the training code's (`reptile_tf.meta`, via
`theory.meta_gradients`); the last tests break that code on purpose and see the check fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf import meta
from reptile_tf.theory.autodiff import gradient, hessian_vector_product, leading_order_terms
from reptile_tf.theory.meta_gradients import exact_gradients
from reptile_tf.theory.problems import omniglot_problem, toy_regression_problem
from reptile_tf.theory.taylor import loglog_slope, slope_matches, summarize_slopes, taylor_residuals

ALPHAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
# Measured on the toy network (seed 0, 2 tasks, alphas 1e-4..1e-2): leading-order slopes
# 1.993-2.000 (per task and pooled), zeroth-order slopes 0.990-1.000. 0.1 leaves room for platform rounding while
# still separating 2 from 1 by a wide margin.
SLOPE_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def toy():
    return toy_regression_problem(seed=0)


@pytest.fixture(scope="module")
def toy_rows(toy):
    rows = []
    for k in (2, 3, 4):
        rows += taylor_residuals(toy, k, ALPHAS, num_tasks=2, seed=0)
    return rows


def test_hvp_matches_finite_differences(toy):
    xs, ys = toy.sample_minibatches(0, 1, 1)
    v = tf.constant(np.random.default_rng(0).normal(size=toy.phi.shape))
    eps = 1e-5
    finite = (gradient(toy.loss_fn, toy.phi + eps * v, xs[0, 0], ys[0, 0])
              - gradient(toy.loss_fn, toy.phi - eps * v, xs[0, 0], ys[0, 0])) / (2 * eps)
    hvp = hessian_vector_product(toy.loss_fn, toy.phi, xs[0, 0], ys[0, 0], v)
    # Central differences are O(eps^2) = 1e-10 accurate; measured relative error ~1e-10.
    assert float(tf.norm(hvp - finite) / tf.norm(hvp)) < 1e-7


def test_k1_reduces_to_plain_gradient(toy):
    xs, ys = toy.sample_minibatches(0, 1, 1)
    exact = exact_gradients(toy, xs, ys, tf.constant(0.1, tf.float64))
    plain = gradient(toy.loss_fn, toy.phi, xs[0, 0], ys[0, 0])
    for algorithm in ("maml", "fomaml", "reptile"):
        np.testing.assert_allclose(exact[algorithm].numpy(), plain.numpy(), rtol=1e-12, atol=1e-14)


def test_leading_order_residual_is_second_order(toy_rows):
    summary = summarize_slopes(toy_rows)
    assert len(summary) == 9  # 3 algorithms x k in {2, 3, 4}
    for row in summary:
        assert slope_matches(row["slope"], 2.0, SLOPE_TOLERANCE), row
        assert slope_matches(row["min_task_slope"], 2.0, SLOPE_TOLERANCE), row


def test_zeroth_order_control_is_first_order(toy_rows):
    for row in summarize_slopes(toy_rows):
        assert slope_matches(row["zeroth_order_slope"], 1.0, SLOPE_TOLERANCE), row


def _wrong_prediction_slope(toy, k: int, prediction_of: str, exact_of: str) -> float:
    """Slope of ||g_exact(exact_of) - prediction(prediction_of)||: a deliberately wrong pairing."""
    xs, ys = toy.sample_minibatches(0, 1, k)
    terms = leading_order_terms(toy.loss_fn, toy.phi, xs[0], ys[0])
    zeroth, first = terms[prediction_of]
    residuals = []
    for alpha in ALPHAS:
        exact = exact_gradients(toy, xs, ys, tf.constant(alpha, tf.float64))[exact_of]
        residuals.append(float(tf.norm(exact - zeroth - alpha * first)))
    return loglog_slope(ALPHAS, residuals)


def test_check_fails_when_a_hessian_term_is_dropped(toy):
    # MAML predicted by FOMAML's expansion = MAML's minus the sum_j Hbar_j gbar_k term.
    slope = _wrong_prediction_slope(toy, 3, prediction_of="fomaml", exact_of="maml")
    assert not slope_matches(slope, 2.0, SLOPE_TOLERANCE)
    assert slope_matches(slope, 1.0, SLOPE_TOLERANCE)  # measured 0.987: an O(alpha) residual


def test_check_fails_with_the_wrong_hessian_coefficient(toy):
    # FOMAML predicted with MAML's expansion (an extra Hessian term) must fail just the same.
    slope = _wrong_prediction_slope(toy, 2, prediction_of="maml", exact_of="fomaml")  # measured 1.000
    assert not slope_matches(slope, 2.0, SLOPE_TOLERANCE)


def test_loglog_slope_recovers_a_power_law():
    alphas = np.logspace(-4, -1, 5)
    assert loglog_slope(alphas, 3.0 * alphas**2) == pytest.approx(2.0, abs=1e-12)
    with pytest.raises(ValueError):
        loglog_slope(alphas, np.zeros(5))


def test_real_omniglot_network(omniglot_train_images):
    """The real network (float64) on real Omniglot tasks, k = 2: smooth twin and ReLU model."""
    alphas = [1e-8, 1e-7, 1e-6]
    for variant in ("softplus", "models"):
        problem = omniglot_problem(omniglot_train_images, seed=0, variant=variant)
        rows = taylor_residuals(problem, 2, alphas, num_tasks=1, seed=0, compiled=False)
        for row in summarize_slopes(rows):
            # Measured: softplus 2.000 / 1.000; models (ReLU, no activation flips below 1e-6
            # on this task) 1.996-1.998 / 1.000. A batch norm with wrong second derivatives
            # (tf.nn.moments) measured slope 1.00 here.
            assert slope_matches(row["slope"], 2.0, SLOPE_TOLERANCE), row
            assert slope_matches(row["zeroth_order_slope"], 1.0, SLOPE_TOLERANCE), row


# ----------------------------------------------------------------------------- the check checks the trained code


def _reference_gradients(problem, xs, ys, alpha):
    """k plain SGD steps on the flat loss, written out here: (sum g_i, g_k, MAML through k-1 steps)."""
    phi, grads = problem.phi, []
    for i in range(xs.shape[0]):
        grads.append(gradient(problem.loss_fn, phi, xs[i], ys[i]))
        phi = phi - alpha * grads[-1]
    with tf.GradientTape() as tape:
        start = tf.identity(problem.phi)
        tape.watch(start)
        phi = start
        for i in range(xs.shape[0] - 1):
            phi = phi - alpha * gradient(problem.loss_fn, phi, xs[i], ys[i])
        loss = problem.loss_fn(phi, xs[-1], ys[-1])
    return {"reptile": tf.add_n(grads), "fomaml": grads[-1], "maml": tape.gradient(loss, start)}


@pytest.mark.parametrize("k", [1, 3])
def test_exact_gradients_are_the_k_step_procedures(toy, k):
    # The production outer step (displacement coordinates, step 1) read back as a gradient equals
    # the procedures written out by hand, to rounding (measured relative error <= 3e-16).
    xs, ys = toy.sample_minibatches(2, 1, k)
    alpha = 0.05
    exact = exact_gradients(toy, xs, ys, tf.constant(alpha, tf.float64))
    reference = _reference_gradients(toy, xs[0], ys[0], alpha)
    for algorithm, want in reference.items():
        np.testing.assert_allclose(exact[algorithm].numpy(), want.numpy(), rtol=1e-9, atol=1e-12, err_msg=algorithm)


def _slopes(problem, k):
    rows = taylor_residuals(problem, k, ALPHAS, num_tasks=1, seed=0)
    return {row["algorithm"]: row["slope"] for row in summarize_slopes(rows)}


def test_check_fails_when_the_trained_inner_loop_is_broken(toy, monkeypatch):
    real_inner_loop = meta.inner_loop

    def reversed_minibatches(model, params, xs, ys, cfg, opt_state=None):
        # A bug in the training code: the inner steps visit the task's minibatches last to first.
        return real_inner_loop(model, params, xs[:, ::-1], ys[:, ::-1], cfg, opt_state)

    monkeypatch.setattr(meta, "inner_loop", reversed_minibatches)
    slopes = _slopes(toy, 3)
    # FOMAML now steps on L_1 last (measured slope -0.003: an O(1) residual); Reptile's Hessian term
    # pairs the minibatches the wrong way round (measured 1.001). MAML's leading terms do not depend
    # on the order of its k-1 inner steps, so it keeps slope 2 (measured 1.998).
    assert not slope_matches(slopes["fomaml"], 2.0, SLOPE_TOLERANCE), slopes
    assert not slope_matches(slopes["reptile"], 2.0, SLOPE_TOLERANCE), slopes


def test_check_fails_when_the_inner_optimizer_update_is_broken(toy, monkeypatch):
    real_sgd_step = meta.sgd_step

    def sgd_step_off_by_a_tenth_of_a_percent(params, grads, lr):
        return real_sgd_step(params, grads, 1.001 * lr)

    monkeypatch.setattr(meta, "sgd_step", sgd_step_off_by_a_tenth_of_a_percent)
    slopes = _slopes(toy, 2)
    # measured slopes 0.01 (MAML), -0.003, -0.002: a constant relative error of 1e-3 dominates
    for algorithm in ("maml", "fomaml", "reptile"):  # MAML's outer SGD step goes wrong as well
        assert not slope_matches(slopes[algorithm], 2.0, SLOPE_TOLERANCE), slopes
    monkeypatch.undo()
    assert all(slope_matches(s, 2.0, SLOPE_TOLERANCE) for s in _slopes(toy, 2).values())  # the control

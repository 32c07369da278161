"""Check 1: the leading-order expansion of the MAML / FOMAML / Reptile meta-gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf.theory.autodiff import exact_gradients, gradient, hessian_vector_product, leading_order_terms
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
    exact = exact_gradients(toy.loss_fn, toy.phi, xs[0], ys[0], tf.constant(0.1, tf.float64))
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
        exact = exact_gradients(toy.loss_fn, toy.phi, xs[0], ys[0], tf.constant(alpha, tf.float64))[exact_of]
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

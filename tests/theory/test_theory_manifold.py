"""Check 3: Reptile approaches the point nearest to all task solution manifolds (linear regression)."""

from __future__ import annotations

import numpy as np
import pytest

from reptile_tf.theory.manifold import (
    decreases, gradient_descent, manifold_minimiser, manifold_rows, mean_projection_gap, project,
    reptile_fixed_point, sample_regression_tasks, stable_lr,
)


@pytest.fixture(scope="module")
def tasks():
    return sample_regression_tasks(num_tasks=20, examples=5, dim=20, seed=0)


def test_projection_lands_on_the_manifold_orthogonally(tasks):
    x, y = tasks.xs[0], tasks.ys[0]
    phi = np.random.default_rng(1).normal(size=tasks.dim)
    p = project(phi, x, y)
    assert np.linalg.norm(x @ p - y) < 1e-12  # P(phi) solves the task
    # phi - P(phi) lies in the row space of X (orthogonal to the manifold's directions).
    null_basis = np.linalg.svd(x)[2][x.shape[0]:]
    assert np.linalg.norm(null_basis @ (phi - p)) < 1e-12
    # ... and is the closest solution: any other solution p + n (n in the null space) is farther.
    other = p + null_basis.T @ np.random.default_rng(2).normal(size=null_basis.shape[0])
    assert np.linalg.norm(phi - other) > np.linalg.norm(phi - p)


def test_gradient_descent_converges_to_the_projection(tasks):
    lr = stable_lr(tasks)
    x, y = tasks.xs[3], tasks.ys[3]
    phi = np.random.default_rng(3).normal(size=tasks.dim)
    target = project(phi, x, y)
    distances = [np.linalg.norm(gradient_descent(phi, x, y, k, lr) - target) for k in (1, 10, 50, 200)]
    assert decreases(distances)
    assert distances[-1] < 1e-10  # measured 2e-15 after 200 steps (geometric contraction)


def test_minimiser_is_stationary_and_minimal(tasks):
    m = manifold_minimiser(tasks)
    assert np.linalg.norm(mean_projection_gap(m, tasks)) < 1e-12  # measured 3e-16

    def objective(phi):
        return np.mean([0.5 * np.sum((phi - project(phi, x, y)) ** 2) for x, y in zip(tasks.xs, tasks.ys)])

    rng = np.random.default_rng(4)
    assert all(objective(m + 0.1 * rng.normal(size=tasks.dim)) > objective(m) for _ in range(5))


def test_reptile_approaches_the_minimiser_as_k_grows(tasks):
    rows = manifold_rows(tasks, [1, 2, 4, 8, 16, 32], stable_lr(tasks), iterations=300)
    distances = [r["distance_to_minimiser"] for r in rows]
    # Measured: 0.666 (k=1, joint training), 0.536, 0.385, 0.217, 0.072, 0.010 (k=32).
    assert decreases(distances)
    assert rows[0]["relative_distance"] > 0.1  # joint training stays away (measured 16 %)
    assert rows[-1]["relative_distance"] < 0.01  # measured 0.24 %
    for r in rows:  # the iterate has converged to the exact fixed point of the Reptile update
        assert r["iterate_distance_to_fixed_point"] < 1e-4 * max(1.0, r["distance_to_minimiser"])


def test_checks_reject_wrong_answers(tasks):
    assert not decreases([0.5, 0.6, 0.1])
    # Joint training's fixed point is not the manifold minimiser: its projection gap is not zero.
    joint = reptile_fixed_point(tasks, 1, stable_lr(tasks))
    assert np.linalg.norm(mean_projection_gap(joint, tasks)) > 1e-3


def test_needs_fewer_examples_than_parameters():
    with pytest.raises(ValueError):
        sample_regression_tasks(examples=20, dim=20)

"""Check 3: Reptile converges towards a point near all solution manifolds (paper section 5.2).

Linear-regression tasks with fewer examples n than parameters d: task tau's loss
1/(2n) ||X phi - y||^2 is minimised on the affine subspace W_tau = {w : X w = y}, with the
closed-form projection P_W(phi) = phi - X^T (X X^T)^{-1} (X phi - y) = phi - X^+ (X phi - y).

- Premise: k steps of gradient descent from phi converge to P_W(phi) (they only move in the
  row space of X, where the residual contracts geometrically).
- Target: E_tau[1/2 D(phi, W_tau)^2] has gradient E[phi - P_tau(phi)] = E[X^+ X phi - X^+ y],
  so its minimiser solves (sum_tau X_tau^+ X_tau) phi = sum_tau X_tau^+ y_tau.
- Reptile with k inner steps (and joint training, k = 1) iterated to convergence: the
  distance from its iterate to that minimiser shrinks as k grows; k = 1 stays away (it
  minimises the mean squared error instead).

Pure numpy, float64, deterministic in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegressionTasks:
    """A fixed family of underdetermined linear-regression tasks: xs [N, n, d], ys [N, n]."""

    xs: np.ndarray
    ys: np.ndarray

    @property
    def dim(self) -> int:
        return self.xs.shape[2]


def sample_regression_tasks(num_tasks: int = 20, examples: int = 5, dim: int = 20, spread: float = 1.0,
                            seed: int = 0) -> RegressionTasks:
    """Tasks y = X w_tau + 0 with w_tau = w_shared + spread * noise; rows of X have unit scale."""
    if examples >= dim:
        raise ValueError(f"need fewer examples ({examples}) than parameters ({dim}) for a solution manifold")
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=dim)
    weights = shared + spread * rng.normal(size=(num_tasks, dim))
    xs = rng.normal(size=(num_tasks, examples, dim)) / np.sqrt(dim)
    ys = np.einsum("tnd,td->tn", xs, weights)
    return RegressionTasks(xs, ys)


def project(phi: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P_W(phi) = phi - X^T (X X^T)^{-1} (X phi - y): the closest solution of X w = y to phi."""
    return phi - x.T @ np.linalg.solve(x @ x.T, x @ phi - y)


def gradient_descent(phi: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> np.ndarray:
    """`steps` full-batch GD steps on 1/(2n) ||X w - y||^2 from phi."""
    n = x.shape[0]
    w = phi
    for _ in range(steps):
        w = w - lr * x.T @ (x @ w - y) / n
    return w


def stable_lr(tasks: RegressionTasks, fraction: float = 0.5) -> float:
    """`fraction` of 2 / (largest Hessian eigenvalue over tasks): GD contracts on every task."""
    n = tasks.xs.shape[1]
    largest = max(np.linalg.eigvalsh(x @ x.T / n).max() for x in tasks.xs)
    return fraction * 2.0 / largest


def manifold_minimiser(tasks: RegressionTasks) -> np.ndarray:
    """argmin_phi sum_tau 1/2 D(phi, W_tau)^2: solve (sum X^+ X) phi = sum X^+ y."""
    lhs = np.zeros((tasks.dim, tasks.dim))
    rhs = np.zeros(tasks.dim)
    for x, y in zip(tasks.xs, tasks.ys):
        pinv = x.T @ np.linalg.inv(x @ x.T)  # X^+ for full row rank X
        lhs += pinv @ x
        rhs += pinv @ y
    return np.linalg.solve(lhs, rhs)


def mean_projection_gap(phi: np.ndarray, tasks: RegressionTasks) -> np.ndarray:
    """Gradient of the objective: mean_tau (phi - P_tau(phi)); zero at the minimiser."""
    return np.mean([phi - project(phi, x, y) for x, y in zip(tasks.xs, tasks.ys)], axis=0)


def reptile_iterate(tasks: RegressionTasks, inner_steps: int, inner_lr: float, outer_lr: float = 1.0,
                    iterations: int = 2000, phi0: np.ndarray | None = None) -> np.ndarray:
    """Reptile with full meta-batch: phi <- phi + outer_lr * mean_tau (U_k,tau(phi) - phi).

    The update is affine in phi, so the iterate converges to Reptile's fixed point; a full
    meta-batch keeps the experiment deterministic (no task-sampling noise to average out).
    inner_steps = 1 is joint training (the outer step is then an SGD step on the mean loss).
    """
    phi = np.zeros(tasks.dim) if phi0 is None else phi0
    for _ in range(iterations):
        step = np.mean([gradient_descent(phi, x, y, inner_steps, inner_lr) - phi
                        for x, y in zip(tasks.xs, tasks.ys)], axis=0)
        phi = phi + outer_lr * step
    return phi


def reptile_fixed_point(tasks: RegressionTasks, inner_steps: int, inner_lr: float) -> np.ndarray:
    """The exact fixed point of the full-batch Reptile update (U_k is affine: B phi + c)."""
    d, n = tasks.dim, tasks.xs.shape[1]
    lhs = np.zeros((d, d))
    rhs = np.zeros(d)
    for x, y in zip(tasks.xs, tasks.ys):
        contraction = np.eye(d) - inner_lr * x.T @ x / n
        b = np.linalg.matrix_power(contraction, inner_steps)
        c = gradient_descent(np.zeros(d), x, y, inner_steps, inner_lr)  # U_k(0) = c
        lhs += np.eye(d) - b
        rhs += c
    return np.linalg.solve(lhs, rhs)


def manifold_rows(tasks: RegressionTasks, ks: list[int], inner_lr: float, iterations: int) -> list[dict]:
    """One row per k: distances of Reptile's iterate and exact fixed point to the minimiser."""
    target = manifold_minimiser(tasks)
    scale = np.linalg.norm(target)
    rows = []
    for k in ks:
        iterate = reptile_iterate(tasks, k, inner_lr, iterations=iterations)
        fixed = reptile_fixed_point(tasks, k, inner_lr)
        rows.append({
            "k": k, "method": "joint training" if k == 1 else "reptile",
            "distance_to_minimiser": float(np.linalg.norm(iterate - target)),
            "fixed_point_distance_to_minimiser": float(np.linalg.norm(fixed - target)),
            "iterate_distance_to_fixed_point": float(np.linalg.norm(iterate - fixed)),
            "relative_distance": float(np.linalg.norm(iterate - target) / scale),
            "mean_projection_gap": float(np.linalg.norm(mean_projection_gap(iterate, tasks))),
            "inner_lr": inner_lr, "iterations": iterations, "tasks": int(tasks.xs.shape[0]),
        })
    return rows


def decreases(values: list[float]) -> bool:
    """Strictly decreasing sequence (the check for 'approaches the minimiser as k grows')."""
    return all(b < a for a, b in zip(values, values[1:]))

"""Accuracy statistics: one seed's mean over its evaluation tasks with a 95% interval, and the
combination of seeds into one table cell. No TensorFlow (tables and tracking use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import scipy.stats

# The normal 0.975 quantile: per-task intervals are 1.96 standard errors wide.
Z975 = 1.96

INTERVAL_METHOD = (
    "Each cell: mean over seeds of each seed's mean test accuracy over its evaluation tasks, ± the "
    "half-width of a 95% interval for that mean. With S >= 2 seeds the half-width is "
    "t(0.975, S-1) * sd(seed means) / sqrt(S): by the law of total variance the spread of the seed "
    "means already contains both the training-seed variation and the task-sampling noise of each "
    "seed's evaluation. It is floored at the task-sampling-only half-width "
    "1.96 * sqrt(sum_s se_s^2) / S (se_s = a seed's ci95 / 1.96, from eval.json), which the true "
    "variance can never be below. With one seed only task sampling is measurable and the "
    "interval is 1.96 * se (column `interval_basis` says which applies). Published values are "
    "the Reptile paper's (docs/reference.md); `in?` = the published mean lies inside our interval."
)


def mean_and_ci95(values: Any) -> tuple[float, float]:
    """Mean and 1.96 * std / sqrt(n) (population std, as in the Reptile/MAML evaluations)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    return float(values.mean()), float(Z975 * values.std() / math.sqrt(values.size))


def t_quantile_975(dof: int) -> float:
    """Student-t 0.975 quantile (the half-width of a 95% interval over `dof + 1` seeds, in SDs/sqrt(n))."""
    if dof < 1:
        raise ValueError("degrees of freedom must be >= 1")
    return float(scipy.stats.t.ppf(0.975, dof))


@dataclass(frozen=True)
class SeedResult:
    """One run's final evaluation in one batch-norm mode (accuracy, ci95 in %)."""

    accuracy: float
    ci95: float
    tasks: int


@dataclass(frozen=True)
class Cell:
    mean: float
    ci95: float
    seeds: int
    tasks_per_seed: int
    basis: str  # "seeds+tasks" or "tasks"


def combine_seeds(results: Iterable[SeedResult]) -> Cell:
    """Mean over seeds with a 95% interval over seeds and tasks (see INTERVAL_METHOD)."""
    results = list(results)
    if not results:
        raise ValueError("no results to combine")
    count = len(results)
    means = [r.accuracy for r in results]
    mean = sum(means) / count
    # task-sampling-only standard error of the grand mean: sqrt(sum se_s^2) / S
    task_se = math.sqrt(sum((r.ci95 / Z975) ** 2 for r in results)) / count
    task_half_width = Z975 * task_se
    tasks = min(r.tasks for r in results)
    if count == 1:
        return Cell(mean, task_half_width, 1, tasks, "tasks")
    seed_sd = math.sqrt(sum((m - mean) ** 2 for m in means) / (count - 1))
    seed_half_width = t_quantile_975(count - 1) * seed_sd / math.sqrt(count)
    return Cell(mean, max(seed_half_width, task_half_width), count, tasks, "seeds+tasks")

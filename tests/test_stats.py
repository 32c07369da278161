"""`reptile_tf.stats`: a seed's mean and 95% interval over tasks, and seeds combined into a cell."""

from __future__ import annotations

import math

import pytest

from reptile_tf.stats import SeedResult, combine_seeds, mean_and_ci95, t_quantile_975


def test_mean_and_ci95():
    mean, ci95 = mean_and_ci95([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and ci95 == pytest.approx(1.96 * 0.5 / 2)
    with pytest.raises(ValueError):
        mean_and_ci95([])


def test_combine_one_seed_uses_task_interval():
    cell = combine_seeds([SeedResult(90.0, 0.5, 100)])
    assert (cell.mean, cell.seeds, cell.basis) == (90.0, 1, "tasks")
    assert cell.ci95 == pytest.approx(0.5)


def test_combine_seeds_uses_t_interval_over_seed_means():
    results = [SeedResult(a, 0.1, 1000) for a in (90.0, 92.0, 94.0)]
    cell = combine_seeds(results)
    assert cell.mean == pytest.approx(92.0)
    # sd of seed means = 2, t(0.975, 2) = 4.303, S = 3
    assert cell.ci95 == pytest.approx(4.303 * 2.0 / math.sqrt(3), rel=1e-4)
    assert cell.basis == "seeds+tasks"


def test_combine_seeds_floored_by_task_noise():
    # identical seed means: the seed spread is 0, yet task sampling noise remains
    cell = combine_seeds([SeedResult(80.0, 1.2, 100)] * 4)
    assert cell.ci95 == pytest.approx(1.96 * math.sqrt(4 * (1.2 / 1.96) ** 2) / 4)


def test_t_quantile_table_and_tail():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    assert 1.96 < t_quantile_975(100) < 2.0

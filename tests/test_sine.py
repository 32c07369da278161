"""Sine-wave regression tasks (MAML paper, section 5.1): shapes, ranges, determinism, in-graph use."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf.errors import UserError
from reptile_tf.sine import sample_sine_tasks


def test_shapes_and_dtypes():
    tasks = sample_sine_tasks(6, 10, 4, tf.constant([1, 2]))
    assert tasks["support_x"].shape == (6, 10, 1) and tasks["support_y"].shape == (6, 10, 1)
    assert tasks["query_x"].shape == (6, 4, 1) and tasks["query_y"].shape == (6, 4, 1)
    assert all(value.dtype == tf.float32 for value in tasks.values())
    assert set(tasks) == {"support_x", "support_y", "query_x", "query_y"}


def test_targets_are_the_tasks_sine_and_parameters_in_range():
    tasks = sample_sine_tasks(500, 5, 5, tf.constant([3, 4]), with_task_params=True)
    amplitude, phase = tasks["amplitude"].numpy(), tasks["phase"].numpy()
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0 and amplitude.std() > 1.0
    assert phase.min() >= 0.0 and phase.max() <= np.pi and phase.std() > 0.5
    for part in ("support", "query"):
        x, y = tasks[f"{part}_x"].numpy(), tasks[f"{part}_y"].numpy()
        assert x.min() >= -5.0 and x.max() <= 5.0
        np.testing.assert_allclose(y, amplitude[:, None, None] * np.sin(x - phase[:, None, None]), atol=1e-5)
    # support and query points of a task are different draws of the same function
    assert not np.allclose(tasks["support_x"].numpy(), tasks["query_x"].numpy())


def test_deterministic_in_the_seed_and_usable_in_tf_function():
    first = sample_sine_tasks(3, 5, 5, tf.constant([7, 8]))
    again = tf.function(lambda seed: sample_sine_tasks(3, 5, 5, seed))(tf.constant([7, 8]))
    other = sample_sine_tasks(3, 5, 5, tf.constant([7, 9]))
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    assert not np.allclose(first["support_x"].numpy(), other["support_x"].numpy())


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="num_tasks"):
        sample_sine_tasks(0, 5, 5, tf.constant([0, 0]))
    with pytest.raises(UserError, match="shots"):
        sample_sine_tasks(2, 0, 5, tf.constant([0, 0]))

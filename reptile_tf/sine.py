"""Sine-wave regression tasks (MAML paper, section 5.1), sampled in-graph.

A task is y = A sin(x - phase) with amplitude A ~ U(0.1, 5), phase ~ U(0, pi), inputs
x ~ U(-5, 5). Sampling is stateless (tf ops only, usable inside tf.function): the same
seed gives the same tasks.
"""

from __future__ import annotations

import math

import tensorflow as tf

from reptile_tf.errors import UserError
from reptile_tf.models import RNG_ALGORITHM

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def sine_targets(x: tf.Tensor, amplitude: tf.Tensor, phase: tf.Tensor) -> tf.Tensor:
    """A sin(x - phase) for x `[T, n, 1]`, amplitude and phase `[T]`."""
    return amplitude[:, None, None] * tf.sin(x - phase[:, None, None])


def sample_sine_tasks(num_tasks: int, shots: int, queries: int, seed, with_task_params: bool = False) -> dict:
    """Episodes dict of `num_tasks` sine tasks: support `shots` points, query `queries` points.

    support_x/query_x `[T, n, 1]` float32, support_y/query_y `[T, n, 1]` float32.
    `seed`: int tensor of shape [2] (stateless RNG). With `with_task_params`, the dict also
    holds "amplitude" and "phase" `[T]` (for plots and tests).
    """
    if num_tasks < 1 or shots < 1 or queries < 0:
        raise UserError(f"sine tasks need num_tasks >= 1, shots >= 1, queries >= 0 "
                        f"(got {num_tasks}, {shots}, {queries})")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3, alg=RNG_ALGORITHM)
    amplitude = tf.random.stateless_uniform([num_tasks], seeds[0], *AMPLITUDE_RANGE, alg=RNG_ALGORITHM)
    phase = tf.random.stateless_uniform([num_tasks], seeds[1], *PHASE_RANGE, alg=RNG_ALGORITHM)
    x = tf.random.stateless_uniform([num_tasks, shots + queries, 1], seeds[2], *INPUT_RANGE, alg=RNG_ALGORITHM)
    y = sine_targets(x, amplitude, phase)
    episodes = {"support_x": x[:, :shots], "support_y": y[:, :shots], "query_x": x[:, shots:], "query_y": y[:, shots:]}
    if with_task_params:
        episodes.update(amplitude=amplitude, phase=phase)
    return episodes

"""Test problems for the theory checks: a loss of a flat parameter vector plus a task sampler.

`toy_regression_problem` is a small float64 tanh network on random sinusoid-like regression
tasks: cheap enough for unit tests, nonlinear enough that every Taylor term is nonzero.
`omniglot_problem` wraps the project's real Omniglot network (`reptile_tf.models`) on
real Omniglot tasks (`reptile_tf.data.episodes`), or its smooth (softplus) twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from reptile_tf.errors import UserError
from reptile_tf.theory.autodiff import LossFn

# (seed, num_tasks, k) -> (xs [num_tasks, k, B, ...], ys [num_tasks, k, B, ...])
MinibatchSampler = Callable[[int, int, int], tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True)
class Problem:
    """A loss of a flat parameter vector, the initial point, and a sampler of task minibatches."""

    name: str
    loss_fn: LossFn
    phi: tf.Tensor  # [P] initial point
    sample_minibatches: MinibatchSampler


@dataclass(frozen=True)
class ParamLayout:
    """How a dict of parameter tensors maps onto one flat vector (sorted by name)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: dict[str, tf.Tensor]) -> "ParamLayout":
        names = tuple(sorted(params))
        return cls(names, tuple(tuple(int(d) for d in params[n].shape) for n in names))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, params: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.concat([tf.reshape(params[n], [-1]) for n in self.names], axis=0)

    def unflatten(self, flat: tf.Tensor) -> dict[str, tf.Tensor]:
        sizes = [math.prod(s) for s in self.shapes]
        parts = tf.split(flat, sizes)
        return {n: tf.reshape(p, s) for n, p, s in zip(self.names, parts, self.shapes)}


def _toy_layout(in_dim: int, hidden: int) -> ParamLayout:
    return ParamLayout(("b1", "b2", "w1", "w2"), ((hidden,), (1,), (in_dim, hidden), (hidden, 1)))


def toy_regression_problem(seed: int = 0, in_dim: int = 3, hidden: int = 12, batch: int = 10) -> Problem:
    """A float64 one-hidden-layer tanh network; task tau: y = sin(a_tau . x + b_tau).

    Tasks share structure (a_tau around a common mean) so AvgGrad and AvgGradInner are both
    sizeable and not parallel, which keeps the coefficient regression well posed.
    """
    layout = _toy_layout(in_dim, hidden)
    rng = np.random.default_rng(seed)
    init = {
        "w1": rng.normal(0.0, 1.0 / math.sqrt(in_dim), (in_dim, hidden)),
        "b1": rng.normal(0.0, 0.1, (hidden,)),
        "w2": rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, 1)),
        "b2": np.zeros((1,)),
    }
    phi = layout.flatten({n: tf.constant(v, tf.float64) for n, v in init.items()})
    task_mean = rng.normal(0.0, 1.0, (in_dim,))

    def loss_fn(flat: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        p = layout.unflatten(flat)
        hidden_out = tf.tanh(x @ p["w1"] + p["b1"])
        return 0.5 * tf.reduce_mean(tf.square(hidden_out @ p["w2"] + p["b2"] - y))

    def sample_minibatches(sample_seed: int, num_tasks: int, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        task_rng = np.random.default_rng([seed, sample_seed])
        a = task_mean + 0.5 * task_rng.normal(size=(num_tasks, 1, 1, in_dim))
        b = task_rng.uniform(0.0, math.pi, size=(num_tasks, 1, 1, 1))
        x = task_rng.normal(size=(num_tasks, k, batch, in_dim))
        y = np.sin(np.sum(x * a, axis=-1, keepdims=True) + b)
        return tf.constant(x, tf.float64), tf.constant(y, tf.float64)

    return Problem("toy_regression", loss_fn, phi, sample_minibatches)


def omniglot_forward_softplus(params: dict[str, tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """The Omniglot network of `reptile_tf.models` (same parameters, same building blocks) with
    softplus in place of ReLU: a smooth twin. Logits `[T, B, ways]`.

    The expansion assumes a twice-differentiable loss; with ReLU the loss is smooth only
    between kinks (until a step moves some pre-activation across zero).
    """
    from reptile_tf import models

    out = x
    for block in range(4):
        out = models.batched_conv3x3(out, params[f"conv{block}/kernel"], 2)
        out = models.batch_norm(out, params[f"bn{block}/scale"], params[f"bn{block}/offset"])
        out = tf.nn.softplus(out)
    out = tf.reshape(out, [out.shape[0], out.shape[1], -1])
    return models.dense(out, params["dense/kernel"], params["dense/bias"])


# "models": reptile_tf.models as is (ReLU); "softplus": its smooth twin (omniglot_forward_softplus).
OMNIGLOT_VARIANTS = ("models", "softplus")


def omniglot_problem(images: tf.Tensor, seed: int = 0, ways: int = 5, batch: int = 10,
                     variant: str = "models", dtype: tf.DType = tf.float64) -> Problem:
    """The real Omniglot network on real Omniglot tasks from `images` (a `load_split` tensor).

    A task is `ways` classes; its k minibatches of `batch` images are disjoint slices of the
    task's support set (which `sample_tasks` returns in random order, classes mixed). Batch
    norm uses each minibatch's statistics, so each L_i is a fixed function of phi.
    variant: "models" = `reptile_tf.models` apply as is; "softplus" = `omniglot_forward_softplus`.
    """
    from reptile_tf.data import episodes
    from reptile_tf.models import get_model

    if batch % ways:
        raise UserError(f"minibatch size {batch} must be a multiple of ways={ways}")
    if variant not in OMNIGLOT_VARIANTS:
        raise UserError(f"unknown network variant {variant!r}; choose one of {', '.join(OMNIGLOT_VARIANTS)}")
    model = get_model("omniglot", ways)
    params = model.init(seed, dtype=dtype)
    layout = ParamLayout.of(params)
    forward = model.apply if variant == "models" else omniglot_forward_softplus

    def loss_fn(flat: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        task_params = {n: v[None] for n, v in layout.unflatten(flat).items()}
        return model.loss(forward(task_params, x[None]), y[None])[0]

    per_class = batch // ways

    def sample_minibatches(sample_seed: int, num_tasks: int, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        tasks = episodes.sample_tasks(images, num_tasks, ways, per_class * k, 1,
                                      tf.constant([seed, sample_seed], tf.int64))
        x = tf.cast(tasks["support_x"], dtype)
        x = tf.reshape(x, [num_tasks, k, batch, *x.shape[2:]])
        y = tf.reshape(tasks["support_y"], [num_tasks, k, batch])
        return x, y

    return Problem(f"omniglot:{variant}", loss_fn, layout.flatten(params), sample_minibatches)

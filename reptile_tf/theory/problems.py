"""Test problems for the theory checks: a network in the production `Model` interface, its
initial point, and a sampler of task minibatches.

Every problem is a `reptile_tf.models.Model` (apply with a leading task dimension, per-task
loss), so the exact meta-gradients are computed by the training code itself
(`reptile_tf.meta`, see `meta_gradients.py`); the same loss as a function of one flat
parameter vector (`Problem.loss_fn`, `Problem.phi`) feeds the Hessian-vector products of the
predicted Taylor terms (`autodiff.py`), which production has no use for.

`toy_regression_problem` is a small float64 tanh network on random sinusoid-like regression
tasks: cheap enough for unit tests, nonlinear enough that every Taylor term is nonzero.
`omniglot_problem` wraps the project's real Omniglot network (`reptile_tf.models`) on
real Omniglot tasks (`reptile_tf.data.episodes`), or its smooth (softplus) twin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from reptile_tf import models
from reptile_tf.data import episodes
from reptile_tf.errors import UserError
from reptile_tf.models import Model, get_model, regression_accuracy
from reptile_tf.theory.autodiff import LossFn

# (seed, num_tasks, k) -> (xs [num_tasks, k, B, ...], ys [num_tasks, k, B, ...])
MinibatchSampler = Callable[[int, int, int], tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True, eq=False)
class Problem:
    """A production `Model`, its initial point, and a sampler of task minibatches.

    model: `apply(params [T, ...], x [T, B, ...]) -> [T, B, out]`, `loss -> [T]` (what
        `reptile_tf.meta` trains); params: the initial point phi (no task dimension, float64).
    Derived: `layout` (params <-> one flat vector), `phi` (flat [P]) and `loss_fn(flat, x, y)`,
    the loss of one minibatch (x `[B, ...]`) as a function of the flat vector.
    """

    name: str
    model: Model
    params: dict[str, tf.Tensor]
    sample_minibatches: MinibatchSampler
    layout: "ParamLayout" = field(init=False)
    phi: tf.Tensor = field(init=False)  # [P] initial point
    loss_fn: LossFn = field(init=False)

    def __post_init__(self) -> None:
        layout = ParamLayout.of(self.params)
        model = self.model

        def loss_fn(flat: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            task_params = {n: v[None] for n, v in layout.unflatten(flat).items()}
            return model.loss(model.apply(task_params, x[None]), y[None])[0]

        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "phi", layout.flatten(self.params))
        object.__setattr__(self, "loss_fn", loss_fn)


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


def _toy_apply(params: dict[str, tf.Tensor], x: tf.Tensor, compute_dtype=None) -> tf.Tensor:
    """One hidden tanh layer, per task: params `[T, ...]`, x `[T, B, in]` -> `[T, B, 1]`."""
    hidden = tf.tanh(tf.matmul(x, params["w1"]) + params["b1"][:, None, :])
    return tf.matmul(hidden, params["w2"]) + params["b2"][:, None, :]


def _half_mse(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Per-task 1/2 mean squared error `[T]`."""
    return 0.5 * tf.reduce_mean(tf.square(outputs - tf.reshape(targets, tf.shape(outputs))), axis=[1, 2])


def toy_model(in_dim: int = 3) -> Model:
    """The toy network in the production `Model` interface (init is unused: the problem draws phi)."""
    return Model(init=None, apply=_toy_apply, loss=_half_mse, accuracy=regression_accuracy, arch="toy_regression",
                 num_outputs=1, input_shape=(in_dim,), is_classifier=False)


def toy_regression_problem(seed: int = 0, in_dim: int = 3, hidden: int = 12, batch: int = 10) -> Problem:
    """A float64 one-hidden-layer tanh network; task tau: y = sin(a_tau . x + b_tau).

    Tasks share structure (a_tau around a common mean) so AvgGrad and AvgGradInner are both
    sizeable and not parallel, which keeps the coefficient regression well posed.
    """
    rng = np.random.default_rng(seed)
    init = {
        "w1": rng.normal(0.0, 1.0 / math.sqrt(in_dim), (in_dim, hidden)),
        "b1": rng.normal(0.0, 0.1, (hidden,)),
        "w2": rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, 1)),
        "b2": np.zeros((1,)),
    }
    params = {n: tf.constant(v, tf.float64) for n, v in init.items()}
    task_mean = rng.normal(0.0, 1.0, (in_dim,))

    def sample_minibatches(sample_seed: int, num_tasks: int, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        task_rng = np.random.default_rng([seed, sample_seed])
        a = task_mean + 0.5 * task_rng.normal(size=(num_tasks, 1, 1, in_dim))
        b = task_rng.uniform(0.0, math.pi, size=(num_tasks, 1, 1, 1))
        x = task_rng.normal(size=(num_tasks, k, batch, in_dim))
        y = np.sin(np.sum(x * a, axis=-1, keepdims=True) + b)
        return tf.constant(x, tf.float64), tf.constant(y, tf.float64)

    return Problem("toy_regression", toy_model(in_dim), params, sample_minibatches)


def omniglot_forward_softplus(params: dict[str, tf.Tensor], x: tf.Tensor, compute_dtype=None) -> tf.Tensor:
    """The Omniglot network of `reptile_tf.models` (same parameters, same building blocks) with
    softplus in place of ReLU: a smooth twin. Logits `[T, B, ways]`.

    The expansion assumes a twice-differentiable loss; with ReLU the loss is smooth only
    between kinks (until a step moves some pre-activation across zero).
    """
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
    if batch % ways:
        raise UserError(f"minibatch size {batch} must be a multiple of ways={ways}")
    if variant not in OMNIGLOT_VARIANTS:
        raise UserError(f"unknown network variant {variant!r}; choose one of {', '.join(OMNIGLOT_VARIANTS)}")
    model = get_model("omniglot", ways)
    params = model.init(seed, dtype=dtype)
    if variant == "softplus":
        model = dataclasses.replace(model, apply=omniglot_forward_softplus)

    per_class = batch // ways

    def sample_minibatches(sample_seed: int, num_tasks: int, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        tasks = episodes.sample_tasks(images, num_tasks, ways, per_class * k, 1,
                                      tf.constant([seed, sample_seed], tf.int64))
        x = tf.cast(tasks["support_x"], dtype)
        x = tf.reshape(x, [num_tasks, k, batch, *x.shape[2:]])
        y = tf.reshape(tasks["support_y"], [num_tasks, k, batch])
        return x, y

    return Problem(f"omniglot:{variant}", model, params, sample_minibatches)

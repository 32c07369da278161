"""The three algorithms' exact meta-gradients, computed by the code that trains (`reptile_tf.meta`).

For one task's minibatches L_1..L_k and inner SGD step alpha, the theory's meta-gradients are
(docs/reference.md "Theory"):
  g_MAML    = d/dphi L_k(U_{k-1}(phi))        (second order through k-1 SGD steps)
  g_FOMAML  = g_k = L_k'(phi_k)               (the last inner step's gradient)
  g_Reptile = (phi - phi_{k+1}) / alpha = sum_i g_i
Each is read off one production outer step, `meta.meta_step_on_minibatches` (what `meta_step`
runs once it has drawn the minibatches): `meta.inner_loop` with the plain SGD inner optimizer,
then the algorithm's outer update from `meta.ALGORITHMS` with step size 1 -
  Reptile / FOMAML: phi' = phi + 1 * (weight change)  =>  g = (phi - phi') / alpha
  MAML (outer SGD, lr 1): phi' = phi - 1 * meta-gradient  =>  g = phi - phi'
with the minibatches L_1..L_{k-1} as the support steps and L_k as MAML's query set.
So a bug in the inner loop, the inner optimizer or an outer update changes these gradients
and fails the Taylor and coefficient checks.

Precision: the step is taken in displacement coordinates, params delta = 0 for a model whose
apply is `model.apply(phi + delta, x)` (the production network, reparametrised around phi).
Then phi' - phi is computed without cancellation: with alpha ~ 1e-8 (Omniglot) the weight
changes are far below the rounding unit of phi itself. Gradients with respect to delta at
delta = 0 are the gradients with respect to phi.

Several rows of xs (`[T, k, B, ...]`) are T tasks of one meta-batch: the outer update averages
over them (the coefficient check passes one task's minibatches in several orders this way).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from reptile_tf import meta
from reptile_tf.models import Model
from reptile_tf.settings import Settings, paper_settings
from reptile_tf.theory.autodiff import ALGORITHMS
from reptile_tf.theory.problems import Problem


def algorithm_settings(algorithm: str, steps: int, alpha) -> Settings:
    """Settings of one theory outer step: plain SGD inner loop with step `alpha` (number or tensor),
    `steps` support steps, no tail, mean loss; outer update with step 1 (MAML: SGD outer optimizer)."""
    return paper_settings(algorithm, "sine", 1, 10).replace(
        inner_optimizer="sgd", inner_lr=alpha, inner_steps=max(1, steps), inner_batch=0, outer_optimizer="sgd",
        outer_lr=1.0, first_order=False, tail_shots=0, loss_reduction="mean", inner_adam_mode="parallel_mean")


def displaced(model: Model, params: dict[str, tf.Tensor]) -> Model:
    """`model` reparametrised around `params`: apply(delta, x) = model.apply(params + delta, x)."""

    def apply(delta, x, compute_dtype=None):
        # params (no task dim) broadcast over delta's leading task dimension
        return model.apply({name: params[name] + value for name, value in delta.items()}, x)

    return dataclasses.replace(model, apply=apply)


def outer_step_gradient(problem: Problem, algorithm: str, xs: tf.Tensor, ys: tf.Tensor, alpha) -> tf.Tensor:
    """Flat `[P]` meta-gradient of `algorithm` from one production outer step (mean over the T rows).

    xs `[T, k, B, ...]`, ys `[T, k, B, ...]`; alpha: the inner SGD step (number or scalar tensor).
    """
    k = xs.shape[1]
    model = displaced(problem.model, problem.params)
    zero = {name: tf.zeros_like(value) for name, value in problem.params.items()}
    if algorithm == "maml" and k == 1:
        # No inner step: g_MAML = L_1'(phi) = g_FOMAML (production needs >= 1 inner step).
        algorithm = "fomaml"
    if algorithm == "maml":
        support_x, support_y, batch = xs[:, :-1], ys[:, :-1], {"query_x": xs[:, -1], "query_y": ys[:, -1]}
    else:
        support_x, support_y, batch = xs, ys, {}
    settings = algorithm_settings(algorithm, support_x.shape[1], alpha)
    state = meta.init_meta_state(model, zero, settings)
    new_state, _ = meta.meta_step_on_minibatches(model, settings, state, support_x, support_y, batch, 1.0)
    moved = problem.layout.flatten(meta.params_from_state(new_state))  # phi' - phi
    scale = 1.0 if algorithm == "maml" else tf.cast(alpha, moved.dtype)
    return -moved / scale


def exact_gradients(problem: Problem, xs: tf.Tensor, ys: tf.Tensor, alpha) -> dict[str, tf.Tensor]:
    """{algorithm: flat meta-gradient} for the tasks (rows) of xs `[T, k, B, ...]`, by the training code."""
    return {algorithm: outer_step_gradient(problem, algorithm, xs, ys, alpha) for algorithm in ALGORITHMS}


def exact_gradients_fn(problem: Problem, compiled: bool = True):
    """`exact_gradients` bound to `problem`: (xs, ys, alpha tensor) -> dict; compiled into one graph
    per minibatch shape unless `compiled=False` (eager: for a conv net, tracing the nested-tape
    graphs costs far more than the handful of evaluations the Taylor check does).

    A new function per call: it traces whatever `reptile_tf.meta` holds at that time (a test can
    break `meta.inner_loop` on purpose and see the checks fail).
    """

    def fn(xs, ys, alpha):
        return exact_gradients(problem, xs, ys, alpha)

    return tf.function(fn) if compiled else fn

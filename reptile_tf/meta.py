"""The meta-learning core: one inner loop shared by Reptile, FOMAML and MAML, and their outer updates.

Everything here is a pure function of tensors (parameter dicts with a leading task
dimension T for per-task quantities), traceable in one `tf.function` per meta-batch
(optionally `jit_compile=True`). The three algorithms differ only in the outer update:

- Reptile: phi <- phi + eps * mean_t(phi_t - phi)                      (`reptile_update`)
- FOMAML (official Reptile code, `--foml`): phi <- phi + eps * mean_t(last inner step's
  weight change); with `tail_shots > 0` that last step uses a separate tail minibatch
  (the episode's query set)                                               (`fomaml_update`)
- MAML: Adam on the meta-gradient of the query loss after the inner loop, exact second order
  through the inner loop via nested `tf.GradientTape` (`maml_meta_gradient`, `maml_update`);
  `first_order=True` stops the gradient through the inner updates (the FOMAML gradient).

Params a network fixes in the inner loop (`Model.inner_frozen`; Finn's MAML nets, `network="maml"`:
the batch-norm offsets, which his code keeps out of the adapted `weights`) get a zero inner
gradient (`task_gradients`): adaptation leaves them at phi, MAML's outer gradient still trains
them through the query loss, and Reptile/FOMAML, whose outer step follows the adaptation, never
move them.

Adam moments in the inner loop (Reptile/FOMAML): the official code keeps one Adam optimizer
whose moments (and bias-correction step count) persist across tasks and meta-iterations,
tasks being run one after another. By default (`inner_adam_mode="parallel_mean"`) tasks run
in parallel, so each task starts from the shared moments, and after the meta-batch the shared
moments become the mean of the tasks' final moments; the shared step count advances by the
number of inner steps (each averaged moment has seen that many exponential-average updates,
so the bias correction stays exact for it). `inner_adam_mode="sequential"` computes the
official semantics exactly: the tasks of a meta-batch run one after another inside the same
compiled call (a `tf.while_loop` over tasks), each starting from the weights phi and from the
Adam state the previous task ended with; the step count advances by tasks x inner steps. MAML's inner loop (plain SGD in the paper) keeps no state; if Adam is
asked for, MAML starts every task from fresh moments. Second-order MAML through Adam is
fragile: d sqrt(v)/dv is infinite where a gradient entry is exactly zero (dead ReLU units),
which can give NaN meta-gradients; use SGD (the paper's choice) or `first_order=True`.

Registries instead of string branches (their names are checked by `Settings.validate`, or, for a
pure function called without Settings, by `settings.check_value`: one home for what is valid):
- `INNER_OPTIMIZERS` / `OUTER_OPTIMIZERS`: optimizer name -> builder of an `Optimizer(init, update)`
  pair of pure functions, in the manner of optax's GradientTransformation (`sgd`, `adam`);
- `ALGORITHMS`: algorithm name -> `Algorithm` (its outer update plus what it needs from the
  meta-batch and the meta state). `meta_step` draws the inner minibatches and hands them to
  `meta_step_on_minibatches`, which looks the algorithm up; the theory checks
  (`reptile_tf.theory.meta_gradients`) call that same function on chosen minibatches, so they
  check the code that trains.

Meta state (`init_meta_state`): a flat dict of tensors, checkpointable as tf.Variables:
  "params/<name>"                      the meta-parameters phi (no task dimension)
  "inner_adam/m/<name>", "inner_adam/v/<name>", "inner_adam/t"    (inner Adam, Reptile/FOMAML)
  "outer_adam/m/<name>", "outer_adam/v/<name>", "outer_adam/t"    (outer Adam, MAML)
  "step" int64 (meta-iterations done), "rng_seed" int64 (seeds the minibatch schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Sequence

import tensorflow as tf

from reptile_tf.errors import UserError
from reptile_tf.models import RNG_ALGORITHM, Model, Params, broadcast_params, mean_over_tasks
from reptile_tf.settings import FIDELITY_OPTIONS, check_value

# Outer Adam of MAML: TF1 `tf.train.AdamOptimizer` defaults, as in the MAML code.
OUTER_ADAM_BETA1 = 0.9
OUTER_ADAM_BETA2 = 0.999
OUTER_ADAM_EPSILON = 1e-8

AdamState = dict  # {"m": Params, "v": Params, "t": scalar float tensor}
OptState = dict  # an optimizer's state: {} (SGD) or an AdamState


@dataclass(frozen=True)
class InnerConfig:
    """How the inner loop updates per-task parameters.

    optimizer: a name of INNER_OPTIMIZERS: "sgd" or "adam" (TF1 Adam semantics incl. bias
        correction; beta1 = 0 as in the Reptile paper by default).
    lr: a Python number, or a scalar tensor (one traced graph for many step sizes: the theory).
    first_order: stop the gradient through the inner updates (MAML `first_order=True`).
    unroll: True = Python loop over the (static) steps, returns per-step gradients and can be
        differentiated through (training, MAML); False = `tf.while_loop` (evaluation with many
        steps: small graph, no per-step gradients).
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    beta1: float = 0.0
    beta2: float = 0.999
    epsilon: float = 1e-8
    first_order: bool = False
    unroll: bool = True
    loss_reduction: str = "mean"  # a key of LOSS_SCALES: what the inner loop differentiates

    def __post_init__(self) -> None:
        # Built without a Settings too (theory, tests): the fields it shares with Settings are checked
        # as Settings checks them (a tensor step size is the caller's).
        check_value("inner_optimizer", self.optimizer)
        if not isinstance(self.lr, (tf.Tensor, tf.Variable)):
            check_value("inner_lr", float(self.lr))
        check_value("loss_reduction", self.loss_reduction)

    def make_optimizer(self) -> "Optimizer":
        """The inner optimizer (INNER_OPTIMIZERS[optimizer]) with this config's hyperparameters."""
        return INNER_OPTIMIZERS[self.optimizer](self)

    @classmethod
    def from_settings(cls, settings, evaluation: bool = False) -> "InnerConfig":
        """The training (or, with `evaluation=True`, the evaluation) inner loop of `settings`."""
        lr = settings.inner_lr
        if evaluation and settings.eval_inner_lr is not None:
            lr = settings.eval_inner_lr
        lr = lr if isinstance(lr, (tf.Tensor, tf.Variable)) else float(lr)
        return cls(optimizer=settings.inner_optimizer, lr=lr, beta1=float(settings.adam_beta1),
                   beta2=float(settings.adam_beta2), epsilon=float(settings.adam_epsilon),
                   first_order=bool(settings.first_order) or evaluation, unroll=not evaluation,
                   loss_reduction=settings.loss_reduction)


class InnerResult(NamedTuple):
    """What every outer update (and the theory module) needs from an inner loop.

    params: final per-task params `[T, ...]`; prev_params: per-task params before the last step;
    grads: list (one per step) of per-task gradient dicts at the params before that step
        (None when `unroll=False`);
    losses, accuracies: `[steps, T]` minibatch loss/accuracy before each step's update;
    opt_state: final per-task optimizer state ({} for SGD).
    """

    params: Params
    prev_params: Params
    grads: list[Params] | None
    losses: tf.Tensor
    accuracies: tf.Tensor
    opt_state: OptState


# ----------------------------------------------------------------------------- optimizers


def _scalar(value, dtype: tf.DType) -> tf.Tensor:
    """`value` (Python number or tensor) as a `dtype` scalar; Python floats are not rounded to float32 first."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


def zeros_adam_state(params: Params) -> AdamState:
    """Fresh Adam moments shaped like `params`, step count 0."""
    dtype = next(iter(params.values())).dtype
    return {"m": {k: tf.zeros_like(v) for k, v in params.items()},
            "v": {k: tf.zeros_like(v) for k, v in params.items()},
            "t": tf.zeros([], dtype)}


def adam_step(params: Params, grads: Params, state: AdamState, lr, beta1: float, beta2: float,
              epsilon: float) -> tuple[Params, AdamState]:
    """One Adam step with TF1 `AdamOptimizer` semantics; shared by the inner and the outer loop.

    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr_t * m / (sqrt(v) + epsilon). Works elementwise, so per-task params/moments `[T, ...]`
    and shared ones alike (the step count t is a scalar).
    """
    t = state["t"] + 1
    dtype = t.dtype
    lr_t = _scalar(lr, dtype) * tf.sqrt(1 - tf.pow(_scalar(beta2, dtype), t)) / (1 - tf.pow(_scalar(beta1, dtype), t))
    new_params, new_m, new_v = {}, {}, {}
    for name, value in params.items():
        grad = grads[name]
        b1, b2 = _scalar(beta1, grad.dtype), _scalar(beta2, grad.dtype)
        new_m[name] = b1 * state["m"][name] + (1 - b1) * grad
        new_v[name] = b2 * state["v"][name] + (1 - b2) * tf.square(grad)
        new_params[name] = value - tf.cast(lr_t, value.dtype) * new_m[name] / (tf.sqrt(new_v[name]) + _scalar(epsilon, value.dtype))
    return new_params, {"m": new_m, "v": new_v, "t": t}


def sgd_step(params: Params, grads: Params, lr) -> Params:
    """One plain gradient-descent step p - lr * g."""
    return {name: value - _scalar(lr, value.dtype) * grads[name] for name, value in params.items()}


class Optimizer(NamedTuple):
    """A first-order optimizer as a pair of pure functions, in the manner of optax's GradientTransformation.

    init(params) -> state: the fresh state for `params` ({} when the optimizer keeps none);
    update(params, grads, state) -> (new params, new state): one step.
    Hyperparameters are bound when the optimizer is built (`sgd(lr)`, `adam(lr, beta1, beta2, epsilon)`).
    Unlike optax's `update`, which returns additive updates for `optax.apply_updates`, `update` returns
    the new parameters: every step is computed exactly as `sgd_step` / `adam_step` write it
    (p - lr * ...), bit for bit as before the registries existed. Elementwise, so per-task `[T, ...]`
    and shared parameters alike.
    """

    init: Callable[[Params], OptState]
    update: Callable[[Params, Params, OptState], tuple[Params, OptState]]


def _no_state(params: Params) -> OptState:
    return {}


def sgd(lr) -> Optimizer:
    """Plain gradient descent (`sgd_step`). Keeps no state: `update` passes the state through."""
    return Optimizer(init=_no_state, update=lambda params, grads, state: (sgd_step(params, grads, lr), state))


def adam(lr, beta1, beta2, epsilon) -> Optimizer:
    """Adam with TF1 `AdamOptimizer` semantics (`adam_step`); state {"m", "v", "t"} (`zeros_adam_state`)."""
    return Optimizer(init=zeros_adam_state,
                     update=lambda params, grads, state: adam_step(params, grads, state, lr, beta1, beta2, epsilon))


# settings.inner_optimizer -> the inner optimizer built from an InnerConfig.
INNER_OPTIMIZERS: dict[str, Callable[[InnerConfig], Optimizer]] = {
    "sgd": lambda cfg: sgd(cfg.lr),
    "adam": lambda cfg: adam(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon),
}
# settings.outer_optimizer of MAML -> its outer optimizer built from the outer learning rate
# (Adam with the TF1 defaults of the MAML code).
OUTER_OPTIMIZERS: dict[str, Callable[[Any], Optimizer]] = {
    "adam": lambda lr: adam(lr, OUTER_ADAM_BETA1, OUTER_ADAM_BETA2, OUTER_ADAM_EPSILON),
    "sgd": lambda lr: sgd(lr),
}


def _broadcast_adam(state: AdamState, num_tasks) -> AdamState:
    return {"m": broadcast_params(state["m"], num_tasks), "v": broadcast_params(state["v"], num_tasks), "t": state["t"]}


def _mean_adam(state: AdamState) -> AdamState:
    return {"m": mean_over_tasks(state["m"]), "v": mean_over_tasks(state["v"]), "t": state["t"]}


# ----------------------------------------------------------------------------- minibatches


def _num_tasks(x: tf.Tensor):
    """Static task count when known (keeps shapes static), else the dynamic one."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def minibatch_schedule(num_images: int, batch: int, steps: int, seed, num_tasks: int | None = None) -> tf.Tensor:
    """Indices `[steps, batch]` (or `[num_tasks, steps, batch]`) of the inner minibatches.

    Like the official `_mini_batches(..., replacement=False)`: an endless stream of shuffled
    passes over the task's `num_images` images, cut into consecutive minibatches (a minibatch
    may span two passes). In-graph and stateless: `seed` is an int tensor of shape [2] (one
    stream for all tasks), or `[num_tasks, 2]` (a stream per task, so that a task's schedule
    does not depend on which other tasks share the call: evaluation chunks).
    """
    if num_images < 1 or batch < 1 or steps < 0:
        raise UserError(f"minibatch schedule needs num_images >= 1, batch >= 1, steps >= 0 "
                        f"(got {num_images}, {batch}, {steps})")
    passes = max(1, math.ceil(steps * batch / num_images))
    lead = [] if num_tasks is None else [num_tasks]
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 2:
        if num_tasks is None:
            raise UserError("per-task seeds ([num_tasks, 2]) need num_tasks")
        keys = tf.map_fn(lambda task_seed: tf.random.stateless_uniform([passes, num_images], seed=task_seed,
                                                                       alg=RNG_ALGORITHM),
                         seed, fn_output_signature=tf.float32)
    else:
        keys = tf.random.stateless_uniform([*lead, passes, num_images], seed=seed, alg=RNG_ALGORITHM)
    order = tf.argsort(keys, axis=-1, stable=True)
    flat = tf.reshape(order, [*lead, passes * num_images])[..., : steps * batch]
    return tf.reshape(flat, [*lead, steps, batch])


def make_inner_batches(x: tf.Tensor, y: tf.Tensor, batch: int, steps: int, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-task minibatches `xs [T, steps, b, ...]`, `ys [T, steps, b, ...]` from `x [T, n, ...]`.

    `batch = 0` means the whole set in every step (MAML); otherwise the schedule of
    `minibatch_schedule`, drawn independently for each task.
    """
    num_tasks, num_images = _num_tasks(x), x.shape[1]
    if batch == 0:
        return tf.repeat(x[:, None], steps, axis=1), tf.repeat(y[:, None], steps, axis=1)
    indices = minibatch_schedule(num_images, batch, steps, seed, num_tasks=num_tasks)
    return tf.gather(x, indices, batch_dims=1), tf.gather(y, indices, batch_dims=1)


# ----------------------------------------------------------------------------- inner loop


# loss_reduction -> the factor from a task's mean minibatch loss to the loss its inner loop
# differentiates, given the outputs `[T, B, N]`. The official codes differ here, and with a fixed
# inner step size the factor is a step-size multiplier (settings.FIDELITY_OPTIONS says which code).
LOSS_SCALES: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "mean": lambda outputs: 1,
    # the official Reptile code: `minimize` of the per-example loss vector = its sum (B x the mean)
    "sum": lambda outputs: tf.shape(outputs)[1],
    # Finn's MAML code: `xent / update_batch_size` summed = sum / K, on an N-way K-shot support set
    # N x the mean (the number of classes, the outputs' width)
    "sum_per_shot": lambda outputs: tf.shape(outputs)[-1],
}


def task_gradients(model: Model, params: Params, x: tf.Tensor, y: tf.Tensor,
                   first_order: bool = False, loss_reduction: str = "mean") -> tuple[Params, tf.Tensor, tf.Tensor]:
    """Per-task gradients `[T, ...]`, losses `[T]` and accuracies `[T]` on one minibatch per task.

    One gradient of the sum of the per-task losses w.r.t. the batched params: tasks are
    independent, so each task's slice is that task's own gradient. Differentiable again
    (MAML) unless `first_order`. Each task's mean minibatch loss is scaled by
    `LOSS_SCALES[loss_reduction]` before differentiation ("sum": the official Reptile code's;
    "sum_per_shot": Finn's MAML code's); the returned losses stay per-example means.
    The gradient of a name in `model.inner_frozen` is zero, so every inner step (SGD; Adam, whose
    moments stay zero) leaves it as it is, while an outer gradient still reaches it through the
    losses that use it (MAML's query loss).
    """
    with tf.GradientTape() as tape:
        tape.watch(params)
        outputs = model.apply(params, x)
        losses = model.loss(outputs, y)
        total = tf.reduce_sum(losses)
        total = total * tf.cast(LOSS_SCALES[loss_reduction](outputs), total.dtype)
    grads = _adapted_gradients(tape, total, params, model.inner_frozen)
    if first_order:
        grads = {name: tf.stop_gradient(g) for name, g in grads.items()}
    return grads, losses, model.accuracy(outputs, y)


def _adapted_gradients(tape: tf.GradientTape, total: tf.Tensor, params: Params, frozen: frozenset[str]) -> Params:
    """d total / d params, zeros for the `frozen` names, which are not differentiated at all (Finn's
    inner loop differentiates only its `weights` dict, which lacks the batch-norm offsets)."""
    if not frozen:
        return tape.gradient(total, params)
    grads = tape.gradient(total, {name: value for name, value in params.items() if name not in frozen})
    return {name: grads[name] if name not in frozen else tf.zeros_like(value) for name, value in params.items()}


def _run_inner(model: Model, params: Params, get_batch: Callable, steps: int, cfg: InnerConfig,
               opt_state: OptState | None) -> InnerResult:
    optimizer = cfg.make_optimizer()
    if not opt_state:
        opt_state = optimizer.init(params)
    if steps < 1:
        raise UserError(f"the inner loop needs at least one step (got {steps}); set inner_steps >= 1")
    if cfg.unroll:
        prev, grads_per_step, losses, accuracies = params, [], [], []
        for step in range(steps):
            x, y = get_batch(step)
            grads, loss, accuracy = task_gradients(model, params, x, y, cfg.first_order, cfg.loss_reduction)
            prev = params
            params, opt_state = optimizer.update(params, grads, opt_state)
            grads_per_step.append(grads)
            losses.append(loss)
            accuracies.append(accuracy)
        return InnerResult(params, prev, grads_per_step, tf.stack(losses), tf.stack(accuracies), opt_state)

    loss_dtype = tf.float64 if next(iter(params.values())).dtype == tf.float64 else tf.float32

    def body(step, params, prev, opt_state, losses, accuracies):
        x, y = get_batch(step)
        grads, loss, accuracy = task_gradients(model, params, x, y, first_order=True,
                                               loss_reduction=cfg.loss_reduction)
        new_params, opt_state = optimizer.update(params, grads, opt_state)
        return (step + 1, new_params, params, opt_state, losses.write(step, tf.cast(loss, loss_dtype)),
                accuracies.write(step, accuracy))

    loop_vars = (tf.constant(0), params, params, opt_state,
                 tf.TensorArray(loss_dtype, size=steps), tf.TensorArray(tf.float32, size=steps))
    _, params, prev, opt_state, losses, accuracies = tf.while_loop(
        lambda step, *_: step < steps, body, loop_vars, maximum_iterations=steps)
    return InnerResult(params, prev, None, losses.stack(), accuracies.stack(), opt_state)


def inner_loop(model: Model, params: Params, xs: tf.Tensor, ys: tf.Tensor, cfg: InnerConfig,
               opt_state: OptState | None = None) -> InnerResult:
    """Run k = xs.shape[1] optimizer steps on per-task params, step i on minibatch xs[:, i].

    params: per-task `[T, ...]`; xs `[T, k, b, ...]`; ys `[T, k, b]` (or `[T, k, b, 1]` for
    regression); opt_state: per-task optimizer state (Adam: moments `[T, ...]`, scalar step count),
    or None for a fresh one (`cfg.make_optimizer().init`). Shared by all three algorithms and the
    theory module.
    """
    steps = xs.shape[1]
    if steps is None:
        raise UserError("inner_loop needs a static number of steps (xs.shape[1]); build xs with a fixed shape")
    return _run_inner(model, params, lambda i: (xs[:, i], ys[:, i]), steps, cfg, opt_state)


def sequential_inner_loops(model: Model, params: Params, xs: tf.Tensor, ys: tf.Tensor, cfg: InnerConfig,
                           adam: AdamState, tail_x: tf.Tensor | None = None,
                           tail_y: tf.Tensor | None = None) -> tuple[InnerResult, AdamState]:
    """The tasks of a meta-batch one after another with ONE carried Adam state (official code).

    params: shared phi (no task dimension); xs `[T, k, b, ...]`, ys `[T, k, b]` (k may be 0 when
    a tail is given); adam: the shared inner Adam state (moments without task dimension);
    tail_x/tail_y `[T, n, ...]`: an optional final minibatch per task (FOMAML `tail_shots`).
    Task t starts from phi and from the Adam state task t-1 ended with (m, v and the step count),
    exactly `Reptile.train_step` of the official code, where `VariableState(tf.trainable_variables())`
    restores only the weights between tasks. A `tf.while_loop` over tasks (one compiled call).
    Returns (InnerResult with per-task `[T, ...]` params/prev_params, `[steps, T]` losses and
    accuracies, grads=None, opt_state = the final carried state), final carried state).
    """
    num_tasks = xs.shape[0]
    if num_tasks is None:
        raise UserError("sequential inner loops need a static number of tasks (xs.shape[0])")
    steps = xs.shape[1]
    has_tail = tail_x is not None
    total_steps = steps + (1 if has_tail else 0)
    if total_steps < 1:
        raise UserError("the inner loop needs at least one step; set inner_steps >= 1")
    names = list(params)
    loss_dtype = tf.float64 if next(iter(params.values())).dtype == tf.float64 else tf.float32

    def body(i, m, v, t, finals, prevs, losses, accuracies):
        task_params = {k: value[None] for k, value in params.items()}
        state = {"m": {k: m[k][None] for k in names}, "v": {k: v[k][None] for k in names}, "t": t}
        parts = []
        if steps > 0:
            result = inner_loop(model, task_params, tf.gather(xs, [i]), tf.gather(ys, [i]), cfg, state)
            parts.append(result)
            task_params, state = result.params, result.opt_state
        if has_tail:
            result = inner_loop(model, task_params, tf.gather(tail_x, [i])[:, None], tf.gather(tail_y, [i])[:, None],
                                cfg, state)
            parts.append(result)
        state = result.opt_state
        finals = [ta.write(i, result.params[k][0]) for ta, k in zip(finals, names)]
        prevs = [ta.write(i, result.prev_params[k][0]) for ta, k in zip(prevs, names)]
        losses = losses.write(i, tf.cast(tf.concat([part.losses for part in parts], axis=0)[:, 0], loss_dtype))
        accuracies = accuracies.write(i, tf.concat([part.accuracies for part in parts], axis=0)[:, 0])
        return (i + 1, {k: state["m"][k][0] for k in names}, {k: state["v"][k][0] for k in names}, state["t"],
                finals, prevs, losses, accuracies)

    def arrays():
        return [tf.TensorArray(params[k].dtype, size=num_tasks, element_shape=params[k].shape) for k in names]

    loop_vars = (tf.constant(0), dict(adam["m"]), dict(adam["v"]), adam["t"], arrays(), arrays(),
                 tf.TensorArray(loss_dtype, size=num_tasks, element_shape=[total_steps]),
                 tf.TensorArray(tf.float32, size=num_tasks, element_shape=[total_steps]))
    _, m, v, t, finals, prevs, losses, accuracies = tf.while_loop(
        lambda i, *_: i < num_tasks, body, loop_vars, maximum_iterations=num_tasks)
    final_state = {"m": m, "v": v, "t": t}
    result = InnerResult(params={k: ta.stack() for k, ta in zip(names, finals)},
                         prev_params={k: ta.stack() for k, ta in zip(names, prevs)}, grads=None,
                         losses=tf.transpose(losses.stack()), accuracies=tf.transpose(accuracies.stack()),
                         opt_state=final_state)
    return result, final_state


# ----------------------------------------------------------------------------- outer updates


def linear_anneal(start: float, end: float, iteration: Any, iterations: int) -> tf.Tensor:
    """The official Reptile code's outer step schedule (`train.py`: frac_done = i / iterations;
    cur = frac_done * end + (1 - frac_done) * start), as a float32 tensor of a traced `iteration`."""
    frac_done = tf.cast(iteration, tf.float32) / float(iterations)
    return frac_done * end + (1.0 - frac_done) * start


def reptile_update(params: Params, task_params: Params, epsilon) -> Params:
    """phi + eps * mean_t(phi_t - phi): the Reptile outer step (eps annealed by the caller)."""
    return {name: value + _scalar(epsilon, value.dtype) * tf.reduce_mean(task_params[name] - value[None], axis=0)
            for name, value in params.items()}


def fomaml_update(params: Params, task_params: Params, task_prev_params: Params, epsilon) -> Params:
    """phi + eps * mean_t(last inner step's weight change): FOMAML as in the official Reptile code."""
    return {name: value + _scalar(epsilon, value.dtype) * tf.reduce_mean(task_params[name] - task_prev_params[name], axis=0)
            for name, value in params.items()}


def maml_meta_gradient(model: Model, params: Params, xs: tf.Tensor, ys: tf.Tensor, query_x: tf.Tensor,
                       query_y: tf.Tensor, cfg: InnerConfig) -> tuple[Params, InnerResult, tf.Tensor, tf.Tensor]:
    """Gradient of mean_t(query loss of task t after the inner loop) w.r.t. the shared params phi.

    Exact second order (a `tf.GradientTape` around the whole inner loop, whose own gradients
    are recorded) unless `cfg.first_order`, which stops the gradient through the inner
    updates and so gives the gradient of the query loss at the adapted params.
    Returns (meta_gradient, inner result, per-task query losses `[T]`, query accuracies `[T]`).
    """
    grads, results, losses, accuracies = _maml_meta_gradients(model, [params], xs, ys, query_x, query_y, cfg)
    return grads[0], results[0], losses[0], accuracies[0]


def _maml_meta_gradients(model: Model, params: Sequence[Params], xs: tf.Tensor, ys: tf.Tensor, query_x: tf.Tensor,
                         query_y: tf.Tensor, cfg: InnerConfig
                         ) -> tuple[list[Params], list[InnerResult], list[tf.Tensor], list[tf.Tensor]]:
    """`maml_meta_gradient` of a seed group: `params` one phi per seed, the other tensors the seeds'
    tasks on one axis (seed by seed); every list holds one entry per seed. One tape, one inner loop:
    the gradient of the sum of the seeds' meta-losses w.r.t. a seed's phi is that seed's own, since
    its phi reaches only its own tasks."""
    groups = len(params)
    model = _per_seed_loss(model, groups)
    with tf.GradientTape() as tape:
        tape.watch(params)
        task_params = _group_params(params, _tasks_per_seed(xs, groups))
        # MAML keeps no inner optimizer state across tasks (fresh Adam moments if Adam is used).
        result = inner_loop(model, task_params, xs, ys, replace(cfg, unroll=True), None)
        outputs = model.apply(result.params, query_x)
        query_losses = _split_tasks(model.loss(outputs, query_y), groups)
        meta_losses = [tf.reduce_mean(losses) for losses in query_losses]
        meta_loss = meta_losses[0] if groups == 1 else tf.add_n(meta_losses)
    meta_grads = tape.gradient(meta_loss, list(params))
    return (meta_grads, _split_result(result, groups), query_losses,
            _split_tasks(model.accuracy(outputs, query_y), groups))


def maml_update(params: Params, meta_grad: Params, adam_state: AdamState | None, lr,
                optimizer: str = "adam") -> tuple[Params, AdamState | None]:
    """The MAML outer step with OUTER_OPTIMIZERS[optimizer]: Adam (TF1 defaults 0.9 / 0.999 / 1e-8,
    lr = settings.outer_lr) or SGD.

    adam_state: the outer optimizer's state (None = a fresh one). Returns (new params, new state,
    or None for an optimizer that keeps no state).
    """
    check_value("outer_optimizer", optimizer)  # a pure function, called without Settings too
    outer = OUTER_OPTIMIZERS[optimizer](lr)
    new_params, state = outer.update(params, meta_grad, outer.init(params) if adam_state is None else adam_state)
    return new_params, (state or None)


# ----------------------------------------------------------------------------- meta state


def _flatten(prefix: str, params: Params) -> dict[str, tf.Tensor]:
    return {f"{prefix}/{name}": value for name, value in params.items()}


def _unflatten(prefix: str, state: dict[str, tf.Tensor]) -> Params:
    start = len(prefix) + 1
    return {key[start:]: value for key, value in state.items() if key.startswith(prefix + "/")}


def _flatten_adam(prefix: str, adam: AdamState) -> dict[str, tf.Tensor]:
    return {**_flatten(f"{prefix}/m", adam["m"]), **_flatten(f"{prefix}/v", adam["v"]), f"{prefix}/t": adam["t"]}


def _unflatten_adam(prefix: str, state: dict[str, tf.Tensor]) -> AdamState | None:
    if f"{prefix}/t" not in state:
        return None
    return {"m": _unflatten(f"{prefix}/m", state), "v": _unflatten(f"{prefix}/v", state), "t": state[f"{prefix}/t"]}


def params_from_state(state: dict[str, tf.Tensor]) -> Params:
    """The meta-parameters phi stored in a meta state."""
    return _unflatten("params", state)


def inner_adam_from_state(state: dict[str, tf.Tensor]) -> AdamState | None:
    """The persistent inner Adam state (shared, no task dimension), or None (SGD / MAML)."""
    return _unflatten_adam("inner_adam", state)


# The Settings fields that choose meta's code paths, checked here because the theory and the tests
# call meta with Settings no CLI has validated. Not inner_lr: the theory passes a tensor there.
_META_FIELDS = ("algorithm", "inner_optimizer", "outer_optimizer", "inner_steps", *FIDELITY_OPTIONS)


def _check_settings(settings) -> "Algorithm":
    """The registry entry of `settings.algorithm`, after `Settings.validate` of the fields meta reads."""
    settings.validate(_META_FIELDS)
    return ALGORITHMS[settings.algorithm]


def _check_queries(settings, algorithm: "Algorithm", batch: dict) -> None:
    if algorithm.query_set:
        role, knob = "query set", "queries"
    elif settings.uses_tail_batch:
        role, knob = "tail minibatch", "tail_shots"
    else:
        return
    if "query_x" not in batch or (batch["query_x"].shape[1] or 0) == 0:
        raise UserError(f"{settings.algorithm} needs query images in the meta-batch (the {role}); sample tasks "
                        f"with {knob} > 0")


def init_meta_state(model: Model, params: Params, settings, seed: int = 0) -> dict[str, tf.Tensor]:
    """The initial meta state (flat dict of tensors, see the module docstring) for `settings`.

    `seed` seeds the in-graph inner minibatch schedules (with the step counter).
    """
    algorithm = _check_settings(settings)
    state: dict[str, tf.Tensor] = _flatten("params", {k: tf.identity(v) for k, v in params.items()})
    if algorithm.keeps_inner_state:
        inner = InnerConfig.from_settings(settings).make_optimizer().init(params)
        if inner:  # SGD keeps none
            state.update(_flatten_adam("inner_adam", inner))
    if algorithm.uses_outer_optimizer:
        outer = OUTER_OPTIMIZERS[settings.outer_optimizer](settings.outer_lr).init(params)
        if outer:
            state.update(_flatten_adam("outer_adam", outer))
    state["step"] = tf.constant(0, tf.int64)
    state["rng_seed"] = tf.constant(seed, tf.int64)
    return state


def schedule_seed(state: dict[str, tf.Tensor], salt: int = 0) -> tf.Tensor:
    """Stateless seed [2] of this meta-iteration's inner minibatch schedule (from rng_seed and step)."""
    return tf.stack([tf.cast(state["rng_seed"], tf.int64), tf.cast(state["step"], tf.int64) * 16 + salt])


# ----------------------------------------------------------------------------- seed groups
# A seed group: the meta-batches of S runs (seeds) at the same meta-iteration on one task axis, S*T
# tasks in one inner loop, each task starting from its own seed's phi. Tasks never mix in any op, so
# each seed computes what it computes alone; one seed is the group of one, and every helper below
# returns a single seed's tensor untouched, so its graph is the one it always was.


def _concat_tasks(parts: Sequence[tf.Tensor]) -> tf.Tensor:
    """The seeds' per-task tensors on one task axis (one seed's tensor as it is)."""
    return parts[0] if len(parts) == 1 else tf.concat(list(parts), axis=0)


def _split_tasks(value: tf.Tensor, groups: int, axis: int = 0) -> list[tf.Tensor]:
    """`groups` equal parts along the task axis: the inverse of `_concat_tasks`."""
    return [value] if groups == 1 else tf.split(value, groups, axis=axis)


def _concat_params(parts: Sequence[Params]) -> Params:
    return {name: _concat_tasks([part[name] for part in parts]) for name in parts[0]}


def _split_params(params: Params, groups: int) -> list[Params]:
    pieces = {name: _split_tasks(value, groups) for name, value in params.items()}
    return [{name: pieces[name][g] for name in params} for g in range(groups)]


def _group_params(params: Sequence[Params], tasks_per_seed) -> Params:
    """Per-task params `[S*T, ...]`: T copies of each seed's phi, seed by seed."""
    return _concat_params([broadcast_params(p, tasks_per_seed) for p in params])


def _group_adam(shared: Sequence[AdamState], tasks_per_seed) -> AdamState:
    """Each task starts from its own seed's shared inner Adam moments. The step count is one scalar:
    seeds of a group are at the same meta-iteration, so their counts are equal (`_check_same_step`)."""
    return {"m": _group_params([s["m"] for s in shared], tasks_per_seed),
            "v": _group_params([s["v"] for s in shared], tasks_per_seed), "t": shared[0]["t"]}


def _split_opt_state(state: OptState, groups: int) -> list[OptState]:
    if not state:  # SGD keeps none
        return [state] * groups
    m, v = _split_params(state["m"], groups), _split_params(state["v"], groups)
    return [{"m": m[g], "v": v[g], "t": state["t"]} for g in range(groups)]


def _split_result(result: InnerResult, groups: int) -> list[InnerResult]:
    """The inner result of a seed group as one InnerResult per seed (its T tasks)."""
    if groups == 1:
        return [result]
    params, prev = _split_params(result.params, groups), _split_params(result.prev_params, groups)
    grads = None if result.grads is None else [_split_params(g, groups) for g in result.grads]
    losses, accuracies = _split_tasks(result.losses, groups, 1), _split_tasks(result.accuracies, groups, 1)
    opt_states = _split_opt_state(result.opt_state, groups)
    return [InnerResult(params[g], prev[g], None if grads is None else [step[g] for step in grads], losses[g],
                        accuracies[g], opt_states[g]) for g in range(groups)]


def _per_seed_loss(model: Model, groups: int) -> Model:
    """`model` whose loss runs once per seed on that seed's own tasks (one seed: `model` itself).

    Measured: the softmax cross-entropy's gradient (exp/log, evaluated in SIMD packets and a scalar
    tail) rounds a task's logits differently when they start elsewhere in the buffer, by ~1e-8, and
    the inner loop grows that to ~1e-6. Split by seed, every loss op sees a buffer of the shape it
    sees alone, so a seed's numbers are its own bit for bit. The network's ops need no such care:
    each task's block there spans whole SIMD packets (64 channels per task)."""
    if groups == 1:
        return model

    def loss(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        return _concat_tasks([model.loss(out, lab) for out, lab in zip(_split_tasks(outputs, groups),
                                                                      _split_tasks(labels, groups))])

    return replace(model, loss=loss)


def _tasks_per_seed(xs: tf.Tensor, groups: int):
    return _num_tasks(xs) // groups


def _check_same_step(states: Sequence[dict[str, tf.Tensor]]) -> None:
    """Seeds of a group share the inner Adam step count and the outer step size: same meta-iteration."""
    if len(states) == 1:
        return
    steps = [state["step"] for state in states]
    if tf.executing_eagerly():
        values = sorted({int(step) for step in steps})
        if len(values) > 1:
            raise UserError(f"the seeds of a group are at different meta-iterations ({values}); group only runs "
                            "at the same iteration, or train each seed alone")
        return
    for step in steps[1:]:
        tf.debugging.assert_equal(step, steps[0], message="the seeds of a group are at different meta-iterations")


# ----------------------------------------------------------------------------- algorithms (registry)


def _parallel_mean_inner(model: Model, params: Sequence[Params], xs: tf.Tensor, ys: tf.Tensor, tail_x, tail_y,
                         cfg: InnerConfig, shared: Sequence[AdamState] | None
                         ) -> tuple[list[InnerResult], list[AdamState | None]]:
    """All tasks of all seeds at once, each from its seed's phi and shared inner state; a seed's new
    shared state is the mean over its tasks (`inner_adam_mode="parallel_mean"`, the default).
    Losses/accuracies of the support steps and the tail step are concatenated. `params`, `shared`:
    one per seed; xs, ys, tail_x, tail_y: the seeds' tasks on one axis, seed by seed."""
    groups = len(params)
    model = _per_seed_loss(model, groups)
    tasks = _tasks_per_seed(xs, groups)
    task_params = _group_params(params, tasks)
    opt_state = _group_adam(shared, tasks) if shared is not None else None
    parts = []
    if xs.shape[1] > 0:
        result = inner_loop(model, task_params, xs, ys, cfg, opt_state)
        parts.append(result)
        task_params, opt_state = result.params, result.opt_state
    if tail_x is not None:
        result = inner_loop(model, task_params, tail_x[:, None], tail_y[:, None], cfg, opt_state)
        parts.append(result)
    result = result._replace(losses=tf.concat([part.losses for part in parts], axis=0),
                             accuracies=tf.concat([part.accuracies for part in parts], axis=0))
    results = _split_result(result, groups)
    return results, [_mean_adam(r.opt_state) if shared is not None else None for r in results]


def _sequential_inner(model: Model, params: Sequence[Params], xs: tf.Tensor, ys: tf.Tensor, tail_x, tail_y,
                      cfg: InnerConfig, shared: Sequence[AdamState]) -> tuple[list[InnerResult], list[AdamState]]:
    if len(params) > 1:
        raise UserError("inner_adam_mode 'sequential' runs the tasks of a meta-batch one after another, so seeds "
                        "cannot share one call; train each seed alone (one --seed)")
    result, carried = sequential_inner_loops(model, params[0], xs, ys, cfg, shared[0], tail_x, tail_y)
    return [result], [carried]


# settings.inner_adam_mode -> how the tasks of a meta-batch share a kept inner optimizer state.
INNER_STATE_MODES: dict[str, Callable] = {"parallel_mean": _parallel_mean_inner, "sequential": _sequential_inner}


class OuterStep(NamedTuple):
    """What an algorithm's outer update returns to `meta_step_seeds_on_minibatches`, per seed."""

    params: Params  # the new meta-parameters phi
    state: dict[str, tf.Tensor]  # meta-state entries it replaces (inner_adam/..., outer_adam/...)
    losses: tf.Tensor  # [steps, T] inner minibatch losses before each step
    accuracies: tf.Tensor  # [steps, T]
    metrics: dict[str, tf.Tensor]  # extra metrics (MAML: query_loss, query_accuracy)


def reptile_outer(params: Params, inner: InnerResult, epsilon) -> Params:
    """Reptile from the tasks' inner-loop result: `reptile_update` towards the adapted params."""
    return reptile_update(params, inner.params, epsilon)


def fomaml_outer(params: Params, inner: InnerResult, epsilon) -> Params:
    """FOMAML from the tasks' inner-loop result: `fomaml_update` by the last step's weight change."""
    return fomaml_update(params, inner.params, inner.prev_params, epsilon)


def _interpolation(outer_update: Callable[[Params, InnerResult, Any], Params]) -> Callable[..., list[OuterStep]]:
    """Reptile / FOMAML: every task's inner loop from its seed's phi (with the kept inner optimizer
    state, shared as `settings.inner_adam_mode` says), then per seed phi <- outer_update(phi, its
    tasks' inner result, eps)."""

    def step(model, settings, states, params, xs, ys, batch, cfg, outer_lr) -> list[OuterStep]:
        tail = settings.uses_tail_batch
        shared = [inner_adam_from_state(state) for state in states]
        keeps = shared[0] is not None
        run = INNER_STATE_MODES[settings.inner_adam_mode if keeps else "parallel_mean"]
        results, carried = run(model, params, xs, ys, batch["query_x"] if tail else None,
                               batch["query_y"] if tail else None, cfg, shared if keeps else None)
        return [OuterStep(outer_update(phi, result, outer_lr),
                          _flatten_adam("inner_adam", kept) if kept is not None else {}, result.losses,
                          result.accuracies, {})
                for phi, result, kept in zip(params, results, carried)]

    return step


def _maml(model, settings, states, params, xs, ys, batch, cfg, outer_lr) -> list[OuterStep]:
    """MAML: per seed, the meta-gradient of its query loss through the inner loop, then its outer optimizer."""
    meta_grads, results, query_losses, query_accuracies = _maml_meta_gradients(
        model, params, xs, ys, batch["query_x"], batch["query_y"], cfg)
    steps = []
    for state, phi, grad, result, losses, accuracies in zip(states, params, meta_grads, results, query_losses,
                                                            query_accuracies):
        new_params, outer = maml_update(phi, grad, _unflatten_adam("outer_adam", state), outer_lr,
                                        settings.outer_optimizer)
        metrics = {"query_loss": tf.reduce_mean(tf.cast(losses, tf.float32)),
                   "query_accuracy": tf.reduce_mean(accuracies)}
        kept = _flatten_adam("outer_adam", outer) if outer is not None else {}
        steps.append(OuterStep(new_params, kept, result.losses, result.accuracies, metrics))
    return steps


class Algorithm(NamedTuple):
    """A meta-learning algorithm, as `meta_step`, `init_meta_state` and the theory look it up by name.

    outer_update(model, settings, states, params, xs, ys, batch, cfg, outer_lr) -> [OuterStep]: the
        inner loops on the drawn minibatches and the outer update of phi, for a seed group: `states`,
        `params` one per seed, xs/ys/batch the seeds' tasks on one task axis (seed by seed); one
        OuterStep per seed. A single run is the group of one.
    query_set: needs the episode's query set (MAML's query loss).
    keeps_inner_state: the inner optimizer's state persists across meta-iterations (official code);
        MAML starts every task from a fresh one.
    uses_outer_optimizer: phi is updated by OUTER_OPTIMIZERS[settings.outer_optimizer] (MAML);
        otherwise it interpolates with the annealed step size eps (outer_optimizer "sgd").
    Whether the last inner step is on a tail minibatch (FOMAML) is `Settings.uses_tail_batch`.
    """

    outer_update: Callable[..., list[OuterStep]]
    query_set: bool = False
    keeps_inner_state: bool = False
    uses_outer_optimizer: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    "reptile": Algorithm(_interpolation(reptile_outer), keeps_inner_state=True),
    "fomaml": Algorithm(_interpolation(fomaml_outer), keeps_inner_state=True),
    "maml": Algorithm(_maml, query_set=True, uses_outer_optimizer=True),
}


def _apply_outer(state: dict[str, tf.Tensor], step: OuterStep) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """One seed's new meta state and metrics from its outer step."""
    new_state = dict(state)
    new_state.update(step.state)
    new_state.update(_flatten("params", step.params))
    new_state["step"] = state["step"] + 1
    metrics = dict(step.metrics)
    metrics["loss"] = tf.reduce_mean(tf.cast(step.losses, tf.float32))
    metrics["accuracy"] = tf.reduce_mean(step.accuracies)
    return new_state, metrics


def _check_group(states: Sequence, *per_seed: Sequence) -> int:
    groups = len(states)
    if groups < 1 or any(len(values) != groups for values in per_seed):
        raise UserError(f"a seed group needs one state and one meta-batch per seed (got {groups} states and "
                        f"{[len(values) for values in per_seed]} meta-batches)")
    return groups


def meta_step_seeds_on_minibatches(model: Model, settings, states: Sequence[dict[str, tf.Tensor]],
                                   xs: Sequence[tf.Tensor], ys: Sequence[tf.Tensor],
                                   batches: Sequence[dict[str, tf.Tensor]], outer_lr
                                   ) -> tuple[list[dict[str, tf.Tensor]], list[dict[str, tf.Tensor]]]:
    """`meta_step_on_minibatches` for a seed group: one state, minibatches and meta-batch per seed
    (equal task counts, same meta-iteration), all tasks in one inner loop, each seed's outer update
    as alone. Returns (new states, metrics), one per seed."""
    algorithm = _check_settings(settings)
    _check_group(states, xs, ys, batches)
    for batch in batches:
        _check_queries(settings, algorithm, batch)
    counts = {x.shape[0] for x in xs}
    if len(counts) > 1 and None not in counts:
        raise UserError(f"the seeds of a group need meta-batches of equal size (got {sorted(counts)} tasks)")
    _check_same_step(states)
    params = [params_from_state(state) for state in states]
    cfg = InnerConfig.from_settings(settings)
    keys = [key for key in batches[0] if all(key in batch for batch in batches)]
    batch = {key: _concat_tasks([b[key] for b in batches]) for key in keys}
    steps = algorithm.outer_update(model, settings, list(states), params, _concat_tasks(xs), _concat_tasks(ys),
                                   batch, cfg, outer_lr)
    new_states, metrics = zip(*[_apply_outer(state, step) for state, step in zip(states, steps)])
    return list(new_states), list(metrics)


def meta_step_on_minibatches(model: Model, settings, state: dict[str, tf.Tensor], xs: tf.Tensor, ys: tf.Tensor,
                             batch: dict[str, tf.Tensor], outer_lr) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """`meta_step` once the inner minibatches are drawn: `ALGORITHMS[settings.algorithm]`'s outer update.

    xs `[T, k, b, ...]`, ys `[T, k, b]`: the support-set minibatch of each inner step (k steps;
    FOMAML with a tail takes one more, on batch["query_x"/"query_y"]; MAML's query loss is on
    them). `batch` needs the query keys only when the algorithm uses them. The theory checks call
    this on minibatches of their choosing. Returns (new state, metrics) as `meta_step`.
    The seed group of one (`meta_step_seeds_on_minibatches`).
    """
    states, metrics = meta_step_seeds_on_minibatches(model, settings, [state], [xs], [ys], [batch], outer_lr)
    return states[0], metrics[0]


def meta_step_seeds(model: Model, settings, states: Sequence[dict[str, tf.Tensor]],
                    batches: Sequence[dict[str, tf.Tensor]], outer_lr
                    ) -> tuple[list[dict[str, tf.Tensor]], list[dict[str, tf.Tensor]]]:
    """One meta-iteration of S runs (seeds) in one call: `meta_step` of each (state, batch) pair,
    bit for bit, with all S*T tasks in one inner loop (more work per kernel where tasks are few).

    Each seed draws its inner minibatches from its own `schedule_seed`, its tasks start from its own
    phi (and inner Adam moments), and its outer update sees only its own tasks. The states must be
    at the same meta-iteration (one outer step size); `inner_adam_mode="sequential"` takes one seed.
    Returns (new states, metrics), one per seed.
    """
    algorithm = _check_settings(settings)
    _check_group(states, batches)
    for batch in batches:
        _check_queries(settings, algorithm, batch)
    steps = settings.inner_steps - (1 if settings.uses_tail_batch else 0)  # the tail takes the last step
    drawn = [make_inner_batches(batch["support_x"], batch["support_y"], settings.inner_batch, steps,
                                schedule_seed(state)) for state, batch in zip(states, batches)]
    return meta_step_seeds_on_minibatches(model, settings, states, [x for x, _ in drawn], [y for _, y in drawn],
                                          batches, outer_lr)


def meta_step(model: Model, settings, state: dict[str, tf.Tensor], batch: dict[str, tf.Tensor],
              outer_lr) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """One meta-iteration on a meta-batch of tasks (pure; wrap it in one tf.function).

    batch: Episodes dict; support_x/support_y hold `train_shots` images per class (the inner
    loop's training images), query_x/query_y the tail minibatch (FOMAML, `tail_shots > 0`) or
    the query set (MAML); Reptile ignores the queries. outer_lr: the (annealed) Reptile/FOMAML
    step size eps, or the MAML outer learning rate (pass a tensor to avoid retracing).
    Returns (new state, metrics): "loss"/"accuracy" = mean over tasks and inner steps of the
    minibatch loss/accuracy before each step; MAML adds "query_loss"/"query_accuracy" after
    adaptation. Draws the inner minibatches (`make_inner_batches`, seeded by `schedule_seed`),
    then `meta_step_on_minibatches` looks the algorithm up in ALGORITHMS. The seed group of one
    (`meta_step_seeds`).
    """
    states, metrics = meta_step_seeds(model, settings, [state], [batch], outer_lr)
    return states[0], metrics[0]


# ----------------------------------------------------------------------------- evaluation


def adapt(model: Model, settings, params: Params, support_x: tf.Tensor, support_y: tf.Tensor, seed,
          opt_state: AdamState | None = None) -> Params:
    """Fine-tune `params` (shared, no task dim) on each task's support set -> per-task params `[T, ...]`.

    `settings.eval_inner_steps` steps of the inner optimizer: Adam with `eval_inner_batch`
    minibatches for Reptile/FOMAML, SGD on the whole support set (`eval_inner_batch = 0`) for
    MAML; lr = eval_inner_lr (or inner_lr). `seed`: int tensor [2] for the minibatch schedule.
    `opt_state`: shared inner Adam state to start from; the official Reptile code evaluates
    starting from the training-time Adam moments (`inner_adam_from_state(state)`); None = fresh.
    Runs as a `tf.while_loop` (small graph even for 50 steps).
    """
    cfg = InnerConfig.from_settings(settings, evaluation=True)
    num_tasks, num_images = _num_tasks(support_x), support_x.shape[1]
    steps, batch = settings.eval_inner_steps, settings.eval_inner_batch
    task_params = broadcast_params(params, num_tasks)
    # a given state is used by an optimizer that keeps one (SGD passes it through untouched)
    task_opt = _broadcast_adam(opt_state, num_tasks) if opt_state else None
    if batch == 0:
        get_batch = lambda step: (support_x, support_y)  # noqa: E731
    else:
        indices = minibatch_schedule(num_images, batch, steps, seed, num_tasks=num_tasks)

        def get_batch(step):
            chosen = tf.gather(indices, step, axis=1)
            return tf.gather(support_x, chosen, batch_dims=1), tf.gather(support_y, chosen, batch_dims=1)

    return _run_inner(model, task_params, get_batch, steps, cfg, task_opt).params


def predict(model: Model, task_params: Params, support_x: tf.Tensor, query_x: tf.Tensor,
            transductive: bool) -> tf.Tensor:
    """Outputs `[T, Q, num_outputs]` for the queries, with per-task params `[T, ...]`.

    transductive: all Q queries of a task in one batch (batch norm sees the query batch).
    Otherwise each query is predicted in a batch of the task's whole support set plus that
    one query (official code), vectorised as T*Q tasks with repeated params.
    """
    if transductive:
        return model.apply(task_params, query_x)
    num_tasks, num_queries = _num_tasks(query_x), query_x.shape[1]
    repeated = {name: tf.repeat(value, num_queries, axis=0) for name, value in task_params.items()}
    supports = tf.repeat(support_x, num_queries, axis=0)  # row t*Q + q = task t
    singles = tf.reshape(query_x, [num_tasks * num_queries, 1, *query_x.shape[2:]])
    outputs = model.apply(repeated, tf.concat([supports, singles], axis=1))
    return tf.reshape(outputs[:, -1], [num_tasks, num_queries, outputs.shape[-1]])

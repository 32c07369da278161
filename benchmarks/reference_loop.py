"""A plain reference implementation: one task at a time, in a Python loop.

The baseline that `reptile-tf bench` compares the batched, compiled meta-batch against. It is a
faithful, simple implementation of the same algorithms and networks, written the way one
usually writes them first:

- the network uses `tf.nn.conv2d`, fused batch norm with the statistics of one task's batch
  (what `tf.layers.batch_normalization` in the official code and Keras' `BatchNormalization`
  run) and `tf.nn.max_pool2d`, with no task dimension and the weights held in `tf.Variable`s:
  the same kernels as the batched model, so the comparison measures the batching alone;
- Reptile / FOMAML: a Python loop over tasks and inner steps; each inner Adam step (beta1 = 0,
  moments persisting across tasks, as in the official code) is one `tf.function` call;
  the outer update (Reptile: mean weight change; FOMAML: mean last-step change) is another;
- MAML: a Python loop over tasks; each task's meta-gradient (inner SGD steps inside nested
  gradient tapes; second order unless `first_order`) is one `tf.function` call; then one
  outer Adam step on the mean meta-gradient.

Deliberately not tuned: no task batching, no XLA. Runs on random data; it exists to be timed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from reptile_tf.datasets import DATASETS
from reptile_tf.networks import BLOCKS, CONV_NETS

BN_EPSILON = 1e-3
_SPECS = {arch: (DATASETS[arch].input_shape, net.filters, net.stride, net.max_pool)  # the same nets as models
          for arch, net in CONV_NETS.items()}


def init_weights(arch: str, ways: int, seed: int) -> list[tf.Variable]:
    """Conv kernels, batch-norm scales/offsets and the dense layer, as variables.

    No conv biases, as in `reptile_tf.models`: batch norm's mean subtraction cancels them exactly.
    """
    (height, _, channels), filters, stride, pool = _SPECS[arch]
    rng = np.random.default_rng(seed)
    weights = []
    cin = channels
    for _ in range(BLOCKS):
        limit = math.sqrt(6.0 / (9 * cin + 9 * filters))
        weights += [rng.uniform(-limit, limit, (3, 3, cin, filters)), np.ones(filters), np.zeros(filters)]
        height = -(-height // stride)
        if pool:
            height = -(-height // 2)
        cin = filters
    features = height * height * filters
    limit = math.sqrt(6.0 / (features + ways))
    weights += [rng.uniform(-limit, limit, (features, ways)), np.zeros(ways)]
    return [tf.Variable(w.astype(np.float32)) for w in weights]


def forward(arch: str, weights: list[Any], x: tf.Tensor) -> tf.Tensor:
    """Logits `[B, ways]` of one task's batch `x` `[B, H, W, C]`."""
    _, _, stride, pool = _SPECS[arch]
    out = x
    for block in range(BLOCKS):
        kernel, scale, offset = weights[3 * block: 3 * block + 3]
        out = tf.nn.conv2d(out, kernel, strides=stride, padding="SAME")
        out, _, _ = tf.compat.v1.nn.fused_batch_norm(out, scale, offset, epsilon=BN_EPSILON, is_training=True)
        if pool:
            out = tf.nn.max_pool2d(out, 2, 2, "SAME")
        out = tf.nn.relu(out)
    out = tf.reshape(out, [tf.shape(out)[0], -1])
    return tf.matmul(out, weights[-2]) + weights[-1]


def _loss(arch: str, weights: list[Any], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    logits = forward(arch, weights, x)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


class ReferenceTrainer:
    """Per-task loop for "reptile", "fomaml" or "maml" (see the module docstring)."""

    def __init__(self, settings: Any, seed: int = 0, initial: list[Any] | None = None):
        """`initial`: optional starting weights (arrays in `init_weights` order), e.g. to compare runs."""
        self.settings = settings
        self.arch = settings.dataset
        self.meta_weights = init_weights(self.arch, settings.ways, seed)
        if initial is not None:
            for variable, value in zip(self.meta_weights, initial, strict=True):
                variable.assign(tf.cast(value, tf.float32))
        self.fast_weights = [tf.Variable(w) for w in self.meta_weights]
        zeros = lambda: [tf.Variable(tf.zeros_like(w)) for w in self.meta_weights]  # noqa: E731
        self.adam_m, self.adam_v = zeros(), zeros()
        self.adam_step = tf.Variable(0.0)
        self._inner_step = tf.function(self._inner_adam_step)
        self._maml_task_gradient = tf.function(self._maml_gradient)
        self._outer_adam = tf.function(self._outer_adam_step)
        self.outer_m, self.outer_v = zeros(), zeros()
        self.outer_step = tf.Variable(0.0)

    # -- Reptile / FOMAML
    def _inner_adam_step(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        s = self.settings
        with tf.GradientTape() as tape:
            loss = _loss(self.arch, self.fast_weights, x, y)
        grads = tape.gradient(loss, self.fast_weights)
        self.adam_step.assign_add(1.0)
        t = self.adam_step
        correction = tf.sqrt(1 - s.adam_beta2 ** t) / (1 - s.adam_beta1 ** t)
        for w, g, m, v in zip(self.fast_weights, grads, self.adam_m, self.adam_v):
            m.assign(s.adam_beta1 * m + (1 - s.adam_beta1) * g)
            v.assign(s.adam_beta2 * v + (1 - s.adam_beta2) * tf.square(g))
            w.assign_sub(s.inner_lr * correction * m / (tf.sqrt(v) + s.adam_epsilon))
        return loss

    def _minibatches(self, task_x: np.ndarray, task_y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Minibatches of one task, cycling without replacement (official `_mini_batches`)."""
        s = self.settings
        steps, batches = s.inner_steps, []
        tail = None
        if s.uses_tail_batch:
            # Official --foml-tail: the last `tail_shots` per class form the final minibatch.
            per_class = task_x.shape[0] // s.ways
            tail_mask = (np.arange(task_x.shape[0]) % per_class) >= per_class - s.tail_shots
            tail = (task_x[tail_mask], task_y[tail_mask])
            task_x, task_y, steps = task_x[~tail_mask], task_y[~tail_mask], steps - 1
        order = np.arange(task_x.shape[0])
        cursor = 0
        for _ in range(steps):
            index = np.take(order, range(cursor, cursor + s.inner_batch), mode="wrap")
            cursor += s.inner_batch
            batches.append((task_x[index], task_y[index]))
        if tail is not None:
            batches.append(tail)
        return batches

    def _first_order_iteration(self, support_x: np.ndarray, support_y: np.ndarray, outer_lr: float) -> None:
        updates = [np.zeros(w.shape, np.float32) for w in self.meta_weights]
        for task in range(support_x.shape[0]):
            for fast, meta in zip(self.fast_weights, self.meta_weights):
                fast.assign(meta)
            before = None
            batches = self._minibatches(support_x[task], support_y[task])
            for step, (x, y) in enumerate(batches):
                if self.settings.algorithm == "fomaml" and step == len(batches) - 1:
                    before = [w.numpy() for w in self.fast_weights]  # FOMAML: the last step's change
                self._inner_step(tf.constant(x), tf.constant(y))
            start = before if before is not None else [w.numpy() for w in self.meta_weights]
            for update, fast, origin in zip(updates, self.fast_weights, start):
                update += fast.numpy() - origin
        for meta, update in zip(self.meta_weights, updates):
            meta.assign_add(outer_lr * update / support_x.shape[0])

    # -- MAML
    def _maml_gradient(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor) -> list[tf.Tensor]:
        s = self.settings
        with tf.GradientTape() as outer:
            weights = [tf.identity(w) for w in self.meta_weights]
            outer.watch(weights)
            for _ in range(s.inner_steps):
                with tf.GradientTape() as inner:
                    inner.watch(weights)
                    loss = _loss(self.arch, weights, sx, sy)
                grads = inner.gradient(loss, weights)
                if s.first_order:
                    grads = [tf.stop_gradient(g) for g in grads]
                weights = [w - s.inner_lr * g for w, g in zip(weights, grads)]
            query_loss = _loss(self.arch, weights, qx, qy)
        return outer.gradient(query_loss, self.meta_weights)

    def _outer_adam_step(self, grads: list[tf.Tensor]) -> None:
        s = self.settings
        self.outer_step.assign_add(1.0)
        t = self.outer_step
        beta1, beta2, epsilon = 0.9, 0.999, 1e-8  # TF1 AdamOptimizer defaults, as in the MAML code
        correction = tf.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        for w, g, m, v in zip(self.meta_weights, grads, self.outer_m, self.outer_v):
            m.assign(beta1 * m + (1 - beta1) * g)
            v.assign(beta2 * v + (1 - beta2) * tf.square(g))
            w.assign_sub(s.outer_lr * correction * m / (tf.sqrt(v) + epsilon))

    def _maml_iteration(self, batch: dict[str, np.ndarray]) -> None:
        total = None
        for task in range(batch["support_x"].shape[0]):
            grads = self._maml_task_gradient(*(tf.constant(batch[k][task])
                                               for k in ("support_x", "support_y", "query_x", "query_y")))
            total = grads if total is None else [a + g for a, g in zip(total, grads)]
        self._outer_adam([g / batch["support_x"].shape[0] for g in total])

    def meta_iteration(self, batch: dict[str, np.ndarray], outer_lr: float = 1.0) -> None:
        """One meta-iteration on numpy Episodes (`support_x` `[T, N, H, W, C]` float32, ...)."""
        if self.settings.algorithm == "maml":
            self._maml_iteration(batch)
        else:
            self._first_order_iteration(batch["support_x"], batch["support_y"], outer_lr)

"""What the theory needs beyond the training code: gradients and Hessian-vector products at phi.

The exact meta-gradients come from the training code itself (`meta_gradients.py` runs
`reptile_tf.meta`); this module computes the *predictions* they are checked against -
the leading-order terms (gbar_i and Hbar_i gbar_j at the initial point, by
forward-over-backward autodiff) and the Monte Carlo terms of AvgGrad / AvgGradInner - which
production never needs. They work with a loss `loss_fn(phi, x, y) -> scalar` of a flat float
parameter vector `phi` [P] (`Problem.loss_fn`, `problems.py`): flat vectors make dot
products, Hessian-vector products and the regressions of `coefficients.py` one-liners, and
cost nothing at these sizes.

Notation (docs/reference.md "Theory"): minibatches L_1..L_k of one task, SGD with step alpha:
phi_1 = phi, phi_{i+1} = phi_i - alpha g_i, g_i = L_i'(phi_i); gbar_i = L_i'(phi) and
Hbar_i = L_i''(phi) at the initial point.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]

# The algorithms of the checks, in table order.
ALGORITHMS = ("maml", "fomaml", "reptile")


def gradient(loss_fn: LossFn, phi: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """L'(phi) for the minibatch (x, y)."""
    with tf.GradientTape() as tape:
        tape.watch(phi)
        loss = loss_fn(phi, x, y)
    return tape.gradient(loss, phi)


def hessian_vector_product(loss_fn: LossFn, phi: tf.Tensor, x: tf.Tensor, y: tf.Tensor,
                           vector: tf.Tensor) -> tf.Tensor:
    """L''(phi) @ vector by forward-over-backward autodiff (no explicit Hessian)."""
    with tf.autodiff.ForwardAccumulator(primals=phi, tangents=vector) as accumulator:
        grad = gradient(loss_fn, phi, x, y)
    return accumulator.jvp(grad)


def leading_order_terms(loss_fn: LossFn, phi: tf.Tensor, xs: tf.Tensor,
                        ys: tf.Tensor) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """Per algorithm (zeroth, first) with g_alg = zeroth + alpha * first + O(alpha^2).

    Built only from gbar_i and Hbar_i gbar_j at the initial point (docs/reference.md):
      MAML:    gbar_k - alpha Hbar_k sum_{j<k} gbar_j - alpha sum_{j<k} Hbar_j gbar_k
      FOMAML:  gbar_k - alpha Hbar_k sum_{j<k} gbar_j
      Reptile: sum_i gbar_i - alpha sum_i sum_{j<i} Hbar_i gbar_j
    """
    k = xs.shape[0]
    gbar = [gradient(loss_fn, phi, xs[i], ys[i]) for i in range(k)]
    zeros = tf.zeros_like(phi)
    # Hbar_i (sum_{j<i} gbar_j) for i = 0..k-1 (zero for the first minibatch).
    hessian_times_prefix = [zeros]
    for i in range(1, k):
        prefix = tf.add_n(gbar[:i])
        hessian_times_prefix.append(hessian_vector_product(loss_fn, phi, xs[i], ys[i], prefix))
    hessians_times_last = [hessian_vector_product(loss_fn, phi, xs[j], ys[j], gbar[-1]) for j in range(k - 1)]
    fomaml_first = -hessian_times_prefix[-1]
    maml_first = fomaml_first - (tf.add_n(hessians_times_last) if hessians_times_last else zeros)
    return {
        "maml": (gbar[-1], maml_first),
        "fomaml": (gbar[-1], fomaml_first),
        "reptile": (tf.add_n(gbar), -tf.add_n(hessian_times_prefix)),
    }


def pair_statistics(loss_fn: LossFn, phi: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-task Monte Carlo terms for AvgGrad and AvgGradInner from k minibatches.

    `avg_grad`: mean_i gbar_i. `avg_grad_inner`: mean over ordered pairs i != j of
    Hbar_i gbar_j (by HVPs). `half_grad_of_dot`: mean over unordered pairs of
    1/2 d/dphi (gbar_i . gbar_j), by differentiating the dot product directly (a second,
    independent route: the identity says it equals `avg_grad_inner`).
    """
    k = xs.shape[0]
    if k < 2:
        raise ValueError("pair statistics need at least two minibatches")
    gbar = [gradient(loss_fn, phi, xs[i], ys[i]) for i in range(k)]
    products = [hessian_vector_product(loss_fn, phi, xs[i], ys[i], gbar[j])
                for i in range(k) for j in range(k) if i != j]
    halves = []
    for i in range(k):
        for j in range(i + 1, k):
            with tf.GradientTape() as tape:
                tape.watch(phi)
                dot = tf.reduce_sum(gradient(loss_fn, phi, xs[i], ys[i]) * gradient(loss_fn, phi, xs[j], ys[j]))
            halves.append(0.5 * tape.gradient(dot, phi))
    return {
        "avg_grad": tf.add_n(gbar) / k,
        "avg_grad_inner": tf.add_n(products) / len(products),
        "half_grad_of_dot": tf.add_n(halves) / len(halves),
    }

"""Check 4 plumbing: the outer updates built from the shared inner loop's per-step gradients."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reptile_tf.data.episodes import sample_tasks
from reptile_tf.meta import InnerConfig, inner_loop, make_inner_batches
from reptile_tf.models import broadcast_params, get_model
from reptile_tf.theory.combinations import CombinationConfig, combination_weights, make_train_step


def test_outer_updates_match_the_inner_trajectory(omniglot_train_images):
    cfg = CombinationConfig(ks=(2,), seed=0)
    model = get_model("omniglot", cfg.ways)
    step = make_train_step(model, omniglot_train_images, 2, cfg)
    params = model.init(0)
    iteration = tf.constant(5, tf.int64)
    updated = {c: step(params, iteration, tf.constant(combination_weights(c, 2)))
               for c in ("g1", "gk", "sum", "mean")}

    # The same task and minibatches, by hand, with the shared inner loop.
    seed = tf.constant([0, 5], tf.int64)
    task = sample_tasks(omniglot_train_images, 1, cfg.ways, cfg.shots, 1, seed)
    xs, ys = make_inner_batches(task["support_x"], task["support_y"], cfg.inner_batch, 2, seed + 1)
    result = inner_loop(model, broadcast_params(params, 1), xs, ys, InnerConfig(optimizer="sgd", lr=cfg.inner_lr))
    g1, g2 = result.grads
    for name, value in params.items():
        # "sum" with outer lr = inner lr lands on the adapted weights: Reptile with outer step 1.
        np.testing.assert_allclose(updated["sum"][name], result.params[name][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["g1"][name], value - cfg.inner_lr * g1[name][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["gk"][name], value - cfg.inner_lr * g2[name][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["mean"][name], value - cfg.inner_lr * (g1[name][0] + g2[name][0]) / 2,
                                   rtol=1e-4, atol=1e-6)
    # The combinations really differ (g_2 is taken after one step, so g_2 != g_1).
    assert max(float(tf.reduce_max(tf.abs(updated["g1"][n] - updated["gk"][n]))) for n in params) > 1e-6

"""Check 4 plumbing: the outer updates built from the shared inner loop's per-step gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf.data.episodes import sample_tasks
from reptile_tf.errors import UserError
from reptile_tf.meta import InnerConfig, inner_loop, make_inner_batches
from reptile_tf.models import broadcast_params, get_model
from reptile_tf.theory import combinations
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


def _without_wall_time(rows):
    return [{key: value for key, value in row.items() if key != "wall_time"} for row in rows]


def test_an_interrupted_run_resumes_to_the_curves_of_an_uninterrupted_one(
        omniglot_train_images, omniglot_test_images, tmp_path, monkeypatch):
    cfg = CombinationConfig(iterations=6, eval_every=2, eval_tasks=3, eval_inner_steps=2, ks=(2,))
    images = (omniglot_train_images, omniglot_test_images)
    whole = combinations.run_combinations(*images, cfg)

    # Interrupt the second curve (g_2 at k = 2) after its step-2 checkpoint, at its step 3.
    make_step, calls = combinations.make_train_step, []

    def interrupted(model, train_images, k, step_cfg):
        step = make_step(model, train_images, k, step_cfg)

        def train_step(params, iteration, weights):
            calls.append(int(iteration))
            if len(calls) == cfg.iterations + 4:
                raise KeyboardInterrupt
            return step(params, iteration, weights)
        return train_step

    state = tmp_path / "state"
    monkeypatch.setattr(combinations, "make_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        combinations.run_combinations(*images, cfg, state)
    monkeypatch.undo()
    assert sorted(p.name for p in state.iterdir()) == ["g1_k1.json", "gk_k2.npz", "settings.json"]
    rows, params, finished = combinations.read_curve(state, "gk", 2)
    assert [r["iteration"] for r in rows] == [0, 2] and params is not None and not finished

    resumed = combinations.run_combinations(*images, cfg, state)
    assert _without_wall_time(resumed) == _without_wall_time(whole)
    # every curve finished: rows only, no weights left behind
    assert sorted(p.name for p in state.iterdir()) == ["g1_k1.json", "gk_k2.json", "mean_k2.json", "settings.json",
                                                      "sum_k2.json"]


def test_a_state_made_with_other_settings_is_refused(omniglot_train_images, omniglot_test_images, tmp_path):
    cfg = CombinationConfig(iterations=2, eval_every=2, eval_tasks=2, eval_inner_steps=1, ks=(2,))
    combinations.open_state(tmp_path, combinations.state_config(cfg, omniglot_train_images.shape,
                                                                omniglot_test_images.shape))
    other = dataclasses.replace(cfg, inner_lr=0.01)
    with pytest.raises(UserError, match=r"differing: config.inner_lr\); pass another --state directory"):
        combinations.run_combinations(omniglot_train_images, omniglot_test_images, other, tmp_path)

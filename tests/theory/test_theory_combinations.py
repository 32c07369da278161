"""Check 4 plumbing: the outer updates built from the shared inner loop's per-step gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf.data.episodes import make_eval_episodes, sample_tasks
from reptile_tf import runtime
from reptile_tf.errors import UserError
from reptile_tf.meta import InnerConfig, inner_loop, make_inner_batches, predict, task_gradients
from reptile_tf.models import broadcast_params, get_model
from reptile_tf.theory import combinations
from reptile_tf.theory.combinations import CombinationConfig, combination_weights, make_train_step


def test_outer_updates_match_the_inner_trajectory(omniglot_train_images):
    cfg = CombinationConfig(ks=(2,), seed=0)
    model = get_model("omniglot", cfg.ways)
    train_step = make_train_step(model, omniglot_train_images, 2, cfg)
    params = model.init(0)
    iteration = tf.constant(5, tf.int64)
    updated = {c: train_step(params, iteration, tf.constant(combination_weights(c, 2)))
               for c in ("g1", "gk", "sum", "mean")}

    # The same task and minibatches, by hand, with the shared inner loop: as the official commands,
    # 2 x 5 images per class (--train-shots 10), so each of the 2 steps has its own 25 images.
    seed = tf.constant([0, 5], tf.int64)
    task = sample_tasks(omniglot_train_images, 1, cfg.ways, 2 * cfg.shots, 0, seed)
    xs, ys = make_inner_batches(task["support_x"], task["support_y"], cfg.inner_batch, 2, seed + 1)
    assert xs.shape[:3] == (1, 2, 25)
    first, second = (set(map(bytes, np.asarray(xs[0, i]).reshape(25, -1))) for i in range(2))
    assert len(first | second) == 50  # two distinct minibatches, not one reshuffled support set
    result = inner_loop(model, broadcast_params(params, 1), xs, ys,
                        InnerConfig(optimizer="sgd", lr=cfg.inner_lr, loss_reduction="sum"))
    g1, g2 = result.grads
    meta_step = cfg.meta_step * (1 - 5 / cfg.iterations)  # annealed linearly to 0 (--meta-step-final 0)
    step = meta_step * cfg.inner_lr
    for name, value in params.items():
        # "sum": the official interpolation phi + 0.25 (phi_2 - phi) towards the adapted weights
        np.testing.assert_allclose(updated["sum"][name], value + meta_step * (result.params[name][0] - value),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["g1"][name], value - step * g1[name][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["gk"][name], value - step * g2[name][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(updated["mean"][name], value - step * (g1[name][0] + g2[name][0]) / 2,
                                   rtol=1e-4, atol=1e-6)
    # The combinations really differ (g_2 is taken after one step, so g_2 != g_1).
    assert max(float(tf.reduce_max(tf.abs(updated["g1"][n] - updated["gk"][n]))) for n in params) > 1e-6
    # ... and the outer step has annealed to 0 at the last iteration
    final = train_step(params, tf.constant(cfg.iterations, tf.int64), tf.constant(combination_weights("sum", 2)))
    for name, value in params.items():
        np.testing.assert_array_equal(final[name], value)
    # The inner loop steps on the summed minibatch loss (the Reptile code's): 25 x the mean's gradient.
    mean_loss = inner_loop(model, broadcast_params(params, 1), xs[:, :1], ys[:, :1],
                           InnerConfig(optimizer="sgd", lr=cfg.inner_lr, loss_reduction="mean"))
    for name in params:
        want = 25 * mean_loss.grads[0][name]  # float32 sums in another order: tolerance relative to the largest entry
        np.testing.assert_allclose(g1[name], want, rtol=1e-3, atol=1e-4 * float(tf.reduce_max(tf.abs(want))))


def test_held_out_accuracy_is_the_official_non_transductive_evaluation(omniglot_test_images):
    # 5 SGD steps on the summed loss over the whole 25-image support set, then each query predicted
    # in a batch with the support set (the commands pass no --transductive)
    cfg = CombinationConfig(eval_tasks=4, eval_queries=2)
    model = get_model("omniglot", cfg.ways)
    episodes = make_eval_episodes(int(omniglot_test_images.shape[0]), int(omniglot_test_images.shape[1]), cfg.ways,
                                  cfg.shots, cfg.eval_queries, cfg.seed, cfg.eval_tasks, name="omniglot/test")
    batch = episodes.gather(omniglot_test_images)
    params = model.init(1)
    adapted = broadcast_params(params, cfg.eval_tasks)
    for _ in range(cfg.eval_inner_steps):
        grads, _, _ = task_gradients(model, adapted, batch["support_x"], batch["support_y"], loss_reduction="sum")
        adapted = {name: value - cfg.inner_lr * grads[name] for name, value in adapted.items()}
    want = {mode: float(tf.reduce_mean(model.accuracy(
        predict(model, adapted, batch["support_x"], batch["query_x"], transductive=mode), batch["query_y"])))
        for mode in (False, True)}
    got = float(combinations.make_evaluate(model, batch, cfg)(params))
    assert got == pytest.approx(want[False], abs=1e-6)
    assert want[True] != pytest.approx(want[False])  # the two modes tell apart on these tasks


def _without_wall_time(rows):
    return [{key: value for key, value in row.items() if key not in ("wall_time", "machine")} for row in rows]


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

    monkeypatch.setattr(combinations, "machine_summary", lambda: "the next machine")
    resumed = combinations.run_combinations(*images, cfg, state)
    assert _without_wall_time(resumed) == _without_wall_time(whole)
    # each row says where it was evaluated: the interrupted curve spans two machines
    here = runtime.machine_summary()
    assert [r["machine"] for r in resumed if r["combination"] == "g1"] == [here] * 4
    assert [r["machine"] for r in resumed if r["combination"] == "gk"] == [here] * 2 + ["the next machine"] * 2
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


def _curve(combination: str, k: int, accuracies: list[float]) -> list[dict]:
    return [{"combination": combination, "k": k, "label": combinations.label(combination, k), "iteration": 100 * i,
             "accuracy": accuracy} for i, accuracy in enumerate(accuracies)]


def _figure(g1_end: float, sum_ends: dict[int, float]) -> list[dict]:
    """Curves from one initialisation (40%): g1 to `g1_end`, sum_k to `sum_ends[k]`, g_k 2 points below sum_k."""
    rows = _curve("g1", 1, [40, 40, g1_end, g1_end])
    for k, end in sum_ends.items():
        rows += _curve("sum", k, [40, end - 4, end, end]) + _curve("gk", k, [40, end - 6, end - 2, end - 2])
    return rows


def test_curve_summaries_start_final_gain_and_mean():
    summary = combinations.curve_summaries(_curve("sum", 2, [40, 50, 60, 70, 80, 90, 90, 92]))
    assert summary == {"sum g1..g2 (Reptile, k=2)": {"start": 40.0, "final": 91.0, "gain": 51.0, "mean": 71.5}}


def test_paper_claims_hold_on_curves_shaped_like_the_papers_figure():
    claims = combinations.paper_claims(_figure(41, {2: 60, 3: 70, 4: 80}))
    assert [c["holds"] for c in claims] == [True, True, True]
    assert claims[0]["evidence"] == "g1 +1.0 points; the other curves +18.0 to +40.0"
    assert claims[1]["evidence"] == "k=2 54.0% < k=3 61.5% < k=4 69.0%"


@pytest.mark.parametrize("g1_end, sum_ends, failing", [
    (75, {2: 60, 3: 70, 4: 80}, 0),  # g1 learns more than sum k=2
    (41, {2: 60, 3: 80, 4: 70}, 1),  # k=4 slower than k=3
])
def test_paper_claims_fail_when_the_curves_disagree(g1_end, sum_ends, failing):
    claims = combinations.paper_claims(_figure(g1_end, sum_ends))
    assert [i for i, c in enumerate(claims) if not c["holds"]] == [failing]


def test_the_evidence_shows_where_the_sums_stop_rising():
    claims = combinations.paper_claims(_figure(41, {2: 60, 3: 80, 4: 70}))
    assert claims[1]["evidence"] == "k=2 54.0% < k=3 69.0% >= k=4 61.5%"


def test_the_sum_is_checked_against_the_last_gradient_alone():
    rows = _figure(41, {2: 60, 3: 70})
    rows = [r for r in rows if r["combination"] != "gk" or r["k"] != 3] + _curve("gk", 3, [40, 80, 80, 80])
    claims = combinations.paper_claims(rows)
    assert [c["holds"] for c in claims] == [True, True, False]
    assert claims[2]["evidence"] == "k=2: sum 54.0% vs g2 52.5%; k=3: sum 61.5% vs g3 70.0%"

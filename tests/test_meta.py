"""The meta-learning core: inner loop, the three outer updates, meta_step, adapt/predict.

Reference computations here are written independently of `reptile_tf.meta` (plain per-task
Python loops, hand-written SGD/Adam, finite differences) so that they can disagree with it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf import datasets, meta
from reptile_tf import settings as settings_table
from reptile_tf.errors import UserError
from reptile_tf.models import broadcast_params, get_model
from reptile_tf.settings import paper_settings
from reptile_tf.sine import sample_sine_tasks


def _classification_batch(num_tasks, ways, shots, queries, seed, size=28, channels=1):
    """A random Episodes dict shaped like the sampler's (labels 0..ways-1 in class order)."""
    support_x = tf.random.stateless_uniform([num_tasks, ways * shots, size, size, channels], seed=[seed, 0])
    query_x = tf.random.stateless_uniform([num_tasks, ways * queries, size, size, channels], seed=[seed, 1])
    support_y = tf.tile(tf.repeat(tf.range(ways), shots)[None], [num_tasks, 1])
    query_y = tf.tile(tf.repeat(tf.range(ways), queries)[None], [num_tasks, 1])
    return {"support_x": support_x, "support_y": support_y, "query_x": query_x, "query_y": query_y}


def _to64(batch):
    return {k: tf.cast(v, tf.float64) if v.dtype == tf.float32 else v for k, v in batch.items()}


def _assert_params_close(got, want, rtol=1e-5, atol=1e-6):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------- optimizers, schedule


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_step_matches_tf1_adam(beta1):
    grads_seq = [np.array([0.5, -1.0, 2.0], np.float32), np.array([0.1, 0.3, -2.0], np.float32),
                 np.array([-0.4, 0.0, 1.0], np.float32)]
    variable = tf.Variable([1.0, 2.0, 3.0])
    optimizer = tf.compat.v1.train.AdamOptimizer(0.1, beta1=beta1, beta2=0.999, epsilon=1e-8)
    params = {"w": tf.constant([1.0, 2.0, 3.0])}
    state = meta.zeros_adam_state(params)
    for grads in grads_seq:
        optimizer.apply_gradients([(tf.constant(grads), variable)])
        params, state = meta.adam_step(params, {"w": tf.constant(grads)}, state, 0.1, beta1, 0.999, 1e-8)
    np.testing.assert_allclose(params["w"].numpy(), variable.numpy(), rtol=1e-5)  # float32 rounding
    assert float(state["t"]) == 3.0


def test_minibatch_schedule_cycles_without_replacement():
    schedule = meta.minibatch_schedule(10, 4, 7, tf.constant([1, 2])).numpy()
    assert schedule.shape == (7, 4)
    flat = schedule.reshape(-1)  # 28 indices = 2 full passes + 8 of the third
    for start in (0, 10):
        assert sorted(flat[start : start + 10]) == list(range(10))
    assert len(set(flat[20:])) == 8
    again = meta.minibatch_schedule(10, 4, 7, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(schedule, again)
    other = meta.minibatch_schedule(10, 4, 7, tf.constant([1, 3])).numpy()
    assert not np.array_equal(schedule, other)
    per_task = meta.minibatch_schedule(10, 5, 2, tf.constant([1, 2]), num_tasks=3).numpy()
    assert per_task.shape == (3, 2, 5)
    for t in range(3):
        assert sorted(per_task[t].reshape(-1)) == list(range(10))
    assert not np.array_equal(per_task[0], per_task[1])  # each task shuffles on its own


def test_inner_loop_returns_what_outer_updates_need():
    model = get_model("sine", 1)
    batch = sample_sine_tasks(3, 10, 0, tf.constant([4, 4]))
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 5, 3, tf.constant([0, 1]))
    assert xs.shape == (3, 3, 5, 1)
    params = broadcast_params(model.init(0), 3)
    cfg = meta.InnerConfig(optimizer="sgd", lr=0.01)
    result = meta.inner_loop(model, params, xs, ys, cfg)
    assert result.losses.shape == (3, 3) and result.accuracies.shape == (3, 3) and len(result.grads) == 3
    # final = prev - lr * last gradient (SGD); losses are those of the params before each step
    _assert_params_close(result.params, {k: result.prev_params[k] - 0.01 * result.grads[-1][k] for k in params})
    first_loss = model.loss(model.apply(params, xs[:, 0]), ys[:, 0])
    np.testing.assert_allclose(result.losses[0].numpy(), first_loss.numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- gradients


def _maml_query_loss(model, phi, xs, ys, query_x, query_y, lr):
    """Reference MAML objective: plain per-task SGD, mean query loss after adaptation."""
    losses = []
    for t in range(xs.shape[0]):
        params = {k: v[None] for k, v in phi.items()}
        for step in range(xs.shape[1]):
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = tf.reduce_sum(model.loss(model.apply(params, xs[t : t + 1, step]), ys[t : t + 1, step]))
            grads = tape.gradient(loss, params)
            params = {k: params[k] - lr * grads[k] for k in params}
        losses.append(model.loss(model.apply(params, query_x[t : t + 1]), query_y[t : t + 1])[0])
    return tf.reduce_mean(tf.stack(losses))


@pytest.mark.parametrize("arch", ["sine", "omniglot", "mini_imagenet"])
def test_maml_meta_gradient_matches_central_finite_differences(arch):
    """Second-order MAML gradient (2 inner SGD steps) vs central differences, float64, random directions."""
    dataset = datasets.DATASETS[arch]
    model = get_model(arch, 3 if dataset.is_classifier else 1)
    phi = model.init(11, dtype=tf.float64)
    if not dataset.is_classifier:
        batch = _to64(sample_sine_tasks(2, 8, 5, tf.constant([3, 3])))
    else:
        size, _, channels = dataset.input_shape
        tasks = 2 if arch == "omniglot" else 1  # 84x84 inputs are slow; one task covers max-pool
        batch = _to64(_classification_batch(tasks, 3, 1, 1, seed=5, size=size, channels=channels))
    steps, lr = 2, 0.1
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 0, steps, tf.constant([0, 0]))
    cfg = meta.InnerConfig(optimizer="sgd", lr=lr)
    grad, *_ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"], cfg)
    fo_grad, *_ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"],
                                          meta.InnerConfig(optimizer="sgd", lr=lr, first_order=True))
    h = 1e-6  # with a unit-norm direction; larger steps cross ReLU kinks of the conv nets
    for direction_seed in range(2):
        direction = {k: tf.random.stateless_normal(v.shape, seed=[direction_seed, i], dtype=tf.float64)
                     for i, (k, v) in enumerate(sorted(phi.items()))}
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v)) for v in direction.values()]))
        direction = {k: v / norm for k, v in direction.items()}
        plus = _maml_query_loss(model, {k: phi[k] + h * direction[k] for k in phi}, xs, ys,
                                batch["query_x"], batch["query_y"], lr)
        minus = _maml_query_loss(model, {k: phi[k] - h * direction[k] for k in phi}, xs, ys,
                                 batch["query_x"], batch["query_y"], lr)
        finite_difference = float((plus - minus) / (2 * h))
        analytic = sum(float(tf.reduce_sum(grad[k] * direction[k])) for k in phi)
        first_order = sum(float(tf.reduce_sum(fo_grad[k] * direction[k])) for k in phi)
        assert analytic == pytest.approx(finite_difference, rel=1e-5, abs=1e-8)
        # the check can tell: dropping the second-order terms is visibly wrong here
        assert abs(first_order - finite_difference) > 100 * abs(analytic - finite_difference)


def test_maml_at_the_paper_5_way_5_shot_configuration_is_finns_loss_and_its_exact_gradient():
    """The paper_cpu MAML 5-way 5-shot cell as trained (Finn's network, his inner loss scale, one
    SGD step of 0.4, 25 support and 25 query images per task: batch norm over 25 images),
    against his loss written out here: inner loss = sum over the support of cross-entropy / K,
    batch-norm offsets not adapted, query loss averaged over the tasks; its gradient by nested
    tapes. (Central differences agree only between ReLU kinks at this scale: with his N(0, 1)
    dense kernel the step is large, so they are not the reference here; the finite-difference
    test above covers the second-order path on smaller tasks.)"""
    settings = paper_settings("maml", "omniglot", 5, 5).replace(network="maml", loss_reduction="sum_per_shot")
    assert (settings.inner_steps, settings.inner_lr, settings.train_shots, settings.queries) == (1, 0.4, 5, 5)
    cfg = meta.InnerConfig.from_settings(settings)
    model = get_model("omniglot", 5, network="maml")
    phi = model.init(7, dtype=tf.float64)
    batch = _to64(_classification_batch(2, 5, 5, 5, seed=44))
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 0, 1, tf.constant([0, 0]))
    grad, _, query_losses, _ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"], cfg)

    def finn_meta_loss(params):
        losses = []
        for t in range(2):
            task = {k: v[None] for k, v in params.items()}
            with tf.GradientTape() as tape:
                tape.watch(task)
                logits = model.apply(task, batch["support_x"][t : t + 1])
                xent = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["support_y"][t : t + 1], logits)
                inner = tf.reduce_sum(xent / 5.0)
            step = tape.gradient(inner, task)
            task = {k: v if k in model.inner_frozen else v - 0.4 * step[k] for k, v in task.items()}
            logits = model.apply(task, batch["query_x"][t : t + 1])
            losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["query_y"][t : t + 1],
                                                                                         logits)))
        return tf.reduce_mean(tf.stack(losses))

    with tf.GradientTape() as outer:
        outer.watch(phi)
        want_loss = finn_meta_loss(phi)
    want = outer.gradient(want_loss, phi)
    assert float(tf.reduce_mean(query_losses)) == pytest.approx(float(want_loss), rel=1e-12)
    _assert_params_close(grad, want, rtol=1e-8, atol=1e-12)
    first_order, *_ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"],
                                             meta.InnerConfig.from_settings(settings.replace(first_order=True)))
    # the comparison can tell: without the second-order terms the gradient is far from his
    assert max(float(tf.reduce_max(tf.abs(first_order[k] - want[k]))) for k in want) > \
        1e3 * max(float(tf.reduce_max(tf.abs(grad[k] - want[k]))) for k in want)


def test_first_order_maml_gradient_is_query_gradient_at_adapted_params():
    model = get_model("omniglot", 3)
    phi = model.init(2)
    batch = _classification_batch(3, 3, 2, 2, seed=8)
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 3, 2, tf.constant([1, 1]))
    cfg = meta.InnerConfig(optimizer="sgd", lr=0.05, first_order=True)
    grad, result, _, _ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"], cfg)
    adapted = result.params
    with tf.GradientTape() as tape:
        tape.watch(adapted)
        loss = tf.reduce_mean(model.loss(model.apply(adapted, batch["query_x"]), batch["query_y"]))
    at_adapted = tape.gradient(loss, adapted)
    _assert_params_close(grad, {k: tf.reduce_sum(v, axis=0) for k, v in at_adapted.items()}, rtol=1e-4, atol=1e-6)


def test_fomaml_update_is_last_inner_gradient_step():
    """With SGD, the official-style FOMAML update equals -eps * lr * (first-order MAML gradient whose
    query batch is the last inner minibatch, after the other k-1 steps)."""
    model = get_model("omniglot", 3)
    phi = model.init(4)
    batch = _classification_batch(3, 3, 2, 0, seed=9)
    lr, eps, steps = 0.05, 0.7, 3
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 4, steps, tf.constant([2, 2]))
    cfg = meta.InnerConfig(optimizer="sgd", lr=lr)
    result = meta.inner_loop(model, broadcast_params(phi, 3), xs, ys, cfg)
    updated = meta.fomaml_update(phi, result.params, result.prev_params, eps)
    fo_grad, *_ = meta.maml_meta_gradient(model, phi, xs[:, :-1], ys[:, :-1], xs[:, -1], ys[:, -1],
                                          meta.InnerConfig(optimizer="sgd", lr=lr, first_order=True))
    # maml_meta_gradient averages over tasks; the FOMAML update averages the per-task steps
    _assert_params_close(updated, {k: phi[k] - eps * lr * fo_grad[k] for k in phi}, rtol=1e-4, atol=1e-6)
    assert any(float(tf.reduce_max(tf.abs(updated[k] - phi[k]))) > 1e-4 for k in phi)


def test_reptile_with_one_sgd_step_is_joint_sgd_scaled_by_eps():
    model = get_model("omniglot", 3)
    phi = model.init(5)
    batch = _classification_batch(4, 3, 2, 0, seed=10)
    lr, eps = 0.1, 0.3
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 0, 1, tf.constant([0, 0]))
    result = meta.inner_loop(model, broadcast_params(phi, 4), xs, ys, meta.InnerConfig(optimizer="sgd", lr=lr))
    updated = meta.reptile_update(phi, result.params, eps)
    with tf.GradientTape() as tape:
        tape.watch(phi)
        joint = tf.reduce_mean(model.loss(model.apply(broadcast_params(phi, 4), batch["support_x"]), batch["support_y"]))
    grads = tape.gradient(joint, phi)
    _assert_params_close(updated, {k: phi[k] - eps * lr * grads[k] for k in phi}, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- meta_step vs per-task loop


def _ref_adam(p, g, m, v, t, lr, b1, b2, eps):
    t = t + 1
    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
    v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in p}
    return {k: p[k] - lr_t * m[k] / (np.sqrt(v[k]) + eps) for k in p}, m, v, t


def _task_grad(model, params, x, y):
    tensors = {k: tf.constant(v[None]) for k, v in params.items()}
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        loss = model.loss(model.apply(tensors, x[None]), y[None])[0]
    return {k: g.numpy()[0] for k, g in tape.gradient(loss, tensors).items()}


def _reference_meta_step(model, settings, state, batch, outer_lr):
    """Official-code semantics with a plain Python loop over tasks (numpy parameter updates)."""
    phi = {k: v.numpy() for k, v in meta.params_from_state(state).items()}
    steps = settings.inner_steps - (1 if settings.uses_tail_batch else 0)
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], settings.inner_batch, steps,
                                     meta.schedule_seed(state))
    if settings.algorithm == "maml":
        grads = []
        for t in range(xs.shape[0]):
            phi_t = {k: tf.constant(v) for k, v in phi.items()}
            with tf.GradientTape() as tape:
                tape.watch(phi_t)
                loss = _maml_query_loss(model, phi_t, xs[t : t + 1], ys[t : t + 1], batch["query_x"][t : t + 1],
                                        batch["query_y"][t : t + 1], settings.inner_lr)
            grads.append({k: g.numpy() for k, g in tape.gradient(loss, phi_t).items()})
        mean_grad = {k: np.mean([g[k] for g in grads], axis=0) for k in phi}
        m = {k: state[f"outer_adam/m/{k}"].numpy() for k in phi}
        v = {k: state[f"outer_adam/v/{k}"].numpy() for k in phi}
        new_phi, *_ = _ref_adam(phi, mean_grad, m, v, float(state["outer_adam/t"]), outer_lr, 0.9, 0.999, 1e-8)
        return new_phi, None
    new_phi, moments = _reference_task_loop(model, settings, state, batch, outer_lr, phi, xs, ys, steps,
                                            carry_adam=False)
    mean_m = {k: np.mean([mv[0][k] for mv in moments], axis=0) for k in phi}
    return new_phi, mean_m


def _reference_task_loop(model, settings, state, batch, outer_lr, phi, xs, ys, steps, carry_adam):
    """Tasks one after another, each from phi with Adam (numpy): each task from the stored Adam
    state (ours, parallel) or with one state carried from task to task (official). Returns the
    outer-updated phi and each task's final (m, v, count)."""
    hp = (settings.inner_lr, settings.adam_beta1, settings.adam_beta2, settings.adam_epsilon)
    start = ({k: state[f"inner_adam/m/{k}"].numpy() for k in phi}, {k: state[f"inner_adam/v/{k}"].numpy() for k in phi},
             float(state["inner_adam/t"]))
    m, v, count = start
    finals, changes, moments = [], [], []
    for t in range(xs.shape[0]):
        p = dict(phi)
        if not carry_adam:
            m, v, count = dict(start[0]), dict(start[1]), start[2]
        minibatches = [(xs[t, i].numpy(), ys[t, i].numpy()) for i in range(steps)]
        if settings.uses_tail_batch:
            minibatches.append((batch["query_x"][t].numpy(), batch["query_y"][t].numpy()))
        for x, y in minibatches:
            before = p
            p, m, v, count = _ref_adam(p, _task_grad(model, p, x, y), m, v, count, *hp)
        finals.append(p)
        changes.append({k: p[k] - before[k] for k in p})
        moments.append((m, v, count))
    if settings.algorithm == "reptile":
        new_phi = {k: phi[k] + outer_lr * np.mean([f[k] - phi[k] for f in finals], axis=0) for k in phi}
    else:
        new_phi = {k: phi[k] + outer_lr * np.mean([c[k] for c in changes], axis=0) for k in phi}
    return new_phi, moments


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_meta_step_matches_per_task_python_loop(algorithm):
    model = get_model("omniglot", 3)
    settings = paper_settings(algorithm, "omniglot", 5, 1).replace(
        ways=3, train_shots=3, inner_steps=3 if algorithm != "maml" else 2, meta_batch=3, queries=2)
    if algorithm != "maml":
        settings = settings.replace(inner_batch=4, inner_lr=0.01)
    else:
        settings = settings.replace(inner_lr=0.1)
    # float64: Adam turns near-zero gradients into full steps, so float32 rounding differences
    # between batched and per-task matmuls would show up as real parameter differences.
    state = meta.init_meta_state(model, model.init(3, tf.float64), settings, seed=4)
    shots = settings.train_shots
    tail = settings.tail_shots if algorithm == "fomaml" else settings.queries
    batch = _to64(_classification_batch(3, 3, shots, tail, seed=12))
    step = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr))
    outer_lr = 0.5 if algorithm != "maml" else 0.01
    # a second step checks that the persisted optimizer state is carried correctly
    state, _ = step(state, batch, tf.constant(outer_lr, tf.float64))
    batch = _to64(_classification_batch(3, 3, shots, tail, seed=13))
    want_params, want_m = _reference_meta_step(model, settings, state, batch, outer_lr)
    new_state, metrics = step(state, batch, tf.constant(outer_lr, tf.float64))
    _assert_params_close(meta.params_from_state(new_state), want_params, rtol=1e-9, atol=1e-11)
    if want_m is not None:
        _assert_params_close(meta.inner_adam_from_state(new_state)["m"], want_m, rtol=1e-9, atol=1e-14)
        assert float(new_state["inner_adam/t"]) == 2 * settings.inner_steps
    assert int(new_state["step"]) == 2
    assert set(metrics) >= {"loss", "accuracy"} and np.isfinite(float(metrics["loss"]))
    if algorithm == "maml":
        assert float(new_state["outer_adam/t"]) == 2 and "query_loss" in metrics


# ----------------------------------------------------------------------------- tracing, evaluation


def test_meta_step_traces_once_over_several_steps():
    model = get_model("omniglot", 5)
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(train_shots=2, inner_steps=2, meta_batch=2)
    state = meta.init_meta_state(model, model.init(0), settings)
    step = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr))
    losses = []
    for i in range(4):
        state, metrics = step(state, _classification_batch(2, 5, 2, 1, seed=20 + i), tf.constant(1.0 - 0.2 * i))
        losses.append(float(metrics["loss"]))
    assert step.experimental_get_tracing_count() == 1
    assert int(state["step"]) == 4 and len(set(losses)) == 4


@pytest.mark.parametrize("algorithm", ["reptile", "maml"])
def test_meta_step_compiles_with_xla(algorithm):
    """jit_compile=True works and agrees with eager (sine MLP: a small graph keeps compiling fast).

    float64, because inner Adam turns rounding-level gradient differences into visible steps.
    Full-batch inner steps: XLA's stateless RNG stream differs from TF's, so minibatch schedules
    (and hence results) legitimately differ between jit and non-jit runs."""
    model = get_model("sine", 1)
    settings = paper_settings(algorithm, "sine", 1, 10).replace(inner_steps=2, inner_batch=0)
    if algorithm == "reptile":
        settings = settings.replace(inner_optimizer="adam")
    state = meta.init_meta_state(model, model.init(0, tf.float64), settings)
    batch = _to64(sample_sine_tasks(3, 10, 10, tf.constant([0, 3])))
    lr = tf.constant(0.01, tf.float64)
    eager, _ = meta.meta_step(model, settings, state, batch, lr)
    compiled, _ = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr), jit_compile=True)(
        state, batch, lr)
    _assert_params_close(meta.params_from_state(compiled), meta.params_from_state(eager), rtol=1e-9, atol=1e-12)


def test_conv_gradients_compile_with_xla():
    """Grouped conv, batch norm and max-pool of Mini-ImageNet under XLA, to second order.

    float32 (XLA has no float64 MaxPoolGradGrad); the gradient of a gradient norm through batch
    norm over two images is rounding-sensitive, so the second order is compared by relative norm.
    """
    model = get_model("mini_imagenet", 2)
    params = broadcast_params(model.init(0), 2)
    x = tf.random.stateless_uniform([2, 2, 84, 84, 3], seed=[0, 9])
    y = tf.constant([[0, 1], [1, 0]])

    def gradients(p):
        with tf.GradientTape() as outer:
            outer.watch(p)
            grads, _, _ = meta.task_gradients(model, p, x, y)
            norm = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads.values()])
        return grads, outer.gradient(norm, p)

    from tensorflow.python.framework import config as tf_config

    # XLA has no deterministic MaxPoolGrad; --xla runs without op determinism (train.py), but
    # other tests in this process may have switched it on.
    was_deterministic = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        eager_first, eager_second = gradients(params)
        compiled_first, compiled_second = tf.function(gradients, jit_compile=True)(params)
    finally:
        if was_deterministic:
            tf.config.experimental.enable_op_determinism()
    _assert_params_close(compiled_first, eager_first, rtol=1e-3, atol=1e-5)
    for name in params:
        error = np.linalg.norm(compiled_second[name] - eager_second[name]) / np.linalg.norm(eager_second[name])
        assert error < 2e-2, name


def test_adapt_equals_unrolled_inner_loop_and_reduces_loss():
    model = get_model("omniglot", 5)
    phi = model.init(6, tf.float64)
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(eval_inner_steps=4, eval_inner_batch=3)
    batch = _to64(_classification_batch(2, 5, 1, 1, seed=40))
    seed = tf.constant([7, 7])
    adapted = tf.function(lambda p, x, y: meta.adapt(model, settings, p, x, y, seed))(
        phi, batch["support_x"], batch["support_y"])
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 3, 4, seed)
    cfg = meta.InnerConfig.from_settings(settings, evaluation=True)
    unrolled = meta.inner_loop(model, broadcast_params(phi, 2), xs, ys, meta.InnerConfig(
        optimizer=cfg.optimizer, lr=cfg.lr, beta1=cfg.beta1))
    _assert_params_close(adapted, unrolled.params, rtol=1e-8, atol=1e-10)
    before = model.loss(model.apply(broadcast_params(phi, 2), batch["support_x"]), batch["support_y"])
    after = model.loss(model.apply(adapted, batch["support_x"]), batch["support_y"])
    assert np.all(after.numpy() < before.numpy())


def test_adapt_can_start_from_training_adam_moments():
    model = get_model("sine", 1)
    settings = paper_settings("reptile", "sine", 1, 10).replace(inner_optimizer="adam", eval_inner_steps=2)
    state = meta.init_meta_state(model, model.init(0), settings)
    batch = sample_sine_tasks(2, 10, 0, tf.constant([1, 1]))
    state, _ = meta.meta_step(model, settings, state, batch, tf.constant(1.0))
    phi = meta.params_from_state(state)
    fresh = meta.adapt(model, settings, phi, batch["support_x"], batch["support_y"], tf.constant([0, 0]))
    warm = meta.adapt(model, settings, phi, batch["support_x"], batch["support_y"], tf.constant([0, 0]),
                      opt_state=meta.inner_adam_from_state(state))
    assert not np.allclose(fresh["dense0/kernel"].numpy(), warm["dense0/kernel"].numpy())


def test_maml_adapt_is_full_batch_sgd():
    model = get_model("sine", 1)
    phi = model.init(1)
    settings = paper_settings("maml", "sine", 1, 10).replace(eval_inner_steps=3)
    batch = sample_sine_tasks(2, 10, 0, tf.constant([2, 2]))
    adapted = meta.adapt(model, settings, phi, batch["support_x"], batch["support_y"], tf.constant([0, 0]))
    p = broadcast_params(phi, 2)
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = tf.reduce_sum(model.loss(model.apply(p, batch["support_x"]), batch["support_y"]))
        grads = tape.gradient(loss, p)
        p = {k: p[k] - settings.inner_lr * grads[k] for k in p}
    _assert_params_close(adapted, p, rtol=1e-5, atol=1e-6)


def test_predict_transductive_and_one_query_at_a_time():
    model = get_model("omniglot", 5)
    params = {k: tf.stack([v, 1.1 * v]) for k, v in model.init(8).items()}
    batch = _classification_batch(2, 5, 1, 3, seed=50)
    transductive = meta.predict(model, params, batch["support_x"], batch["query_x"], transductive=True)
    np.testing.assert_allclose(transductive.numpy(), model.apply(params, batch["query_x"]).numpy())
    single = meta.predict(model, params, batch["support_x"], batch["query_x"], transductive=False).numpy()
    assert single.shape == (2, 15, 5)
    for t in range(2):
        task = {k: v[t : t + 1] for k, v in params.items()}
        for q in (0, 7, 14):
            inputs = tf.concat([batch["support_x"][t : t + 1], batch["query_x"][t : t + 1, q : q + 1]], axis=1)
            np.testing.assert_allclose(single[t, q], model.apply(task, inputs).numpy()[0, -1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(single, transductive.numpy(), atol=1e-3)  # batch norm sees different batches


def test_meta_step_under_mixed_precision_keeps_float32_state():
    model = get_model("omniglot", 5)
    settings = paper_settings("maml", "omniglot", 5, 1).replace(meta_batch=2)
    state = meta.init_meta_state(model, model.init(0), settings)
    batch = _classification_batch(2, 5, 1, 1, seed=60)
    full, full_metrics = meta.meta_step(model, settings, state, batch, 0.001)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed, mixed_metrics = meta.meta_step(model, settings, state, batch, 0.001)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    assert all(mixed[key].dtype == state[key].dtype for key in state)
    assert mixed_metrics["query_loss"].dtype == tf.float32
    assert float(mixed_metrics["query_loss"]) != float(full_metrics["query_loss"])  # computed in bfloat16
    assert float(mixed_metrics["query_loss"]) == pytest.approx(float(full_metrics["query_loss"]), rel=0.05)
    assert not np.allclose(mixed["params/dense/kernel"].numpy(), state["params/dense/kernel"].numpy())


# ----------------------------------------------------------------------------- learning on sine waves

# Measured (300 meta-iterations, meta-batch 5, median over 200 fresh tasks of the query MSE after
# 10 SGD steps on 10 support points; init seeds 0 / 1 / 2), learned / random-init ratio:
#   reptile 0.14 / 0.11 / -, fomaml 0.41 / 0.26 / 0.50, maml 0.18 / 0.21 / 0.13
# (random init: median MSE ~3.0). Median, because with inner lr 0.02 an occasional
# high-amplitude task diverges (counted as +inf, never hidden). Thresholds leave >= 1.5x margin.
SINE_RUNS = {
    "reptile": (dict(inner_steps=10, inner_lr=0.02, outer_lr=1.0, eval_inner_steps=10), 0.4),
    "fomaml": (dict(inner_steps=5, tail_shots=10, inner_lr=0.02, outer_lr=3.0, eval_inner_steps=10), 0.75),
    "maml": (dict(outer_lr=0.01, eval_inner_steps=10), 0.4),
}


def _sine_query_mse(model, settings, params):
    tasks = sample_sine_tasks(200, 10, 20, tf.constant([99, 1]))
    adapted = meta.adapt(model, settings, params, tasks["support_x"], tasks["support_y"], tf.constant([5, 5]))
    per_task = model.loss(model.apply(adapted, tasks["query_x"]), tasks["query_y"]).numpy()
    return float(np.median(np.nan_to_num(per_task, nan=np.inf)))


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_meta_learned_sine_init_adapts_better_than_random(algorithm):
    model = get_model("sine", 1)
    overrides, max_ratio = SINE_RUNS[algorithm]
    settings = paper_settings(algorithm, "sine", 1, 10).replace(meta_batch=5, **overrides)
    initial = model.init(0)
    state = meta.init_meta_state(model, initial, settings, seed=1)
    step = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr))
    iterations = 300
    for i in range(iterations):
        batch = sample_sine_tasks(settings.meta_batch, settings.train_shots, settings.queries, tf.constant([i, 7]))
        annealed = settings.outer_lr * (1 - i / iterations) if algorithm != "maml" else settings.outer_lr
        state, _ = step(state, batch, tf.constant(annealed))
    random_mse = _sine_query_mse(model, settings, initial)
    learned_mse = _sine_query_mse(model, settings, meta.params_from_state(state))
    assert learned_mse < max_ratio * random_mse, (learned_mse, random_mse)


# ----------------------------------------------------------------------------- bad input


def test_bad_names_batches_and_schedules_are_user_errors():
    model = get_model("sine", 1)
    params = model.init(0)
    good = paper_settings("reptile", "sine", 1, 10)
    with pytest.raises(UserError, match="unknown algorithm"):
        meta.meta_step(model, good.replace(algorithm="protonet"), meta.init_meta_state(model, params, good),
                       sample_sine_tasks(2, 10, 1, tf.constant([0, 0])), 1.0)
    with pytest.raises(UserError, match="inner_optimizer='rmsprop' is not supported"):
        meta.InnerConfig(optimizer="rmsprop")
    with pytest.raises(UserError, match="inner_lr=-0.5 must be positive"):
        meta.InnerConfig(lr=-0.5)
    with pytest.raises(UserError, match="outer_optimizer"):
        meta.init_meta_state(model, params, good.replace(outer_optimizer="adam"))
    maml = paper_settings("maml", "sine", 1, 10)
    with pytest.raises(UserError, match="query"):
        meta.meta_step(model, maml, meta.init_meta_state(model, params, maml),
                       sample_sine_tasks(2, 10, 0, tf.constant([0, 0])), 0.001)
    with pytest.raises(UserError, match="minibatch schedule"):
        meta.minibatch_schedule(0, 5, 3, tf.constant([0, 0]))


# ----------------------------------------------------------------------------- official-code semantics (issue 16)


def _reference_sequential_meta_step(model, settings, state, batch, outer_lr):
    """The official `Reptile.train_step` / `FOML.train_step`: tasks one after another with ONE
    Adam state (m, v, step count) carried from task to task; only the weights are reset to phi."""
    phi = {k: v.numpy() for k, v in meta.params_from_state(state).items()}
    tail = settings.uses_tail_batch
    steps = settings.inner_steps - (1 if tail else 0)
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], settings.inner_batch, steps,
                                     meta.schedule_seed(state))
    new_phi, moments = _reference_task_loop(model, settings, state, batch, outer_lr, phi, xs, ys, steps,
                                            carry_adam=True)
    m, v, count = moments[-1]
    return new_phi, m, v, count


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_sequential_inner_adam_equals_a_task_loop_with_one_carried_adam_state(algorithm):
    model = get_model("omniglot", 3)
    settings = paper_settings(algorithm, "omniglot", 5, 1).replace(
        ways=3, train_shots=3, inner_steps=3, meta_batch=3, inner_batch=4, inner_lr=0.01,
        inner_adam_mode="sequential")
    state = meta.init_meta_state(model, model.init(5, tf.float64), settings, seed=2)
    tail = settings.tail_shots if algorithm == "fomaml" else 1
    step = tf.function(lambda s, b, lr: meta.meta_step(model, settings, s, b, lr))
    state, _ = step(state, _to64(_classification_batch(3, 3, 3, tail, seed=30)), tf.constant(0.7, tf.float64))
    assert float(state["inner_adam/t"]) == 3 * 3  # tasks x inner steps, not inner steps
    batch = _to64(_classification_batch(3, 3, 3, tail, seed=31))
    want_phi, want_m, want_v, want_t = _reference_sequential_meta_step(model, settings, state, batch, 0.5)
    new_state, metrics = step(state, batch, tf.constant(0.5, tf.float64))
    _assert_params_close(meta.params_from_state(new_state), want_phi, rtol=1e-9, atol=1e-11)
    adam = meta.inner_adam_from_state(new_state)
    _assert_params_close(adam["m"], want_m, rtol=1e-9, atol=1e-14)
    _assert_params_close(adam["v"], want_v, rtol=1e-9, atol=1e-18)
    assert float(adam["t"]) == want_t == 2 * 3 * 3
    assert np.isfinite(float(metrics["loss"])) and 0 <= float(metrics["accuracy"]) <= 1


def test_sequential_and_parallel_mean_differ_only_in_the_adam_state_carried():
    model = get_model("omniglot", 3)
    base = paper_settings("reptile", "omniglot", 5, 1).replace(ways=3, train_shots=2, inner_steps=2, meta_batch=2,
                                                               inner_batch=3)
    state = meta.init_meta_state(model, model.init(1, tf.float64), base, seed=0)
    batch = _to64(_classification_batch(2, 3, 2, 1, seed=33))
    parallel, _ = meta.meta_step(model, base, state, batch, tf.constant(1.0, tf.float64))
    sequential, _ = meta.meta_step(model, base.replace(inner_adam_mode="sequential"), state, batch,
                                   tf.constant(1.0, tf.float64))
    assert float(parallel["inner_adam/t"]) == 2 and float(sequential["inner_adam/t"]) == 4
    # fresh moments + beta1 = 0: the first task of both modes takes the same first step, but the
    # second task starts from the first one's moments only in sequential mode
    assert not np.allclose(parallel["params/dense/kernel"].numpy(), sequential["params/dense/kernel"].numpy())


def test_default_inner_adam_mode_and_loss_reduction_are_the_previous_computation_bit_for_bit():
    # meta_step with the defaults = the explicit parallel composition (broadcast moments, batched inner
    # loop, mean of the moments): exactly what meta_step computed before the options existed
    # (checked once against the previous meta.py: bit-identical states and adaptations).
    model = get_model("omniglot", 5)
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(train_shots=2, meta_batch=3)
    explicit = settings.replace(inner_adam_mode="parallel_mean", loss_reduction="mean")
    assert explicit == settings
    state = meta.init_meta_state(model, model.init(0), settings, seed=1)
    batch = _classification_batch(3, 5, 2, 1, seed=34)
    state, _ = meta.meta_step(model, settings, state, batch, tf.constant(1.0))
    got, _ = meta.meta_step(model, settings, state, batch, tf.constant(0.5))
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], settings.inner_batch,
                                     settings.inner_steps, meta.schedule_seed(state))
    adam = meta.inner_adam_from_state(state)
    opt = {"m": broadcast_params(adam["m"], 3), "v": broadcast_params(adam["v"], 3), "t": adam["t"]}
    phi = meta.params_from_state(state)
    result = meta.inner_loop(model, broadcast_params(phi, 3), xs, ys, meta.InnerConfig.from_settings(settings), opt)
    want = meta.reptile_update(phi, result.params, tf.constant(0.5))
    for name in phi:
        np.testing.assert_array_equal(got[f"params/{name}"].numpy(), want[name].numpy())
        np.testing.assert_array_equal(got[f"inner_adam/v/{name}"].numpy(),
                                      tf.reduce_mean(result.opt_state["v"][name], axis=0).numpy())
    assert float(got["inner_adam/t"]) == 2 * settings.inner_steps


def test_sum_loss_reduction_scales_the_inner_gradient_by_the_batch_size():
    model = get_model("omniglot", 3)
    phi = broadcast_params(model.init(2, tf.float64), 2)
    batch = _to64(_classification_batch(2, 3, 4, 1, seed=35))
    x, y = batch["support_x"], batch["support_y"]
    mean_grads, mean_loss, _ = meta.task_gradients(model, phi, x, y)
    sum_grads, sum_loss, _ = meta.task_gradients(model, phi, x, y, loss_reduction="sum")
    np.testing.assert_array_equal(sum_loss.numpy(), mean_loss.numpy())  # reported losses stay means
    _assert_params_close(sum_grads, {k: 12 * g for k, g in mean_grads.items()}, rtol=1e-10, atol=1e-12)
    # SGD: sum with lr / batch = mean with lr; the option reaches the inner loop through InnerConfig
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(inner_optimizer="sgd", inner_lr=0.12)
    xs, ys = meta.make_inner_batches(x, y, 4, 3, tf.constant([1, 2]))
    mean_run = meta.inner_loop(model, phi, xs, ys, meta.InnerConfig.from_settings(settings))
    sum_cfg = meta.InnerConfig.from_settings(settings.replace(inner_lr=0.03, loss_reduction="sum"))
    assert sum_cfg.loss_reduction == "sum"
    _assert_params_close(meta.inner_loop(model, phi, xs, ys, sum_cfg).params, mean_run.params, rtol=1e-10, atol=1e-12)
    with pytest.raises(UserError, match="loss_reduction"):
        meta.InnerConfig(loss_reduction="max")


def test_sum_per_shot_loss_scales_the_inner_gradient_by_the_ways():
    # Finn's MAML loss: per-example cross-entropy / K, summed = N x the mean on an N-way K-shot set.
    ways, shots = 3, 4
    model = get_model("omniglot", ways)
    phi = broadcast_params(model.init(3, tf.float64), 2)
    batch = _to64(_classification_batch(2, ways, shots, 1, seed=36))
    x, y = batch["support_x"], batch["support_y"]
    mean_grads, mean_loss, _ = meta.task_gradients(model, phi, x, y)
    shot_grads, shot_loss, _ = meta.task_gradients(model, phi, x, y, loss_reduction="sum_per_shot")
    np.testing.assert_array_equal(shot_loss.numpy(), mean_loss.numpy())
    _assert_params_close(shot_grads, {k: ways * g for k, g in mean_grads.items()}, rtol=1e-10, atol=1e-12)
    sum_grads, _, _ = meta.task_gradients(model, phi, x, y, loss_reduction="sum")
    _assert_params_close(shot_grads, {k: g / shots for k, g in sum_grads.items()}, rtol=1e-10, atol=1e-12)


def test_every_loss_reduction_value_has_a_scale():
    assert set(meta.LOSS_SCALES) == set(settings_table.FIDELITY_OPTIONS["loss_reduction"][1])


def test_unknown_fidelity_option_values_are_user_errors():
    model = get_model("sine", 1)
    good = paper_settings("reptile", "sine", 1, 10)
    for field, value in (("inner_adam_mode", "parallel"), ("loss_reduction", "max"), ("eval_adam_state", "warm")):
        with pytest.raises(UserError, match=field):
            meta.init_meta_state(model, model.init(0), good.replace(**{field: value}))


# ----------------------------------------------------------------------------- registries (issue 12)


def test_registries_hold_the_names_settings_validates_and_refuse_others():
    # Settings (TF-free) is the one home of the valid names; meta's registries hold their code.
    assert list(meta.INNER_OPTIMIZERS) == ["sgd", "adam"] and list(meta.OUTER_OPTIMIZERS) == ["adam", "sgd"]
    assert set(meta.INNER_OPTIMIZERS) == set(meta.OUTER_OPTIMIZERS) == set(settings_table.OPTIMIZERS)
    assert list(meta.ALGORITHMS) == list(settings_table.ALGORITHMS) == ["reptile", "fomaml", "maml"]
    assert set(meta.INNER_STATE_MODES) == set(settings_table.FIDELITY_OPTIONS["inner_adam_mode"][1])
    assert {name for name, a in meta.ALGORITHMS.items() if not a.uses_outer_optimizer} == \
        set(settings_table.INTERPOLATING_ALGORITHMS)
    model = get_model("sine", 1)
    params = model.init(0)
    good = paper_settings("maml", "sine", 1, 10)
    with pytest.raises(UserError, match="unknown algorithm 'protonet'; choose one of reptile, fomaml, maml"):
        meta.init_meta_state(model, params, good.replace(algorithm="protonet"))
    with pytest.raises(UserError, match="inner_optimizer='rmsprop' is not supported; use 'adam' or 'sgd'"):
        meta.init_meta_state(model, params, good.replace(inner_optimizer="rmsprop"))
    with pytest.raises(UserError, match="outer_optimizer='lamb' is not supported; use 'adam' or 'sgd'"):
        meta.init_meta_state(model, params, good.replace(outer_optimizer="lamb"))
    with pytest.raises(UserError, match="outer_optimizer='lamb' is not supported; use 'adam' or 'sgd'"):
        meta.maml_update(params, params, None, 0.1, "lamb")
    # meta checks only the fields it reads: a tensor step size (the theory's) is its caller's business
    meta.init_meta_state(model, params, good.replace(inner_lr=tf.constant(0.1)))


def test_optimizers_are_init_update_pairs_of_the_step_functions():
    params = {"w": tf.constant([1.0, -2.0, 0.5])}
    grads = [{"w": tf.constant([0.5, 0.25, -1.0])}, {"w": tf.constant([-0.1, 0.0, 2.0])}]
    sgd = meta.InnerConfig(optimizer="sgd", lr=0.1).make_optimizer()
    assert sgd.init(params) == {}
    stepped, state = sgd.update(params, grads[0], {})
    assert state == {}
    np.testing.assert_array_equal(stepped["w"].numpy(), meta.sgd_step(params, grads[0], 0.1)["w"].numpy())
    cfg = meta.InnerConfig(optimizer="adam", lr=0.1, beta1=0.5, beta2=0.9, epsilon=1e-6)
    adam = cfg.make_optimizer()
    p, s = params, adam.init(params)
    want_p, want_s = params, meta.zeros_adam_state(params)
    for g in grads:
        p, s = adam.update(p, g, s)
        want_p, want_s = meta.adam_step(want_p, g, want_s, 0.1, 0.5, 0.9, 1e-6)
        np.testing.assert_array_equal(p["w"].numpy(), want_p["w"].numpy())
        np.testing.assert_array_equal(s["v"]["w"].numpy(), want_s["v"]["w"].numpy())
    # MAML's outer Adam: the TF1 defaults of the MAML code
    outer = meta.OUTER_OPTIMIZERS["adam"](0.01)
    got, _ = outer.update(params, grads[0], outer.init(params))
    want, _ = meta.adam_step(params, grads[0], meta.zeros_adam_state(params), 0.01, 0.9, 0.999, 1e-8)
    np.testing.assert_array_equal(got["w"].numpy(), want["w"].numpy())
    new, none = meta.maml_update(params, grads[0], None, 0.01, "sgd")  # SGD keeps no outer state
    assert none is None


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml", "maml"])
def test_meta_step_is_the_algorithm_lookup_on_its_drawn_minibatches(algorithm):
    # The theory checks call meta_step_on_minibatches with minibatches of their choosing: it must be
    # exactly what meta_step runs after drawing them (bit for bit).
    model = get_model("sine", 1)
    settings = paper_settings(algorithm, "sine", 1, 10).replace(meta_batch=3, inner_steps=3, inner_batch=4)
    if algorithm != "maml":
        settings = settings.replace(inner_optimizer="adam", inner_lr=0.01)
    if algorithm == "fomaml":
        settings = settings.replace(tail_shots=5)
    state = meta.init_meta_state(model, model.init(0), settings, seed=3)
    batch = sample_sine_tasks(3, 10, 5, tf.constant([2, 5]))
    lr = tf.constant(0.5 if algorithm != "maml" else 0.01)
    state, _ = meta.meta_step(model, settings, state, batch, lr)  # a step with non-trivial optimizer state
    got, got_metrics = meta.meta_step(model, settings, state, batch, lr)
    steps = settings.inner_steps - (1 if algorithm == "fomaml" else 0)
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], settings.inner_batch, steps,
                                     meta.schedule_seed(state))
    want, want_metrics = meta.meta_step_on_minibatches(model, settings, state, xs, ys, batch, lr)
    assert list(got) == list(want) == list(state)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    assert {k: float(v) for k, v in got_metrics.items()} == {k: float(v) for k, v in want_metrics.items()}


# ----------------------------------------------------------------------------- params fixed in the inner loop


def test_inner_loop_leaves_the_frozen_params_and_maml_differentiates_them_through_the_query_loss():
    # Finn's MAML nets: the batch-norm offsets are not in his adapted `weights`, only the meta
    # optimizer trains them.
    model = get_model("omniglot", 3, network="maml")
    frozen = model.inner_frozen
    assert frozen == {f"bn{block}/offset" for block in range(4)}
    rng = np.random.default_rng(5)
    phi = {k: v + (0.3 * rng.normal(size=v.shape) if k in frozen else 0) for k, v in model.init(4, tf.float64).items()}
    batch = _to64(_classification_batch(2, 3, 2, 2, seed=41))
    xs, ys = meta.make_inner_batches(batch["support_x"], batch["support_y"], 0, 2, tf.constant([1, 2]))
    start = broadcast_params(phi, 2)
    for cfg in (meta.InnerConfig(optimizer="sgd", lr=0.4), meta.InnerConfig(optimizer="adam", lr=0.01)):
        result = meta.inner_loop(model, start, xs, ys, cfg)
        for name in phi:
            unchanged = np.array_equal(result.params[name].numpy(), start[name].numpy())
            assert unchanged == (name in frozen), (cfg.optimizer, name)
        assert all(not np.any(step[name].numpy()) for step in result.grads for name in frozen)

    cfg = meta.InnerConfig(optimizer="sgd", lr=0.4)
    grad, _, _, _ = meta.maml_meta_gradient(model, phi, xs, ys, batch["query_x"], batch["query_y"], cfg)
    # Reference written here: two SGD steps on every param but the offsets, then the query loss.
    with tf.GradientTape() as tape:
        tape.watch(phi)
        task = broadcast_params(phi, 2)
        for step in range(2):
            with tf.GradientTape() as inner:
                inner.watch(task)
                loss = tf.reduce_sum(model.loss(model.apply(task, xs[:, step]), ys[:, step]))
            step_grads = inner.gradient(loss, task)
            task = {k: v if k in frozen else v - 0.4 * step_grads[k] for k, v in task.items()}
        query_loss = tf.reduce_mean(model.loss(model.apply(task, batch["query_x"]), batch["query_y"]))
    _assert_params_close(grad, tape.gradient(query_loss, phi), rtol=1e-8, atol=1e-12)
    for name in frozen:
        assert np.abs(grad[name].numpy()).max() > 1e-6, name


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_a_meta_step_moves_the_frozen_params_only_by_an_outer_gradient(algorithm):
    model = get_model("omniglot", 5, network="maml")
    settings = paper_settings(algorithm, "omniglot", 5, 1).replace(meta_batch=2, inner_steps=1, inner_batch=5,
                                                                   network="maml")
    state = meta.init_meta_state(model, model.init(0), settings)
    batch = _classification_batch(2, 5, settings.training_task_shape[0], 1, seed=42)
    new_state, _ = meta.meta_step(model, settings, state, batch, tf.constant(settings.outer_lr))
    for name in model.inner_frozen:
        moved = not np.array_equal(new_state[f"params/{name}"].numpy(), state[f"params/{name}"].numpy())
        # MAML: outer Adam on the query-loss gradient; Reptile: phi moves towards the adapted params,
        # which keep the offsets
        assert moved == (algorithm == "maml"), name
    assert not np.array_equal(new_state["params/conv0/kernel"].numpy(), state["params/conv0/kernel"].numpy())

"""Models as pure functions: the batched conv equals tf.nn.conv2d, shapes, counts, init, dtypes."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf import datasets, runtime
from reptile_tf.errors import UserError
from reptile_tf.networks import NETWORKS
from reptile_tf.models import (
    CONV_PATHS, available_conv_paths, batch_norm, batched_conv3x3, broadcast_params, choose_conv_path,
    count_params, cross_entropy_loss, fold_tasks, folded_batch_norm, get_model, grouped_conv3x3, sliced_conv3x3,
    split_conv3x3, unfold_tasks, max_pool2x2, mean_over_tasks, mse_loss, same_padding,
)


def task_major(folded_conv):
    """A folded-layout conv as a `[T, B, H, W, C]` one, to compare all formulations on one footing."""
    return lambda x, kernel, stride: unfold_tasks(folded_conv(fold_tasks(x), kernel, stride), kernel.shape[-1])


# The formulations this TensorFlow can differentiate here: with oneDNN off (CI's second run)
# the grouped ones are not generated, because they cannot run, rather than skipped.
CONVS = {"batched": batched_conv3x3, "sliced": sliced_conv3x3, "split": task_major(split_conv3x3)}
if runtime.grouped_conv_gradient_available():
    CONVS["grouped"] = grouped_conv3x3


@pytest.mark.parametrize("conv", CONVS.values(), ids=CONVS.keys())
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 7), (8, 6), (28, 28)])
def test_batched_conv_equals_tf_conv2d_same(stride, size, conv):
    rng = np.random.default_rng(0)
    tasks, batch, cin, cout = 3, 2, 4, 5
    x = rng.normal(size=(tasks, batch, *size, cin)).astype(np.float32)
    kernel = rng.normal(size=(tasks, 3, 3, cin, cout)).astype(np.float32)
    got = conv(tf.constant(x), tf.constant(kernel), stride).numpy()
    for t in range(tasks):
        want = tf.nn.conv2d(x[t], kernel[t], strides=stride, padding="SAME").numpy()
        assert got[t].shape == want.shape
        np.testing.assert_allclose(got[t], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [c for name, c in CONVS.items() if name != "sliced"],
                         ids=[name for name in CONVS if name != "sliced"])
@pytest.mark.parametrize("stride", [1, 2])
def test_float32_convs_and_sliced_conv_agree_to_second_order(stride, conv):
    """float32 uses the grouped (or split) conv, float64 (finite-difference checks) the sliced one:
    the MAML-relevant second derivatives must agree, or the float64 checks would prove nothing."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 3, 9, 9, 4)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(2, 3, 3, 4, 5)).astype(np.float32))

    def second_order(conv):
        with tf.GradientTape() as outer:
            outer.watch(kernel)
            with tf.GradientTape() as inner:
                inner.watch([x, kernel])
                loss = tf.reduce_sum(tf.tanh(conv(x, kernel, stride)))
            gx, gk = inner.gradient(loss, [x, kernel])
            norm = tf.reduce_sum(gx ** 2) + tf.reduce_sum(gk ** 2)
        return outer.gradient(norm, kernel).numpy()

    got, sliced = second_order(conv), second_order(sliced_conv3x3)
    np.testing.assert_allclose(got, sliced, rtol=1e-3, atol=1e-3 * np.abs(sliced).max())


def test_same_padding_puts_extra_pad_at_the_end():
    assert same_padding(28, 2) == (0, 1, 14)  # TF: total pad 1 -> all of it after
    assert same_padding(7, 2) == (1, 1, 4)
    assert same_padding(84, 1) == (1, 1, 84)


@pytest.mark.parametrize("size,expected", [(84, 42), (21, 11), (6, 3)])
def test_max_pool_shapes_and_values(size, expected):
    x = tf.random.stateless_normal([2, 3, size, size, 4], seed=[1, 2])
    pooled = max_pool2x2(x)
    assert pooled.shape == (2, 3, expected, expected, 4)
    want = tf.nn.max_pool2d(tf.reshape(x, [6, size, size, 4]), 2, 2, "SAME")
    np.testing.assert_array_equal(pooled.numpy().reshape(want.shape), want.numpy())


def test_batch_norm_uses_each_tasks_batch_statistics():
    x = tf.random.stateless_normal([2, 5, 4, 4, 3], seed=[3, 4]) * tf.constant([1.0, 10.0])[:, None, None, None, None]
    out = batch_norm(x, tf.ones([2, 3]), tf.zeros([2, 3])).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    # variance 1 up to epsilon: task 0 has variance ~1, so epsilon 1e-3 shows; task 1 ~100.
    np.testing.assert_allclose(out[1].var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
    shifted = batch_norm(x, 2 * tf.ones([2, 3]), tf.ones([2, 3])).numpy()
    np.testing.assert_allclose(shifted, 2 * out + 1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,ways,count", [("omniglot", 5, 112_965), ("omniglot", 20, 116_820),
                                             ("mini_imagenet", 5, 34_533), ("sine", 1, 1_761)])
def test_param_counts(arch, ways, count):
    # omniglot: conv 3x3 1->64 and 3 x 64->64 (no bias: batch norm cancels it), 4 x BN(64)
    # scale/offset, dense 2*2*64 -> ways with bias. The official code's 4 inert conv biases add 256.
    assert count_params(get_model(arch, ways).init(0)) == count


@pytest.mark.parametrize("arch,ways", [("omniglot", 5), ("mini_imagenet", 5), ("sine", 1)])
def test_output_shapes_for_many_tasks(arch, ways):
    model = get_model(arch, ways)
    params = broadcast_params(model.init(1), 3)
    x = tf.random.stateless_uniform([3, 4, *model.input_shape], seed=[0, 1])
    outputs = model.apply(params, x)
    assert outputs.shape == (3, 4, ways)
    assert outputs.dtype == tf.float32


def test_tasks_are_independent():
    """Applying T tasks at once equals applying each task alone (per-task params and batch norm)."""
    model = get_model("omniglot", 5)
    params = {k: tf.stack([v, v * 1.5]) for k, v in model.init(2).items()}
    x = tf.random.stateless_uniform([2, 6, 28, 28, 1], seed=[5, 6])
    together = model.apply(params, x).numpy()
    for t in range(2):
        alone = model.apply({k: v[t : t + 1] for k, v in params.items()}, x[t : t + 1]).numpy()
        np.testing.assert_allclose(together[t], alone[0], rtol=1e-4, atol=1e-5)


def test_init_like_keras_and_deterministic():
    model = get_model("omniglot", 5)
    first, again, other = model.init(7), model.init(7), model.init(8)
    for name in first:
        np.testing.assert_array_equal(first[name].numpy(), again[name].numpy())
    assert not np.allclose(first["conv1/kernel"], other["conv1/kernel"])
    limit = np.sqrt(6.0 / (9 * 64 + 9 * 64))  # glorot uniform bound of a 3x3 64->64 kernel
    kernel = first["conv1/kernel"].numpy()
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.05 * limit
    np.testing.assert_array_equal(first["dense/bias"].numpy(), 0.0)
    np.testing.assert_array_equal(first["bn3/scale"].numpy(), 1.0)
    np.testing.assert_array_equal(first["bn3/offset"].numpy(), 0.0)
    assert model.init(0, dtype=tf.float64)["dense/kernel"].dtype == tf.float64


def test_float64_params_give_float64_outputs():
    model = get_model("sine", 1)
    params = broadcast_params(model.init(0, tf.float64), 2)
    assert model.apply(params, tf.zeros([2, 3, 1])).dtype == tf.float64


def test_mixed_precision_computes_in_policy_dtype_and_returns_float32():
    model = get_model("omniglot", 5)
    params = broadcast_params(model.init(0), 2)
    x = tf.random.stateless_uniform([2, 4, 28, 28, 1], seed=[1, 1])
    full = model.apply(params, x)
    half = model.apply(params, x, compute_dtype=tf.bfloat16)
    assert half.dtype == tf.float32
    assert not np.array_equal(full.numpy(), half.numpy())  # really computed in bfloat16
    np.testing.assert_allclose(half.numpy(), full.numpy(), atol=0.15)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        np.testing.assert_array_equal(model.apply(params, x).numpy(), half.numpy())
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def test_losses_and_accuracy():
    logits = tf.constant([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]]])
    labels = tf.constant([[0, 0], [1, 1]])
    want = -np.log(tf.nn.softmax(logits).numpy()[[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]]).reshape(2, 2).mean(1)
    np.testing.assert_allclose(cross_entropy_loss(logits, labels).numpy(), want, rtol=1e-6)
    model = get_model("omniglot", 2)
    np.testing.assert_allclose(model.accuracy(logits, labels).numpy(), [0.5, 0.5])
    np.testing.assert_allclose(mse_loss(tf.ones([2, 3, 1]), tf.zeros([2, 3, 1])).numpy(), [1.0, 1.0])


def test_broadcast_and_mean_are_inverse():
    params = get_model("sine", 1).init(3)
    back = mean_over_tasks(broadcast_params(params, 4))
    for name in params:
        np.testing.assert_allclose(back[name].numpy(), params[name].numpy(), rtol=1e-6)


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture"):
        get_model("resnet", 5)
    with pytest.raises(UserError, match="num_outputs"):
        get_model("omniglot", 0)


def test_folded_batch_norm_equals_batch_norm_to_second_order():
    """The fused kernel on the folded layout is the same function as the task-major batch norm,
    down to the second derivatives MAML takes through it."""
    rng = np.random.default_rng(2)
    x = tf.constant((rng.normal(size=(3, 4, 5, 5, 6)) * np.array([1.0, 3.0, 0.2])[:, None, None, None, None]).astype(np.float32))
    scale = tf.constant(rng.uniform(0.5, 1.5, size=(3, 6)).astype(np.float32))
    offset = tf.constant(rng.normal(size=(3, 6)).astype(np.float32))

    def derivatives(norm):
        with tf.GradientTape() as outer:
            outer.watch([x, scale])
            with tf.GradientTape() as inner:
                inner.watch([x, scale, offset])
                out = norm(x, scale, offset)
                loss = tf.reduce_sum(tf.sin(out) * tf.range(6, dtype=tf.float32))
            gx, gs, go = inner.gradient(loss, [x, scale, offset])
            norm2 = tf.reduce_sum(gx ** 2) + tf.reduce_sum(gs ** 2) + tf.reduce_sum(go ** 2)
        return [out, gx, gs, go, *outer.gradient(norm2, [x, scale])]

    folded = derivatives(lambda x, s, o: unfold_tasks(folded_batch_norm(fold_tasks(x), s, o), 6))
    plain = derivatives(batch_norm)
    for got, want in zip(folded, plain):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-3, atol=2e-3 * np.abs(want.numpy()).max())


def test_fold_tasks_round_trip_and_channel_order():
    x = tf.random.stateless_normal([3, 2, 4, 4, 5], seed=[7, 8])
    folded = fold_tasks(x)
    assert folded.shape == (2, 4, 4, 15)
    np.testing.assert_array_equal(folded[..., 1 * 5 + 2].numpy(), x[1, ..., 2].numpy())  # channel t*C + c
    np.testing.assert_array_equal(unfold_tasks(folded, 5).numpy(), x.numpy())


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("path", available_conv_paths())
@pytest.mark.parametrize("arch", datasets.IMAGE_DATASETS)
def test_float32_network_of_every_conv_path_matches_float64_task_major_network(arch, path, network):
    """Every conv path of the float32 network (folded grouped/split with fused batch norm,
    task-major sliced...) computes the float64 task-major network's function (sliced conv,
    unfused batch norm): same outputs and same parameter gradients, up to float32 rounding.
    For both families (Finn's: no batch-norm scale, 'valid' pool, global average head)."""
    model = get_model(arch, 5, conv_path=path, network=network)
    assert model.conv_path == path and model.network == network
    params = {k: tf.stack([v, v * 1.1]) for k, v in model.init(3).items()}
    x = tf.random.stateless_uniform([2, 4, *model.input_shape], seed=[9, 9])
    y = tf.constant([[0, 1, 2, 3], [4, 3, 2, 1]])

    def loss_and_grads(dtype):
        cast = {k: tf.cast(v, dtype) for k, v in params.items()}
        with tf.GradientTape() as tape:
            tape.watch(cast)
            logits = model.apply(cast, tf.cast(x, dtype))
            loss = tf.reduce_sum(model.loss(logits, y))
        return logits, tape.gradient(loss, cast)

    logits32, grads32 = loss_and_grads(tf.float32)
    logits64, grads64 = loss_and_grads(tf.float64)
    np.testing.assert_allclose(logits32.numpy(), logits64.numpy(), rtol=1e-3, atol=1e-4)
    for name in grads64:
        want = grads64[name].numpy()
        np.testing.assert_allclose(grads32[name].numpy(), want, rtol=1e-2, atol=1e-3 * np.abs(want).max(), err_msg=name)


def test_the_default_conv_path_is_the_fastest_one_this_tensorflow_can_differentiate():
    expected = "grouped" if runtime.grouped_conv_gradient_available() else "split"
    assert get_model("omniglot", 5).conv_path == expected
    assert get_model("sine", 1).conv_path is None
    assert set(available_conv_paths()) <= set(CONV_PATHS)
    with pytest.raises(UserError, match="unknown conv path 'nope'"):
        choose_conv_path("nope")


def test_onednn_is_recorded_as_tensorflow_reports_it():
    # On x86-64 reptile_tf turns oneDNN on unless the user chose (CI's second run sets it to 0).
    import platform

    info = runtime.runtime_info()
    assert info["onednn"] == runtime.onednn_enabled()
    user_value = os.environ.get("TF_ENABLE_ONEDNN_OPTS") if runtime.onednn_source() == "user" else None
    if user_value == "0":
        assert info["onednn"] is False
    elif platform.machine().lower() in ("x86_64", "amd64") and runtime.onednn_source() == "reptile-tf":
        assert info["onednn"] is True
    assert info["cpu_class"] in ("amx", "avx512", "avx2", platform.machine())
    assert set(info["cpu_flags"]) <= set(runtime.RELEVANT_CPU_FLAGS)


@pytest.mark.parametrize("onednn", ["0", None])
def test_without_grouped_conv_gradient_the_model_falls_back_and_trains(onednn, tmp_path):
    """In a fresh process: with oneDNN off (what Zen 3 / AVX2 CPUs got from TensorFlow's default)
    the conv nets take the split path, say so in one line, and differentiate; with the variable
    unset, reptile_tf turns oneDNN on (x86-64) before TensorFlow is imported."""
    import platform
    import subprocess
    import sys

    script = (
        "import reptile_tf, os\n"
        "from reptile_tf import runtime\n"
        "from reptile_tf.models import get_model, broadcast_params\n"
        "import tensorflow as tf\n"
        "m = get_model('omniglot', 5)\n"
        "p = broadcast_params(m.init(0), 2)\n"
        "x = tf.random.stateless_uniform([2, 5, 28, 28, 1], seed=[1, 2])\n"
        "y = tf.zeros([2, 5], tf.int32)\n"
        "with tf.GradientTape() as tape:\n"
        "    tape.watch(p); loss = tf.reduce_sum(m.loss(m.apply(p, x), y))\n"
        "g = tape.gradient(loss, p)\n"
        "assert all(v is not None for v in g.values())\n"
        "print('PATH', m.conv_path, 'ONEDNN', runtime.onednn_enabled(), 'SOURCE', runtime.onednn_source())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    path, enabled, source = out.stdout.split()[1::2]
    if onednn == "0":
        assert (path, enabled, source) == ("split", "False", "user")
        assert out.stderr.count("reptile-tf: this TensorFlow cannot differentiate a grouped convolution") == 1
    elif platform.machine().lower() in ("x86_64", "amd64"):
        assert (path, enabled, source) == ("grouped", "True", "reptile-tf")


def test_dense_computes_each_task_alike_however_many_tasks_share_the_call():
    """In a fresh process with oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA: Zen 3's kernels on any
    x86-64; the variable is read when oneDNN loads): the head's outputs and derivatives to second
    order for 15 tasks equal those of the same tasks in three calls of 5, bit for bit. A batched
    matmul fails this on AVX2 (its kernel gradient), which made seed groups differ from seeds
    trained alone on Zen 3."""
    import subprocess
    import sys

    script = (
        "import reptile_tf\n"
        "import numpy as np, tensorflow as tf\n"
        "from reptile_tf import runtime\n"
        "from reptile_tf.models import dense\n"
        "runtime.deterministic_runtime()\n"
        "rng = np.random.default_rng(0)\n"
        "x, k, b, up = (tf.constant(rng.standard_normal(s).astype(np.float32))\n"
        "               for s in ((15, 10, 256), (15, 256, 5), (15, 5), (15, 10, 5)))\n"
        "@tf.function\n"
        "def derivatives(x, k, b, up):\n"
        "    with tf.GradientTape() as outer:\n"
        "        outer.watch([x, k])\n"
        "        with tf.GradientTape() as tape:\n"
        "            tape.watch([x, k, b]); y = dense(x, k, b); loss = tf.reduce_sum(y * up)\n"
        "        gx, gk, gb = tape.gradient(loss, [x, k, b])\n"
        "        second = tf.reduce_sum(tf.square(gk)) + tf.reduce_sum(tf.square(gx))\n"
        "    return [y, gx, gk, gb] + outer.gradient(second, [x, k])\n"
        "whole = derivatives(x, k, b, up)\n"
        "parts = [derivatives(x[i:i + 5], k[i:i + 5], b[i:i + 5], up[i:i + 5]) for i in (0, 5, 10)]\n"
        "for name, w, *p in zip(['y', 'dx', 'dk', 'db', 'd2x', 'd2k'], whole, *parts):\n"
        "    print(name, np.array_equal(w.numpy(), tf.concat(p, 0).numpy()))\n"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert dict(line.split() for line in out.stdout.splitlines()) == dict.fromkeys(
        ["y", "dx", "dk", "db", "d2x", "d2k"], "True")


# ----------------------------------------------------------------------------- Finn's MAML nets


@pytest.mark.parametrize("arch,ways,count,features", [("omniglot", 5, 111_749, 64), ("omniglot", 20, 112_724, 64),
                                                      ("mini_imagenet", 5, 32_645, 800)])
def test_maml_network_params_have_no_batch_norm_scale(arch, ways, count, features):
    # omniglot: the 4 conv kernels, 4 BN offsets of 64, dense on the 64 channel means (+ bias);
    # mini_imagenet: 'valid' pools 84 -> 42 -> 21 -> 10 -> 5, dense on 5*5*32 = 800 features.
    model = get_model(arch, ways, network="maml")
    params = model.init(0)
    assert count_params(params) == count
    assert not [name for name in params if name.endswith("/scale")]
    assert params["dense/kernel"].shape == (features, ways) and params["bn3/offset"].shape == (NETWORKS["maml"][arch].filters,)
    assert model.inner_frozen == {f"bn{block}/offset" for block in range(4)}
    reptile = get_model(arch, ways)
    assert reptile.network == "reptile" and reptile.inner_frozen == frozenset()
    assert {name: v.shape for name, v in params.items() if name.startswith("conv")} == \
        {name: v.shape for name, v in reptile.init(0).items() if name.startswith("conv")}


def test_maml_network_init_conv_glorot_dense_standard_normal():
    model = get_model("omniglot", 20, network="maml")
    params, again = model.init(7), model.init(7)
    reptile = get_model("omniglot", 20).init(7)
    for name in params:
        np.testing.assert_array_equal(params[name].numpy(), again[name].numpy())
    for block in range(4):  # same glorot-uniform kernels from the same seed as the Reptile net
        np.testing.assert_array_equal(params[f"conv{block}/kernel"].numpy(), reptile[f"conv{block}/kernel"].numpy())
        np.testing.assert_array_equal(params[f"bn{block}/offset"].numpy(), 0.0)
    kernel = params["dense/kernel"].numpy()  # Finn's tf.random_normal: N(0, 1), whatever the fans
    assert abs(kernel.mean()) < 0.1 and abs(kernel.std() - 1.0) < 0.08 and np.abs(kernel).max() > 2.5
    np.testing.assert_array_equal(params["dense/bias"].numpy(), 0.0)
    mini = get_model("mini_imagenet", 5, network="maml").init(7)["dense/kernel"].numpy()
    limit = np.sqrt(6.0 / (800 + 5))  # Finn's Mini-ImageNet dense: xavier (glorot) uniform
    assert np.abs(mini).max() <= limit and np.abs(mini).max() > 0.9 * limit


def finn_forward_conv(arch, params, x):
    """cbfinn/maml `forward_conv` for one task, written with plain TF ops: conv + batch norm
    (batch statistics, offset, no scale) + ReLU (+ 2x2 'VALID' max-pool), then the channel means
    (Omniglot) or the flattened map (Mini-ImageNet), dense."""
    net = NETWORKS["maml"][arch]
    out = x
    for block in range(4):
        out = tf.nn.conv2d(out, params[f"conv{block}/kernel"], net.stride, "SAME")
        mean, variance = tf.nn.moments(out, axes=[0, 1, 2])
        out = tf.nn.relu(tf.nn.batch_normalization(out, mean, variance, params[f"bn{block}/offset"], None, 1e-3))
        if net.max_pool:
            out = tf.nn.max_pool2d(out, 2, 2, "VALID")
    features = tf.reduce_mean(out, [1, 2]) if net.head == "mean" else tf.reshape(out, [out.shape[0], -1])
    return tf.matmul(features, params["dense/kernel"]) + params["dense/bias"]


@pytest.mark.parametrize("path", available_conv_paths())
@pytest.mark.parametrize("arch", datasets.IMAGE_DATASETS)
def test_maml_network_computes_finns_forward_conv(arch, path):
    model = get_model(arch, 5, conv_path=path, network="maml")
    rng = np.random.default_rng(4)
    params = {k: tf.constant(v.numpy() + (rng.normal(size=v.shape).astype(np.float32) if "offset" in k else 0))
              for k, v in model.init(5).items()}  # nonzero offsets: the offset is applied
    x = tf.random.stateless_uniform([2, 6, *model.input_shape], seed=[3, 4])
    got = model.apply(broadcast_params(params, 2), x).numpy()
    for t in range(2):
        want = finn_forward_conv(arch, params, x[t]).numpy()
        np.testing.assert_allclose(got[t], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_unknown_network_and_a_network_without_the_arch_are_user_errors():
    with pytest.raises(UserError, match="unknown network 'finn'; choose one of reptile, maml"):
        get_model("omniglot", 5, network="finn")
    with pytest.raises(UserError, match="network 'maml' has no sine net"):
        get_model("sine", 1, network="maml")
    assert get_model("sine", 1).network == "reptile"

"""The networks as pure functions of (params, inputs), batched over tasks.

Parameters are plain tensors in a dict (no Keras layers own state), so an inner loop can
update them functionally, MAML can differentiate through those updates, and a whole
meta-batch runs at once: every parameter carries a leading task dimension T and inputs
are `[T, B, ...]`.

Architectures (docs/reference.md "Networks"; `network` "reptile", the layers of the official
supervised-reptile code, by default):
- "omniglot" (28x28x1): 4 x [3x3 conv 64, stride 2, 'same', batch norm, ReLU], flatten, dense.
- "mini_imagenet" (84x84x3): 4 x [3x3 conv 32, 'same', batch norm, 2x2 max-pool 'same', ReLU],
  flatten, dense.
- "sine" (1 -> 1): MLP 1-40-40-1 with ReLU, MSE loss (MAML paper, section 5.1).
`network="maml"` builds the conv nets of Finn's MAML code instead (reptile_tf.networks: batch norm
without scale, its offsets fixed in the inner loop (`Model.inner_frozen`), Omniglot global
average pooling and an N(0, 1) dense kernel, Mini-ImageNet 'valid' max-pool).

Batch norm always uses the statistics of the current batch of each task (moments over the
batch and spatial axes, per task), with learnable scale/offset, as `training=True` in the
official code (epsilon 1e-3, the `tf.layers.batch_normalization` default).
The convolutions have no bias: the official `tf.layers.conv2d` bias is cancelled exactly by
batch norm's mean subtraction, so it never changes an output and its true gradient is zero
(with Adam it would only random-walk on rounding noise). Parameter counts are therefore the
official ones minus the conv biases (Omniglot 5-way 112,965; Mini-ImageNet 5-way 34,533;
Finn's MAML nets, no batch-norm scale either: 111,749 and 32,645).

Conv stack: every formulation in `CONV_PATHS` computes the same function (tested). The fastest,
"grouped" (tasks folded into the channels, one grouped convolution per layer), needs a gradient
that only oneDNN and cuDNN provide; where it is missing `choose_conv_path` falls back to "split"
(one convolution per task) and says so. The path a model runs is `Model.conv_path`, recorded
in config.json, MLflow and the benchmark output.

Mixed precision: `apply` computes in `compute_dtype` (default: the global Keras policy's
compute dtype when the params are float32, else the params' dtype) and returns float32
outputs (float64 if the params are float64), so losses are always computed in full precision.
Parameters stay float32; gradients flow back through the casts. No loss scaling is done, so
prefer "mixed_bfloat16" (float16 gradients may underflow).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from reptile_tf import datasets, runtime
from reptile_tf.networks import BLOCKS, DEFAULT_NETWORK, NETWORKS, ConvNet, feature_size
from reptile_tf.errors import UserError

ARCHS = datasets.NAMES  # one network per dataset, named after it
BATCH_NORM_EPSILON = 1e-3
# "Accuracy" of a regression model: fraction of predictions within this absolute error.
# Keeps `accuracy` meaningful (in [0, 1]) for the sine task; amplitudes are in [0.1, 5].
REGRESSION_HIT_TOLERANCE = 0.5
# Stateless RNG algorithm, named so that it does not depend on the device. Note: TF's XLA
# kernels of the stateless RNG produce a different stream than the non-XLA ones, so a run is
# reproducible for a fixed `jit_compile` setting, not across it.
RNG_ALGORITHM = "philox"

Params = dict[str, tf.Tensor]


@dataclass(frozen=True)
class Model:
    """A network as pure functions.

    init(seed, dtype=tf.float32) -> params without task dimension (Keras-default initialisation,
        deterministic in `seed`).
    apply(params, x, compute_dtype=None) -> outputs `[T, B, num_outputs]`; params have a leading
        task dimension T, x is `[T, B, *input_shape]`.
    loss(outputs, y) -> `[T]` per-task mean loss (cross-entropy with int labels `[T, B]`, or MSE
        with float targets `[T, B, 1]`).
    accuracy(outputs, y) -> `[T]` per-task fraction correct (regression: within
        REGRESSION_HIT_TOLERANCE).
    """

    init: Callable[..., Params]
    apply: Callable[..., tf.Tensor]
    loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    accuracy: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    arch: str
    num_outputs: int
    input_shape: tuple[int, ...]
    is_classifier: bool
    conv_path: str | None = None  # CONV_PATHS name the conv stack runs (None: no convs)
    network: str = DEFAULT_NETWORK  # the networks.NETWORKS family it was built from
    # Params the inner loop leaves as they are (their inner gradient is zero; meta.task_gradients):
    # only the outer update trains them. Finn's MAML nets: the batch-norm offsets.
    inner_frozen: frozenset[str] = frozenset()


# ----------------------------------------------------------------------------- building blocks


def same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int, int]:
    """(pad_before, pad_after, out_size) of TF 'SAME' padding: the extra pad goes at the end."""
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out_size


def fold_tasks(x: tf.Tensor) -> tf.Tensor:
    """`[T, B, H, W, C]` -> `[B, H, W, T*C]`: the tasks folded into the channels (channel t*C + c
    is channel c of task t), the layout of the float32 conv stack."""
    shape = tf.shape(x)
    return tf.reshape(tf.transpose(x, [1, 2, 3, 0, 4]), tf.stack([shape[1], shape[2], shape[3], shape[0] * x.shape[-1]]))


def unfold_tasks(x: tf.Tensor, channels: int) -> tf.Tensor:
    """Inverse of `fold_tasks`: `[B, H, W, T*C]` -> `[T, B, H, W, C]` (C = `channels` per task)."""
    shape = tf.shape(x)
    out = tf.reshape(x, tf.stack([shape[0], shape[1], shape[2], -1, channels]))
    return tf.transpose(out, [3, 0, 1, 2, 4])


def batched_conv3x3(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """3x3 'SAME' convolution with a different kernel per task.

    x `[T, B, H, W, Cin]`, kernel `[T, 3, 3, Cin, Cout]` -> `[T, B, H', W', Cout]`; equals
    `tf.nn.conv2d(x[t], kernel[t], stride, 'SAME')` for every t, with no Python loop over tasks.
    float32/16: one grouped convolution when this TensorFlow can differentiate it
    (`runtime.grouped_conv_gradient_available`), else the sliced form. float64 (gradient checks,
    theory): TF's CPU kernels have no grouped-conv gradient for it, so the same function is
    computed as shifted slices + einsum (`sliced_conv3x3`); a test checks that both agree to
    second order.
    """
    if x.dtype == tf.float64 or not runtime.grouped_conv_gradient_available():
        return sliced_conv3x3(x, kernel, stride)
    return grouped_conv3x3(x, kernel, stride)


def folded_conv3x3(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """`batched_conv3x3` on the folded layout: ONE grouped `tf.nn.conv2d` with T groups.

    x `[B, H, W, T*Cin]` (see `fold_tasks`), kernel `[T, 3, 3, Cin, Cout]` -> `[B, H', W', T*Cout]`.
    Its gradient exists only on oneDNN (x86-64 with TF_ENABLE_ONEDNN_OPTS=1) and cuDNN; TF's
    own CPU kernels refuse it ("Gradients for grouped convolutions are not supported on CPU").
    """
    cin = kernel.shape[-2]
    kernels = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [3, 3, cin, -1])
    return tf.nn.conv2d(x, kernels, stride, "SAME")


def split_conv3x3(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """`folded_conv3x3` as T ordinary convolutions, one per task's channel block, concatenated.

    Same layout and function as the grouped form, built only from ops that every CPU kernel
    set differentiates: the fallback where the grouped-conv gradient is missing. Needs a static
    task count (the kernel's leading dimension).
    """
    tasks = kernel.shape[0]
    if tasks is None:
        raise ValueError("split_conv3x3 needs a static number of tasks (kernel.shape[0])")
    inputs = tf.split(x, tasks, axis=-1)
    return tf.concat([tf.nn.conv2d(inputs[t], kernel[t], stride, "SAME") for t in range(tasks)], axis=-1)


def grouped_conv3x3(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """`batched_conv3x3` as one grouped convolution, in and out of the task-major layout."""
    return unfold_tasks(folded_conv3x3(fold_tasks(x), kernel, stride), kernel.shape[-1])


def sliced_conv3x3(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """`batched_conv3x3` as the 9 shifted (strided) slices of the padded input, concatenated on
    channels, then one batched matmul (einsum): differentiable to any order in any dtype."""
    height, width = x.shape[2], x.shape[3]
    top, bottom, out_h = same_padding(height, stride)
    left, right, out_w = same_padding(width, stride)
    padded = tf.pad(x, [[0, 0], [0, 0], [top, bottom], [left, right], [0, 0]])
    patches = [
        padded[:, :, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride, :]
        for i in range(3)
        for j in range(3)
    ]
    stacked = tf.concat(patches, axis=-1)  # channel index = (i * 3 + j) * Cin + c
    cin, cout = kernel.shape[-2], kernel.shape[-1]
    flat_kernel = tf.reshape(kernel, [-1, 9 * cin, cout])  # same (i, j, c) order, row-major
    return tf.einsum("tbhwk,tko->tbhwo", stacked, flat_kernel)


def batch_norm(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Per-task batch norm with batch statistics: moments over batch and spatial axes."""
    axes = list(range(1, len(x.shape) - 1))
    # Not tf.nn.moments: it stops the gradient through the mean inside the variance, which is
    # harmless to first order but drops a term of the second derivative (MAML).
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    centered = x - mean
    variance = tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True)
    shape = [-1] + [1] * (len(x.shape) - 2) + [x.shape[-1]]
    scale = tf.reshape(scale, shape)
    offset = tf.reshape(offset, shape)
    return centered * (scale * tf.math.rsqrt(variance + BATCH_NORM_EPSILON)) + offset


def folded_batch_norm(x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """`batch_norm` on the folded layout `[B, H, W, T*C]`, as one fused kernel.

    Fused batch norm's per-channel batch statistics are exactly the per-task, per-channel ones
    (each folded channel belongs to one task). Same function as `batch_norm` (biased variance,
    same epsilon; a test checks values and second derivatives against it) and the kernel the
    official code ran (`tf.layers.batch_normalization` is fused by default). With the folded
    layout it made the Reptile meta-iteration 1.68x faster on Mini-ImageNet and 1.23x on
    Omniglot than the task-major layout with unfused batch norm (idle 2-core CPU,
    `benchmarks/compare_conv.py --variants grouped,task_major_grouped`). Its float32 rounding
    is coarser: on a mostly-white Omniglot batch the parameter gradients differ from float64 by
    up to 1.2% of the largest entry (conv1), against 4e-5 unfused. scale/offset `[T, C]` stay
    float32 (the kernel wants float32 statistics for float16/bfloat16 inputs).
    """
    out, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, tf.reshape(tf.cast(scale, tf.float32), [-1]), tf.reshape(tf.cast(offset, tf.float32), [-1]),
        epsilon=BATCH_NORM_EPSILON, is_training=True)
    return out


def max_pool2x2(x: tf.Tensor, padding: str = "SAME") -> tf.Tensor:
    """2x2 max-pool, stride 2, `padding` ('SAME' or 'VALID'), on `[T, B, H, W, C]` (folded to `[T*B, ...]`).

    `tf.nn.max_pool2d` ran fwd+bwd 6.8x faster than a reshape + reduce_max on the Mini-ImageNet
    shapes (17.8 vs 120.8 ms, measured). Its gradient has no deterministic XLA kernel, which is
    why `--xla` runs without op determinism (see `runtime.deterministic_runtime`).
    """
    tasks, batch = tf.shape(x)[0], tf.shape(x)[1]
    folded = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))
    pooled = tf.nn.max_pool2d(folded, ksize=2, strides=2, padding=padding)
    return tf.reshape(pooled, tf.concat([[tasks, batch], tf.shape(pooled)[1:]], axis=0))


def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """x `[T, B, K]`, kernel `[T, K, O]`, bias `[T, O]` -> `[T, B, O]`.

    A broadcast product summed over K, not a batched matmul (`tf.einsum`): with oneDNN on an AVX2
    CPU (Zen 3) the batched matmul's kernel gradient rounds a task's entries differently depending
    on how many tasks share the call, so a seed trained in a group (`meta.meta_step_seeds`, 15
    tasks) was not bit-identical to the same seed alone (5 tasks); elementwise ops and a
    reduction over one axis compute every task alike, to any order of derivative
    (tests/test_models.py). Its cost, measured interleaved against the einsum on Zen 4 (one run,
    2026-12-03): Reptile Omniglot 5-way meta-step 0.96x the time, MAML 5-way 1.05x, Reptile
    20-way 1.08x; a batched matmul written without this property would win those few percent back.
    """
    return tf.reduce_sum(x[:, :, :, None] * kernel[:, None, :, :], axis=2) + bias[:, None, :]


def _glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, seed: tuple[int, int], dtype) -> tf.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.random.stateless_uniform(shape, seed=seed, minval=-limit, maxval=limit, dtype=dtype, alg=RNG_ALGORITHM)


def _standard_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, seed: tuple[int, int], dtype) -> tf.Tensor:
    """N(0, 1) whatever the fans: Finn's Omniglot dense kernel, `tf.random_normal` with its defaults."""
    return tf.random.stateless_normal(shape, seed=seed, mean=0.0, stddev=1.0, dtype=dtype, alg=RNG_ALGORITHM)


# ConvNet.dense_init -> initialiser (shape, fan_in, fan_out, seed, dtype) -> tensor
DENSE_INITS: dict[str, Callable[..., tf.Tensor]] = {"glorot_uniform": _glorot_uniform, "normal": _standard_normal}


def _compute_dtype(params: Params, compute_dtype) -> tf.DType:
    if compute_dtype is not None:
        return tf.as_dtype(compute_dtype)
    param_dtype = next(iter(params.values())).dtype
    if param_dtype == tf.float32:
        return tf.as_dtype(tf.keras.mixed_precision.global_policy().compute_dtype)
    return param_dtype


def _output_dtype(params: Params) -> tf.DType:
    return tf.float64 if next(iter(params.values())).dtype == tf.float64 else tf.float32


def _cast_params(params: Params, dtype: tf.DType) -> Params:
    return {name: tf.cast(value, dtype) for name, value in params.items()}


# ----------------------------------------------------------------------------- conv nets

def _conv_net(arch: str, network: str) -> ConvNet:
    return NETWORKS[network][arch]


def _conv_feature_size(arch: str, network: str = DEFAULT_NETWORK) -> int:
    return feature_size(_conv_net(arch, network), datasets.DATASETS[arch].input_shape)


def _conv_init(arch: str, num_outputs: int, network: str = DEFAULT_NETWORK) -> Callable[..., Params]:
    net = _conv_net(arch, network)
    channels = datasets.DATASETS[arch].input_shape[-1]
    filters = net.filters

    def init(seed: int, dtype=tf.float32) -> Params:
        params: Params = {}
        cin = channels
        for block in range(BLOCKS):
            params[f"conv{block}/kernel"] = _glorot_uniform(
                (3, 3, cin, filters), 9 * cin, 9 * filters, (seed, block), dtype)
            if net.bn_scale:
                params[f"bn{block}/scale"] = tf.ones([filters], dtype)
            params[f"bn{block}/offset"] = tf.zeros([filters], dtype)
            cin = filters
        features = _conv_feature_size(arch, network)
        params["dense/kernel"] = DENSE_INITS[net.dense_init](
            (features, num_outputs), features, num_outputs, (seed, BLOCKS), dtype)
        params["dense/bias"] = tf.zeros([num_outputs], dtype)
        return params

    return init


def _inner_frozen(net: ConvNet) -> frozenset[str]:
    """The params of `net` the inner loop leaves as they are (`Model.inner_frozen`)."""
    if net.inner_adapts_bn:
        return frozenset()
    kinds = ("scale", "offset") if net.bn_scale else ("offset",)
    return frozenset(f"bn{block}/{kind}" for block in range(BLOCKS) for kind in kinds)


def _bn_scale(params: Params, block: int) -> tf.Tensor:
    """Block `block`'s batch-norm scale: its param, or ones for a net without one (the fused
    kernel needs a scale; times 1 is exact, so the function is batch norm without scale)."""
    scale = params.get(f"bn{block}/scale")
    return scale if scale is not None else tf.ones_like(params[f"bn{block}/offset"])


def _flatten_head(out: tf.Tensor, features: int) -> tf.Tensor:
    return tf.reshape(out, tf.concat([tf.shape(out)[:2], [features]], axis=0))


def _mean_head(out: tf.Tensor, features: int) -> tf.Tensor:
    return tf.reduce_mean(out, axis=[2, 3])  # Finn's `tf.reduce_mean(hidden4, [1, 2])`, per task


# ConvNet.head -> (task-major feature map `[T, B, H, W, C]`, dense input size) -> `[T, B, features]`
HEADS: dict[str, Callable[[tf.Tensor, int], tf.Tensor]] = {"flatten": _flatten_head, "mean": _mean_head}


@dataclass(frozen=True)
class ConvPath:
    """One formulation of the per-task conv stack (all compute the same function).

    layout: "folded" (`[B, H, W, T*C]` end to end, fused batch norm, one transpose in and out) or
        "task_major" (`[T, B, H, W, C]`, unfused `batch_norm`, `max_pool2x2`).
    conv: the 3x3 convolution for that layout, (x, kernel `[T, 3, 3, Cin, Cout]`, stride) -> out.
    needs_grouped_gradient: only usable where `runtime.grouped_conv_gradient_available()`.
    """

    layout: str
    conv: Callable[..., tf.Tensor]
    needs_grouped_gradient: bool
    description: str


CONV_PATHS: dict[str, ConvPath] = {
    # Fastest where it exists: 1.23x (Omniglot) and 1.68x (Mini-ImageNet) the task-major layout
    # per meta-iteration, oneDNN on, 2-core CPU (benchmarks/compare_conv.py).
    "grouped": ConvPath("folded", folded_conv3x3, True, "folded layout, one grouped conv2d, fused batch norm"),
    "split": ConvPath("folded", split_conv3x3, False, "folded layout, one conv2d per task, fused batch norm"),
    "sliced": ConvPath("task_major", sliced_conv3x3, False, "task-major, shifted slices + einsum, unfused batch norm"),
    "task_major_grouped": ConvPath("task_major", grouped_conv3x3, True,
                                   "task-major, grouped conv2d per layer, unfused batch norm"),
}
FAST_CONV_PATH = "grouped"
FALLBACK_CONV_PATH = "split"
CONV_PATH_ENV = "REPTILE_TF_CONV_PATH"
_ANNOUNCED_FALLBACK: list[bool] = []


def available_conv_paths() -> list[str]:
    """The CONV_PATHS this TensorFlow can differentiate here."""
    grouped = runtime.grouped_conv_gradient_available()
    return [name for name, spec in CONV_PATHS.items() if grouped or not spec.needs_grouped_gradient]


def choose_conv_path(requested: str | None = None) -> str:
    """The conv-stack formulation to run: `requested`, else $REPTILE_TF_CONV_PATH, else the fastest
    one this TensorFlow can differentiate here (says so once per process when it falls back)."""
    from_env = requested is None and bool(os.environ.get(CONV_PATH_ENV))
    requested = requested or os.environ.get(CONV_PATH_ENV) or None
    if requested is not None:
        origin = f"${CONV_PATH_ENV}" if from_env else "conv_path"
        if requested not in CONV_PATHS:
            raise UserError(f"unknown conv path {requested!r} ({origin}); choose one of {', '.join(CONV_PATHS)}")
        if CONV_PATHS[requested].needs_grouped_gradient and not runtime.grouped_conv_gradient_available():
            raise UserError(f"conv path {requested!r} ({origin}) needs the grouped-convolution gradient, which "
                            f"this TensorFlow lacks here (oneDNN {'on' if runtime.onednn_enabled() else 'off'}); "
                            f"use {FALLBACK_CONV_PATH!r}, or unset TF_ENABLE_ONEDNN_OPTS on x86-64")
        return requested
    if runtime.grouped_conv_gradient_available():
        return FAST_CONV_PATH
    if not _ANNOUNCED_FALLBACK:
        _ANNOUNCED_FALLBACK.append(True)
        print(f"reptile-tf: this TensorFlow cannot differentiate a grouped convolution here (oneDNN "
              f"{'on' if runtime.onednn_enabled() else 'off'}); conv path {FALLBACK_CONV_PATH!r} "
              f"({CONV_PATHS[FALLBACK_CONV_PATH].description}): same function, slower", file=sys.stderr)
    return FALLBACK_CONV_PATH


def _conv_apply(arch: str, path: str, network: str = DEFAULT_NETWORK) -> Callable[..., tf.Tensor]:
    """`apply` of the conv net `arch` of family `network` with the conv-stack formulation `path`
    (CONV_PATHS).

    float64 (gradient checks, theory) has no grouped-conv gradient or fused batch norm on CPU
    and always runs task-major with `sliced_conv3x3` and `batch_norm`.
    """
    net = _conv_net(arch, network)
    input_shape, filters, stride, pool = datasets.DATASETS[arch].input_shape, net.filters, net.stride, net.max_pool
    head, features = HEADS[net.head], _conv_feature_size(arch, network)
    spec = CONV_PATHS[path]

    def apply(params: Params, x: tf.Tensor, compute_dtype=None) -> tf.Tensor:
        dtype = _compute_dtype(params, compute_dtype)
        weights = _cast_params(params, dtype)
        out = tf.cast(tf.reshape(x, tf.concat([tf.shape(x)[:2], input_shape], axis=0)), dtype)
        out.set_shape([None, None, *input_shape])
        folded = spec.layout == "folded" and dtype != tf.float64
        conv = spec.conv if dtype != tf.float64 else sliced_conv3x3
        if folded:
            out = fold_tasks(out)
        for block in range(BLOCKS):
            kernel = weights[f"conv{block}/kernel"]
            if folded:
                # scale/offset from the float32 params: the fused kernel wants float32 ones.
                out = folded_batch_norm(conv(out, kernel, stride), _bn_scale(params, block),
                                        params[f"bn{block}/offset"])
                if pool:
                    out = tf.nn.max_pool2d(out, 2, 2, net.pool_padding)
            else:
                out = batch_norm(conv(out, kernel, stride), _bn_scale(weights, block), weights[f"bn{block}/offset"])
                if pool:
                    out = max_pool2x2(out, net.pool_padding)
            out = tf.nn.relu(out)
        if folded:
            out = unfold_tasks(out, filters)
        logits = dense(head(out, features), weights["dense/kernel"], weights["dense/bias"])
        return tf.cast(logits, _output_dtype(params))

    return apply


# ----------------------------------------------------------------------------- sine MLP

_SINE_HIDDEN = (40, 40)


def _mlp_init(num_outputs: int) -> Callable[..., Params]:
    def init(seed: int, dtype=tf.float32) -> Params:
        params: Params = {}
        sizes = (*datasets.DATASETS["sine"].input_shape, *_SINE_HIDDEN, num_outputs)
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            params[f"dense{layer}/kernel"] = _glorot_uniform((fan_in, fan_out), fan_in, fan_out, (seed, layer), dtype)
            params[f"dense{layer}/bias"] = tf.zeros([fan_out], dtype)
        return params

    return init


def _mlp_apply(params: Params, x: tf.Tensor, compute_dtype=None) -> tf.Tensor:
    dtype = _compute_dtype(params, compute_dtype)
    weights = _cast_params(params, dtype)
    out = tf.cast(x, dtype)
    layers = len(_SINE_HIDDEN) + 1
    for layer in range(layers):
        out = dense(out, weights[f"dense{layer}/kernel"], weights[f"dense{layer}/bias"])
        if layer < layers - 1:
            out = tf.nn.relu(out)
    return tf.cast(out, _output_dtype(params))


# ----------------------------------------------------------------------------- losses


def cross_entropy_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-task mean softmax cross-entropy: logits `[T, B, C]`, int labels `[T, B]` -> `[T]`."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
    return tf.reduce_mean(losses, axis=-1)


def classification_accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-task fraction of argmax predictions equal to the labels -> `[T]` float32."""
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32))
    return tf.reduce_mean(tf.cast(correct, tf.float32), axis=-1)


def mse_loss(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Per-task mean squared error: `[T, B, 1]` vs `[T, B, 1]` -> `[T]`."""
    targets = tf.reshape(tf.cast(targets, outputs.dtype), tf.shape(outputs))
    return tf.reduce_mean(tf.square(outputs - targets), axis=[1, 2])


def regression_accuracy(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Per-task fraction of predictions within REGRESSION_HIT_TOLERANCE of the target."""
    targets = tf.reshape(tf.cast(targets, outputs.dtype), tf.shape(outputs))
    hits = tf.abs(outputs - targets) < REGRESSION_HIT_TOLERANCE
    return tf.reduce_mean(tf.cast(hits, tf.float32), axis=[1, 2])


# ----------------------------------------------------------------------------- public API


def get_model(arch: str, num_outputs: int, conv_path: str | None = None, network: str = DEFAULT_NETWORK) -> Model:
    """The network for `arch` ("omniglot", "mini_imagenet" or "sine") with `num_outputs` outputs.

    `conv_path` (conv nets): a name of CONV_PATHS; default `choose_conv_path()`.
    `network`: the family of conv nets (networks.NETWORKS: "reptile", "maml"); the sine MLP is
    the default family's only.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if network not in NETWORKS:
        raise UserError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    if int(num_outputs) < 1:
        raise UserError(f"num_outputs must be a positive number of classes/outputs (got {num_outputs})")
    num_outputs = int(num_outputs)
    dataset = datasets.DATASETS[arch]
    if arch not in NETWORKS[network]:
        if network != DEFAULT_NETWORK:
            raise UserError(f"network {network!r} has no {arch} net (it has {', '.join(NETWORKS[network])}); "
                            f"use network {DEFAULT_NETWORK!r} for {arch}")
        # the sine regression MLP
        return Model(init=_mlp_init(num_outputs), apply=_mlp_apply, loss=mse_loss, accuracy=regression_accuracy,
                     arch=arch, num_outputs=num_outputs, input_shape=dataset.input_shape,
                     is_classifier=dataset.is_classifier, conv_path=None)
    path = choose_conv_path(conv_path)
    return Model(init=_conv_init(arch, num_outputs, network), apply=_conv_apply(arch, path, network),
                 loss=cross_entropy_loss, accuracy=classification_accuracy, arch=arch, num_outputs=num_outputs,
                 input_shape=dataset.input_shape, is_classifier=dataset.is_classifier, conv_path=path,
                 network=network, inner_frozen=_inner_frozen(_conv_net(arch, network)))


def count_params(params: Params) -> int:
    """Number of scalar parameters (of one task if `params` has no task dimension)."""
    return int(sum(int(tf.size(value)) for value in params.values()))


def broadcast_params(params: Params, num_tasks) -> Params:
    """Add a leading task dimension: every task starts from the same parameters."""
    return {name: tf.repeat(value[None], num_tasks, axis=0) for name, value in params.items()}


def mean_over_tasks(task_params: Params) -> Params:
    """Average per-task parameters over the leading task dimension."""
    return {name: tf.reduce_mean(value, axis=0) for name, value in task_params.items()}

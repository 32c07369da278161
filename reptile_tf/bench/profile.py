"""The per-op profile of `reptile-tf bench`: where the time of one inner step of the batched
network goes (each conv path, batch norm fused and unfused, the whole network)."""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from reptile_tf import datasets, flops, models
from reptile_tf.bench.measure import median_seconds
from reptile_tf.networks import CONV_NETS
from reptile_tf.settings import Settings

def conv_fwd_bwd(conv: Callable[[Any, Any], Any], x: tf.Tensor, kernel: tf.Tensor,
                 input_gradient: bool) -> Callable[[], Any]:
    """A compiled forward + backward of `conv(x, kernel)`, reduced to one scalar.

    Gradients w.r.t. the kernel, and w.r.t. the input unless `input_gradient` is False (the
    first layer, whose input is data), with an all-ones output gradient.
    """
    def run():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            out = conv(x, kernel)
        sources = [x, kernel] if input_gradient else [kernel]
        grads = tape.gradient(out, sources, output_gradients=tf.ones_like(out))
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    return tf.function(run, autograph=False)


def profile_ops(settings: Settings, warmup: int, repeats: int, xla: bool = True) -> list[dict[str, Any]]:
    """Time the pieces of one inner step of the batched network at the case's shapes.

    Forward + backward (weight and input gradients) of each conv layer computed by every conv
    path this TensorFlow can differentiate here (`models.CONV_PATHS`: the model's is marked),
    as one `tf.nn.conv2d` per task, and as one `tf.nn.conv2d` with a single shared kernel (what oneDNN reaches on these shapes;
    not a per-task computation); then each batch norm two ways (the model's fused kernel on the
    folded layout, and the unfused task-major ops the float64 path uses) and the whole network
    (`model.apply` + loss, gradients w.r.t. params; XLA off, and on if `xla`). GFLOP/s from the
    hand count. One row per op, with the columns of profile.csv (`report.PROFILE_COLUMNS`).
    """
    tasks = settings.meta_batch
    batch = settings.inner_batch or settings.ways * settings.shots
    layers = flops.network_layers(settings.dataset, settings.ways)
    height, _, channels = datasets.get(settings.dataset).input_shape
    net = CONV_NETS[settings.dataset]
    stride = net.stride
    rows: list[dict[str, Any]] = []
    rng = tf.random.Generator.from_seed(0)

    def record(name: str, fn: Callable, work: float) -> None:
        seconds = median_seconds(lambda: float(fn()), warmup, repeats)
        rows.append({"dataset": settings.dataset, "ways": settings.ways, "tasks": tasks, "batch": batch,
                     "op": name, "ms": seconds * 1e3, "gflop": work / 1e9, "gflops_per_s": work / seconds / 1e9})

    def per_task_conv2d(x, kernel):  # unrolled over the static number of tasks
        return tf.stack([tf.nn.conv2d(x[t], kernel[t], stride, "SAME") for t in range(tasks)])

    # Every conv path this TensorFlow can differentiate here (models.CONV_PATHS), then one conv2d
    # per task on the task-major layout. Folded paths get the folded input, prepared outside the timing.
    model_path = models.choose_conv_path()
    per_task_convs: dict[str, tuple[bool, Callable]] = {}
    for name in models.available_conv_paths():
        spec = models.CONV_PATHS[name]
        label = f"conv path {name}" + (" (model)" if name == model_path else "")
        per_task_convs[label] = (spec.layout == "folded", lambda x, kernel, conv=spec.conv: conv(x, kernel, stride))
    per_task_convs["tf.nn.conv2d per task (unrolled)"] = (False, per_task_conv2d)
    cin, size = channels, height
    for index, layer in enumerate(layers[:-1]):
        x = rng.uniform([tasks, batch, size, size, cin])
        kernel = rng.uniform([tasks, 3, 3, cin, layer.output_shape[-1]])
        work = tasks * batch * 2.0 * layer.macs * (3 if index > 0 else 2)  # no input grad for layer 1
        for label, (folded, conv) in per_task_convs.items():
            inputs = models.fold_tasks(x) if folded else x
            record(f"{layer.name} fwd+bwd {label}", conv_fwd_bwd(conv, inputs, kernel, input_gradient=index > 0), work)
        # The bound: all T x B images through one shared kernel (not a per-task computation).
        flat_x, shared_kernel = tf.reshape(x, [tasks * batch, size, size, cin]), kernel[0]
        record(f"{layer.name} fwd+bwd tf.nn.conv2d (shared kernel)",
               conv_fwd_bwd(lambda x, kernel: tf.nn.conv2d(x, kernel, stride, "SAME"), flat_x, shared_kernel,
                            input_gradient=index > 0), work)
        out_shape = [tasks, batch, *layer.output_shape]
        y = rng.uniform(out_shape)
        scale, offset = tf.ones([tasks, layer.output_shape[-1]]), tf.zeros([tasks, layer.output_shape[-1]])

        def norm_fwd_bwd(norm, y):
            def run():
                with tf.GradientTape() as tape:
                    tape.watch([y, scale, offset])
                    out = norm(y, scale, offset)
                grads = tape.gradient(out, [y, scale, offset], output_gradients=tf.ones_like(out))
                return tf.add_n([tf.reduce_sum(g) for g in grads])
            return tf.function(run, autograph=False)

        norm_work = tasks * batch * 3 * 4.0 * layer.bn_elements
        record(f"bn{index + 1} fwd+bwd fused, folded (model)",
               norm_fwd_bwd(models.folded_batch_norm, models.fold_tasks(y)), norm_work)
        record(f"bn{index + 1} fwd+bwd unfused, task-major (float64 path)", norm_fwd_bwd(models.batch_norm, y), norm_work)
        cin = layer.output_shape[-1]
        size = -(-layer.output_shape[0] // 2) if net.max_pool else layer.output_shape[0]

    model = models.get_model(settings.dataset, settings.ways, network=settings.network)
    params = models.broadcast_params(model.init(0), tasks)
    x = rng.uniform([tasks, batch, height, height, channels])
    y = tf.zeros([tasks, batch], tf.int32)

    def whole():
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = tf.reduce_sum(model.loss(model.apply(params, x), y))
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, params).values()])

    work = tasks * batch * flops.train_pass_flops(settings.dataset, settings.ways).total
    record("whole network fwd+bwd (model.apply)", tf.function(whole, autograph=False), work)
    if xla:
        record("whole network fwd+bwd (model.apply), XLA", tf.function(whole, jit_compile=True, autograph=False), work)
    return rows

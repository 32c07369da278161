"""Time the meta-step with the model's convolution and with alternatives patched in.

Variants (all in this process, one after another):
- `grouped`: the model as it is. In float32 `models.batched_conv3x3` is `grouped_conv3x3`:
  the T tasks folded into the channel axis of one grouped `tf.nn.conv2d` (input
  `[B, H, W, T*Cin]`, kernel `[3, 3, Cin, T*Cout]`, T groups) on oneDNN's kernels.
- `sliced`: `models.batched_conv3x3` swapped for `sliced_conv3x3` (9 shifted slices + one
  einsum: the path the model keeps for float64), the model's convolution before the switch.
- `folded`: the folded layout `[B, H, W, T*C]` kept through the whole conv stack, with
  `fused_batch_norm` (see `folded_conv_apply`), saving the per-layer transposes.
Prints wall and process-CPU seconds per meta-iteration for each variant
(CPU seconds are the fairer comparison on a loaded machine). With `--xla` on CPU the grouped
and folded variants are very slow (XLA's CPU backend compiles grouped convolutions poorly).

    .venv/bin/python benchmarks/compare_conv.py [--cases reptile:omniglot:5,...] [--variants grouped,sliced]
        [--xla] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from reptile_tf import bench, flops, models  # noqa: E402


def folded_conv_apply(arch: str):
    """`model.apply` for the conv nets with the task dim folded into channels for the whole stack.

    Layout `[B, H, W, T*C]` (channel t*C + c = channel c of task t) from the first conv to the
    flatten: grouped `tf.nn.conv2d` (T groups), `fused_batch_norm` (its per-channel batch
    statistics are exactly per-task, per-channel statistics), max-pool and ReLU all run on
    oneDNN kernels; all are differentiable to second order and XLA-compilable. Falls back to
    the model's own apply for float64 (fused batch norm has no float64 kernel).
    """
    input_shape, _, stride, pool = models._CONV_SPECS[arch]
    original = models._conv_apply(arch)

    def fold(t: tf.Tensor) -> tf.Tensor:  # [T, B, H, W, C] -> [B, H, W, T*C]
        shape = tf.shape(t)
        return tf.reshape(tf.transpose(t, [1, 2, 3, 0, 4]), tf.stack([shape[1], shape[2], shape[3], -1]))

    def apply(params, x, compute_dtype=None):
        dtype = models._compute_dtype(params, compute_dtype)
        if dtype == tf.float64:
            return original(params, x, compute_dtype)
        weights = models._cast_params(params, dtype)
        tasks, batch = tf.shape(x)[0], tf.shape(x)[1]
        out = fold(tf.cast(tf.reshape(x, tf.concat([[tasks, batch], input_shape], axis=0)), dtype))
        for block in range(models._CONV_BLOCKS):
            kernel = weights[f"conv{block}/kernel"]  # [T, 3, 3, Cin, Cout]
            cin = kernel.shape[-2]
            grouped = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [3, 3, cin, -1])
            out = tf.nn.conv2d(out, grouped, stride, "SAME")
            out, _, _ = tf.compat.v1.nn.fused_batch_norm(
                out, tf.reshape(weights[f"bn{block}/scale"], [-1]), tf.reshape(weights[f"bn{block}/offset"], [-1]),
                epsilon=models.BATCH_NORM_EPSILON, is_training=True)
            if pool:
                out = tf.nn.max_pool2d(out, 2, 2, "SAME")
            out = tf.nn.relu(out)
        shape = tf.shape(out)
        channels = weights["conv0/kernel"].shape[-1]
        unfolded = tf.transpose(tf.reshape(out, tf.stack([shape[0], shape[1], shape[2], tasks, channels])),
                                [3, 0, 1, 2, 4])
        features = tf.reshape(unfolded, tf.stack([tasks, batch, -1]))
        features.set_shape([None, None, models._conv_feature_size(arch)])
        logits = models.dense(features, weights["dense/kernel"], weights["dense/bias"])
        return tf.cast(logits, models._output_dtype(params))

    return apply


def patched_get_model(variant: str):
    """`models.get_model` with the convolution (or the whole conv stack) swapped for `variant`."""
    original = models.get_model

    def get_model(arch: str, num_outputs: int):
        model = original(arch, num_outputs)
        if variant == "folded" and arch in models._CONV_SPECS:
            return dataclasses.replace(model, apply=folded_conv_apply(arch))
        return model

    return get_model


def time_case(case: bench.Case, variant: str, xla: bool, warmup: int, repeats: int) -> tuple[float, float]:
    """(median wall seconds, mean process-CPU seconds) per meta-iteration of `case` with `variant`."""
    # models' apply looks batched_conv3x3 up at trace time; bench imports get_model at call time.
    models.batched_conv3x3 = models.sliced_conv3x3 if variant == "sliced" else ORIGINAL_CONV
    models.get_model = patched_get_model(variant) if variant == "folded" else ORIGINAL_GET_MODEL
    try:
        run = bench.make_meta_runner(bench.case_settings(case), xla)
        wall = bench.median_seconds(run, warmup + 1, repeats)
        start = time.process_time()  # CPU seconds of this process: less sensitive to other load
        for _ in range(repeats):
            run()
        return wall, (time.process_time() - start) / repeats
    finally:
        models.batched_conv3x3, models.get_model = ORIGINAL_CONV, ORIGINAL_GET_MODEL


ORIGINAL_CONV = models.batched_conv3x3
ORIGINAL_GET_MODEL = models.get_model
VARIANTS = ("grouped", "sliced", "folded")


def parse_variants(text: str) -> tuple[str, ...]:
    """Comma-separated variant names, each one of VARIANTS."""
    variants = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown or text!r}; choose from {', '.join(VARIANTS)}")
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=bench.parse_cases,
                        default=bench.parse_cases("reptile:omniglot:5,maml:omniglot:5,reptile:mini_imagenet:5"))
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", type=parse_variants, default=VARIANTS,
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    print("case | xla | " + " | ".join(f"{v} wall s / CPU s" for v in args.variants) + " | best GFLOP/s (wall)")
    for case in args.cases:
        work = flops.meta_iteration_flops(bench.case_settings(case)).total
        times = [time_case(case, variant, args.xla, args.warmup, args.repeats) for variant in args.variants]
        print(f"{case.label} | {args.xla} | " + " | ".join(f"{wall:.4f} / {cpu:.4f}" for wall, cpu in times)
              + f" | {work / min(wall for wall, _ in times) / 1e9:.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Is `--mixed-precision` (bfloat16 compute) faster than float32 here, and where does the time go?

Measures, in one process, float32 against bfloat16 (`runtime.precision_policy(True)`, the path
`reptile-tf train --mixed-precision` takes) on the Reptile Omniglot 5-way paper settings:

1. whole-step times: the compiled meta-step (`meta.meta_step` in one `tf.function`, as
   `reptile-tf bench` times it, XLA off) at meta-batch 5 and 15, and one compiled evaluation
   chunk (`meta.adapt` + `meta.predict`, 50 Adam steps) at the chunk size `reptile-tf evaluate`
   uses; median of `--repeats` after `--warmup` calls;
2. the per-op breakdown of the meta-step: TensorFlow's profiler (host trace of `--profile-steps`
   meta-steps) summed per op type, ms per meta-step, float32 beside bfloat16 (the kernels are
   oneDNN's where the type says `_Mkl...`; `ONEDNN_VERBOSE=1` shows that they are
   `avx512_core_bf16` kernels for conv, batch norm and matmul in bfloat16);
3. each conv layer alone (grouped conv on the folded layout, as the model runs it): forward,
   input gradient and kernel gradient separately, and each fused batch norm (forward + backward),
   float32 against bfloat16, with the casts around them timed on their own.

Writes `<out>/mixed_precision.csv` (one row per measurement) and `<out>/mixed_precision.md`.

    .venv/bin/python benchmarks/mixed_precision.py [--out results/benchmarks/avx512] [--repeats 15]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import reptile_tf  # noqa: E402,F401  (before TensorFlow: it chooses the oneDNN default)
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from reptile_tf import datasets, flops, models, runtime  # noqa: E402
from reptile_tf.bench.measure import interleaved_medians, machine_info  # noqa: E402
from reptile_tf.bench.plan import Case, case_settings  # noqa: E402
from reptile_tf.bench.workloads import eval_chunk_size, make_eval_runner, make_meta_runner  # noqa: E402
from reptile_tf.io import write_text_atomic  # noqa: E402
from reptile_tf.networks import CONV_NETS  # noqa: E402
from reptile_tf.settings import Settings  # noqa: E402

CASE = Case("reptile", "omniglot", 5)
PRECISIONS = {"float32": False, "bfloat16": True}  # name -> the `mixed` flag of runtime.precision_policy
COLUMNS = ["part", "name", "meta_batch", "float32_ms", "bfloat16_ms", "bf16_speedup"]


# ----------------------------------------------------------------------------- whole steps


def folded_conv3x3_float32_kernel_gradient(x: tf.Tensor, kernel: tf.Tensor, stride: int = 1) -> tf.Tensor:
    """`models.folded_conv3x3` whose kernel gradient is computed in float32 (an attempt to make
    bfloat16 win: oneDNN's bfloat16 kernel-gradient conv is no faster than its float32 one here);
    forward and input gradient stay in the input's dtype."""
    cin = kernel.shape[-2]
    kernels = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [3, 3, cin, -1])
    strides = [1, stride, stride, 1]

    @tf.custom_gradient
    def conv(x, kernels):
        def grad(dy):
            dx = tf.compat.v1.nn.conv2d_backprop_input(tf.shape(x), kernels, dy, strides, "SAME")
            dk = tf.compat.v1.nn.conv2d_backprop_filter(tf.cast(x, tf.float32), tf.shape(kernels),
                                                        tf.cast(dy, tf.float32), strides, "SAME")
            return dx, tf.cast(dk, kernels.dtype)
        return tf.nn.conv2d(x, kernels, stride, "SAME"), grad

    return conv(x, kernels)


ATTEMPT_PATH = "grouped, float32 kernel gradient"


def attempt_model(settings: Settings) -> models.Model:
    """The model with `folded_conv3x3_float32_kernel_gradient` as its conv (registered in
    `models.CONV_PATHS` only while the model is built)."""
    models.CONV_PATHS[ATTEMPT_PATH] = models.ConvPath("folded", folded_conv3x3_float32_kernel_gradient, True,
                                                      "grouped conv, float32 kernel gradient (benchmark only)")
    try:
        return models.get_model(settings.dataset, settings.ways, conv_path=ATTEMPT_PATH)
    finally:
        del models.CONV_PATHS[ATTEMPT_PATH]




def traced(make: Callable[[], Callable[[], Any]], mixed: bool) -> Callable[[], Any]:
    """`make()`'s runner, called once under the precision policy (the model reads the policy when
    it is traced; the shapes are fixed, so it is not traced again)."""
    with runtime.precision_policy(mixed):
        run = make()
        run()
    return run




def interleaved_ms(runners: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, float]:
    return {name: seconds * 1e3 for name, seconds in interleaved_medians(runners, warmup, repeats).items()}


def whole_step_rows(settings: Settings, warmup: int, repeats: int, eval_repeats: int) -> list[dict[str, Any]]:
    """Median ms of the compiled meta-step (meta-batch 5 and 15) and of one evaluation chunk,
    float32, bfloat16, and bfloat16 with a float32 kernel gradient (training only)."""
    rows = []
    for meta_batch in (settings.meta_batch, 3 * settings.meta_batch):
        case = settings.replace(meta_batch=meta_batch)
        ms = interleaved_ms({
            "float32": traced(lambda: make_meta_runner(case, xla=False), False),
            "bfloat16": traced(lambda: make_meta_runner(case, xla=False), True),
            "attempt": traced(lambda: make_meta_runner(case, xla=False, model=attempt_model(case)), True)}, warmup, repeats)
        rows.append(_row("whole step", f"training meta-step, meta-batch {meta_batch}", meta_batch, ms))
        rows.append(_row("whole step", f"training meta-step, meta-batch {meta_batch}: bfloat16 with {ATTEMPT_PATH} "
                         "(bfloat16_ms column)", meta_batch, {"float32": ms["float32"], "bfloat16": ms["attempt"]}))
    chunk = eval_chunk_size(settings)
    ms = interleaved_ms({precision: traced(lambda: make_eval_runner(settings, chunk), mixed)
                              for precision, mixed in PRECISIONS.items()}, 1, eval_repeats)
    rows.append(_row("whole step", f"evaluation chunk ({chunk} tasks x {settings.eval_inner_steps} Adam steps; "
                     f"median of {eval_repeats})", chunk, ms))
    return rows


def _row(part: str, name: str, tasks: int, ms: dict[str, float]) -> dict[str, Any]:
    return {"part": part, "name": name, "meta_batch": tasks, "float32_ms": ms["float32"],
            "bfloat16_ms": ms["bfloat16"],
            "bf16_speedup": ms["float32"] / ms["bfloat16"] if ms["float32"] and ms["bfloat16"] else None}


# ----------------------------------------------------------------------------- profiler breakdown

_OP_EVENT = re.compile(r"^([^:]+):([^:]+)$")  # "<node name>:<op type>" events of the host trace


def op_type_ms(logdir: str, steps: int) -> dict[str, float]:
    """ms per step spent in each op type, summed over the host trace's op events in `logdir`."""
    totals: dict[str, float] = collections.defaultdict(float)
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    match = _OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                    category = op_category(*match.groups()) if match else ""
                    if category and "__inference" not in category:  # not a whole function call
                        totals[category] += event.duration_ps / 1e9 / steps
    return dict(totals)


def op_category(node: str, op_type: str) -> str:
    """A readable op type: oneDNN's `_Mkl`/`_MklNative` prefixes dropped; the casts split into
    parameter/activation casts of the forward pass and the casts of their gradients."""
    op_type = re.sub(r"^_Mkl(Native)?", "", op_type)
    if op_type == "Cast":
        return "Cast (gradient)" if node.startswith("gradient_tape/") else "Cast (forward)"
    return op_type


def profile_rows(settings: Settings, steps: int) -> list[dict[str, Any]]:
    """Per-op-type ms of one meta-step, float32 beside bfloat16 (TensorFlow's profiler)."""
    per_precision: dict[str, dict[str, float]] = {}
    for precision, mixed in PRECISIONS.items():
        with runtime.precision_policy(mixed):
            run = make_meta_runner(settings, xla=False)
            for _ in range(3):
                run()
            with tempfile.TemporaryDirectory() as logdir:
                tf.profiler.experimental.start(logdir)
                start = time.perf_counter()
                for _ in range(steps):
                    run()
                wall_ms = (time.perf_counter() - start) * 1e3 / steps
                tf.profiler.experimental.stop()
                per_precision[precision] = op_type_ms(logdir, steps)
                per_precision[precision]["(meta-step wall time while profiled)"] = wall_ms
    names = sorted(set().union(*per_precision.values()),
                   key=lambda n: -max(per_precision[p].get(n, 0.0) for p in PRECISIONS))
    rows = [_row("op type (profiler)", name, settings.meta_batch,
                 {p: per_precision[p].get(name, 0.0) for p in PRECISIONS}) for name in names]
    rows.append(_row("op type (profiler)", "sum of all ops", settings.meta_batch,
                     {p: sum(v for k, v in per_precision[p].items() if not k.startswith("(")) for p in PRECISIONS}))
    return rows


# ----------------------------------------------------------------------------- layers alone


def _compiled(fn: Callable[[], Any]) -> Callable[[], Any]:
    compiled = tf.function(fn, autograph=False)
    return lambda: compiled().numpy()


def layer_rows(settings: Settings, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """Each conv layer's forward, input gradient and kernel gradient (the model's grouped conv on
    the folded layout), each fused batch norm fwd+bwd, and the casts, float32 against bfloat16."""
    tasks, batch = settings.meta_batch, settings.inner_batch or settings.ways * settings.shots
    layers = flops.network_layers(settings.dataset, settings.ways)
    height, _, channels = datasets.get(settings.dataset).input_shape
    stride = CONV_NETS[settings.dataset].stride
    rng = tf.random.Generator.from_seed(0)
    rows = []
    cin, size = channels, height
    for index, layer in enumerate(layers[:-1]):
        cout, out_size = layer.output_shape[-1], layer.output_shape[0]
        x32 = models.fold_tasks(rng.uniform([tasks, batch, size, size, cin]))
        k32 = rng.uniform([tasks, 3, 3, cin, cout])
        g32 = rng.uniform([batch, out_size, out_size, tasks * cout])
        folded_k32 = tf.reshape(tf.transpose(k32, [1, 2, 3, 0, 4]), [3, 3, cin, -1])
        scale, offset = tf.ones([tasks, cout]), tf.zeros([tasks, cout])
        pieces: dict[str, dict[str, Callable[[], Any]]] = collections.defaultdict(dict)
        for precision in PRECISIONS:
            dtype = tf.as_dtype(precision)
            x, k, g, fk = (tf.cast(t, dtype) for t in (x32, k32, g32, folded_k32))
            x_shape = tf.constant(x.shape.as_list())
            k_shape = tf.constant(fk.shape.as_list())
            name = f"conv{index + 1}"
            pieces[f"{name} forward"][precision] = _compiled(
                lambda x=x, k=k: tf.reduce_sum(models.folded_conv3x3(x, k, stride)))
            pieces[f"{name} input gradient"][precision] = _compiled(
                lambda g=g, fk=fk, s=x_shape: tf.reduce_sum(
                    tf.compat.v1.nn.conv2d_backprop_input(s, fk, g, [1, stride, stride, 1], "SAME")))
            pieces[f"{name} kernel gradient"][precision] = _compiled(
                lambda x=x, g=g, s=k_shape: tf.reduce_sum(
                    tf.compat.v1.nn.conv2d_backprop_filter(x, s, g, [1, stride, stride, 1], "SAME")))
            y = tf.cast(g32, dtype)

            def norm(y=y):
                with tf.GradientTape() as tape:
                    tape.watch([y, scale, offset])
                    out = models.folded_batch_norm(y, scale, offset)
                grads = tape.gradient(out, [y, scale, offset], output_gradients=tf.ones_like(out))
                return tf.add_n([tf.reduce_sum(tf.cast(grad, tf.float32)) for grad in grads])

            pieces[f"bn{index + 1} fused fwd+bwd"][precision] = _compiled(norm)
            pieces[f"relu{index + 1}"][precision] = _compiled(
                lambda y=y: tf.reduce_sum(tf.cast(tf.nn.relu(y)[:1, :1, :1, :1], tf.float32)))
        # What bfloat16 adds: the cast of the layer's float32 output (timed alone; 0 in float32).
        pieces[f"conv{index + 1} output cast float32 -> bfloat16"]["bfloat16"] = _compiled(
            lambda g32=g32: tf.reduce_sum(tf.cast(g32, tf.bfloat16)[:1, :1, :1, :1]))
        for piece, fns in pieces.items():
            ms = interleaved_ms(fns, warmup + 1, repeats)
            rows.append(_row("layer alone", piece, tasks, {p: ms.get(p, 0.0) for p in PRECISIONS}))
        cin, size = cout, out_size
    params = models.broadcast_params(models.get_model(settings.dataset, settings.ways).init(0), tasks)
    cast = _compiled(lambda: tf.add_n([tf.reduce_sum(tf.cast(v, tf.bfloat16)[:1]) for v in params.values()]))
    rows.append(_row("layer alone", f"cast all {models.count_params(params) // tasks} x {tasks} params "
                     "float32 -> bfloat16", tasks,
                     {"float32": 0.0, **interleaved_ms({"bfloat16": cast}, warmup + 1, repeats)}))
    return rows


# ----------------------------------------------------------------------------- report


def to_markdown(frame: pd.DataFrame, machine: dict[str, Any], command: str, notes: list[str]) -> str:
    shown = frame.copy()
    for column in ("float32_ms", "bfloat16_ms"):
        shown[column] = shown[column].map(lambda v: f"{v:.3f}" if v else "-")
    shown["bf16_speedup"] = shown["bf16_speedup"].map(lambda v: f"{v:.2f}x" if pd.notna(v) else "-")
    lines = [f"`{command}`", "", "# bfloat16 (`--mixed-precision`) against float32", "",
             f"Machine: {machine['cpu']} (class {machine['cpu_class']}; flags {machine['cpu_flags']}), "
             f"{machine['cores']} cores, TensorFlow {machine['tf_version']}, oneDNN {machine['onednn']}, "
             f"conv path {machine['conv_path']}; {machine['date_utc']}; load average at the start "
             f"{machine['load_average_start']}, at the end {machine['load_average']}.", "",
             "Workload: Reptile Omniglot 5-way 1-shot, paper settings, fixed random meta-batch "
             "(`reptile_tf/bench/workloads.py`), XLA off. `speed-up` = float32 ms / bfloat16 ms "
             "(> 1: bfloat16 faster).", ""]
    for part, title in (("whole step", "Whole steps (median of the repeats)"),
                        ("op type (profiler)", "Where the meta-step's time goes, per op type (TensorFlow "
                                               "profiler, ms per meta-step, summed over ops; ops may overlap)"),
                        ("layer alone", "Each layer alone (median; grouped conv on the folded layout)")):
        lines += [f"## {title}", "",
                  shown[shown["part"] == part].drop(columns="part").to_markdown(index=False), ""]
    lines += ["## Conclusion", "", *notes, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks") / runtime.cpu_class())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=15)
    parser.add_argument("--eval-repeats", type=int, default=5, help="repeats of the (seconds-long) evaluation chunk")
    parser.add_argument("--parts", default="whole,profile,layers", help="comma-separated subset of whole,profile,layers")
    parser.add_argument("--notes", type=Path, help="a text file whose lines become the README's conclusion")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    settings = case_settings(CASE)
    rows: list[dict[str, Any]] = []
    if "whole" in parts:
        rows += whole_step_rows(settings, args.warmup, args.repeats, args.eval_repeats)
    if "profile" in parts:
        rows += profile_rows(settings, args.profile_steps)
    if "layers" in parts:
        rows += layer_rows(settings, args.warmup, args.repeats)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    machine = dict(machine_info(), load_average_start=load_start)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    notes = args.notes.read_text().splitlines() if args.notes else []
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "mixed_precision.csv", frame.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(args.out / "mixed_precision.md", to_markdown(frame, machine, command, notes))
    print(to_markdown(frame, machine, command, notes))


if __name__ == "__main__":
    main()

"""`reptile-tf bench`: throughput of the meta-learning core, against the measured matmul peak.

For Reptile, FOMAML, MAML (second order) and MAML first order at the paper's hyperparameters
(`settings.paper_settings`, 1-shot) on Omniglot 5-way, Omniglot 20-way and Mini-ImageNet 5-way:
meta-iterations per second (compiled meta-step, XLA off and on), achieved GFLOP/s from the hand
FLOP count (`reptile_tf.flops`) as a fraction of a float32 matmul peak measured in the same
run, the speed-up over a per-task Python loop (`benchmarks/reference_loop.py`), evaluation
tasks per second, and the process RSS high-water mark. Every time is the median of repeated
measurements after warm-up (tracing/compilation excluded). The meta-step runs on a fixed
random batch (uint8 images scaled to [0, 1]), so no data is needed and sampling is excluded.

Writes `throughput.csv`, `profile.csv` and `README.md` (tables, targets, GPU projection) into
`--out` (default results/benchmarks/).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import io
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reptile_tf import flops
from reptile_tf.cost import A100_FP32_TFLOPS  # the GPU projection's assumption, shared with the workflow's
from reptile_tf.errors import UserError
from reptile_tf.io import write_text_atomic
from reptile_tf.settings import Settings, paper_settings

DEFAULT_OUT = Path("results/benchmarks")
CONFIGS: tuple[tuple[str, int], ...] = (("omniglot", 5), ("omniglot", 20), ("mini_imagenet", 5))
# "maml_fo" = MAML at the MAML paper's settings with first_order=True (the apples-to-apples
# first-order baseline for the "MAML <= 3x FOMAML" target; the paper's FOMAML uses Reptile's settings).
ALGORITHMS = ("reptile", "fomaml", "maml", "maml_fo")
SHOTS = 1  # 1-shot is enough: Reptile/FOMAML training cost does not depend on the test shots.
REFERENCE_LOOP = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_loop.py"

CSV_COLUMNS = [
    "algorithm", "dataset", "ways", "shots", "xla", "meta_batch", "inner_steps", "sec_per_meta_iter",
    "meta_iter_per_s", "gflop_per_meta_iter", "gflops_per_s", "fraction_of_peak", "peak_gflops_per_s",
    "loop_sec_per_meta_iter", "speedup_vs_loop", "eval_tasks_per_s", "eval_10k_tasks_min",
    "peak_rss_mb", "step_rss_mb", "trace_s", "repeats",
]

# docs/reference.md, "Speed of existing implementations on these machines" (seconds).
PUBLISHED_TIMES = [
    ("official Reptile code (TF1 graph, TF 2.21)", "Reptile Omniglot 5-way meta-iteration", 0.182, ("reptile", "omniglot", 5)),
    ("learn2learn 0.2.0 (PyTorch, 2 threads)", "Reptile Omniglot 5-way meta-iteration", 0.155, ("reptile", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 5-way 1-shot, meta-batch 32, 1 step, second order", 0.430, ("maml", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 5-way 1-shot, meta-batch 32, 1 step, first order", 0.204, ("maml_fo", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 20-way 1-shot, meta-batch 16, 5 steps, second order", 2.21, ("maml", "omniglot", 20)),
    ("official Reptile code", "one evaluation task (50 Adam steps, 5-way 1-shot)", 0.296, ("eval", "omniglot", 5)),
]
REFERENCE_PEAK_GFLOPS = 154.0  # docs/reference.md: TensorFlow float32 matmul peak on these machines


@dataclass(frozen=True)
class Case:
    algorithm: str  # one of ALGORITHMS
    dataset: str
    ways: int

    @property
    def label(self) -> str:
        return f"{self.algorithm}:{self.dataset}:{self.ways}"


@dataclass(frozen=True)
class Plan:
    """What to measure, and how often."""

    cases: tuple[Case, ...]
    xla_cases: tuple[Case, ...]  # also measured with XLA on (all cases run with XLA off)
    loop_cases: tuple[Case, ...]  # also timed with the per-task reference loop
    eval_cases: tuple[Case, ...]  # evaluation throughput
    profile_cases: tuple[Case, ...]  # per-op timing of the batched network
    warmup: int = 2
    repeats: int = 10
    matmul_size: int = 2048
    matmul_repeats: int = 10
    eval_repeats: int = 3
    tiny: bool = False  # shrink every workload (tests only): 2 tasks, 1-2 inner steps


def all_cases(algorithms=ALGORITHMS, configs=CONFIGS) -> tuple[Case, ...]:
    return tuple(Case(a, d, w) for a in algorithms for d, w in configs)


def make_plan(quick: bool = False, cases: tuple[Case, ...] | None = None, tiny: bool = False,
              repeats: int | None = None, warmup: int | None = None, matmul_size: int | None = None,
              skip: tuple[str, ...] = ()) -> Plan:
    """The full plan, the `--quick` plan (a few minutes), or a plan for explicit `cases`."""
    omni5 = Case("reptile", "omniglot", 5)
    if cases is not None:
        plan = Plan(cases=cases, xla_cases=cases, loop_cases=cases,
                    eval_cases=tuple(c for c in cases if c.algorithm in ("reptile", "maml")), profile_cases=cases)
    elif quick:
        chosen = all_cases(configs=(("omniglot", 5),)) + (Case("reptile", "omniglot", 20),
                                                          Case("reptile", "mini_imagenet", 5))
        plan = Plan(cases=chosen, xla_cases=(omni5,), loop_cases=(omni5,), eval_cases=(omni5,),
                    profile_cases=(omni5, Case("reptile", "mini_imagenet", 5)),
                    warmup=1, repeats=3, matmul_repeats=5, eval_repeats=2)
    else:
        everything = all_cases()
        plan = Plan(cases=everything, xla_cases=everything, loop_cases=everything,
                    eval_cases=tuple(c for c in everything if c.algorithm in ("reptile", "maml")),
                    profile_cases=(omni5, Case("reptile", "mini_imagenet", 5)))
    if tiny:
        plan = dataclasses.replace(plan, tiny=True, warmup=1, repeats=1, matmul_size=128, matmul_repeats=2,
                                   eval_repeats=1)
    changes = {k: v for k, v in dict(repeats=repeats, warmup=warmup, matmul_size=matmul_size).items() if v is not None}
    if changes.get("repeats", 1) < 1 or changes.get("warmup", 0) < 0 or changes.get("matmul_size", 1) < 1:
        raise UserError("--repeats and --matmul-size must be >= 1 and --warmup >= 0")
    changes.update({f"{part}_cases": () for part in skip})
    return dataclasses.replace(plan, **changes)


SKIPPABLE = ("xla", "loop", "eval", "profile")


def parse_skip(text: str) -> tuple[str, ...]:
    parts = tuple(filter(None, (p.strip() for p in text.split(","))))
    unknown = [p for p in parts if p not in SKIPPABLE]
    if unknown:
        raise UserError(f"unknown --skip part(s) {unknown}; choose from {', '.join(SKIPPABLE)}")
    return parts


def parse_cases(text: str) -> tuple[Case, ...]:
    """'reptile:omniglot:5,maml:mini_imagenet:5' -> cases (validated)."""
    cases = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in ALGORITHMS or (parts[1], _int_or_none(parts[2])) not in CONFIGS:
            raise UserError(f"bad --cases entry {item!r}; use ALGORITHM:DATASET:WAYS with ALGORITHM in "
                            f"{', '.join(ALGORITHMS)} and DATASET:WAYS in "
                            f"{', '.join(f'{d}:{w}' for d, w in CONFIGS)}")
        cases.append(Case(parts[0], parts[1], int(parts[2])))
    if not cases:
        raise UserError("--cases is empty; list at least one ALGORITHM:DATASET:WAYS")
    return tuple(cases)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def case_settings(case: Case, tiny: bool = False) -> Settings:
    """Paper settings of a case (1-shot); `tiny` shrinks the workload for tests."""
    algorithm = "maml" if case.algorithm == "maml_fo" else case.algorithm
    settings = paper_settings(algorithm, case.dataset, case.ways, SHOTS)
    if case.algorithm == "maml_fo":
        settings = settings.replace(first_order=True)
    if tiny:
        settings = settings.replace(meta_batch=2, inner_steps=2 if case.algorithm == "fomaml" else 1,
                                    eval_inner_steps=2)
    return settings


# ----------------------------------------------------------------------------- measurement helpers


def median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """VmHWM (Linux), else ru_maxrss (never reset: the process-lifetime peak)."""
    value = _status_mb("VmHWM")
    if value is not None:
        return value
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / 1024 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_mb() -> float:
    value = _status_mb("VmRSS")
    return value if value is not None else peak_rss_mb()


MEMORY_METHOD = ("process RSS high-water mark (Linux VmHWM, reset through /proc/self/clear_refs after "
                 "warm-up, read after the timed repeats); step_rss_mb = that peak minus the RSS just "
                 "before the timed repeats (CPU: no device memory API)")


def timed_with_memory(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float, float]:
    """(median seconds, peak RSS MB, step RSS MB) of `fn` after warm-up."""
    for _ in range(warmup):
        fn()
    reset_peak_rss()
    before = current_rss_mb()
    seconds = median_seconds(fn, 0, repeats)
    peak = peak_rss_mb()
    return seconds, peak, max(peak - before, 0.0)


def measure_matmul_peak(size: int, repeats: int) -> float:
    """Float32 GFLOP/s of a size x size matmul (median of repeats, after one warm-up)."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([size, size], seed=[1, 2])
    b = tf.random.stateless_uniform([size, size], seed=[3, 4])
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]), autograph=False)
    seconds = median_seconds(lambda: float(matmul(a, b)), warmup=2, repeats=repeats)
    return flops.matmul_flops(size) / seconds / 1e9


# ----------------------------------------------------------------------------- workloads


def random_batch(settings: Settings, seed: int = 0) -> dict[str, Any]:
    """A meta-batch of random tasks shaped like train.py's Episodes for `settings` (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width, channels = (28, 28, 1) if settings.dataset == "omniglot" else (84, 84, 3)
    support_shots, query_shots = settings.train_shots, settings.queries
    if settings.algorithm == "fomaml" and settings.tail_shots > 0:
        # train.py: train_shots per class split into inner images and the tail minibatch (query_x)
        support_shots, query_shots = settings.train_shots - settings.tail_shots, settings.tail_shots
    return _episodes(rng, settings.meta_batch, settings.ways, support_shots, query_shots, (height, width, channels))


def _episodes(rng, tasks: int, ways: int, shots: int, queries: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    import numpy as np

    def images(per_class: int):
        return (rng.integers(0, 256, (tasks, ways * per_class, *shape), dtype=np.uint8) / 255.0).astype(np.float32)

    def labels(per_class: int):
        return np.tile(np.repeat(np.arange(ways, dtype=np.int32), per_class), (tasks, 1))

    return {"support_x": images(shots), "support_y": labels(shots), "query_x": images(queries),
            "query_y": labels(queries)}


def make_meta_runner(settings: Settings, xla: bool, seed: int = 0) -> Callable[[], float]:
    """A no-argument callable running one compiled meta-iteration (state carried over)."""
    import tensorflow as tf

    from reptile_tf import meta
    from reptile_tf.models import get_model

    model = get_model(settings.dataset, settings.ways)
    batch = {k: tf.constant(v) for k, v in random_batch(settings, seed).items()}
    holder = {"state": meta.init_meta_state(model, model.init(seed), settings, seed)}
    outer_lr = tf.constant(settings.outer_lr if settings.algorithm == "maml" else 0.5, tf.float32)
    # autograph=False: meta_step branches only on static settings, and autograph re-reads source
    # files at trace time (a file edited during a long run would be converted wrongly).
    step = tf.function(lambda state, batch, lr: meta.meta_step(model, settings, state, batch, lr), jit_compile=xla,
                       autograph=False)

    def run() -> float:
        holder["state"], metrics = step(holder["state"], batch, outer_lr)
        return float(metrics["loss"])  # fetching a value waits for the step to finish

    return run


def eval_chunk_size(settings: Settings, tiny: bool = False) -> int:
    """Tasks per compiled evaluation call: the chunk size `reptile-tf evaluate` uses."""
    if tiny:
        return 2
    try:
        from reptile_tf.evaluate import default_chunk_size

        return int(default_chunk_size(settings))
    except (ImportError, AttributeError):
        return 10 if settings.dataset == "mini_imagenet" else 100


def make_eval_runner(settings: Settings, chunk: int, transductive: bool = False, seed: int = 0) -> Callable[[], float]:
    """One compiled call adapting and predicting `chunk` evaluation tasks (meta.adapt + meta.predict)."""
    import numpy as np
    import tensorflow as tf

    from reptile_tf import meta
    from reptile_tf.models import get_model

    model = get_model(settings.dataset, settings.ways)
    params = model.init(seed)
    shape = (28, 28, 1) if settings.dataset == "omniglot" else (84, 84, 3)
    episodes = {k: tf.constant(v) for k, v in _episodes(np.random.default_rng(seed), chunk, settings.ways,
                                                        settings.shots, settings.eval_queries, shape).items()}
    rng_seed = tf.constant([seed, 7], tf.int32)

    @tf.function(autograph=False)
    def score(params, support_x, support_y, query_x, query_y):
        task_params = meta.adapt(model, settings, params, support_x, support_y, rng_seed)
        outputs = meta.predict(model, task_params, support_x, query_x, transductive)
        return tf.reduce_mean(model.accuracy(outputs, query_y))

    def run() -> float:
        return float(score(params, episodes["support_x"], episodes["support_y"], episodes["query_x"],
                           episodes["query_y"]))

    return run


def load_reference_loop():
    """The `benchmarks/reference_loop.py` module (not part of the installed package)."""
    if not REFERENCE_LOOP.is_file():
        raise UserError(f"reference loop {REFERENCE_LOOP} not found; run `reptile-tf bench` from a source "
                        "checkout (pip install -e .) or pass --no-loop")
    spec = importlib.util.spec_from_file_location("reptile_tf_reference_loop", REFERENCE_LOOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_loop_runner(settings: Settings, seed: int = 0) -> Callable[[], None]:
    trainer = load_reference_loop().ReferenceTrainer(settings, seed)
    batch = random_batch(settings, seed)
    return lambda: trainer.meta_iteration(batch, 0.5)


# ----------------------------------------------------------------------------- per-op profile


def conv_fwd_bwd(conv: Callable[[Any, Any], Any], x, kernel, input_gradient: bool) -> Callable[[], Any]:
    """A compiled forward + backward of `conv(x, kernel)`, reduced to one scalar.

    Gradients w.r.t. the kernel, and w.r.t. the input unless `input_gradient` is False (the
    first layer, whose input is data), with an all-ones output gradient.
    """
    import tensorflow as tf

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
    hand count.
    """
    import tensorflow as tf

    from reptile_tf import models

    tasks = settings.meta_batch
    batch = settings.inner_batch or settings.ways * settings.shots
    layers = flops.network_layers(settings.dataset, settings.ways)
    height, _, channels = (28, 28, 1) if settings.dataset == "omniglot" else (84, 84, 3)
    stride = 2 if settings.dataset == "omniglot" else 1
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
        size = -(-layer.output_shape[0] // 2) if settings.dataset == "mini_imagenet" else layer.output_shape[0]

    model = models.get_model(settings.dataset, settings.ways)
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


# ----------------------------------------------------------------------------- the run


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_case(case: Case, plan: Plan, xla: bool, peak_gflops: float) -> dict[str, Any]:
    settings = case_settings(case, plan.tiny)
    runner = make_meta_runner(settings, xla)
    start = time.perf_counter()
    runner()  # first call: tracing (and XLA compilation)
    trace_seconds = time.perf_counter() - start
    seconds, peak_mb, step_mb = timed_with_memory(runner, plan.warmup, plan.repeats)
    work = flops.meta_iteration_flops(settings).total
    return {
        "algorithm": case.algorithm, "dataset": case.dataset, "ways": case.ways, "shots": settings.shots,
        "xla": xla, "meta_batch": settings.meta_batch, "inner_steps": settings.inner_steps,
        "sec_per_meta_iter": seconds, "meta_iter_per_s": 1.0 / seconds, "gflop_per_meta_iter": work / 1e9,
        "gflops_per_s": work / seconds / 1e9, "fraction_of_peak": work / seconds / 1e9 / peak_gflops,
        "peak_gflops_per_s": peak_gflops, "loop_sec_per_meta_iter": math.nan, "speedup_vs_loop": math.nan,
        "eval_tasks_per_s": math.nan, "eval_10k_tasks_min": math.nan, "peak_rss_mb": peak_mb,
        "step_rss_mb": step_mb, "trace_s": trace_seconds, "repeats": plan.repeats,
    }


def measure_eval(case: Case, plan: Plan) -> float:
    settings = case_settings(case, plan.tiny)
    chunk = eval_chunk_size(settings, plan.tiny)
    runner = make_eval_runner(settings, chunk)
    seconds = median_seconds(runner, max(plan.warmup, 1), plan.eval_repeats)
    return chunk / seconds


def _attempt(errors: list[str], label: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is logged and listed in the README instead of ending the run."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any TF/compile failure of one case
        message = f"{label}: {type(error).__name__}: {str(error).strip().splitlines()[-1][:300] if str(error).strip() else ''}"
        _log(f"  FAILED {message}")
        errors.append(message)
        return None


def _same_case(row: dict[str, Any], algorithms: tuple[str, ...], case: Case) -> bool:
    return row["algorithm"] in algorithms and (row["dataset"], row["ways"]) == (case.dataset, case.ways)


def run_benchmarks(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Measure everything in `plan` -> (throughput rows, profile rows, run info incl. "errors")."""
    import tensorflow as tf

    errors: list[str] = []
    _log(f"matmul peak: {plan.matmul_size}x{plan.matmul_size} float32, {plan.matmul_repeats} repeats")
    peak = measure_matmul_peak(plan.matmul_size, plan.matmul_repeats)
    _log(f"matmul peak {peak:.1f} GFLOP/s")
    rows: list[dict[str, Any]] = []
    for case in plan.cases:
        for xla in (False, True) if case in plan.xla_cases else (False,):
            _log(f"{case.label} xla={xla}")
            row = _attempt(errors, f"{case.label} xla={xla}", lambda: measure_case(case, plan, xla, peak))
            if row is not None:
                rows.append(row)
                _log(f"  {row['sec_per_meta_iter']:.4f} s/iter, {row['gflops_per_s']:.1f} GFLOP/s, "
                     f"trace {row['trace_s']:.1f} s")
        tf.keras.backend.clear_session()
    for case in plan.loop_cases:
        _log(f"{case.label} reference loop")
        settings = case_settings(case, plan.tiny)
        seconds = _attempt(errors, f"{case.label} reference loop", lambda: median_seconds(
            make_loop_runner(settings), max(plan.warmup, 1), plan.repeats))
        if seconds is None:
            continue
        _log(f"  loop {seconds:.4f} s/iter")
        for row in rows:
            if _same_case(row, (case.algorithm,), case):
                row["loop_sec_per_meta_iter"] = seconds
                row["speedup_vs_loop"] = seconds / row["sec_per_meta_iter"]
    for case in plan.eval_cases:
        _log(f"{case.label} evaluation")
        tasks_per_s = _attempt(errors, f"{case.label} evaluation", lambda: measure_eval(case, plan))
        if tasks_per_s is None:
            continue
        _log(f"  {tasks_per_s:.2f} tasks/s")
        # Reptile and FOMAML share the evaluation settings (same inner loop): one measurement.
        same_eval = {"reptile": ("reptile", "fomaml"), "maml": ("maml", "maml_fo")}.get(case.algorithm, (case.algorithm,))
        for row in rows:
            if _same_case(row, same_eval, case):
                row["eval_tasks_per_s"] = tasks_per_s
                row["eval_10k_tasks_min"] = 10_000 / tasks_per_s / 60
    profile: list[dict[str, Any]] = []
    for case in plan.profile_cases:
        _log(f"{case.label} per-op profile")
        profile += _attempt(errors, f"{case.label} profile", lambda: profile_ops(
            case_settings(case, plan.tiny), max(plan.warmup, 1), max(plan.repeats // 2, 1),
            xla=bool(plan.xla_cases))) or []
    # Peak again at the end: on a machine whose load changes, the higher of the two is the
    # better estimate of what the hardware can do (fractions of peak stay <= 1).
    peak_end = measure_matmul_peak(plan.matmul_size, plan.matmul_repeats)
    _log(f"matmul peak at the end {peak_end:.1f} GFLOP/s")
    if peak_end > peak:
        for row in rows:
            row["peak_gflops_per_s"] = peak_end
            row["fraction_of_peak"] = row["gflops_per_s"] / peak_end
    info = machine_info()
    info.update(peak_gflops=max(peak, peak_end), peak_start=peak, peak_end=peak_end, matmul_size=plan.matmul_size, matmul_repeats=plan.matmul_repeats,
                warmup=plan.warmup, repeats=plan.repeats, eval_repeats=plan.eval_repeats, tiny=plan.tiny,
                memory_method=MEMORY_METHOD, errors=errors)
    return rows, profile, info


def machine_info() -> dict[str, Any]:
    """The machine and runtime of this benchmark run: CPU model, class and flags, the real oneDNN
    state (asked of TensorFlow) and who chose it, the conv path the models run."""
    import tensorflow as tf

    from reptile_tf import runtime
    from reptile_tf.models import choose_conv_path

    facts = runtime.runtime_info()
    onednn = {True: "on", False: "off", None: "unknown"}[facts["onednn"]]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu": facts["cpu_model"], "cpu_class": facts["cpu_class"], "cpu_flags": " ".join(facts["cpu_flags"]),
            "cores": os.cpu_count(), "tf_version": tf.__version__, "python": platform.python_version(),
            "load_average": " ".join(f"{x:.2f}" for x in load),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "onednn": f"{onednn} (set by {facts['onednn_source']})", "conv_path": choose_conv_path()}


# ----------------------------------------------------------------------------- outputs


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def best_row(rows: list[dict[str, Any]], algorithm: str, dataset: str, ways: int) -> dict[str, Any] | None:
    """The faster XLA mode of a case (None if not measured)."""
    matching = [r for r in rows if (r["algorithm"], r["dataset"], r["ways"]) == (algorithm, dataset, ways)]
    return min(matching, key=lambda r: r["sec_per_meta_iter"]) if matching else None


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    threshold: float
    higher_is_better: bool
    unit: str
    detail: str

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured >= self.threshold if self.higher_is_better else self.measured <= self.threshold

    def gap(self) -> str:
        if self.met is None:
            return "not measured"
        if self.met:
            return "met"
        if self.higher_is_better:
            return f"missed: needs x{self.threshold / self.measured:.2f}"
        return f"missed: needs /{self.measured / self.threshold:.2f}"


def evaluate_targets(rows: list[dict[str, Any]]) -> list[Target]:
    """The issue's targets, each with the measured value (best XLA mode)."""
    def pick(algorithm, dataset, ways, key):
        row = best_row(rows, algorithm, dataset, ways)
        return None if row is None else row[key]

    def xla_of(algorithm, dataset, ways):
        row = best_row(rows, algorithm, dataset, ways)
        return "" if row is None else f" (XLA {'on' if row['xla'] else 'off'})"

    omni = pick("reptile", "omniglot", 5, "fraction_of_peak")
    mini = pick("reptile", "mini_imagenet", 5, "fraction_of_peak")
    speedup = pick("reptile", "omniglot", 5, "speedup_vs_loop")
    maml, first_order = pick("maml", "omniglot", 5, "sec_per_meta_iter"), pick("maml_fo", "omniglot", 5, "sec_per_meta_iter")
    ratio = None if maml is None or first_order is None else maml / first_order
    eval_rate = pick("reptile", "omniglot", 5, "eval_tasks_per_s")
    eval_minutes = None if eval_rate is None or math.isnan(eval_rate) else 10_000 / eval_rate / 60
    return [
        Target("Omniglot 5-way Reptile training, fraction of matmul peak", omni, 0.40, True, "",
               "batched meta-step" + xla_of("reptile", "omniglot", 5)),
        Target("Mini-ImageNet 5-way Reptile training, fraction of matmul peak", mini, 0.50, True, "",
               "batched meta-step" + xla_of("reptile", "mini_imagenet", 5)),
        Target("batched meta-batch speed-up over the per-task loop (Reptile Omniglot 5-way)", speedup, 2.0, True,
               "x", "benchmarks/reference_loop.py time / batched time"),
        Target("MAML second order / first order time per meta-iteration (Omniglot 5-way)", ratio, 3.0, False,
               "x", "MAML paper settings, meta-batch 32, 1 inner step"),
        Target("evaluation of 10,000 Omniglot 5-way test tasks (Reptile, 50 Adam steps)", eval_minutes, 10.0,
               False, " min", "non-transductive, chunked as `reptile-tf evaluate`"),
    ]


def paper_preset_flops() -> list[dict[str, Any]]:
    """Training + evaluation FLOPs of every paper setting (3 algorithms x 6 settings)."""
    out = []
    for algorithm in ("reptile", "fomaml", "maml"):
        for dataset, ways in CONFIGS:
            for shots in (1, 5):
                settings = paper_settings(algorithm, dataset, ways, shots)
                train = flops.meta_iteration_flops(settings).total * settings.iterations
                # Both evaluation modes, on `eval_tasks` tasks.
                evaluate = settings.eval_tasks * (flops.eval_task_flops(settings, True).total
                                                  + flops.eval_task_flops(settings, False).total)
                out.append({"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": shots,
                            "iterations": settings.iterations, "train_pflop": train / 1e15,
                            "eval_pflop": evaluate / 1e15})
    return out


# Why XLA-on rows lose on CPU; written under the throughput table.
XLA_ON_CPU_NOTE = (
    "XLA on CPU is slow here: the model's float32 convolution is one grouped `tf.nn.conv2d` (tasks folded "
    "into channels), and XLA's CPU backend compiles grouped convolutions (`feature_group_count`) into slow "
    "code. The CPU fast path is therefore XLA off (the grouped convolution runs on oneDNN's kernels); "
    "`--xla` (`reptile-tf train --xla`, `jit_compile=True`) is meant for GPUs.")


def render_readme(command: str, rows: list[dict[str, Any]], profile: list[dict[str, Any]],
                  info: dict[str, Any]) -> str:
    """The Markdown report: command, machine, throughput, targets, comparisons, GPU projection."""
    peak = info["peak_gflops"]
    lines = [f"`{command}`", "", "# Throughput benchmarks", ""]
    if info.get("tiny"):
        lines += ["**Tiny workloads (test run): the numbers below are not the paper settings.**", ""]
    lines += [
        f"Machine: {info['cpu']} (class {info.get('cpu_class', '?')}; flags {info.get('cpu_flags', '?')}), "
        f"{info['cores']} cores, TensorFlow {info['tf_version']}, Python {info['python']}, "
        f"oneDNN {info['onednn']}, conv path {info.get('conv_path', '?')}; {info['date_utc']}; "
        f"load average at the end: {info['load_average']}.",
        "",
        f"Matmul peak measured in this run: **{peak:.1f} GFLOP/s** (float32 {info['matmul_size']}x"
        f"{info['matmul_size']} `tf.matmul`, median of {info['matmul_repeats']}, the higher of the start "
        f"({info.get('peak_start', peak):.1f}) and end ({info.get('peak_end', peak):.1f}) of the run; docs/reference.md: "
        f"{REFERENCE_PEAK_GFLOPS:.0f} GFLOP/s on an idle machine).",
        "",
        f"Method: compiled meta-step (`meta.meta_step` in one `tf.function`, XLA off/on) on a fixed random "
        f"meta-batch at the paper's 1-shot hyperparameters (1-shot is enough: the training cost of Reptile/"
        f"FOMAML does not depend on the test shots); median of {info['repeats']} meta-iterations after "
        f"{info['warmup']} warm-up iterations, tracing/compilation excluded (`trace_s`). GFLOP from "
        f"`reptile_tf/flops.py` (conv/dense/BN multiply-adds x2, backward = 2x forward, MAML second order "
        f"= 3x (forward + backward) per inner step, an approximation). Memory: {info['memory_method']}. "
        "`maml_fo` = MAML with `first_order=True` at the MAML settings.",
        "",
        "## Meta-training throughput",
        "",
        "| algorithm | dataset | ways | XLA | meta-batch | inner steps | s / meta-iter | meta-iter / s | GFLOP / iter "
        "| GFLOP/s | fraction of peak | loop s / iter | speed-up vs loop | eval tasks / s | 10k eval tasks (min) "
        "| peak RSS (MB) | step RSS (MB) | trace (s) |",
        "|" + " --- |" * 18,
    ]
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | {r['dataset']} | {r['ways']} | {'on' if r['xla'] else 'off'} | {r['meta_batch']} | "
            f"{r['inner_steps']} | {r['sec_per_meta_iter']:.4f} | {_fmt(r['meta_iter_per_s'])} | "
            f"{_fmt(r['gflop_per_meta_iter'])} | {_fmt(r['gflops_per_s'])} | {r['fraction_of_peak']:.1%} | "
            f"{_fmt(r['loop_sec_per_meta_iter'])} | {_fmt(r['speedup_vs_loop'])} | {_fmt(r['eval_tasks_per_s'])} | "
            f"{_fmt(r['eval_10k_tasks_min'])} | {r['peak_rss_mb']:.0f} | {r['step_rss_mb']:.0f} | {r['trace_s']:.1f} |")
    lines += ["", XLA_ON_CPU_NOTE]
    lines += ["", "## Targets (2-core CPU, float32)", "", "| target | threshold | measured | status | notes |",
              "| --- | --- | --- | --- | --- |"]
    for t in evaluate_targets(rows):
        sign = ">=" if t.higher_is_better else "<="
        as_percent = t.unit == "" and t.threshold < 1
        threshold = f"{t.threshold:.0%}" if as_percent else f"{t.threshold:g}{t.unit}"
        measured = "—" if t.met is None else (f"{t.measured:.1%}" if as_percent else f"{t.measured:.3g}{t.unit}")
        lines.append(f"| {t.name} | {sign} {threshold} | {measured} | {t.gap()} | {t.detail} |")
    lines += ["", "## Beside existing implementations (docs/reference.md, idle machine, same CPU type)", "",
              "| implementation | workload | their seconds | ours (s) | ours vs theirs |", "| --- | --- | --- | --- | --- |"]
    for name, workload, seconds, (algorithm, dataset, ways) in PUBLISHED_TIMES:
        if algorithm == "eval":
            row = best_row(rows, "reptile", dataset, ways)
            ours = None if row is None or math.isnan(row["eval_tasks_per_s"]) else 1.0 / row["eval_tasks_per_s"]
            note = " (per task, batched)"
        else:
            row = best_row(rows, algorithm, dataset, ways)
            ours, note = (None if row is None else row["sec_per_meta_iter"]), ""
        ratio = "—" if ours is None else f"{seconds / ours:.2f}x faster" if ours < seconds else f"{ours / seconds:.2f}x slower"
        lines.append(f"| {name} | {workload} | {seconds} | {_fmt(ours)}{note} | {ratio} |")
    lines += ["", f"Floor: the Reptile Omniglot 5-way meta-iteration's "
              f"{flops.meta_iteration_flops(paper_settings('reptile', 'omniglot', 5, 1)).matmul / 1e9:.2f} GFLOP "
              f"(conv + dense) at this run's peak = {flops.meta_iteration_flops(paper_settings('reptile', 'omniglot', 5, 1)).matmul / 1e9 / peak:.3f} s."]
    lines += _profile_section(profile) + _gpu_section(rows)
    if info.get("errors"):
        lines += ["", "## Failed measurements", ""] + [f"- {error}" for error in info["errors"]]
    return "\n".join(lines) + "\n"


def _profile_section(profile: list[dict[str, Any]]) -> list[str]:
    if not profile:
        return []
    lines = ["", "## Where the time goes (per-op timing of one inner step, all tasks of the meta-batch)", "",
             "Forward + backward of each piece at the training shapes, timed alone (median, XLA off unless "
             "stated). `conv path NAME` is one formulation of `models.CONV_PATHS` (the one marked `(model)` "
             "runs in float32 here): `grouped`, the tasks folded into the channels (`[B, H, W, T*C]`, kept from "
             "the first layer to the last) of one grouped `tf.nn.conv2d` (a gradient only on oneDNN/cuDNN); "
             "`split`, the same layout with one `tf.nn.conv2d` per task; `sliced`, 9 shifted slices + one einsum "
             "(the float64 path); the batch norm is one fused kernel on the folded layout; "
             "`per task (unrolled)` is one `tf.nn.conv2d` per task; `shared kernel` is a single `tf.nn.conv2d` "
             "on all T x B images (what oneDNN reaches on these shapes, not a valid per-task computation).", "",
             "| dataset | ways | tasks x batch | op | ms | GFLOP | GFLOP/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in profile:
        lines.append(f"| {p['dataset']} | {p['ways']} | {p['tasks']} x {p['batch']} | {p['op']} | {p['ms']:.2f} | "
                     f"{p['gflop']:.3f} | {p['gflops_per_s']:.1f} |")
    return lines


def _gpu_section(rows: list[dict[str, Any]]) -> list[str]:
    preset = paper_preset_flops()
    total = sum(p["train_pflop"] + p["eval_pflop"] for p in preset)
    lines = ["", "## GPU projection (a projection from the FLOP count, not a measurement)", "",
             f"Paper preset = 3 algorithms x (Omniglot 5/20-way, Mini-ImageNet 5-way) x (1, 5 shots) = 18 runs at "
             f"the paper's iterations, plus evaluation in both modes on each run's evaluation tasks. Total "
             f"**{total:.1f} PFLOP**. On an A100 (~{A100_FP32_TFLOPS} TFLOP/s float32, no TF32):", "",
             "| assumed efficiency | GPU hours (1 A100) |", "| --- | --- |"]
    for efficiency in (0.5, 0.2, 0.05):
        hours = total * 1e15 / (A100_FP32_TFLOPS * 1e12 * efficiency) / 3600
        lines.append(f"| {efficiency:.0%} of peak | {hours:.1f} |")
    lines += ["", "These small networks (batch 5-20 per task, 32-64 channels) keep a GPU far from its peak; 5-20% "
              "is the realistic range, 50% an optimistic bound. Per setting (PFLOP):", "",
              "| algorithm | dataset | ways | shots | iterations | train PFLOP | eval PFLOP |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in preset:
        lines.append(f"| {p['algorithm']} | {p['dataset']} | {p['ways']} | {p['shots']} | {p['iterations']} | "
                     f"{p['train_pflop']:.3f} | {p['eval_pflop']:.3f} |")
    measured = [r["gflops_per_s"] for r in rows if r.get("gflops_per_s")]
    if measured:
        rate = statistics.median(measured)
        lines += ["", f"For comparison, this CPU at the median measured rate ({rate:.1f} GFLOP/s) would need "
                  f"{total * 1e15 / (rate * 1e9) / 3600:.0f} hours for the whole preset."]
    return lines


def write_outputs(out_dir: Path, command: str, rows: list[dict[str, Any]], profile: list[dict[str, Any]],
                  info: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "throughput.csv", rows_to_csv(rows, CSV_COLUMNS))
    write_text_atomic(out_dir / "profile.csv",
                      rows_to_csv(profile, ["dataset", "ways", "tasks", "batch", "op", "ms", "gflop", "gflops_per_s"]))
    write_text_atomic(out_dir / "README.md", render_readme(command, rows, profile, info))


# ----------------------------------------------------------------------------- CLI


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type=` that reports a UserError as a usage error (message, exit code 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def configure_parser(parser: argparse.ArgumentParser) -> None:
    full, quick = Plan((), (), (), (), ()), make_plan(quick=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="output directory for throughput.csv, profile.csv and README.md (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: Omniglot 5-way for every algorithm + Reptile on the other datasets, "
                             "XLA and reference loop for Reptile Omniglot 5-way only, fewer repeats (default: off, "
                             "every algorithm on Omniglot 5/20-way and Mini-ImageNet 5-way)")
    parser.add_argument("--cases", type=_argument(parse_cases), default=None, metavar="CASES",
                        help="only these ALGORITHM:DATASET:WAYS, comma-separated (e.g. reptile:omniglot:5,"
                             f"maml:mini_imagenet:5; algorithms {', '.join(ALGORITHMS)}), measured fully "
                             "(default: all, or the --quick ones)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help=f"timed repeats per measurement, the median is reported (default: {full.repeats}; "
                             f"--quick {quick.repeats})")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help=f"untimed warm-up calls after tracing (default: {full.warmup}; --quick {quick.warmup})")
    parser.add_argument("--matmul-size", type=int, default=None, metavar="N",
                        help=f"size of the float32 N x N matmul whose speed is the peak (default: {full.matmul_size})")
    parser.add_argument("--skip", type=_argument(parse_skip), default=(), metavar="PARTS",
                        help=f"comma-separated parts to leave out: {', '.join(SKIPPABLE)} (default: none)")
    parser.add_argument("--tiny", action="store_true",
                        help="shrink every workload (2 tasks, 1-2 inner steps); for testing the harness only")


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    plan = make_plan(quick=args.quick, cases=args.cases, tiny=args.tiny, repeats=args.repeats,
                     warmup=args.warmup, matmul_size=args.matmul_size, skip=args.skip)
    command = "reptile-tf bench " + _args_to_command(args)  # canonical form of the parsed arguments
    rows, profile, info = run_benchmarks(plan)
    write_outputs(args.out, command, rows, profile, info)
    _log(f"wrote {args.out / 'throughput.csv'} and {args.out / 'README.md'}")
    if info["errors"]:
        _log(f"{len(info['errors'])} measurement(s) failed (listed in the README); exit code 1")
        return 1
    return 0


def _args_to_command(args: argparse.Namespace) -> str:
    parts = [f"--out {shlex.quote(str(args.out))}"]
    if args.quick:
        parts.append("--quick")
    if args.tiny:
        parts.append("--tiny")
    if args.cases:
        parts.append("--cases " + ",".join(c.label for c in args.cases))
    if args.skip:
        parts.append("--skip " + ",".join(args.skip))
    for flag in ("repeats", "warmup", "matmul_size"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return " ".join(parts)

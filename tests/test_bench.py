"""The benchmark harness (reptile_tf.bench) and the per-task reference loop, at tiny sizes.

No speed is asserted: only that the harness measures, writes the right files and that the
reference loop computes the same algorithm as the batched core.
"""

from __future__ import annotations

import csv
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from reptile_tf import bench, cli, models
from reptile_tf.errors import UserError
from reptile_tf.settings import paper_settings

REQUIRED_COLUMNS = {"algorithm", "dataset", "ways", "meta_iter_per_s", "gflops_per_s", "fraction_of_peak",
                    "speedup_vs_loop", "eval_tasks_per_s", "peak_rss_mb"}


def test_cli_tiny_run_writes_csv_and_readme(tmp_path):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--tiny", "--cases", "reptile:omniglot:5", "--skip", "xla", "--out", str(out)])
    assert code == 0
    with open(out / "throughput.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert REQUIRED_COLUMNS <= set(rows[0])
    assert len(rows) == 1
    row = rows[0]
    assert (row["algorithm"], row["dataset"], row["ways"], row["xla"]) == ("reptile", "omniglot", "5", "False")
    for column in ("meta_iter_per_s", "gflops_per_s", "fraction_of_peak", "peak_gflops_per_s", "speedup_vs_loop",
                   "loop_sec_per_meta_iter", "eval_tasks_per_s", "peak_rss_mb", "gflop_per_meta_iter"):
        value = float(row[column])
        assert math.isfinite(value) and value > 0, (column, value)
    # The derived columns are consistent with each other.
    assert float(row["gflops_per_s"]) == pytest.approx(
        float(row["gflop_per_meta_iter"]) * float(row["meta_iter_per_s"]), rel=1e-3)
    assert float(row["fraction_of_peak"]) == pytest.approx(
        float(row["gflops_per_s"]) / float(row["peak_gflops_per_s"]), rel=1e-3)
    readme = (out / "README.md").read_text()
    assert readme.startswith(f"`reptile-tf bench --out {out} --tiny --cases reptile:omniglot:5 --skip xla`")
    for heading in ("Machine:", "## Targets", "## GPU projection", "projection", "learn2learn",
                    "## Where the time goes"):
        assert heading in readme
    assert bench.XLA_ON_CPU_NOTE in readme
    with open(out / "profile.csv", newline="") as handle:
        profile = list(csv.DictReader(handle))
    assert set(profile[0]) == {"dataset", "ways", "tasks", "batch", "op", "ms", "gflop", "gflops_per_s"}
    # Every conv layer is timed by each conv path available here (the model's marked), tf.nn.conv2d
    # per task and with a shared kernel; then its batch norm, fused and unfused.
    ops = [p["op"] for p in profile]
    model_path = models.choose_conv_path()
    paths = [f"conv path {name}" + (" (model)" if name == model_path else "") for name in models.available_conv_paths()]
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        assert [op.removeprefix(f"{layer} fwd+bwd ") for op in ops if op.startswith(f"{layer} ")] == [
            *paths, "tf.nn.conv2d per task (unrolled)", "tf.nn.conv2d (shared kernel)"]
    assert all(float(p["ms"]) > 0 and float(p["gflop"]) > 0 for p in profile)


def test_bad_cases_and_skip_are_user_errors():
    with pytest.raises(UserError, match="ALGORITHM:DATASET:WAYS"):
        bench.parse_cases("reptile:omniglot:7")
    with pytest.raises(UserError, match="--skip"):
        bench.parse_skip("xla,gpu")
    assert bench.parse_cases("maml_fo:mini_imagenet:5") == (bench.Case("maml_fo", "mini_imagenet", 5),)


def test_plans_cover_the_issue():
    full = bench.make_plan()
    assert len(full.cases) == 12 and set(full.xla_cases) == set(full.cases) and set(full.loop_cases) == set(full.cases)
    quick = bench.make_plan(quick=True)
    assert set(quick.cases) < set(full.cases) and quick.repeats < full.repeats
    assert bench.make_plan(quick=True, skip=("xla", "eval")).xla_cases == ()
    assert bench.case_settings(bench.Case("maml_fo", "omniglot", 5)).first_order


def test_random_batch_matches_train_episode_shapes():
    fomaml = paper_settings("fomaml", "omniglot", 5, 1)
    batch = bench.random_batch(fomaml)
    # train.py splits the 10 train shots into 5 inner-loop shots and a 5-shot tail (query_x).
    assert batch["support_x"].shape == (5, 25, 28, 28, 1) and batch["query_x"].shape == (5, 25, 28, 28, 1)
    maml = paper_settings("maml", "mini_imagenet", 5, 1)
    batch = bench.random_batch(maml)
    assert batch["support_x"].shape == (4, 5, 84, 84, 3) and batch["query_y"].shape == (4, 75)
    assert batch["support_x"].dtype == np.float32 and 0.0 <= batch["support_x"].min() <= batch["support_x"].max() <= 1.0


def _row(algorithm, dataset, ways, seconds, fraction=0.1, speedup=math.nan, eval_rate=math.nan, xla=False):
    return {"algorithm": algorithm, "dataset": dataset, "ways": ways, "xla": xla, "sec_per_meta_iter": seconds,
            "fraction_of_peak": fraction, "speedup_vs_loop": speedup, "eval_tasks_per_s": eval_rate}


def test_targets_report_met_missed_and_gap():
    rows = [_row("reptile", "omniglot", 5, 0.2, fraction=0.2, speedup=3.0, eval_rate=20.0),
            _row("reptile", "omniglot", 5, 0.1, fraction=0.45, speedup=6.0, eval_rate=20.0, xla=True),
            _row("maml", "omniglot", 5, 0.8), _row("maml_fo", "omniglot", 5, 0.2)]
    targets = {t.name.split(",")[0]: t for t in bench.evaluate_targets(rows)}
    omniglot = targets["Omniglot 5-way Reptile training"]
    assert omniglot.measured == 0.45 and omniglot.met and "XLA on" in omniglot.detail  # the faster mode
    assert targets["Mini-ImageNet 5-way Reptile training"].met is None
    ratio = next(t for t in targets.values() if t.name.startswith("MAML"))
    assert ratio.measured == pytest.approx(4.0) and ratio.met is False and ratio.gap() == "missed: needs /1.33"
    evaluation = next(t for t in targets.values() if t.name.startswith("evaluation"))
    assert evaluation.measured == pytest.approx(10_000 / 20 / 60) and evaluation.met


# Model parameter names in the order of reference_loop.init_weights.
NAMES = [f"{kind}{b}/{leaf}" for b in range(4) for kind, leaf in
         (("conv", "kernel"), ("bn", "scale"), ("bn", "offset"))] + ["dense/kernel", "dense/bias"]


def _reference_vs_batched(settings, outer_lr):
    """Meta-params after one meta-iteration: reference loop and batched meta_step, same init and data."""
    import tensorflow as tf

    from reptile_tf import meta
    from reptile_tf.models import get_model

    model = get_model(settings.dataset, settings.ways)
    params = model.init(3)
    names = NAMES
    batch = bench.random_batch(settings, seed=5)
    reference = bench.load_reference_loop().ReferenceTrainer(settings, initial=[params[n].numpy() for n in names])
    reference.meta_iteration(batch, outer_lr)
    state, _ = meta.meta_step(model, settings, meta.init_meta_state(model, params, settings),
                              {k: tf.constant(v) for k, v in batch.items()}, tf.constant(outer_lr))
    batched = meta.params_from_state(state)
    assert not np.allclose(batched["dense/kernel"].numpy(), params["dense/kernel"].numpy())  # it did move
    for name, variable in zip(names, reference.meta_weights):
        np.testing.assert_allclose(variable.numpy(), batched[name].numpy(), rtol=2e-3, atol=2e-5, err_msg=name)


def test_reference_loop_reptile_matches_batched_core():
    # One task and a minibatch of the whole task (order-free), so Adam state handling coincides.
    # A large Adam epsilon: with the paper's 1e-8 (and beta1 = 0) a round-off-sized gradient
    # becomes a full step of lr * sign(g), and the per-task and folded fused batch-norm kernels
    # round differently; with 0.1 steps stay proportional to the gradients being compared.
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(meta_batch=1, inner_steps=2, inner_batch=50,
                                                                 adam_epsilon=0.1)
    _reference_vs_batched(settings, outer_lr=0.5)


def test_reference_loop_maml_gradient_matches_batched_core():
    # Compare meta-gradients, not parameters: the first outer Adam step turns round-off-sized
    # gradients into full-size steps of arbitrary sign.
    import tensorflow as tf

    from reptile_tf import meta
    from reptile_tf.models import get_model

    settings = paper_settings("maml", "omniglot", 5, 1).replace(meta_batch=2, inner_steps=2)
    model = get_model("omniglot", 5)
    params = model.init(3)
    batch = bench.random_batch(settings, seed=5)
    reference = bench.load_reference_loop().ReferenceTrainer(settings, initial=[params[n].numpy() for n in NAMES])
    per_task = [reference._maml_task_gradient(*(tf.constant(batch[k][t]) for k in
                                                ("support_x", "support_y", "query_x", "query_y")))
                for t in range(settings.meta_batch)]
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    xs, ys = meta.make_inner_batches(tensors["support_x"], tensors["support_y"], 0, settings.inner_steps, None)
    batched, *_ = meta.maml_meta_gradient(model, params, xs, ys, tensors["query_x"], tensors["query_y"],
                                          meta.InnerConfig.from_settings(settings))
    for index, name in enumerate(NAMES):
        expected = batched[name].numpy()
        actual = np.mean([grads[index].numpy() for grads in per_task], axis=0)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale, err_msg=name)

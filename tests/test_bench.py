"""The benchmark harness (reptile_tf.bench: plan, workloads, targets, report, the CLI) and the per-task reference loop, at tiny sizes.

No speed is asserted: only that the harness measures, writes the right files and that the
reference loop computes the same algorithm as the batched core.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from reptile_tf import cli, meta, models
from reptile_tf.bench import peers, report, workloads
from reptile_tf.bench.plan import Case, case_settings, make_plan, parse_cases, parse_skip
from reptile_tf.bench.targets import evaluate_targets
from reptile_tf.errors import UserError
from reptile_tf.settings import paper_settings

REQUIRED_COLUMNS = {"algorithm", "dataset", "ways", "meta_iter_per_s", "gflops_per_s", "fraction_of_peak",
                    "speedup_vs_loop", "eval_tasks_per_s", "peak_rss_mb"}


def test_cli_tiny_run_writes_csv_and_readme(tmp_path):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--tiny", "--cases", "reptile:omniglot:5", "--skip", "xla,peers", "--out", str(out)])
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
    assert readme.startswith(f"`reptile-tf bench --out {out} --tiny --cases reptile:omniglot:5 --skip xla,peers`")
    for heading in ("Machine:", "## Targets", "## GPU projection", "projection", "learn2learn",
                    "## Where the time goes"):
        assert heading in readme
    assert report.XLA_ON_CPU_NOTE in readme
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
        parse_cases("reptile:omniglot:7")
    with pytest.raises(UserError, match="--skip"):
        parse_skip("xla,gpu")
    assert parse_cases("maml_fo:mini_imagenet:5") == (Case("maml_fo", "mini_imagenet", 5),)


def test_plans_cover_the_issue():
    full = make_plan()
    assert len(full.cases) == 12 and set(full.xla_cases) == set(full.cases) and set(full.loop_cases) == set(full.cases)
    quick = make_plan(quick=True)
    assert set(quick.cases) < set(full.cases) and quick.repeats < full.repeats
    assert make_plan(quick=True, skip=("xla", "eval")).xla_cases == ()
    assert case_settings(Case("maml_fo", "omniglot", 5)).first_order


def test_random_batch_matches_train_episode_shapes():
    fomaml = paper_settings("fomaml", "omniglot", 5, 1)
    batch = workloads.random_batch(fomaml)
    # train.py splits the 10 train shots into 5 inner-loop shots and a 5-shot tail (query_x).
    assert batch["support_x"].shape == (5, 25, 28, 28, 1) and batch["query_x"].shape == (5, 25, 28, 28, 1)
    maml = paper_settings("maml", "mini_imagenet", 5, 1)
    batch = workloads.random_batch(maml)
    assert batch["support_x"].shape == (4, 5, 84, 84, 3) and batch["query_y"].shape == (4, 75)
    assert batch["support_x"].dtype == np.float32 and 0.0 <= batch["support_x"].min() <= batch["support_x"].max() <= 1.0


def _row(algorithm, dataset, ways, seconds, fraction=0.1, speedup=math.nan, eval_rate=math.nan, xla=False):
    return {"algorithm": algorithm, "dataset": dataset, "ways": ways, "xla": xla, "sec_per_meta_iter": seconds,
            "fraction_of_peak": fraction, "speedup_vs_loop": speedup, "eval_tasks_per_s": eval_rate}


def test_targets_report_met_missed_and_gap():
    rows = [_row("reptile", "omniglot", 5, 0.2, fraction=0.2, speedup=3.0, eval_rate=20.0),
            _row("reptile", "omniglot", 5, 0.1, fraction=0.55, speedup=6.0, eval_rate=25.0, xla=True),
            _row("maml", "omniglot", 5, 0.8), _row("maml_fo", "omniglot", 5, 0.2)]
    targets = {t.name.split(",")[0]: t for t in evaluate_targets(rows)}
    omniglot = targets["Omniglot 5-way Reptile training"]
    assert omniglot.measured == 0.55 and omniglot.met and "XLA on" in omniglot.detail  # the faster mode
    assert targets["Mini-ImageNet 5-way Reptile training"].met is None
    ratio = next(t for t in targets.values() if t.name.startswith("MAML"))
    assert ratio.measured == pytest.approx(4.0) and ratio.met is False and ratio.gap() == "missed: needs /1.33"
    evaluation = next(t for t in targets.values() if t.name.startswith("evaluation"))
    assert evaluation.measured == pytest.approx(10_000 / 25 / 60) and evaluation.met  # 6.7 < 8 min


def _full_row(algorithm, dataset, ways, seconds, **changes):
    row = {"algorithm": algorithm, "dataset": dataset, "ways": ways, "shots": 1, "xla": False, "meta_batch": 5,
           "inner_steps": 5, "sec_per_meta_iter": seconds, "meta_iter_per_s": 1 / seconds,
           "gflop_per_meta_iter": 3.98, "gflops_per_s": 3.98 / seconds, "fraction_of_peak": 3.98 / seconds / 200,
           "peak_gflops_per_s": 200.0, "loop_sec_per_meta_iter": math.nan, "speedup_vs_loop": math.nan,
           "eval_tasks_per_s": math.nan, "eval_10k_tasks_min": math.nan, "peak_rss_mb": 835.2, "step_rss_mb": 2.2,
           "trace_s": 1.87, "repeats": 3}
    return {**row, **changes}


INFO = {"peak_gflops": 200.0, "cpu": "CPU", "cores": 2, "tf_version": "2", "python": "3", "onednn": "on",
        "date_utc": "today", "load_average": "1 1 1", "matmul_size": 128, "matmul_repeats": 2, "repeats": 3,
        "warmup": 1, "memory_method": "VmHWM", "errors": []}


def _table(readme, heading):
    """The cells of the first Markdown table after `heading` (header row first, separator dropped)."""
    lines = readme[readme.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not all(set(cell) <= set(":-") for cell in cells):
            rows.append(cells)
    return rows


def test_report_tables_keep_the_formatted_cells():
    rows = [_full_row("reptile", "omniglot", 5, 0.0482, xla=True, loop_sec_per_meta_iter=0.122, speedup_vs_loop=2.53,
                      eval_tasks_per_s=18.3, eval_10k_tasks_min=9.11)]
    profile = [{"dataset": "omniglot", "ways": 5, "tasks": 5, "batch": 10, "op": "bn4 fwd+bwd", "ms": 0.3,
                "gflop": 0.0001, "gflops_per_s": 0.4}]
    readme = report.render_readme("reptile-tf bench --out x", rows, profile, INFO)
    throughput = _table(readme, "## Meta-training throughput")
    assert throughput[0][:4] == ["algorithm", "dataset", "ways", "XLA"] and len(throughput[0]) == 18
    assert throughput[1] == ["reptile", "omniglot", "5", "on", "5", "5", "0.0482", "20.7", "3.98", "82.6", "41.3%",
                             "0.122", "2.53", "18.3", "9.11", "835", "2", "1.9"]
    # a number formatted as "0.000" stays as written (tabulate would otherwise parse and reformat it)
    assert _table(readme, "## Where the time goes")[1] == ["omniglot", "5", "5 x 10", "bn4 fwd+bwd", "0.30", "0.000",
                                                           "0.4"]
    targets = _table(readme, "## Targets")
    assert targets[0] == ["target", "threshold", "measured", "status", "notes"]
    assert targets[1][1:4] == [">= 4x", "—", "not measured"]  # no peers in this run
    assert targets[2][1:4] == [">= 50%", "41.3%", "missed: needs x1.21"] and targets[7][1:4] == ["<= 3x", "—", "not measured"]
    assert targets[8][1:4] == ["<= 8 min", "9.11 min", "missed: needs /1.14"]
    beside = _table(readme, "## Beside existing implementations")
    assert beside[1][2:] == ["0.182", "0.0482", "3.78x faster"] and beside[5][3:] == ["—", "—"]
    assert beside[6][3] == "0.0546 (per task, batched)"
    assert _table(readme, "## GPU projection")[1][0] == "50% of peak"
    # Nothing measured: the tables keep their headers.
    empty = report.render_readme("reptile-tf bench --out x", [], [], INFO)
    assert _table(empty, "## Meta-training throughput") == [throughput[0]]
    assert "## Where the time goes" not in empty


def test_plan_peers_targets_and_report_need_no_tensorflow():
    # What is judged and written (and the peers, which run PyTorch) stays apart from TensorFlow.
    code = ("import sys, reptile_tf.bench.plan, reptile_tf.bench.peers, reptile_tf.bench.targets, "
            "reptile_tf.bench.report; print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"]


# Model parameter names in the order of reference_loop.init_weights.
NAMES = [f"{kind}{b}/{leaf}" for b in range(4) for kind, leaf in
         (("conv", "kernel"), ("bn", "scale"), ("bn", "offset"))] + ["dense/kernel", "dense/bias"]


def _reference_vs_batched(settings, outer_lr):
    """Meta-params after one meta-iteration: reference loop and batched meta_step, same init and data."""
    model = models.get_model(settings.dataset, settings.ways)
    params = model.init(3)
    names = NAMES
    batch = workloads.random_batch(settings, seed=5)
    reference = workloads.load_reference_loop().ReferenceTrainer(settings, initial=[params[n].numpy() for n in names])
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
    settings = paper_settings("maml", "omniglot", 5, 1).replace(meta_batch=2, inner_steps=2)
    model = models.get_model("omniglot", 5)
    params = model.init(3)
    batch = workloads.random_batch(settings, seed=5)
    reference = workloads.load_reference_loop().ReferenceTrainer(settings, initial=[params[n].numpy() for n in NAMES])
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


def test_peer_workloads_are_our_settings_and_the_peer_script_defaults():
    """The peer script times what we time: its hand-run defaults are the workloads built from our
    settings, so the two cannot drift apart."""
    script = ast.parse(peers.LEARN2LEARN_SCRIPT.read_text())
    defaults = next(node.value for node in script.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", None) == "DEFAULT_WORKLOADS")
    assert ast.literal_eval(defaults) == peers.peer_workloads()
    reptile = peers.peer_workloads()["reptile_omniglot_5way"]
    settings = case_settings(Case("reptile", "omniglot", 5))
    assert (reptile["inner_steps"], reptile["inner_batch"], reptile["meta_batch"]) == (
        settings.inner_steps, settings.inner_batch, settings.meta_batch)
    assert peers.peer_workloads()["maml_fo_omniglot_5way_1shot"]["first_order"] is True


def test_missing_peer_environment_is_a_user_error_naming_the_fix(tmp_path, capsys):
    code = cli.main(["bench", "--tiny", "--cases", "reptile:omniglot:5", "--peer-python", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "bench")])
    assert code != 0 and "bash benchmarks/peers/setup.sh" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()  # it fails before measuring anything


def test_peers_measured_in_the_run_set_the_ratios_and_targets(tmp_path):
    """The runner's peer plumbing end to end, with a stand-in for the peers' Python that prints the
    peer script's JSON (the real one needs PyTorch, which lives in its own environment)."""
    seconds = {name: 1.0 for name in peers.WORKLOADS}
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\ncat <<'JSON'\n" + json.dumps(
        {"implementation": "learn2learn", "learn2learn": "0.2.0", "torch": "x", "threads": 2, "warmup": 1,
         "repeats": 1, "workloads": peers.peer_workloads(True), "seconds": seconds}) + "\nJSON\n")
    fake.chmod(0o755)
    out = tmp_path / "bench"
    code = cli.main(["bench", "--tiny", "--cases", "reptile:omniglot:5", "--skip", "xla,loop,profile",
                     "--peer-python", str(fake), "--out", str(out)])
    assert code == 0
    readme = (out / "README.md").read_text()
    assert "learn2learn 0.2.0 (PyTorch x, 2 threads), measured in this run" in readme
    assert "published (docs/reference.md), not run here" in readme  # the official code: no run possible
    row = next(csv.DictReader(open(out / "throughput.csv", newline="")))
    ours = float(row["sec_per_meta_iter"])
    target = next(line for line in readme.splitlines() if "5-way Reptile training, speed-up over learn2learn" in line)
    # learn2learn's 1.0 s / ours, from this run. The README rounds the unrounded ratio to 3 digits and
    # the CSV keeps 6 digits of the time, so allow half a unit of the README's last digit plus the
    # CSV's rounding (51.25 can print as 51.2 from one and 51.3 from the other).
    shown = float(re.search(r"\| ([0-9.]+)x +\|", target).group(1))
    tolerance = 0.5 * 10 ** (math.floor(math.log10(shown)) - 2) + shown * 1e-5
    assert abs(shown - 1.0 / ours) <= tolerance, (shown, 1.0 / ours)


def _load_floor():
    spec = importlib.util.spec_from_file_location("floor_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "floor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["floor_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_floor_scales_each_class_to_its_own_idle_run(tmp_path):
    floor = _load_floor()
    with pytest.raises(SystemExit, match="no idle bench run known for class 'sparc'"):
        floor.idle_run_of(tmp_path / "sparc")
    # A busy run measured on the avx2 class: its model took 0.2 s, a variant half as long.
    seconds = {"model (conv path grouped)": 0.2, "no batch norm": 0.1, "shared-kernel conv": 0.18,
               "shared-kernel conv, no batch norm": 0.09}
    work = 4e9
    seconds[floor.FLOP_FLOOR] = work / 100e9
    out = tmp_path / "avx2"
    head = ["`python benchmarks/floor.py --out x`", "", "# The floor", ""]
    floor.write_outputs(out, seconds, work, 100.0, 0.5, "0.500 s, learn2learn 0.2.0, measured in this run", head)
    avx2 = floor.IDLE_RUNS["avx2"]
    frame = pd.read_csv(out / "floor.csv")
    assert frame["idle_seconds"].iloc[0] == pytest.approx(avx2.model_s, abs=1e-5)
    assert frame["idle_seconds"].iloc[1] == pytest.approx(avx2.model_s / 2, abs=1e-5)
    assert frame["speedup_vs_learn2learn"].iloc[0] == pytest.approx(avx2.learn2learn_s / avx2.model_s, rel=1e-3)
    assert avx2.source in (out / "floor.md").read_text()
    # --rescale rebuilds the same files from floor.csv and the kept header, measuring nothing
    before = (out / "floor.md").read_text()
    floor.rescale(out)
    assert (out / "floor.md").read_text().startswith("\n".join(head))
    assert "learn2learn at 0.315 s" in before and (out / "floor.md").read_text().count("0.500 s, learn2learn") == 1


def test_inner_adam_threads_times_both_modes_in_child_processes(tmp_path):
    """benchmarks/inner_adam_threads.py: one child per (mode, threads), its CSV what reptile_tf.cost
    reads to project the sequential inner Adam."""
    from reptile_tf import cost

    root = Path(__file__).resolve().parents[1]
    args = ["--out", str(tmp_path), "--shots", "1", "--threads", "1", "--rounds", "1", "--repeats", "1", "--warmup", "0"]
    done = subprocess.run([sys.executable, str(root / "benchmarks/inner_adam_threads.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "inner_adam_threads.csv")
    assert list(frame["inner_adam_mode"]) == ["parallel_mean", "sequential"] and (frame["threads"] == 1).all()
    assert (frame["ms_per_meta_iteration"] > 0).all() and frame["conv_path"].notna().all()
    assert (tmp_path / "inner_adam_threads.md").read_text().startswith(
        "`python benchmarks/inner_adam_threads.py " + " ".join(args) + "`")
    slowdown = cost.read_sequential_slowdown(tmp_path / "inner_adam_threads.csv")
    assert slowdown == {1: pytest.approx(frame["ms_per_meta_iteration"][1] / frame["ms_per_meta_iteration"][0])}

"""The workflow states a large plan before it starts (issue 13, item 3), and reptile_tf.cost, the
projection it uses (seconds per meta-iteration from the measured throughput)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reptile_tf import cost, flops
from reptile_tf.settings import paper_settings

ROOT = Path(__file__).resolve().parents[1]
# The committed benchmark of the AVX-512 class: real rows to project from.
MEASURED = cost.read_throughput(ROOT / "results/benchmarks/avx512/throughput.csv")
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
NOTICE = "reptile-tf: preset"


def copy_workflow(dest: Path) -> Path:
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    return dest


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1",  # the same statement on any machine
               PATH=f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # the rules call reptile-tf
    result = subprocess.run([str(SNAKEMAKE), "--cores", "2", "-n", *args], cwd=workdir, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_the_paper_preset_states_its_cost_before_it_starts(workdir):
    result = dry_run(workdir)  # `snakemake --cores all` plans the default config, the paper preset
    assert NOTICE not in result.stdout  # stdout stays clean (snakemake --dag | dot)
    assert result.stderr.count(NOTICE) == 1
    notice = result.stderr[result.stderr.index(NOTICE):]
    assert "Building DAG" not in result.stderr or result.stderr.index(NOTICE) < result.stderr.index("Building DAG")
    assert "preset 'paper' is a large plan" in notice
    assert "train      54 of  54 job(s) to run" in notice and "evaluate   54 of  54 job(s) to run" in notice
    assert "60,000-200,000 meta-iterations each" in notice
    assert "days" in notice.splitlines()[0]  # hundreds of hours on a CPU
    assert "CPU only, no NVIDIA GPU found" in notice and "of one A100" in notice
    assert "throughput.csv" in notice
    assert "`make reproduce`" in notice and "workflow/config/quick.yaml" in notice
    assert "plan_notice=False" in notice


@pytest.mark.parametrize("preset", ["smoke.yaml", "quick.yaml"])
def test_small_presets_stay_silent(workdir, preset):
    result = dry_run(workdir, "--configfile", f"workflow/config/{preset}")
    assert NOTICE not in result.stdout + result.stderr


def test_the_notice_can_be_silenced(workdir):
    result = dry_run(workdir, "--config", "plan_notice=False")
    assert NOTICE not in result.stdout + result.stderr


def test_only_jobs_whose_outputs_are_missing_count(tmp_path):
    workdir = copy_workflow(tmp_path)
    config = ["--configfile", "workflow/config/paper_cpu.yaml"]
    notice = dry_run(workdir, *config).stderr
    assert "preset 'paper_cpu' is a large plan" in notice and "train      10 of  10 job(s) to run" in notice
    assert f"theory      1 of   1 job(s) to run: ~{cost.format_hours(cost.THEORY_HOURS['paper'])}" in notice
    assert "PRESET=paper_cpu" not in notice  # not offered as the smaller preset of itself
    runs = workdir / "results/paper_cpu/runs/paper_cpu"
    # seed 0 of every cell, seeds 1 and 2 of Reptile 1-shot and seed 1 of Reptile and MAML 5-shot (their extra_seeds)
    seeds = {("omniglot_5w1s", "reptile"): (0, 1, 2), ("omniglot_5w5s", "reptile"): (0, 1),
             ("omniglot_5w5s", "maml"): (0, 1)}
    for setting in ("omniglot_5w1s", "omniglot_5w5s"):
        for algorithm in ("reptile", "fomaml", "maml"):
            for seed in seeds.get((setting, algorithm), (0,)):
                run = runs / setting / algorithm / f"seed{seed}"
                run.mkdir(parents=True)
                (run / "eval.json").write_text("{}")
                if (setting, algorithm, seed) != ("omniglot_5w1s", "reptile", 0):
                    (run / "DONE").write_text("1")
    (workdir / "results/paper_cpu/theory").mkdir(parents=True)  # the section 6.2 experiment, done
    # one training job left, about 2 h: below the threshold
    assert NOTICE not in dry_run(workdir, *config).stderr
    # ... and above a lower one; a checkpoint at 80% leaves a fifth of it
    notice = dry_run(workdir, *config, "--config", "plan_notice=1").stderr
    # the preset's Reptile: the official summed loss and sequential inner Adam (config.yaml)
    reptile = paper_settings("reptile", "omniglot", 5, 1).replace(loss_reduction="sum", inner_adam_mode="sequential")
    hours = (cost.JOB_STARTUP_S + reptile.iterations * cost.seconds_per_iteration(reptile)) / 3600
    assert f"train       1 of  10 job(s) to run: ~{cost.format_hours(hours)}" in notice
    assert "evaluate    0 of  10 job(s) to run: done" in notice
    checkpoints = runs / "omniglot_5w1s/reptile/seed0/checkpoints"
    checkpoints.mkdir()
    (checkpoints / "ckpt-80000.index").write_text("")  # as the CheckpointManager leaves it: files, then state
    (checkpoints / "ckpt-80000.data-00000-of-00001").write_text("")
    (checkpoints / "checkpoint").write_text('model_checkpoint_path: "ckpt-80000"\n'
                                            'all_model_checkpoint_paths: "ckpt-80000"\n')
    assert NOTICE not in dry_run(workdir, *config, "--config", "plan_notice=1").stderr


# ------------------------------------------------------------------------------ reptile_tf.cost


def test_measured_workloads_use_the_measured_time():
    throughput = cost.load_throughput()
    for row in throughput.rows:
        algorithm = "maml" if row["algorithm"] == "maml_fo" else row["algorithm"]
        settings = paper_settings(algorithm, row["dataset"], row["ways"], 1)
        if row["algorithm"] == "maml_fo":
            settings = settings.replace(first_order=True)
        assert cost.seconds_per_iteration(settings, throughput) == row["sec_per_meta_iter"]


def test_unmeasured_workloads_scale_by_flops_at_the_closest_measured_rate():
    throughput = cost.Throughput(MEASURED, "test")
    one, five = (paper_settings("maml", "omniglot", 5, shots) for shots in (1, 5))
    ratio = flops.meta_iteration_flops(five).total / flops.meta_iteration_flops(one).total
    assert ratio > 3  # 25 support images instead of 5
    assert math.isclose(cost.seconds_per_iteration(five, throughput),
                        cost.seconds_per_iteration(one, throughput) * ratio, rel_tol=1e-4)  # CSV rounding
    # FOMAML on Mini-ImageNet (not measured): Mini-ImageNet's measured rate, not Omniglot's
    fomaml = paper_settings("fomaml", "mini_imagenet", 5, 1)
    reptile_mini = next(r for r in MEASURED if r["dataset"] == "mini_imagenet")
    rate = reptile_mini["gflop_per_meta_iter"] / reptile_mini["sec_per_meta_iter"]
    assert math.isclose(cost.seconds_per_iteration(fomaml, throughput),
                        flops.meta_iteration_flops(fomaml).total / 1e9 / rate, rel_tol=1e-6)


def test_sequential_inner_adam_scales_by_its_slowdown_measured_beside_the_parallel_mode(tmp_path):
    """benchmarks/inner_adam_threads.py times both modes in one run: the fastest sequential pair over
    the parallel mode at the most threads (the count throughput.csv times) scales the projection."""
    bench = tmp_path / "benchmarks/avx512"
    bench.mkdir(parents=True)
    shutil.copy(ROOT / "results/benchmarks/avx512/throughput.csv", bench / cost.THROUGHPUT_FILE)
    (bench / cost.INNER_ADAM_FILE).write_text(
        "shots,inner_adam_mode,threads,conv_path,ms_per_meta_iteration,round_ms,repeats\n"
        "1,parallel_mean,1,grouped,90,,30\n1,parallel_mean,2,grouped,60,,30\n"
        "1,sequential,1,grouped,84,,30\n1,sequential,2,grouped,150,,30\n")
    throughput = cost.load_throughput(tmp_path)
    assert throughput.sequential_slowdown == {1: pytest.approx(1.4)}
    for shots in (1, 5):  # 5-shot: the nearest measured shot count's
        parallel = paper_settings("reptile", "omniglot", 5, shots).replace(loss_reduction="sum")
        sequential = parallel.replace(inner_adam_mode="sequential")
        assert cost.seconds_per_iteration(sequential, throughput) == pytest.approx(
            1.4 * cost.seconds_per_iteration(parallel, throughput))
    maml = paper_settings("maml", "omniglot", 5, 1)  # plain SGD inside: no inner Adam to share
    assert cost.seconds_per_iteration(maml.replace(inner_adam_mode="sequential"), throughput) == \
        cost.seconds_per_iteration(maml, throughput)
    assert cost.read_sequential_slowdown(tmp_path / "missing.csv") == {}


def test_evaluation_projection_matches_the_measured_evaluation():
    """Reptile Omniglot 5-way, non-transductive: the benchmark's own measurement, by construction."""
    throughput = cost.Throughput(MEASURED, "test")
    settings = paper_settings("reptile", "omniglot", 5, 1)
    seconds = cost.seconds_per_eval_task(settings, ("non_transductive",), throughput)
    assert math.isclose(seconds, 1 / MEASURED[0]["eval_tasks_per_s"], rel_tol=1e-9)


def test_this_cpu_class_is_preferred_then_another_then_an_assumed_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(cost, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(cost, "cpu_class", lambda: "avx2")
    throughput = cost.load_throughput(tmp_path / "results")
    assert throughput.rows == () and "assumed" in throughput.source
    one = paper_settings("reptile", "omniglot", 5, 1)
    assert cost.seconds_per_iteration(one, throughput) == pytest.approx(
        flops.meta_iteration_flops(one).total / 1e9 / cost.ASSUMED_GFLOPS_PER_S)
    bench = tmp_path / "results/benchmarks"
    (bench / "avx512").mkdir(parents=True)
    shutil.copy(ROOT / "results/benchmarks/avx512/throughput.csv", bench / "avx512/throughput.csv")
    throughput = cost.load_throughput(tmp_path / "results")  # another class: better than nothing
    times = [r["sec_per_meta_iter"] for r in MEASURED]
    assert [r["sec_per_meta_iter"] for r in throughput.rows] == times and "avx512" in throughput.source
    (bench / "avx2").mkdir()
    slower = (bench / "avx512/throughput.csv").read_text().replace(",0.0", ",0.1")
    (bench / "avx2/throughput.csv").write_text(slower)
    throughput = cost.load_throughput(tmp_path / "results")  # this machine's class
    assert "avx2" in throughput.source and [r["sec_per_meta_iter"] for r in throughput.rows] != times


def test_gpus_hidden_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert cost.detect_gpus() == []


def test_format_hours():
    assert [cost.format_hours(h) for h in (0.2, 3.44, 310)] == ["12 min", "3.4 h", "310 h (13 days)"]

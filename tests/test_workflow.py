"""The Snakemake workflow: config validation, planning every preset, and a finished run is a no-op.

The end-to-end test replaces `reptile-tf` on PATH by a stub that writes each rule's declared
outputs (and records its command line), so the real DAG, wildcards, flags and the
"nothing to be done" re-run are checked in seconds without training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PRESETS = ("config.yaml", "paper.yaml", "paper_cpu.yaml", "quick.yaml", "smoke.yaml")


def copy_workflow(dest: Path) -> Path:
    """Snakefile + workflow/ in a fresh directory (runs, results and logs stay out of the tree)."""
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "workflow", dest / "workflow")
    return dest


def venv_on_path() -> dict[str, str]:
    """This environment with the virtualenv's bin/ first on PATH, as `make` runs Snakemake: the
    rules call `reptile-tf`."""
    return dict(os.environ, PATH=f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), "--cores", "2", *args], cwd=workdir, capture_output=True, text=True,
                          env=env or venv_on_path(), timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_plans(workdir, preset):
    # config.yaml is the default config: plan it exactly as `snakemake --cores all` would
    chosen = [] if preset == "config.yaml" else ["--configfile", f"workflow/config/{preset}"]
    result = snakemake(workdir, "-n", *chosen)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    out = result.stdout + result.stderr
    config = {**yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text()),
              **yaml.safe_load((ROOT / "workflow/config" / preset).read_text())}
    settings, algorithms = config["grid"]["settings"], config["grid"]["algorithms"]
    seeds = len(config["grid"]["seeds"])
    extras = sum(len(_extra_seeds(config, s, a)) for s in settings for a in algorithms)
    jobs = len(settings) * len(algorithms) * seeds + extras
    # seed groups (train.seed_groups; none in config.yaml): one training job for all grid seeds
    seed_groups = config.get("train", {}).get("seed_groups", ["reptile", "fomaml"])
    grouped = [a for a in algorithms if a in seed_groups] if seeds > 1 else []
    groups = len(settings) * len(grouped)
    assert _job_count(out, "train") + seeds * groups == jobs and _job_count(out, "train_seed_group") == groups
    assert _job_count(out, "evaluate") == jobs
    assert _job_count(out, "tables") == 1 and _job_count(out, "track_init") == 1


def _extra_seeds(config: dict, setting: dict, algorithm: str) -> set[int]:
    """The seeds a (setting, algorithm) trains beyond grid.seeds: the most specific scope's
    `extra_seeds` (setting.per_algorithm, then the setting, then budget.per_algorithm)."""
    scopes = [(setting.get("per_algorithm") or {}).get(algorithm) or {}, setting,
              (config.get("budget", {}).get("per_algorithm") or {}).get(algorithm) or {}]
    extra = next((scope["extra_seeds"] for scope in scopes if "extra_seeds" in scope), [])
    return set(extra) - set(config["grid"]["seeds"])


def _job_count(out: str, rule: str) -> int:
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


def test_missing_reptile_tf_fails_before_any_job_naming_the_fix(workdir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    result = snakemake(workdir, "-n", "--configfile", "workflow/config/smoke.yaml", env=env)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "`reptile-tf` is not on PATH" in out and ".venv/bin/activate" in out, out[-3000:]
    assert "Job stats" not in out


def test_quick_preset_has_the_full_grid():
    quick = yaml.safe_load((ROOT / "workflow/config/quick.yaml").read_text())
    settings = {(s["dataset"], s["ways"], s["shots"]) for s in quick["grid"]["settings"]}
    assert settings == {("omniglot", 5, 1), ("omniglot", 5, 5), ("omniglot", 20, 1), ("omniglot", 20, 5),
                        ("mini_imagenet", 5, 1), ("mini_imagenet", 5, 5)}
    assert sorted(quick["grid"]["algorithms"]) == ["fomaml", "maml", "reptile"]
    for preset in PRESETS:
        header = (ROOT / "workflow/config" / preset).read_text().split("\n\n")[0]
        assert "snakemake --cores" in header and "Expected" in header and "Runtime" in header
        assert "CPU" in header or "GPU" in header


def overrides_file(directory: Path, name: str, content: dict) -> str:
    """A config file layered over a preset (snakemake merges --configfile files in order)."""
    path = directory / name
    path.write_text(yaml.safe_dump(content))
    return str(path)


@pytest.mark.parametrize("override, key", [
    ({"budget": {"iteratons": 5}}, "budget"),  # typo: unknown key
    ({"grid": {"settings": [{"dataset": "omniglot", "ways": 5, "shots": "one"}]}}, "grid.settings.0.shots"),
    ({"budget": {"per_algorithm": {"fomaml": {"train_as": "maml_fo"}}}}, "budget.per_algorithm.fomaml.train_as"),
])
def test_invalid_config_fails_before_any_job_naming_the_key(workdir, tmp_path, override, key):
    bad = overrides_file(tmp_path, "bad.yaml", override)
    result = snakemake(workdir, "-n", "--configfile", "workflow/config/smoke.yaml", bad)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"invalid workflow config at key '{key}'" in out, out[-3000:]
    assert "Job stats" not in out  # nothing was planned


@pytest.mark.parametrize("override, key", [
    ({"budget": {"overrides": {"inner_lrr": 0.01}}}, "budget.overrides.inner_lrr"),  # unknown name
    ({"budget": {"overrides": {"meta_batch": "five"}}}, "budget.overrides.meta_batch"),  # string for a number
    ({"budget": {"overrides": {"inner_lr": "fast"}}}, "budget.overrides.inner_lr"),
    ({"budget": {"overrides": {"first_order": 1}}}, "budget.overrides.first_order"),  # number for a boolean
    ({"budget": {"overrides": {"iterations": -5}}}, "budget.overrides.iterations"),  # negative iterations
    ({"budget": {"per_algorithm": {"maml": {"overrides": {"meta_batch": -1}}}}},
     "budget.per_algorithm.maml.overrides.meta_batch"),
    ({"grid": {"settings": [{"dataset": "omniglot", "ways": 5, "shots": 1,
                             "per_algorithm": {"reptile": {"overrides": {"outer_lr": float("nan")}}}}]}},
     "grid.settings.0.per_algorithm.reptile.overrides.outer_lr"),
    ({"grid": {"settings": [{"dataset": "omniglot", "ways": 5, "shots": 1,
                             "overrides": {"inner_optimizer": "rmsprop"}}]}},
     "grid.settings.0.overrides.inner_optimizer"),
    # a recipe whose results would report in another row of the tables (second-order MAML is not FOMAML)
    ({"budget": {"per_algorithm": {"fomaml": {"train_as": "maml"}}}}, "budget.per_algorithm.fomaml.train_as"),
    ({"grid": {"settings": [{"dataset": "omniglot", "ways": 5, "shots": 1,
                             "per_algorithm": {"reptile": {"train_as": "maml_first_order"}}}]}},
     "grid.settings.0.per_algorithm.reptile.train_as"),
    # the sequential inner Adam runs one task at a time: its seeds cannot train in one call
    ({"grid": {"seeds": [0, 1]}, "train": {"seed_groups": ["reptile"]},
      "budget": {"per_algorithm": {"reptile": {"overrides": {"inner_adam_mode": "sequential"}}}}},
     "train.seed_groups"),
])
def test_bad_overrides_fail_the_dry_run_naming_the_key(workdir, tmp_path, override, key):
    """These used to pass `snakemake -n` and fail later, in the training jobs (or be ignored:
    overrides.iterations was never passed to train)."""
    bad = overrides_file(tmp_path, "bad.yaml", override)
    result = snakemake(workdir, "-n", "--configfile", "workflow/config/smoke.yaml", bad)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert f"invalid workflow config at key '{key}'" in out, out[-3000:]
    assert "Job stats" not in out


def test_good_overrides_plan_and_reach_the_train_command(workdir, tmp_path):
    budget = {"overrides": {"inner_lr": "1e-3"},  # YAML 1.1 reads 1e-3 as a string
              "per_algorithm": {"maml": {"overrides": {"meta_batch": 4}},
                                "fomaml": {"train_as": "maml_first_order", "overrides": {"network": "maml"}}}}
    good = overrides_file(tmp_path, "good.yaml", {"budget": budget})
    result = snakemake(workdir, "-n", "-p", "--configfile", "workflow/config/smoke.yaml", good)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "--inner-lr 1e-3" in out and "--meta-batch 4" in out
    fomaml = next(line for line in out.splitlines() if "reptile-tf train" in line and "/fomaml/seed0" in line)
    assert "--algorithm maml " in fomaml and "--first-order" in fomaml and "--network maml" in fomaml


def test_sequential_inner_adam_jobs_train_on_one_thread(workdir, tmp_path):
    """The sequential inner Adam's meta-iteration is slower on two intra-op threads than on one
    (results/benchmarks/avx512/inner_adam_threads.md), so its jobs take one and the others the preset's."""
    extra = overrides_file(tmp_path, "sequential.yaml", {
        "resources": {"train": {"threads": 2}},
        "budget": {"per_algorithm": {"reptile": {"overrides": {"inner_adam_mode": "sequential"}}}}})
    result = snakemake(workdir, "-n", "-p", "--forceall", "--cores", "2", "--configfile", "workflow/config/smoke.yaml", extra)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [line for line in (result.stdout + result.stderr).splitlines() if "reptile-tf train" in line]
    assert len(train) == 3, train
    for line in train:
        sequential = "--inner-adam-mode sequential" in line
        assert sequential == ("--algorithm reptile " in line), line
        assert line.split("TF_NUM_INTRAOP_THREADS=")[1].split()[0] == ("1" if sequential else "2"), line


@pytest.mark.parametrize("resize_filter, data_dir, prepare_flag", [
    (None, "data/tfds", ""),
    ("nearest", "data/tfds_nearest", "--resize-filter nearest"),
])
def test_omniglot_resize_filter_gets_its_own_data_dir(workdir, tmp_path, resize_filter, data_dir, prepare_flag):
    """`reptile-tf prepare` keeps one resize filter per data dir, so the official (nearest) Omniglot
    is built beside the default one, and train and evaluate read it from there."""
    extra = []
    if resize_filter:
        extra = [overrides_file(tmp_path, "resize.yaml", {"data": {"omniglot_resize_filter": resize_filter}})]
    result = snakemake(workdir, "-n", "-p", "--configfile", "workflow/config/smoke.yaml", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    prepare = next(line for line in out.splitlines() if "reptile-tf prepare omniglot" in line)
    assert f"--data-dir {data_dir} " in prepare
    assert (prepare_flag in prepare) if prepare_flag else ("--resize-filter" not in prepare)
    train = [line for line in out.splitlines() if "reptile-tf train" in line]
    evaluate = [line for line in out.splitlines() if "reptile-tf evaluate" in line]
    assert train and evaluate
    assert all(f"--data-dir {data_dir} " in line for line in train + evaluate)


@pytest.mark.parametrize("preset, official", [("paper.yaml", True), ("paper_cpu.yaml", True),
                                              ("quick.yaml", False), ("smoke.yaml", False)])
def test_paper_presets_train_with_the_official_code_semantics(workdir, preset, official):
    """Issue 16: where the official codes' behaviour moves accuracy beyond the seed spread, the paper
    presets follow it: Reptile the summed inner loss and the sequential inner Adam, MAML Finn's network and loss scale
    (results/fidelity/maml), FOMAML Finn's code run first-order (issue 11: as the published cells
    were made), all the 1-bit NEAREST Omniglot; quick and smoke keep this project's defaults (and
    the Reptile code's FOMAML) so their references stay valid."""
    result = snakemake(workdir, "-n", "-p", "--configfile", f"workflow/config/{preset}")
    assert result.returncode == 0, result.stderr[-3000:]
    train = [line for line in (result.stdout + result.stderr).splitlines()
             if "reptile-tf train" in line and "--dataset omniglot" in line]
    assert train
    for line in train:
        algorithm = line.split("--algorithm ")[1].split()[0]
        cell = line.split("--out ")[1].split()[0].split("/")[-2]  # the table row: <algorithm>/seed<N>
        summed = "--loss-reduction sum " in line or line.endswith("--loss-reduction sum")
        assert summed == (official and algorithm == "reptile"), line
        # the official Reptile code's one inner Adam state, carried from task to task
        assert ("--inner-adam-mode sequential" in line) == (official and algorithm == "reptile"), line
        finn = "--network maml" in line and "--loss-reduction sum_per_shot" in line
        assert finn == (official and cell in ("maml", "fomaml")), line
        # FOMAML as the published cells were made (train_as: maml_first_order): Finn's code first-order
        assert (algorithm, "--first-order" in line) == (("maml", True) if official and cell == "fomaml" else (cell, False))
        assert ("--data-dir data/tfds_nearest " in line) == official, line
    # section 6.2 (theory) reads the same images as the preset's runs
    theory = [line for line in (result.stdout + result.stderr).splitlines() if "reptile-tf theory" in line]
    assert len(theory) == (preset != "smoke.yaml")
    assert all(("--data-dir data/tfds_nearest " in line) == official for line in theory)


def test_quick_preset_keeps_the_maml_queries_its_results_were_made_with(workdir):
    """The paper presets take Finn's queries per class from the Settings table (test_settings); quick
    pins the ones its committed cells were trained and scored with: 1 on Omniglot, 15 on Mini-ImageNet."""
    result = snakemake(workdir, "-n", "-p", "--forceall", "--configfile", "workflow/config/quick.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    train = [line for line in (result.stdout + result.stderr).splitlines()
             if "reptile-tf train" in line and "--algorithm maml" in line]
    assert len(train) == 6
    for line in train:
        dataset, shots = line.split("--dataset ")[1].split()[0], int(line.split("--shots ")[1].split()[0])
        queries = {"omniglot": "--eval-queries 1 ", "mini_imagenet": "--eval-queries 15 "}[dataset]
        assert (queries in line + " ") == (dataset == "mini_imagenet" or shots > 1), line
        assert ("--queries 1 " in line + " ") == (dataset == "omniglot" and shots > 1), line


def test_override_check_and_cli_accept_the_same_values():
    """Both come from the Settings table: for every flag and a spread of YAML values, the workflow
    check accepts exactly what `reptile-tf train --flag VALUE` parses (finite numbers only)."""
    import math

    from reptile_tf import cli
    from reptile_tf.errors import UserError
    from reptile_tf.settings import flag_fields, override_value

    parser = cli.build_parser(only="train")
    required = ["train", "--algorithm", "reptile", "--dataset", "omniglot", "--ways", "5", "--shots", "1",
                "--seed", "0"]
    values = [5, 0.5, "1e-3", "abc", True, False, "adam", -2, float("inf")]
    assert "inner_lr" in flag_fields() and "algorithm" not in flag_fields()
    for name in flag_fields():
        dashed = "--" + name.replace("_", "-")
        for value in values:
            if isinstance(value, bool):  # common.smk `flag`: booleans become --name / --no-name
                argv = [dashed if value else f"--no-{dashed[2:]}"]
            else:
                argv = [f"{dashed}={value}"]
            try:
                parsed = getattr(parser.parse_args([*required, *argv]), name)
                # argparse takes inf; `train` refuses it (Settings.problems), so the check does too
                cli_ok = not isinstance(parsed, float) or math.isfinite(parsed)
            except SystemExit:
                cli_ok = False
            try:
                override_value(name, value)
                check_ok = True
            except UserError:
                check_ok = False
            assert check_ok == cli_ok, (name, value)


def schema_error_path(config: dict) -> str | None:
    """The dotted key the schema rejects (as the Snakefile reports it), or None if valid."""
    import jsonschema
    from snakemake.utils import validate

    try:
        validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    except Exception as err:  # snakemake's WorkflowError, raised while handling the ValidationError
        cause = err.__context__
        assert isinstance(cause, jsonschema.ValidationError), err
        return ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    return None


def test_schema_rejects_bad_values_and_fills_defaults():
    base = yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())
    assert schema_error_path(base) is None
    cases = {
        "tracking.enabled": {"tracking": {"enabled": "yes"}},
        "resources.train.gpu": {"resources": {"train": {"gpu": -1}}},
        "grid.settings.0.dataset": {"grid": {"settings": [{"dataset": "cifar", "ways": 5, "shots": 1}]}},
        "grid.algorithms.0": {"grid": {"settings": base["grid"]["settings"], "algorithms": ["protonet"]}},
        "budget.per_algorithm.maml.iterations": {"budget": {"per_algorithm": {"maml": {"iterations": 0}}}},
        "(top level)": {"unknown_key": 1},
    }
    for key, override in cases.items():
        assert schema_error_path({**base, **override}) == key
    minimal = {"grid": {"settings": [{"dataset": "omniglot", "ways": 5, "shots": 1}]}}
    assert schema_error_path(minimal) is None
    # defaults filled in, nested ones included
    assert minimal["preset"] == "paper" and minimal["grid"]["seeds"] == [0, 1, 2]
    assert minimal["tracking"] == {"enabled": True, "uri": None}
    assert minimal["data"]["tfds_dir"] == "data/tfds"


STUB = textwrap.dedent('''\
    #!{python}
    """Stand-in for reptile-tf: records the call and writes the outputs the rules declare."""
    import json, pathlib, sys
    args = sys.argv[1:]
    with open("calls.log", "a") as log:
        log.write(" ".join(args) + "\\n")
    def opt(name):
        return args[args.index(name) + 1] if name in args else None
    command = args[0]
    if command == "fetch":
        dest = pathlib.Path(opt("--dest")); dest.mkdir(parents=True, exist_ok=True)
        (dest / "VERIFIED.json").write_text("{{}}")
    elif command == "prepare":
        pathlib.Path(opt("--data-dir"), args[1], "1.0.0").mkdir(parents=True, exist_ok=True)
    elif command == "train":
        seeds = opt("--seeds").split(",") if "--seeds" in args else [None]
        for seed in seeds:
            out = pathlib.Path(opt("--out").replace("{{seed}}", seed or "")); out.mkdir(parents=True, exist_ok=True)
            (out / "DONE").write_text("1")
    elif command == "evaluate":
        pathlib.Path(args[1], "eval.json").write_text("{{}}")
    elif command == "track":
        pathlib.Path(opt("--marker")).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(opt("--marker")).write_text("{{}}")
    elif command == "tables":
        out = pathlib.Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
        for name in ("table2_omniglot.md", "table2_omniglot.csv", "table2_omniglot_tasks.csv",
                     "learning_curves_omniglot_5w1s.png"):
            (out / name).write_text("x")
    elif command in ("theory", "bench"):
        pathlib.Path(opt("--out")).mkdir(parents=True, exist_ok=True)
    else:
        sys.exit("unknown command " + command)
''')


def stub_workflow(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the workflow and an environment whose `reptile-tf` is STUB."""
    workdir = copy_workflow(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "reptile-tf"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    return workdir, dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_stub_pipeline_runs_then_rerun_has_nothing_to_do(tmp_path):
    workdir, env = stub_workflow(tmp_path)
    extra = overrides_file(tmp_path, "extra.yaml", {
        "theory": {"enabled": True, "budget": "smoke"}, "bench": {"enabled": True},
        "data": {"mirrors": ["/mirror/a"]}, "budget": {"per_algorithm": {"maml": {"iterations": 7}}}})
    config = ["--configfile", "workflow/config/smoke.yaml", extra]

    first = snakemake(workdir, *config, env=env)
    assert first.returncode == 0, first.stderr[-4000:]
    calls = (workdir / "calls.log").read_text().splitlines()
    commands = [c.split()[0] for c in calls]
    assert sorted(commands) == sorted(["fetch", "prepare", "track", "train", "train", "train", "evaluate",
                                       "evaluate", "evaluate", "track", "track", "track", "tables", "theory",
                                       "bench"])
    fetch = next(c for c in calls if c.startswith("fetch"))
    assert "--dest data/raw/omniglot" in fetch and "--mirror /mirror/a" in fetch
    maml = next(c for c in calls if c.startswith("train --algorithm maml"))
    assert "--iterations 7" in maml and "--out runs/smoke/omniglot_5w1s/maml/seed0" in maml
    reptile = next(c for c in calls if c.startswith("train --algorithm reptile"))
    assert "--iterations 100" in reptile and "--seed 0" in reptile and "--data-dir data/tfds" in reptile
    evaluate = next(c for c in calls if c.startswith("evaluate"))
    assert "--tasks 200" in evaluate and "--mode both" in evaluate
    assert "tables --runs runs/smoke --out results/smoke" in calls
    assert any(c.startswith("track --init --experiment smoke --tracking-uri sqlite:///results/mlflow/mlflow.db")
               for c in calls)
    # the curves checkpoint beside the runs, outside the output Snakemake clears when a job fails
    assert "theory --budget smoke --data-dir data/tfds --state runs/smoke/theory_combinations --out results/smoke/theory" in calls
    assert "bench --quick --skip peers --out results/smoke/throughput" in calls
    # every rule wrote its log path
    assert (workdir / "logs/smoke/train/omniglot_5w1s_maml_seed0.log").exists()

    again = snakemake(workdir, *config, "-n", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr

    # Data prepared again after the runs finished (as in a fresh clone of committed run
    # directories, `make reproduce` prepares first): the finished runs are not retrained.
    data = workdir / "data/tfds/omniglot"
    later = max(p.stat().st_mtime for p in (workdir / "runs").rglob("*")) + 60
    for path in (data, data / ".snakemake_timestamp"):  # Snakemake dates a directory() output by this file
        os.utime(path, (later, later))
    # ... and a committed benchmark file older than its run's DONE (a fresh clone checks out
    # results/<preset>/benchmarks/ first; Snakemake dates a job's outputs by the oldest, benchmark
    # included): the finished runs are not re-evaluated.
    benchmarks = sorted((workdir / "results/smoke/benchmarks/evaluate").glob("*.tsv"))
    assert len(benchmarks) == 3, benchmarks
    for benchmark in benchmarks:
        done = workdir / "runs/smoke/omniglot_5w1s" / benchmark.stem.split("_")[2] / "seed0/DONE"
        os.utime(benchmark, (done.stat().st_mtime - 60, done.stat().st_mtime - 60))
    shutil.rmtree(workdir / ".snakemake/metadata")  # a clone has no record of the jobs that made them
    touched = snakemake(workdir, *config, "-n", env=env)
    assert touched.returncode == 0, touched.stderr[-3000:]
    out = touched.stdout + touched.stderr
    planned = "\n".join(line for line in out.splitlines() if line.startswith("rule ") or "reason:" in line)
    assert "rule train:" not in out and "rule evaluate:" not in out, planned


def test_seed_groups_train_reptile_and_fomaml_seeds_in_one_job_and_maml_alone(tmp_path):
    workdir, env = stub_workflow(tmp_path)
    # smoke trains FOMAML as the Reptile code does (train_as: fomaml), which gains from seed groups
    extra = overrides_file(tmp_path, "extra.yaml", {"grid": {"seeds": [0, 1]},
                                                    "train": {"seed_groups": ["reptile", "fomaml"]}})
    config = ["--configfile", "workflow/config/smoke.yaml", extra]

    result = snakemake(workdir, *config, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    trains = [c for c in (workdir / "calls.log").read_text().splitlines() if c.startswith("train")]
    assert len(trains) == 4  # reptile and fomaml: one job for both seeds; maml: one job per seed
    for algorithm in ("reptile", "fomaml"):
        group = next(c for c in trains if f"--algorithm {algorithm} " in c)
        assert f"--seeds 0,1 --out runs/smoke/omniglot_5w1s/{algorithm}/seed{{seed}}" in group
        assert (workdir / f"logs/smoke/train/omniglot_5w1s_{algorithm}_seeds0-1.log").exists()
    assert sorted(c.split("--seed ")[1].split()[0] for c in trains if "--algorithm maml " in c) == ["0", "1"]
    assert len(list((workdir / "runs/smoke").rglob("eval.json"))) == 6

    # train.seed_groups: [] trains every seed alone
    alone = overrides_file(tmp_path, "alone.yaml", {"grid": {"seeds": [0, 1]}, "train": {"seed_groups": []}})
    planned = snakemake(workdir, "-n", "--forceall", "--configfile", "workflow/config/smoke.yaml", alone, env=env)
    assert planned.returncode == 0, planned.stderr[-3000:]
    out = planned.stdout + planned.stderr
    assert _job_count(out, "train") == 6 and _job_count(out, "train_seed_group") == 0


def test_extra_seeds_of_one_cell_train_one_by_one_and_never_rerun_its_group(tmp_path):
    workdir, env = stub_workflow(tmp_path)
    setting = {"dataset": "omniglot", "ways": 5, "shots": 1}

    def layered(name: str, extra_seeds: list[int]) -> list[str]:
        cell = dict(setting, per_algorithm={"reptile": {"extra_seeds": extra_seeds}})
        return ["--configfile", "workflow/config/smoke.yaml",
                overrides_file(tmp_path, name, {"grid": {"seeds": [0, 1], "settings": [cell]},
                                                "train": {"seed_groups": ["reptile", "fomaml"]}})]

    result = snakemake(workdir, *layered("extra.yaml", [2, 1]), env=env)  # 1 is a grid seed already
    assert result.returncode == 0, result.stderr[-4000:]
    trains = [c for c in (workdir / "calls.log").read_text().splitlines() if c.startswith("train")]
    reptile = [c for c in trains if "--algorithm reptile " in c]
    assert len(trains) == 5 and len(reptile) == 2  # groups: reptile, fomaml; alone: reptile 2, maml 0 and 1
    assert any("--seeds 0,1 " in c for c in reptile) and any("--seed 2 --out runs/smoke/omniglot_5w1s/reptile/seed2" in c
                                                            for c in reptile)
    assert len(list((workdir / "runs/smoke").rglob("eval.json"))) == 7
    assert (workdir / "runs/smoke/omniglot_5w1s/fomaml/seed2").exists() is False

    # One more seed later: only it trains; the finished group and seed 2 stay as they are.
    (workdir / "calls.log").write_text("")
    result = snakemake(workdir, *layered("more.yaml", [2, 3]), env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    trains = [c for c in (workdir / "calls.log").read_text().splitlines() if c.startswith("train")]
    assert len(trains) == 1 and "--seed 3 --out runs/smoke/omniglot_5w1s/reptile/seed3" in trains[0], trains

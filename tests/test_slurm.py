"""The workflow on a real SLURM cluster through `workflow/profiles/slurm` (issue 13).

A single-node SLURM on localhost (Debian's slurm-wlm + munge, installed with apt-get when missing
and configured from `ci/slurm/`: no accounting, no cgroups) is started for this module and stopped
after it. The smoke preset runs through the profile with nothing on the command line but the
profile, the preset and three output paths; then:

- every job of the run but the workflow's local rules (`localrules`: fetch, track, tables, and
  the target rule `all`) was a SLURM job, and finished COMPLETED;
- SLURM gave each job what its rule declares: CPUs per task = threads, memory = mem_mb,
  time limit = runtime, no GPU for gpu=0 (read back from slurmctld with `scontrol show job`: the
  cluster keeps finished jobs for MinJobAge = 1 h, there is no accounting database);
- its table equals, number for number, the table of the same preset run locally (through
  `workflow/profiles/default`) in the same test: CPU runs are deterministic on one machine.
  `REPTILE_TF_SMOKE_RUN=.cache/smoke` compares with the local run `make smoke` made instead (CI
  runs `make smoke-check` first and passes it, saving one smoke run; both under one
  REPTILE_TF_AUTOTUNE_CACHE, so that they take the same conv paths).

Never skipped: without root or without a package mirror to install SLURM from, the test fails
and says why. About 8 minutes on an idle 2-core machine (two smoke runs; one fetch + prepare of
Omniglot into data/ when it is not there yet).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "ci" / "slurm" / "local-cluster.sh"
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
LOCAL_PROFILE = ROOT / "workflow" / "profiles" / "default" / "config.yaml"
TABLE = "smoke/table2_omniglot"
LOCK = Path("/tmp/reptile-tf-test-slurm.lock")
# Safety nets only: a smoke run takes 3-5 minutes.
RUN_TIMEOUT = 1200


def slurm_requirements() -> list[Requirement]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [Requirement(r) for r in extras["slurm"]]


def _unmet(requirements: list[Requirement]) -> list[Requirement]:
    unmet = []
    for req in requirements:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(req)
            continue
        if not req.specifier.contains(version, prereleases=True):
            unmet.append(req)
    return unmet


@pytest.fixture(scope="module")
def slurm_plugin():
    """The `slurm` extra of pyproject.toml, installed into this interpreter's environment if missing
    (`make test` installs only the `test` extra)."""
    unmet = _unmet(slurm_requirements())
    if unmet:
        cmd = [sys.executable, "-m", "pip", "install", "-q", *map(str, unmet)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or _unmet(unmet):
            pytest.fail(f"could not install the `slurm` extra ({' '.join(cmd)}):\n{result.stdout[-2000:]}"
                        f"{result.stderr[-2000:]}")
        importlib.invalidate_caches()


def clean_env() -> dict[str, str]:
    """The environment of the Snakemake runs: .venv/bin first on PATH (the SLURM jobs inherit it:
    the plugin submits with `sbatch --export=ALL`, and the rules call `reptile-tf`), no settings
    that would point SLURM's commands at another cluster, the offline data mirror when beside us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mirror = ROOT.parent / "shared" / "data"
    if not env.get("REPTILE_TF_MIRROR") and mirror.is_dir():
        env["REPTILE_TF_MIRROR"] = str(mirror)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_cluster_script(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env())


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory, slurm_plugin):
    """A running single-node cluster (ci/slurm/local-cluster.sh), stopped after the module."""
    LOCK.touch(exist_ok=True)
    lock = LOCK.open("r")
    deadline = time.monotonic() + 1800
    while True:  # another test session on this machine may be using the cluster
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test session held {LOCK} (the local SLURM cluster) for 30 minutes")
            time.sleep(5)
    state = tmp_path_factory.mktemp("slurm-state")
    try:
        result = _run_cluster_script("start", str(state), timeout=900)
        if result.returncode != 0:
            _run_cluster_script("stop", str(state), timeout=300)
            pytest.fail("could not install or start the local SLURM cluster (ci/slurm/local-cluster.sh start; "
                        f"needs root and Debian's package mirror for slurm-wlm + munge):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        yield state
    finally:
        stopped = _run_cluster_script("stop", str(state), timeout=300)
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def snakemake(profile: str, out: Path, log: Path) -> str:
    """The smoke preset through `profile`, outputs under `out`; its full output, also in `log`."""
    cmd = [sys.executable, "-m", "snakemake", "--profile", profile, "--configfile", "workflow/config/smoke.yaml",
           "--config", f"runs_dir={out}/runs", f"results_dir={out}/results", f"logs_dir={out}/logs"]
    with log.open("w") as handle:
        result = subprocess.run(cmd, cwd=ROOT, env=clean_env(), stdout=handle, stderr=subprocess.STDOUT,
                                text=True, timeout=RUN_TIMEOUT)
    text = log.read_text()
    assert result.returncode == 0, f"{' '.join(cmd)} failed (full output: {log}):\n{text[-6000:]}"
    return text


def local_smoke_run() -> Path | None:
    """The local smoke run named by REPTILE_TF_SMOKE_RUN (its table checked present), else None."""
    given = os.environ.get("REPTILE_TF_SMOKE_RUN")
    if not given:
        return None
    root = Path(given).resolve()
    if not (root / "results" / f"{TABLE}.csv").is_file():
        pytest.fail(f"REPTILE_TF_SMOKE_RUN={given} holds no results/{TABLE}.csv: point it at the output of "
                    "`make smoke` (.cache/smoke), or unset it to run the local smoke pipeline here")
    return root


def declared_jobs(output: str) -> dict[str, dict]:
    """Snakemake's own account of each job it ran: {jobid: rule, local, threads, resources}."""
    jobs = {}
    for match in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n)+)", output, re.MULTILINE):
        info = dict(re.findall(r"^    (\w+): (.*)$", match.group(3), re.MULTILINE))
        resources = dict(item.split("=", 1) for item in info.get("resources", "").split(", ") if "=" in item)
        jobs[info["jobid"]] = {"rule": match.group(2), "local": bool(match.group(1)),
                               "threads": int(info.get("threads", 1)), "resources": resources,
                               "wildcards": info.get("wildcards", "")}
    return jobs


def slurm_jobs(name: str) -> dict[str, dict[str, str]]:
    """slurmctld's record of every job named `name` (the plugin names all jobs of a run by its run ID)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True,
                         env=clean_env(), check=True, timeout=60).stdout
    jobs = {}
    for line in out.splitlines():
        record = dict(field.split("=", 1) for field in line.split() if "=" in field)
        if record.get("JobName") == name:
            jobs[record["JobId"]] = record
    return jobs


def slurm_time(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    clock = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


def smoke_config() -> dict:
    """workflow/config/config.yaml with smoke.yaml over it (Snakemake merges them recursively)."""
    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    load = lambda name: yaml.safe_load((ROOT / "workflow" / "config" / name).read_text())  # noqa: E731
    return merge(load("config.yaml"), load("smoke.yaml"))


# ---------------------------------------------------------------------------------------------
# The profiles and the plugin (seconds)


def test_slurm_extra_names_the_executor_plugin(slurm_plugin):
    names = {r.name for r in slurm_requirements()}
    assert "snakemake-executor-plugin-slurm" in names
    assert not _unmet(slurm_requirements())


def test_slurm_profile_options_exist_and_fit_the_test_cluster(slurm_plugin):
    from snakemake_executor_plugin_slurm import ExecutorSettings

    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    assert profile["executor"] == "slurm"
    # Without slurmdbd, sacct never reports a job: the status command must be squeue.
    assert profile["slurm-status-command"] == "squeue"
    plugin_options = {f.name for f in fields(ExecutorSettings)}
    for key in profile:
        if key.startswith("slurm-"):
            assert key[len("slurm-"):].replace("-", "_") in plugin_options, f"no plugin option for {key}"
    # Site settings stay placeholders: the test cluster has no account and a default partition.
    defaults = profile["default-resources"]
    assert "slurm_account" not in defaults and "slurm_partition" not in defaults
    assert {"mem_mb", "runtime"} <= set(defaults)
    assert profile["latency-wait"] >= 30 and profile["jobs"] >= 1
    # The plugin falls back from squeue to sacct when MinJobAge < 3x the first status-check interval.
    conf = (ROOT / "ci" / "slurm" / "slurm.conf").read_text()
    min_job_age = int(re.search(r"^MinJobAge=(\d+)", conf, re.MULTILINE).group(1))
    assert min_job_age >= 3 * profile["slurm-init-seconds-before-status-checks"]


def test_local_profile_holds_flags_only():
    profile = yaml.safe_load(LOCAL_PROFILE.read_text())
    assert profile["cores"] == "all" and profile["rerun-incomplete"] and profile["printshellcmds"]
    assert "executor" not in profile
    # Per-rule threads and resources live in the presets' `resources:` section.
    assert not {"default-resources", "set-resources", "set-threads", "resources"} & set(profile)


class _Resources(dict):
    __getattr__ = dict.__getitem__


def test_paper_preset_training_job_asks_sbatch_for_its_gpu_cpus_memory_and_time(slurm_plugin):
    # What `--profile workflow/profiles/slurm --configfile workflow/config/paper.yaml` submits for a
    # training job: the rule's `gpu` resource becomes --gpus (the plugin's own mapping).
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = yaml.safe_load((ROOT / "workflow" / "config" / "config.yaml").read_text())
    config.update(yaml.safe_load((ROOT / "workflow" / "config" / "paper.yaml").read_text()) or {})
    train = config["resources"]["train"]
    assert train["gpu"] >= 1
    job = SimpleNamespace(threads=train["threads"], name="train", is_group=lambda: False,
                          resources=_Resources(gpu=train["gpu"], mem_mb=train["mem_mb"], runtime=train["runtime"]))
    params = {"run_uuid": "run", "slurm_logfile": "x.log", "comment_str": "rule_train", "account": "",
              "partition": "", "workdir": str(ROOT)}
    call = get_submit_command(job, params) + set_gres_string(job)
    assert f"--cpus-per-task={train['threads']}" in call
    assert f"--mem {train['mem_mb']}" in call and f"-t {train['runtime']}" in call
    assert f"--gpus={train['gpu']}" in call


# ---------------------------------------------------------------------------------------------
# The smoke preset on the cluster (minutes)


@pytest.mark.slow
def test_smoke_preset_runs_as_slurm_jobs_and_matches_a_local_run(slurm_cluster, tmp_path):
    local_run = local_smoke_run()  # checked before the cluster run: a wrong path fails in seconds
    started = time.monotonic()
    output = snakemake("workflow/profiles/slurm", tmp_path / "slurm", tmp_path / "slurm-run.log")
    slurm_minutes = (time.monotonic() - started) / 60

    run_id = re.search(r"^SLURM run ID: (\S+)$", output, re.MULTILINE).group(1)
    declared = declared_jobs(output)
    submitted = dict(re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", output, re.MULTILINE))
    # Every job ran on the cluster except the workflow's `localrules` (fetch, track_init, track,
    # tables) and the target rule `all`, which runs nothing; the compute jobs never stay local.
    local = {j["rule"] for j in declared.values() if j["local"]}
    assert "all" in local and not local & {"prepare", "train", "evaluate"}, declared
    assert set(submitted) == {jobid for jobid, j in declared.items() if not j["local"]}
    assert {"train", "evaluate"} <= {declared[jobid]["rule"] for jobid in submitted}

    # Each job's allocation as slurmctld recorded it, against what Snakemake declared for it.
    records = slurm_jobs(run_id)
    assert set(records) == set(submitted.values()), (records.keys(), submitted)
    for jobid, slurm_id in submitted.items():
        job, record = declared[jobid], records[slurm_id]
        what = f"{job['rule']} ({job['wildcards']}), SLURM job {slurm_id}"
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", what
        assert record["Comment"].startswith(f"rule_{job['rule']}"), what
        assert record["Partition"] == "debug", what
        assert record["CPUs/Task"] == str(job["threads"]), what
        assert record["MinMemoryNode"] == f"{job['resources']['mem_mb']}M", what
        assert record["TimeLimit"] == slurm_time(int(job["resources"]["runtime"])), what
        assert "gpu" not in record.get("TRES", "") and int(job["resources"].get("gpu", 0)) == 0, what
    # ... and what Snakemake declared is what the preset says.
    resources = smoke_config()["resources"]
    for jobid in submitted:
        job = declared[jobid]
        if job["rule"] in ("train", "evaluate"):
            spec = resources[job["rule"]]
            assert (job["threads"], int(job["resources"]["mem_mb"]), int(job["resources"]["runtime"])) == \
                (spec["threads"], spec["mem_mb"], spec["runtime"]), job

    # The same preset locally: the same numbers, to the last digit. CI has just made that run
    # (`make smoke` writes .cache/smoke, laid out as `snakemake` below does) and passes it in
    # REPTILE_TF_SMOKE_RUN instead of paying for it twice.
    started = time.monotonic()
    if local_run is None:
        local_run = tmp_path / "local"
        snakemake("workflow/profiles/default", local_run, tmp_path / "local-run.log")
    local_minutes = (time.monotonic() - started) / 60
    # The conv path of each run, as its config.json records it: the SLURM jobs started together on an
    # empty autotune cache, the local ones read it. Before the cache was locked two jobs could time
    # one shape and pick two paths (other rounding: CI once saw the FOMAML cell move by 0.1).
    roots = {"slurm": tmp_path / "slurm", "local": local_run}
    paths = {side: {str(c.relative_to(root)): json.loads(c.read_text())["environment"].get("conv_path")
                    for c in sorted((root / "runs").rglob("config.json"))} for side, root in roots.items()}
    assert paths["slurm"] == paths["local"] and paths["slurm"], (
        f"{paths}: the local run took other conv paths"
        + (" (REPTILE_TF_SMOKE_RUN: make it with this session's REPTILE_TF_AUTOTUNE_CACHE, as .ci/run does)"
           if os.environ.get("REPTILE_TF_SMOKE_RUN") else ""))
    slurm_table = tmp_path / "slurm" / "results" / f"{TABLE}.csv"
    local_table = local_run / "results" / f"{TABLE}.csv"
    diff = subprocess.run([str(Path(sys.executable).parent / "reptile-tf"), "tables", "diff", str(local_table),
                           str(slurm_table), "--tolerance", "0"], capture_output=True, text=True, env=clean_env(),
                          timeout=300)
    assert diff.returncode == 0 and "SAME" in diff.stdout, diff.stdout + diff.stderr
    tasks = f"{TABLE}_tasks.csv"
    assert (tmp_path / "slurm" / "results" / tasks).read_bytes() == (local_run / "results" / tasks).read_bytes()
    print(f"smoke preset: {slurm_minutes:.1f} min on SLURM ({len(submitted)} jobs), {local_minutes:.1f} min locally")

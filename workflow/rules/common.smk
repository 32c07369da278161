# Paths, the job grid and input functions shared by the rules. Everything is derived from the
# validated config; nothing here runs a job.
import importlib
import os
import shutil
import sys

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod

# Every rule calls `reptile-tf`, found on the PATH Snakemake runs with (SLURM jobs inherit it).
# With `--sdm conda` each job's own environment brings it instead.
if (shutil.which("reptile-tf") is None
        and DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method):
    raise WorkflowError(
        "`reptile-tf` is not on PATH, and every rule of this workflow calls it. Activate the project's "
        "virtualenv (`. .venv/bin/activate`), run the pipeline through make (`make reproduce`, `make smoke`), "
        "or put the virtualenv first on PATH: `PATH=$PWD/.venv/bin:$PATH snakemake ...`."
    )

PRESET = config["preset"]
RUNS = f"{config['runs_dir']}/{PRESET}"
RESULTS = f"{config['results_dir']}/{PRESET}"
LOGS = f"{config['logs_dir']}/{PRESET}"
RAW = config["data"]["raw_dir"]
TFDS = config["data"]["tfds_dir"]
MLFLOW_DIR = f"{config['results_dir']}/mlflow"
# The workflow's quick benchmark (no peers) of this preset; `benchmarks/run_full.sh` writes the
# committed runs per CPU class into results/benchmarks/<class>/, which reptile_tf.cost reads.
BENCH_OUT = f"{RESULTS}/throughput"
THEORY_OUT = f"{RESULTS}/theory"
# relative to the rule files in workflow/rules/
CONDA_ENV = "../envs/reptile-tf.yaml"
TRACKING_URI = config["tracking"]["uri"] or f"sqlite:///{MLFLOW_DIR}/mlflow.db"
RUN_DIR = os.path.join(RUNS, "{dataset}_{ways}w{shots}s", "{algorithm}", "seed{seed}")
RUN_NAME = "{dataset}_{ways}w{shots}s_{algorithm}_seed{seed}"
# tables.py file stems per dataset (reptile_tf.tables.TABLES)
TABLE_STEMS = {"mini_imagenet": "table1_mini_imagenet", "omniglot": "table2_omniglot"}
ALGORITHMS = config["grid"]["algorithms"]
SEEDS = config["grid"]["seeds"]
SETTINGS = config["grid"]["settings"]
DATASETS = sorted({s["dataset"] for s in SETTINGS})
# Algorithms whose seeds train together: one job per (setting, algorithm) trains every seed of the
# grid in one compiled call (`reptile-tf train --seeds`), each into its own run directory, each as
# it trains alone. Measured for 3 seeds (benchmarks/seed_groups.py, results/benchmarks/<class>/
# seed_groups.md): Reptile and FOMAML gain, MAML (32 tasks already) loses, so it trains seed by seed.
SEED_GROUP_ALGORITHMS = [a for a in ALGORITHMS if a in config["train"]["seed_groups"]] if len(SEEDS) > 1 else []
SEED_GROUP_NAME = "{dataset}_{ways}w{shots}s_{algorithm}_seeds" + "-".join(str(seed) for seed in SEEDS)



def _import_reptile_tf(module):
    """reptile_tf.<module>, imported without leaving the package's environment defaults (oneDNN,
    inter-op threads: reptile_tf/__init__.py) in the environment the jobs inherit: a job then
    records the oneDNN choice as the package's, not as the user's."""
    before = dict(os.environ)
    try:
        try:
            return importlib.import_module(f"reptile_tf.{module}")
        except ImportError:  # a checkout whose package is not installed in this Python
            sys.path.insert(0, workflow.basedir)
            return importlib.import_module(f"reptile_tf.{module}")
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


wildcard_constraints:
    dataset=_import_reptile_tf("datasets").wildcard_pattern(),
    ways=r"\d+",
    shots=r"\d+",
    algorithm="reptile|fomaml|maml",
    seed=r"\d+",


def find_setting(wildcards):
    """The grid entry of a job's (dataset, ways, shots)."""
    for setting in SETTINGS:
        if (setting["dataset"], str(setting["ways"]), str(setting["shots"])) == (
            wildcards.dataset,
            str(wildcards.ways),
            str(wildcards.shots),
        ):
            return setting
    raise ValueError(f"{wildcards.dataset} {wildcards.ways}-way {wildcards.shots}-shot is not in grid.settings")


def job_scopes(wildcards):
    """(config key path, scope) of every place that configures a job, lowest precedence first:
    budget < budget.per_algorithm < the grid setting < its per_algorithm."""
    setting = find_setting(wildcards)
    index = next(i for i, s in enumerate(SETTINGS) if s is setting)
    budget, algorithm = config["budget"], wildcards.algorithm
    return [
        ("budget", budget),
        (f"budget.per_algorithm.{algorithm}", (budget.get("per_algorithm") or {}).get(algorithm) or {}),
        (f"grid.settings.{index}", setting),
        (f"grid.settings.{index}.per_algorithm.{algorithm}", (setting.get("per_algorithm") or {}).get(algorithm) or {}),
    ]


def value_origin(wildcards, key):
    """(config key path, value) of the scope whose `key` wins for the job; (None, None) = unset (paper)."""
    for path, scope in reversed(job_scopes(wildcards)):
        if scope.get(key) is not None:
            return f"{path}.{key}", scope[key]
    return None, None


def budget_value(wildcards, key):
    """The job's `key` (iterations, eval_tasks, train_as, extra_seeds...) by `job_scopes` precedence;
    None = unset (the paper's budget, the algorithm's own recipe, no extra seeds)."""
    return value_origin(wildcards, key)[1]


def merged_overrides(wildcards):
    """Settings overrides, merged in `job_scopes` precedence."""
    merged = {}
    for _, scope in job_scopes(wildcards):
        merged.update(scope.get("overrides") or {})
    return merged


def recipe_of(wildcards):
    """How the job's algorithm trains (`train_as`, same precedence as the budget; default: itself):
    a reptile_tf.settings.RECIPES entry, checked when the workflow loads (`check_overrides`)."""
    return _settings_table().RECIPES[budget_value(wildcards, "train_as") or wildcards.algorithm]


def trained_algorithm(wildcards):
    """`reptile-tf train --algorithm` of a job: its recipe's (e.g. maml for FOMAML as Finn's code)."""
    return recipe_of(wildcards).algorithm


def flag(name, value):
    """`--name-with-dashes value`; booleans as --name / --no-name."""
    dashed = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return dashed if value else f"--no-{name.replace('_', '-')}"
    return f"{dashed} {value}"


def train_flags(wildcards):
    """Budget, hyperparameter overrides and run options of one training job, as CLI flags."""
    flags = []
    iterations = budget_value(wildcards, "iterations")
    if iterations is not None:
        flags.append(flag("iterations", iterations))
    overrides = {**merged_overrides(wildcards), **recipe_of(wildcards).fixed}
    flags += [flag(k, v) for k, v in sorted(overrides.items()) if k != "iterations"]
    train = config["train"]
    if train["xla"]:
        flags.append("--xla")
    for option in ("log_every", "checkpoint_every", "val_every", "val_tasks", "keep_checkpoints"):
        if train.get(option) is not None:
            flags.append(flag(option, train[option]))
    if wildcards.dataset == "omniglot":
        flags.append(flag("protocol", config["data"]["protocol"]))
    return " ".join(flags)


def eval_flags(wildcards):
    tasks = budget_value(wildcards, "eval_tasks")
    modes = config["grid"]["eval_modes"]
    mode = "both" if len(modes) == 2 else modes[0]
    return " ".join(([flag("tasks", tasks)] if tasks is not None else []) + [flag("mode", mode)])


def fetch_flags(wildcards):
    flags = [flag("mirror", m) for m in config["data"]["mirrors"]]
    source = config["data"]["sources"].get(wildcards.dataset)
    if source:
        flags.append(flag("source", source))
    return " ".join(flags)


def parent_of_output(wildcards, output):
    return os.path.dirname(output[0])


def parent_of_input(wildcards, input):
    return os.path.dirname(input[0])


def resource(rule_name, key):
    """`resources.<rule_name>.<key>` of the preset: threads, mem_mb, runtime (minutes) or gpu.

    config.yaml, the base of every preset, sets each rule's; a preset overrides some. They belong
    to the preset, not to a Snakemake profile: they differ between presets (a profile is chosen
    independently of --configfile, and `snakemake --cores all --configfile ...` uses none), and
    `threads` sizes each job's TensorFlow intra-op pool (TF_NUM_INTRAOP_THREADS), part of how a
    committed reference run was made. A profile still overrides them for a site (`set-threads`,
    `set-resources`; workflow/profiles/slurm).
    """
    return config["resources"][rule_name][key]


def train_threads(wildcards):
    """`threads` of a training job: the preset's (`resources.train.threads`), except one for the
    sequential inner Adam (inner_adam_mode: sequential, the official Reptile code's): it runs a
    meta-batch's tasks one after another, ops too small to share, and a second intra-op thread made
    its meta-iteration slower on Zen 4, not faster (1.40x 1-shot, 1.09x 5-shot in
    results/benchmarks/avx512/inner_adam_threads.md; 0.15 against 0.082 s in a paper_cpu run), so
    two such jobs run side by side instead."""
    from types import SimpleNamespace

    job = SimpleNamespace(dataset=wildcards.dataset, ways=int(wildcards.ways), shots=int(wildcards.shots),
                          algorithm=wildcards.algorithm)
    threads = resource("train", "threads")
    if job_settings(_settings_table(), job).inner_adam_mode == "sequential":
        return min(threads, 1)
    return threads


def tfds_root(dataset):
    """The TFDS data dir holding `dataset`: Omniglot prepared with a non-default resize filter
    (data.omniglot_resize_filter; `nearest` = the official code's preprocessing) gets its own,
    since `reptile-tf prepare` keeps one filter per data dir."""
    resize = config["data"]["omniglot_resize_filter"]
    if dataset == "omniglot" and resize != "lanczos":
        return f"{TFDS}_{resize}"
    return TFDS


def prepared(wildcards):
    """The TFDS dataset a job reads (built by the prepare rule)."""
    return f"{tfds_root(wildcards.dataset)}/{wildcards.dataset}"


def ancient_once_made(path, made):
    """An input `path`, marked `ancient` when the job's outputs `made` all exist already. A finished
    job's outputs (the committed run directories under results/paper_cpu/runs, its theory) then
    stay finished when an input is newer, as in a fresh clone: the data prepared after them, or a
    run's DONE checked out after the job's committed benchmark file (Snakemake dates a job's
    outputs by the oldest, benchmark included). `make reproduce` prepares the data in a first
    invocation: within one, Snakemake reruns every job downstream of a job it runs. Only then:
    Snakemake 9 plans no job downstream of an `ancient` input whose producer runs. Train checks
    the data digest against config.json whenever it resumes; delete an output (or --forcerun the
    rule) to make it again."""
    return ancient(path) if all(os.path.exists(p) for p in made) else path


def prepared_for(output_name):
    """Input function: the prepared data, `ancient` once the job's run directories hold `output_name`."""

    def data(wildcards):
        return ancient_once_made(prepared(wildcards), [os.path.join(d, output_name) for d in job_run_dirs(wildcards)])

    return data


def run_file_for(name, output_name):
    """Input function: the run directory's file `name` (its DONE), `ancient` once it holds `output_name`."""

    def path(wildcards):
        (run_dir,) = job_run_dirs(wildcards)
        return ancient_once_made(os.path.join(run_dir, name), [os.path.join(run_dir, output_name)])

    return path


def job_run_dirs(wildcards):
    """The run directories of a job: its own, or every seed's for a seed group (no `seed` wildcard)."""
    values = dict(wildcards.items())
    seeds = [values.pop("seed")] if "seed" in values else SEEDS
    return [RUN_DIR.format(**values, seed=seed) for seed in seeds]


def seed_group_out(wildcards):
    """`--out` of a seed group: the run directory with `{seed}` left for `reptile-tf train --seeds`."""
    return RUN_DIR.format(**dict(wildcards.items()), seed="{seed}")


def data_dir_of(wildcards):
    """`--data-dir` of a train or evaluate job."""
    return tfds_root(wildcards.dataset)


def prepare_flags(wildcards):
    """`--resize-filter` when rule prepare builds the dir of a non-default Omniglot filter."""
    if wildcards.variant:
        return flag("resize_filter", wildcards.variant.lstrip("_"))
    return ""


def job_seeds(wildcards):
    """The seeds of a (setting, algorithm): grid.seeds, then its `extra_seeds` (`job_scopes`
    precedence). Seed groups (train_seed_group) cover grid.seeds only, so extra seeds train one
    by one in rule train, and a seed added later never reruns a finished group."""
    extra = budget_value(wildcards, "extra_seeds") or []
    return SEEDS + [seed for seed in extra if seed not in SEEDS]


def grid_jobs():
    """(dataset, ways, shots, algorithm, seed) for every training job in the grid."""
    from types import SimpleNamespace

    cells = [dict(dataset=s["dataset"], ways=s["ways"], shots=s["shots"], algorithm=a) for s in SETTINGS for a in ALGORITHMS]
    return [dict(cell, seed=seed) for cell in cells for seed in job_seeds(SimpleNamespace(**cell))]


def run_files(name):
    """`name` (e.g. eval.json) in every run directory of the grid."""
    return [os.path.join(RUN_DIR, name).format(**job) for job in grid_jobs()]


def table_outputs():
    # <stem>_tasks.csv: the per-task accuracies that `reptile-tf tables diff --paired` compares.
    tables = [f"{RESULTS}/{TABLE_STEMS[d]}{suffix}" for d in DATASETS for suffix in (".md", ".csv", "_tasks.csv")]
    curves = sorted(
        {f"{RESULTS}/learning_curves_{s['dataset']}_{s['ways']}w{s['shots']}s.png" for s in SETTINGS}
    )
    return tables + curves


def all_targets():
    targets = table_outputs()
    if config["tracking"]["enabled"]:
        targets += run_files("mlflow.json")
    if config["theory"]["enabled"]:
        targets.append(THEORY_OUT)
    if config["bench"]["enabled"]:
        targets.append(BENCH_OUT)
    return targets


# ------------------------------------------------------------------ overrides, checked at load

# The schema only says `overrides` maps names to scalars; which names and values `reptile-tf
# train` accepts comes from its own Settings table (reptile_tf.settings), asked here before any
# job is planned, so a typo or a bad value fails `snakemake -n` instead of a training job, and
# the config and the CLI cannot drift apart.


def _settings_table():
    """reptile_tf.settings: the Settings table, its checks and `override_value`."""
    return _import_reptile_tf("settings")


def override_scopes():
    """(config key path, scope dict) of every place an `overrides` mapping may sit."""
    budget = config["budget"]
    yield "budget", budget
    for algorithm, scope in sorted((budget.get("per_algorithm") or {}).items()):
        yield f"budget.per_algorithm.{algorithm}", scope or {}
    for index, setting in enumerate(SETTINGS):
        yield f"grid.settings.{index}", setting
        for algorithm, scope in sorted((setting.get("per_algorithm") or {}).items()):
            yield f"grid.settings.{index}.per_algorithm.{algorithm}", scope or {}


def override_origins(job):
    """field -> config key path of the override that wins for `job` (merged_overrides' precedence)."""
    return {key: f"{path}.overrides.{key}" for path, scope in job_scopes(job) for key in scope.get("overrides") or {}}


def config_error(key, message):
    return WorkflowError(
        f"invalid workflow config at key '{key}': {message}. Fix the config file (hyperparameter names "
        "and values: `reptile-tf train --help`)."
    )


def job_settings(table, job):
    """The Settings one grid job trains with: the paper's, then the config's overrides and budget."""
    recipe = recipe_of(job)
    overrides = {k: table.override_value(k, v) for k, v in merged_overrides(job).items()} | recipe.fixed
    iterations = budget_value(job, "iterations")
    if iterations is not None:
        overrides["iterations"] = iterations
    return table.merge_settings(recipe.algorithm, job.dataset, job.ways, job.shots, overrides)


def check_overrides():
    """Names and types of every `overrides` entry, then every grid job's resolved settings."""
    from types import SimpleNamespace

    table = _settings_table()
    UserError = table.UserError
    for path, scope in override_scopes():
        for key, value in (scope.get("overrides") or {}).items():
            if key == "iterations":
                # train_flags passes the budget's `iterations`, never overrides.iterations
                raise config_error(f"{path}.overrides.iterations",
                                   f"iterations={value!r} belongs beside `overrides`: set `{path}.iterations`")
            try:
                table.override_value(key, value)
            except UserError as err:
                raise config_error(f"{path}.overrides.{key}", str(err)) from None
    for job in grid_jobs():
        job = SimpleNamespace(**job)
        label = f"{job.dataset} {job.ways}-way {job.shots}-shot {job.algorithm}"
        index = next(i for i, s in enumerate(SETTINGS) if s is find_setting(job))
        try:
            settings = job_settings(table, job)
        except UserError as err:
            raise config_error(f"grid.settings.{index}", str(err)) from None
        method = table.table_method(settings.algorithm, settings.first_order)
        if method != job.algorithm:  # its results would report in another row of the tables
            raise config_error(value_origin(job, "train_as")[0] or f"grid.settings.{index}",
                               f"{job.algorithm} trained as {settings.algorithm} (first_order={settings.first_order}) "
                               f"reports in the {method} row of the tables, not the {job.algorithm} row (job {label})")
        problems = settings.problems()
        if problems:
            origins = override_origins(job)
            field, message = problems[0]
            raise config_error(origins.get(field, f"grid.settings.{index}"), f"{message} (job {label})")
        problem = settings.seed_group_problem(len(SEEDS)) if job.algorithm in SEED_GROUP_ALGORITHMS else None
        if problem:
            raise config_error("train.seed_groups", f"{problem} (job {label}): take {job.algorithm} out of "
                               "train.seed_groups, or set its inner_adam_mode to parallel_mean")


check_overrides()


# ------------------------------------------------------------------ the plan's cost, said before it starts

# When the jobs still to run add up to more than `plan_notice` hours (default 4) of a 2-core CPU,
# say so before anything runs: jobs by rule, hours projected from the measured throughput
# (reptile_tf.cost: results/benchmarks/), this machine's device, and how to choose a smaller
# preset. Only the main Snakemake process says it (a cluster executor's jobs parse this file
# again), on stderr (stdout stays clean for `snakemake --dag | dot`). The dry run says it too.
# `--config plan_notice=False` silences it.

# preset -> (hours on 2 cores, how to choose it); quick measured (results/quick/README.md), smoke
# measured, paper_cpu projected
SMALLER_PRESETS = {
    "quick": (1.0, "`make reproduce` (= --configfile workflow/config/quick.yaml; the full grid at small "
                   "budgets, about 1 h on 2 cores: results/quick/README.md)"),
    "smoke": (0.1, "--configfile workflow/config/smoke.yaml (one setting, tiny budgets: minutes)"),
    "paper_cpu": (48.0, "`make reproduce PRESET=paper_cpu` (Omniglot 5-way at the papers' budgets, seed 0, "
                        "3 seeds of Reptile 1-shot, 2 of Reptile and MAML 5-shot, section 6.2: about 48 h "
                        "projected)"),
}


def checkpointed_iteration(run_dir):
    """The newest checkpoint's iteration in a run directory (0 if none): where training resumes."""
    return _import_reptile_tf("rundir").latest_checkpoint_iteration(run_dir)


def plan_projection():
    """Per rule: jobs in the grid, jobs whose output is missing, projected hours and FLOPs of those."""
    from types import SimpleNamespace

    from reptile_tf import cost

    table = _settings_table()
    throughput = cost.load_throughput(config["results_dir"])
    modes = tuple(config["grid"]["eval_modes"])
    plan = {step: {"planned": 0, "to_run": 0, "hours": 0.0, "flops": 0.0, "sizes": []}
            for step in ("train", "evaluate", "theory", "bench")}
    for job in grid_jobs():
        run_dir = RUN_DIR.format(**job)
        settings = job_settings(table, SimpleNamespace(**job))
        entry = plan["train"]
        entry["planned"] += 1
        if not os.path.exists(os.path.join(run_dir, "DONE")):
            remaining = max(0, settings.iterations - checkpointed_iteration(run_dir))
            entry["to_run"] += 1
            seconds = remaining * cost.seconds_per_iteration(settings, throughput)
            entry["hours"] += (cost.JOB_STARTUP_S + seconds) / 3600
            entry["flops"] += cost.training_flops(settings, remaining)
            entry["sizes"].append(settings.iterations)
        entry = plan["evaluate"]
        entry["planned"] += 1
        if not os.path.exists(os.path.join(run_dir, "eval.json")):
            tasks = budget_value(SimpleNamespace(**job), "eval_tasks") or settings.eval_tasks
            entry["to_run"] += 1
            seconds = tasks * cost.seconds_per_eval_task(settings, modes, throughput)
            entry["hours"] += (cost.JOB_STARTUP_S + seconds) / 3600
            entry["flops"] += cost.evaluation_flops(settings, tasks, modes)
            entry["sizes"].append(tasks)
    for step, output, hours in (("theory", THEORY_OUT, cost.THEORY_HOURS[config["theory"]["budget"]]),
                                ("bench", BENCH_OUT, cost.BENCH_QUICK_HOURS)):
        if config[step]["enabled"]:
            plan[step]["planned"] = 1
            if not os.path.exists(output):
                plan[step].update(to_run=1, hours=hours)
    return plan, throughput


def plan_notice():
    """The statement of a large plan (None when the projection stays under `plan_notice` hours)."""
    from reptile_tf import cost

    threshold = config.get("plan_notice", 4)
    if threshold is False or threshold is None:
        return None
    if threshold is True:
        threshold = 4
    plan, throughput = plan_projection()
    total = sum(entry["hours"] for entry in plan.values())
    if total <= threshold:
        return None
    lines = [f"reptile-tf: preset '{PRESET}' is a large plan: about {cost.format_hours(total)} of computing "
             "on a 2-core CPU, before fetch/prepare/track/tables (minutes)."]
    units = {"train": "meta-iterations", "evaluate": f"tasks x {len(config['grid']['eval_modes'])} mode(s)"}
    for step, entry in plan.items():
        if not entry["planned"]:
            continue
        sizes = entry["sizes"]
        size = ""
        if sizes and step in units:
            low, high = min(sizes), max(sizes)
            size = f", {low:,}" + (f"-{high:,}" if high != low else "") + f" {units[step]} each"
        hours = f"~{cost.format_hours(entry['hours'])}{size}" if entry["to_run"] else "done"
        lines.append(f"  {step:<9} {entry['to_run']:>3} of {entry['planned']:>3} job(s) to run: {hours}")
    lines.append(f"  Projected from measured throughput ({throughput.source}; an idle 2-core CPU, XLA off): "
                 "a busier or slower machine takes longer.")
    gpus = cost.detect_gpus()
    here = f"{len(gpus)} GPU(s): {', '.join(gpus)}" if gpus else "CPU only, no NVIDIA GPU found"
    lines.append(f"  This machine: {here}; {cost.cpu_description()}.")
    total_flops = sum(entry["flops"] for entry in plan.values())
    asks_gpu = resource("train", "gpu")
    if gpus or asks_gpu:
        fast, slow = cost.gpu_hours_range(total_flops)
        lines.append(f"  On GPUs: about {cost.format_hours(fast)} to {cost.format_hours(slow)} of one A100 "
                     "(FLOP count at 20% to 5% of its peak; a projection, no GPU has been measured)"
                     + (f"; each training job asks for gpu={asks_gpu} (resources.train.gpu)" if asks_gpu else "")
                     + ".")
    if config["train"]["xla"] and not gpus:
        lines.append("  train.xla is true: on a CPU, XLA makes the meta-step about 10x slower "
                     "(results/benchmarks/<CPU class>/README.md); set train.xla: false for CPU runs.")
    smaller = [text for name, (hours, text) in SMALLER_PRESETS.items() if name != PRESET and hours < total]
    if smaller:
        lines.append("  For a smaller run: " + "; or ".join(smaller) + ".")
    lines.append("  This note: shown above plan_notice hours (now "
                 f"{threshold:g}); `--config plan_notice=False` silences it.")
    return "\n".join(lines)


# (getattr: a Snakemake without the attribute prints it in every process, which is harmless)
if getattr(workflow, "is_main_process", True):
    _notice = plan_notice()
    if _notice:
        print(_notice, file=sys.stderr, flush=True)

# Paths, the job grid and input functions shared by the rules. Everything is derived from the
# validated config; nothing here runs a job.
import os
import shutil
import sys

from snakemake.exceptions import WorkflowError



envvars:
    "PATH",


# Rules call `reptile-tf`. When it is not on PATH (e.g. `.venv/bin/snakemake` run without an
# activated venv), use the one installed beside the Python running this snakemake.
if shutil.which("reptile-tf") is None:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

PRESET = config["preset"]
RUNS = f"{config['runs_dir']}/{PRESET}"
RESULTS = f"{config['results_dir']}/{PRESET}"
LOGS = f"{config['logs_dir']}/{PRESET}"
RAW = config["data"]["raw_dir"]
TFDS = config["data"]["tfds_dir"]
MLFLOW_DIR = f"{config['results_dir']}/mlflow"
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


wildcard_constraints:
    dataset="omniglot|mini_imagenet",
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


def budget_value(wildcards, key):
    """Precedence: setting.per_algorithm, setting, budget.per_algorithm, budget; None = paper."""
    setting = find_setting(wildcards)
    budget = config["budget"]
    for scope in (
        (setting.get("per_algorithm") or {}).get(wildcards.algorithm) or {},
        setting,
        (budget.get("per_algorithm") or {}).get(wildcards.algorithm) or {},
        budget,
    ):
        if scope.get(key) is not None:
            return scope[key]
    return None


def merged_overrides(wildcards):
    """Settings overrides: budget < budget.per_algorithm < setting < setting.per_algorithm."""
    setting = find_setting(wildcards)
    budget = config["budget"]
    merged = {}
    for scope in (
        budget,
        (budget.get("per_algorithm") or {}).get(wildcards.algorithm) or {},
        setting,
        (setting.get("per_algorithm") or {}).get(wildcards.algorithm) or {},
    ):
        merged.update(scope.get("overrides") or {})
    return merged


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
    flags += [flag(k, v) for k, v in sorted(merged_overrides(wildcards).items()) if k != "iterations"]
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


def resource(rule_name, key, default):
    return (config["resources"].get(rule_name) or {}).get(key, default)


def prepared(wildcards):
    """The TFDS dataset a job reads (built by rule prepare)."""
    return f"{TFDS}/{wildcards.dataset}"


def grid_jobs():
    """(dataset, ways, shots, algorithm, seed) for every training job in the grid."""
    return [
        dict(dataset=s["dataset"], ways=s["ways"], shots=s["shots"], algorithm=a, seed=seed)
        for s in SETTINGS
        for a in ALGORITHMS
        for seed in SEEDS
    ]


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
        targets.append(f"{config['results_dir']}/theory")
    if config["bench"]["enabled"]:
        targets.append(f"{config['results_dir']}/benchmarks")
    return targets


# ------------------------------------------------------------------ overrides, checked at load

# The schema only says `overrides` maps names to scalars; which names and values `reptile-tf
# train` accepts comes from its own Settings table (reptile_tf.train), asked here before any
# job is planned, so a typo or a bad value fails `snakemake -n` instead of a training job, and
# the config and the CLI cannot drift apart.


def _settings_table():
    """reptile_tf.train, imported without leaving its oneDNN default in the jobs' environment."""
    variable = "TF_ENABLE_ONEDNN_OPTS"
    before = os.environ.get(variable)
    try:
        try:
            from reptile_tf import train
        except ImportError:  # a checkout whose package is not installed in this Python
            sys.path.insert(0, workflow.basedir)
            from reptile_tf import train
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
    return train


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
    index = next(i for i, s in enumerate(SETTINGS) if s is find_setting(job))
    budget = config["budget"]
    origins = {}
    for path, scope in (
        ("budget", budget),
        (f"budget.per_algorithm.{job.algorithm}", (budget.get("per_algorithm") or {}).get(job.algorithm) or {}),
        (f"grid.settings.{index}", SETTINGS[index]),
        (f"grid.settings.{index}.per_algorithm.{job.algorithm}",
         (SETTINGS[index].get("per_algorithm") or {}).get(job.algorithm) or {}),
    ):
        for key in scope.get("overrides") or {}:
            origins[key] = f"{path}.overrides.{key}"
    return origins


def config_error(key, message):
    return WorkflowError(
        f"invalid workflow config at key '{key}': {message}. Fix the config file (hyperparameter names "
        "and values: `reptile-tf train --help`)."
    )


def check_overrides():
    """Names and types of every `overrides` entry, then every grid job's resolved settings."""
    from types import SimpleNamespace

    train = _settings_table()
    UserError = train.UserError
    for path, scope in override_scopes():
        for key, value in (scope.get("overrides") or {}).items():
            if key == "iterations":
                # train_flags passes the budget's `iterations`, never overrides.iterations
                raise config_error(f"{path}.overrides.iterations",
                                   f"iterations={value!r} belongs beside `overrides`: set `{path}.iterations`")
            try:
                train.override_value(key, value)
            except UserError as err:
                raise config_error(f"{path}.overrides.{key}", str(err)) from None
    for job in grid_jobs():
        job = SimpleNamespace(**job)
        label = f"{job.dataset} {job.ways}-way {job.shots}-shot {job.algorithm}"
        index = next(i for i, s in enumerate(SETTINGS) if s is find_setting(job))
        overrides = {k: train.override_value(k, v) for k, v in merged_overrides(job).items()}
        iterations = budget_value(job, "iterations")
        if iterations is not None:
            overrides["iterations"] = iterations
        try:
            settings = train.merge_settings(job.algorithm, job.dataset, job.ways, job.shots, overrides)
        except UserError as err:
            raise config_error(f"grid.settings.{index}", str(err)) from None
        problems = train.settings_problems(settings)
        if problems:
            origins = override_origins(job)
            field, message = problems[0]
            raise config_error(origins.get(field, f"grid.settings.{index}"), f"{message} (job {label})")


check_overrides()

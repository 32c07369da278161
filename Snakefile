# reptile-tf reproduction pipeline: fetch -> prepare -> train -> evaluate -> track -> tables,
# plus the theory checks and throughput benchmarks. Each rule calls one `reptile-tf` command.
#
#   snakemake --cores 2 --configfile workflow/config/quick.yaml   # `make reproduce` (~1 h, 2-core CPU)
#   snakemake --cores 2 --configfile workflow/config/smoke.yaml   # CI (a few minutes)
#   snakemake --cores all                                          # `paper` preset (GPUs / cluster)
#
# With the project's virtualenv activated (`. .venv/bin/activate`): the rules call `reptile-tf`.
# The make targets put .venv/bin on PATH themselves and add workflow/profiles/default (run flags);
# per-rule threads and resources come from the preset (workflow/rules/common.smk `resource`).
# The config is validated against workflow/schemas/config.schema.yaml before any job runs.
import jsonschema

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "workflow/config/config.yaml"


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as err:
    # Say which key is wrong in one line, instead of jsonschema's schema dump.
    cause = err.__context__  # snakemake raises while handling jsonschema's ValidationError
    if not isinstance(cause, jsonschema.ValidationError):
        raise
    key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
    raise WorkflowError(
        f"invalid workflow config at key '{key}': {cause.message}. "
        "Fix the config file (see workflow/schemas/config.schema.yaml for the allowed keys and values)."
    ) from None


# On a cluster these run in the Snakemake process on the submitting node, not as SLURM jobs:
# `fetch` needs the internet, which compute nodes often lack; `track_init`/`track` write one
# SQLite file (results/mlflow/mlflow.db), whose locking is unreliable across NFS clients;
# `tables` takes seconds. Without an executor every rule runs locally anyway.
localrules:
    fetch,
    track_init,
    track,
    tables,


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/theory.smk"
include: "workflow/rules/bench.smk"


rule all:
    input:
        all_targets(),
    default_target: True

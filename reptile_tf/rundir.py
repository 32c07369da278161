"""The run directory format (docs/interfaces.md): one home for its file names, units and readers.

    config.json     resolved Settings (flat) + seed + run options + data + environment
    metrics.jsonl   one JSON object per logged iteration; accuracies as fractions in [0, 1]
    checkpoints/    tf.train.CheckpointManager: `checkpoint` state file + `ckpt-<iteration>.*`
    DONE            written last, when every iteration has run
    eval.json       per batch-norm mode; accuracies in percent
    eval_<mode>.csv per-task metric of one mode (`task,accuracy` in percent, or `task,mse`)

The files stay as they are; readers here return accuracies in ONE unit, percent (`to_percent` is
the only conversion). No TensorFlow: Snakemake-side code, tables and tracking read run
directories with this module, and shell scripts through its command line:

    python -m reptile_tf.rundir latest-checkpoint RUN_DIR   # prints e.g. ckpt-24000 (exit 1: none)
    python -m reptile_tf.rundir checkpoint-iteration RUN_DIR   # prints e.g. 24000 (0: none)
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reptile_tf import io
from reptile_tf.errors import UserError
from reptile_tf.settings import IDENTITY_FIELDS, table_method

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DONE_FILE = "DONE"
EVAL_FILE = "eval.json"
# Keys of config.json that describe where/how the run happened, not what was requested;
# they may differ when a run is resumed (e.g. on another machine or after a commit).
ENVIRONMENT_KEY = "environment"
# What every report reads of config.json: a run's identity and seed.
RUN_KEYS = (*IDENTITY_FIELDS, "seed")

# The batch-norm modes an evaluation scores, in the order `reptile-tf evaluate` computes and
# writes them (eval.json keys).
EVAL_MODES = ("transductive", "non_transductive")
# The same modes in the paper's row order (a method, then its transductive "+T" row): how the
# reports (tables, MLflow) list them.
REPORT_MODES = EVAL_MODES[::-1]

# CheckpointManager's names: the state file listing the kept checkpoints, and each checkpoint's
# file prefix `ckpt-<iteration>` (files `<prefix>.index`, `<prefix>.data-00000-of-00001`).
CHECKPOINT_STATE_FILE = "checkpoint"
CHECKPOINT_PREFIX = "ckpt-"
_CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)(?:\.(?:index|data-\d+-of-\d+))?")
_STATE_LINE = re.compile(r"\s*([a-z_]+)\s*:\s*(.*?)\s*")
# The fields of TensorFlow's CheckpointState text proto: the two path fields (quoted, C-escaped)
# and the two timestamp fields.
_STATE_PATHS = ("model_checkpoint_path", "all_model_checkpoint_paths")
_STATE_TIMES = ("all_model_checkpoint_timestamps", "last_preserved_timestamp")

# Accuracy keys of metrics.jsonl: fractions in the file (eval.json holds percent).
ACCURACY_KEYS = ("accuracy", "query_accuracy", "val_accuracy")


def eval_csv_name(mode: str) -> str:
    """The per-task CSV of one evaluation mode."""
    return f"eval_{mode}.csv"


def to_percent(fraction: float) -> float:
    """The one unit conversion: an accuracy fraction (metrics.jsonl, a scorer) in percent."""
    return 100.0 * fraction


def metrics_in_percent(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record with its accuracies (ACCURACY_KEYS) in percent; other values as they are."""
    return {key: to_percent(value) if key in ACCURACY_KEYS and _is_number(value) else value
            for key, value in record.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------- config


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json as written (OSError when absent, ValueError when not JSON)."""
    return io.read_json(Path(run_dir) / CONFIG_FILE)


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    io.write_json_atomic(Path(run_dir) / CONFIG_FILE, config)


def config_differences(existing: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Keys (dotted for nested dicts) whose values differ, ignoring the environment record: what
    keeps a config.json (or a theory state's config) from being resumed by a request."""
    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in d.items():
            if not prefix and key == ENVIRONMENT_KEY:
                continue
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    old, new = flatten(existing), flatten(requested)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))


# ---------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunRecord:
    """What the reports read of one run directory."""

    path: Path
    config: dict  # config.json as written
    evaluation: dict  # eval.json ({} when not evaluated yet)

    @property
    def algorithm(self) -> str:
        """The algorithm it trained with (`reptile-tf train --algorithm`)."""
        return str(self.config["algorithm"])

    @property
    def method(self) -> str:
        """The table row it reports in: `fomaml` for MAML trained first-order (`settings.table_method`)."""
        return table_method(self.algorithm, bool(self.config.get("first_order")))

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def ways(self) -> int:
        return int(self.config["ways"])

    @property
    def shots(self) -> int:
        return int(self.config["shots"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def done(self) -> bool:
        """Training finished (DONE written)."""
        return (self.path / DONE_FILE).exists()


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory (config.json required; eval.json optional)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a directory written by "
                        "`reptile-tf train --out`")
    try:
        config = read_config(run_dir)
        evaluation = read_eval(run_dir)
    except json.JSONDecodeError as err:
        raise UserError(f"{run_dir}: unreadable JSON ({err}); re-run the job that writes it") from None
    missing = [k for k in RUN_KEYS if k not in config]
    if missing:
        raise UserError(f"{config_path} lacks {missing}; re-run `reptile-tf train` to rewrite it")
    return RunRecord(run_dir, config, evaluation)


def find_runs(runs_root: str | Path) -> list[RunRecord]:
    """All run directories (those holding config.json) below `runs_root`, in path order."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise UserError(f"runs directory {runs_root} does not exist; pass --runs runs/<preset> after training")
    return [load_run(p.parent) for p in sorted(runs_root.rglob(CONFIG_FILE))]


def read_eval(run_dir: str | Path) -> dict[str, Any]:
    """eval.json ({} when the run is not evaluated yet; ValueError when it is not JSON).

    Accuracies are in percent there already: returned as they are."""
    path = Path(run_dir) / EVAL_FILE
    return io.read_json(path) if path.is_file() else {}


# ---------------------------------------------------------------------------------- metrics


def parse_metrics(text: str) -> tuple[list[dict[str, Any]], list[int]]:
    """(records as in the file, 1-based numbers of the lines that are not a JSON object with an
    iteration). Blank lines are neither; a torn last line of a killed run is a dropped one."""
    records, dropped = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "iteration" in record:
            records.append(record)
        else:
            dropped.append(number)
    return records, dropped


def _metrics_file(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], []
    return parse_metrics(path.read_text(errors="replace"))


def read_metrics_lines(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Strict reader: (records, accuracies in percent; numbers of the lines dropped), so a caller
    can say what it dropped: a torn last line is expected in a killed run, anything else means
    the file was damaged."""
    records, dropped = _metrics_file(run_dir)
    return [metrics_in_percent(r) for r in records], dropped


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Tolerant reader: metrics.jsonl's records, accuracies in percent ([] without the file);
    lines that are no record (a torn last line) are skipped."""
    return read_metrics_lines(run_dir)[0]


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record (accuracies as fractions, the file's unit)."""
    # One write of one full line; a kill can only tear the last line, which readers skip.
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()


def trim_metrics(run_dir: str | Path, last_iteration: int) -> None:
    """Drop lines after the checkpointed iteration so a resumed run never duplicates them."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in _metrics_file(run_dir)[0] if r["iteration"] <= last_iteration]
    io.write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


# ---------------------------------------------------------------------------------- checkpoints


def checkpoint_iteration(name: str) -> int | None:
    """The iteration in a checkpoint file or prefix name (`ckpt-500`, `ckpt-500.index`,
    `ckpt-500.data-00000-of-00001`, or a path ending in one); None for any other name."""
    match = _CHECKPOINT_NAME.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def checkpoint_state(run_dir: str | Path) -> tuple[str | None, list[str]]:
    """(newest, all kept) checkpoint prefix names (`ckpt-N`) the manager's state file lists.

    TensorFlow writes the state file as a text proto; its paths may be absolute (the run
    directory was moved since) or relative: only the name counts. Read as TensorFlow reads it
    (`tf.train.get_checkpoint_state`), so this never disagrees with the CheckpointManager about
    which checkpoints exist: no state file, or one that does not parse, lists nothing
    ((None, []): TensorFlow ignores it and a resumed run starts over); one that parses but
    names no newest checkpoint is a ValueError.
    """
    path = Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_STATE_FILE
    if not path.is_file():
        return None, []
    newest, kept = None, []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        match = _STATE_LINE.fullmatch(line)
        key, value = match.groups() if match else (None, "")
        if key in _STATE_TIMES:
            continue
        if key not in _STATE_PATHS or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            return None, []
        name = Path(codecs.escape_decode(value[1:-1].encode())[0].decode(errors="replace")).name
        if key == "model_checkpoint_path":
            newest = name
        else:
            kept.append(name)
    if not newest:
        raise ValueError(f"invalid checkpoint state in {path.parent}: it names no checkpoint")
    return newest, kept


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The prefix of the newest complete checkpoint (what a resume or an evaluation restores):
    the state file's newest, if its index file exists."""
    newest, _ = checkpoint_state(run_dir)
    if newest is None:
        return None
    prefix = Path(run_dir) / CHECKPOINT_DIR / newest
    return prefix if prefix.with_name(prefix.name + ".index").is_file() else None


def latest_checkpoint_iteration(run_dir: str | Path) -> int:
    """The iteration a resumed training starts after (0: no usable checkpoint)."""
    try:
        prefix = latest_checkpoint(run_dir)
    except ValueError:
        return 0
    return (checkpoint_iteration(prefix.name) or 0) if prefix is not None else 0


def latest_checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The state file and the files of the newest checkpoint ([] without a state file)."""
    newest, _ = checkpoint_state(run_dir)
    if not newest:
        return []
    directory = Path(run_dir) / CHECKPOINT_DIR
    return [directory / CHECKPOINT_STATE_FILE] + sorted(p for p in directory.iterdir()
                                                         if p.name.startswith(newest + "."))


# ---------------------------------------------------------------------------------- shell


def main(argv: list[str]) -> int:
    """`latest-checkpoint RUN_DIR`: the newest checkpoint name the state file lists (complete or
    still being written; exit 1 when none). `checkpoint-iteration RUN_DIR`: the newest complete
    checkpoint's iteration (0 when none)."""
    commands = ("latest-checkpoint", "checkpoint-iteration")
    if len(argv) != 2 or argv[0] not in commands:
        print(f"usage: python -m reptile_tf.rundir {{{','.join(commands)}}} RUN_DIR", file=sys.stderr)
        return 2
    command, run_dir = argv
    if command == "checkpoint-iteration":
        print(latest_checkpoint_iteration(run_dir))
        return 0
    try:
        newest, _ = checkpoint_state(run_dir)
    except ValueError:
        newest = None
    if newest is None:
        return 1
    print(newest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

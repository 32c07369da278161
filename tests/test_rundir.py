"""`reptile_tf.rundir`: the run-directory format's names, units, readers and checkpoint discovery
(no TensorFlow in the module; the comparison with TensorFlow's own reading imports it here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reptile_tf import rundir
from reptile_tf.errors import UserError

# A state file as tf.train.CheckpointManager writes it, as committed with a run (results/paper_cpu).
COMMITTED_STATE = ('model_checkpoint_path: "ckpt-24000"\n'
                   'all_model_checkpoint_paths: "ckpt-24000"\n'
                   "all_model_checkpoint_timestamps: 1796164596.3657928\n"
                   "last_preserved_timestamp: 1796158513.493429\n")


def committed_run(root: Path, state: str = COMMITTED_STATE, files: tuple[str, ...] = ("ckpt-24000",)) -> Path:
    """A run directory as a snapshot commits it: config, metrics and only the newest checkpoint."""
    run = root / "run"
    checkpoints = run / rundir.CHECKPOINT_DIR
    checkpoints.mkdir(parents=True)
    (checkpoints / rundir.CHECKPOINT_STATE_FILE).write_text(state)
    for prefix in files:
        (checkpoints / f"{prefix}.index").write_bytes(b"index")
        (checkpoints / f"{prefix}.data-00000-of-00001").write_bytes(b"data")
    (run / rundir.CONFIG_FILE).write_text(json.dumps({"algorithm": "reptile", "dataset": "omniglot", "ways": 5,
                                                      "shots": 5, "seed": 0}))
    return run


@pytest.mark.parametrize("name, iteration", [
    ("ckpt-500", 500), ("ckpt-500.index", 500), ("ckpt-24000.data-00000-of-00001", 24000),
    ("/some/run/checkpoints/ckpt-7", 7), ("ckpt-500_temp", None), ("checkpoint", None),
    ("checkpoint.tmp0123abcd", None), ("ckpt-x.index", None), ("ckpt-5.index.tmp", None), ("model-5.index", None),
])
def test_checkpoint_names_parse_into_their_iteration(name, iteration):
    assert rundir.checkpoint_iteration(name) == iteration


def test_a_committed_run_layout(tmp_path):
    run = committed_run(tmp_path)
    assert rundir.checkpoint_state(run) == ("ckpt-24000", ["ckpt-24000"])
    assert rundir.latest_checkpoint(run) == run / "checkpoints" / "ckpt-24000"
    assert rundir.latest_checkpoint_iteration(run) == 24000
    assert [p.name for p in rundir.latest_checkpoint_files(run)] == [
        "checkpoint", "ckpt-24000.data-00000-of-00001", "ckpt-24000.index"]


def test_older_checkpoints_and_absolute_paths(tmp_path):
    """A run trained with --keep-checkpoints 3 elsewhere: absolute paths, only the names count."""
    state = "".join(f'{key}: "/elsewhere/run/checkpoints/ckpt-{i}"\n' for key, i in (
        ("model_checkpoint_path", 30), ("all_model_checkpoint_paths", 10), ("all_model_checkpoint_paths", 20),
        ("all_model_checkpoint_paths", 30)))
    run = committed_run(tmp_path, state, files=("ckpt-10", "ckpt-20", "ckpt-30"))
    assert rundir.checkpoint_state(run) == ("ckpt-30", ["ckpt-10", "ckpt-20", "ckpt-30"])
    assert rundir.latest_checkpoint_iteration(run) == 30
    assert [p.name for p in rundir.latest_checkpoint_files(run)][1:] == [
        "ckpt-30.data-00000-of-00001", "ckpt-30.index"]


def test_a_checkpoint_being_written_is_listed_but_not_restorable(tmp_path):
    run = committed_run(tmp_path, COMMITTED_STATE.replace("24000", "25000"))  # state written, files not yet
    assert rundir.checkpoint_state(run)[0] == "ckpt-25000"
    assert rundir.latest_checkpoint(run) is None and rundir.latest_checkpoint_iteration(run) == 0


def test_no_or_unreadable_state_file_lists_nothing_as_tensorflow_does(tmp_path):
    assert rundir.checkpoint_state(tmp_path) == (None, [])
    assert rundir.latest_checkpoint_iteration(tmp_path) == 0 and rundir.latest_checkpoint_files(tmp_path) == []
    run = committed_run(tmp_path, 'model_checkpoint_path: "ckpt-24')  # torn: TensorFlow ignores it
    assert rundir.checkpoint_state(run) == (None, [])
    (run / "checkpoints" / "checkpoint").write_text("all_model_checkpoint_timestamps: 1.0\n")
    with pytest.raises(ValueError, match="names no checkpoint"):
        rundir.checkpoint_state(run)
    assert rundir.latest_checkpoint_iteration(run) == 0


def test_the_state_file_reads_as_tensorflow_reads_it(tmp_path):
    import tensorflow as tf

    step = tf.Variable(0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "checkpoints"),
                                         max_to_keep=2)
    for iteration in (10, 20, 30):
        manager.save(checkpoint_number=iteration)
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    newest, kept = rundir.checkpoint_state(tmp_path)
    assert newest == Path(state.model_checkpoint_path).name == "ckpt-30"
    assert kept == [Path(p).name for p in state.all_model_checkpoint_paths] == ["ckpt-20", "ckpt-30"]
    assert str(rundir.latest_checkpoint(tmp_path)) == tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))


def test_shell_entry_prints_the_newest_name(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "reptile_tf.rundir", *args], capture_output=True, text=True)

    committed = committed_run(tmp_path)
    assert run("latest-checkpoint", str(committed)).stdout == "ckpt-24000\n"
    assert run("checkpoint-iteration", str(committed)).stdout == "24000\n"
    none = run("latest-checkpoint", str(tmp_path / "nothing"))
    assert none.returncode == 1 and none.stdout == ""
    assert run("checkpoint-iteration", str(tmp_path / "nothing")).stdout == "0\n"
    assert run("bogus").returncode == 2


def write_metrics(run: Path, text: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.METRICS_FILE).write_text(text)


def test_metrics_reader_skips_a_torn_last_line_and_says_what_it_dropped(tmp_path):
    lines = [json.dumps({"iteration": i, "loss": 1.0 / i, "accuracy": 0.25 * i}) for i in (1, 2, 3)]
    write_metrics(tmp_path, lines[0] + "\n\n" + "[1, 2]\n" + lines[1] + "\n" + '{"loss": 1}\n' + lines[2] + "\n"
                  + '{"iteration": 4, "lo')
    assert [r["iteration"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3]
    records, dropped = rundir.read_metrics_lines(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert dropped == [3, 5, 7]  # not an object, no iteration, torn (blank line 2 is neither)
    assert rundir.read_metrics(tmp_path / "absent") == [] and rundir.read_metrics_lines(tmp_path / "absent") == ([], [])


def test_accuracies_are_read_in_percent_and_stored_as_fractions(tmp_path):
    record = {"iteration": 10, "loss": 0.5, "accuracy": 0.8, "query_accuracy": 1, "val_accuracy": 0.55,
              "val_mse": 0.3, "wall_time": 1.7e9, "flag": True}
    rundir.append_metrics(tmp_path, record)
    rundir.append_metrics(tmp_path, dict(record, iteration=20))
    [read, _] = rundir.read_metrics(tmp_path)
    assert read == {**record, "accuracy": 80.0, "query_accuracy": 100.0, "val_accuracy": 100 * 0.55}
    # trimming rewrites the file in its own unit
    rundir.trim_metrics(tmp_path, 10)
    assert [json.loads(line) for line in (tmp_path / rundir.METRICS_FILE).read_text().splitlines()] == [record]


def test_the_one_unit_conversion():
    assert rundir.to_percent(0.5) == 50.0 and rundir.to_percent(1) == 100.0
    assert rundir.metrics_in_percent({"accuracy": float("nan"), "loss": 0.1, "accuracy_note": 0.5}) == {
        "accuracy": pytest.approx(float("nan"), nan_ok=True), "loss": 0.1, "accuracy_note": 0.5}


def test_load_and_find_runs(tmp_path):
    run = committed_run(tmp_path)
    record = rundir.load_run(run)
    assert (record.algorithm, record.dataset, record.ways, record.shots, record.seed) == ("reptile", "omniglot", 5, 5, 0)
    assert record.evaluation == {} and not record.done
    entry = {"metric": "accuracy", "accuracy": 97.5, "ci95": 0.3}  # eval.json holds percent: read as it is
    (run / rundir.EVAL_FILE).write_text(json.dumps({"transductive": entry}))
    (run / rundir.DONE_FILE).write_text("10\n")
    record = rundir.load_run(run)
    assert record.evaluation == {"transductive": entry} and record.done
    assert [r.path for r in rundir.find_runs(tmp_path)] == [run]

    nested = tmp_path / "nested"
    nested.mkdir()
    # Settings nested in a block: a layout no `reptile-tf train` writes, so not a run.
    (nested / rundir.CONFIG_FILE).write_text(json.dumps({"settings": {"algorithm": "maml", "dataset": "omniglot",
                                                                      "ways": 20, "shots": 1}, "seed": 2}))
    with pytest.raises(UserError, match=r"lacks \['algorithm', 'dataset', 'ways', 'shots'\]"):
        rundir.load_run(nested)
    with pytest.raises(UserError, match="not a run directory"):
        rundir.load_run(tmp_path / "missing")
    (nested / rundir.CONFIG_FILE).write_text("{")
    with pytest.raises(UserError, match="unreadable JSON"):
        rundir.load_run(nested)
    (nested / rundir.CONFIG_FILE).write_text(json.dumps({"algorithm": "maml", "dataset": "omniglot", "ways": 20,
                                                        "shots": 1}))
    with pytest.raises(UserError, match=r"lacks \['seed'\]"):
        rundir.load_run(nested)
    with pytest.raises(UserError, match="does not exist"):
        rundir.find_runs(tmp_path / "missing")


def test_modes_and_file_names():
    assert set(rundir.EVAL_MODES) == set(rundir.REPORT_MODES) == {"transductive", "non_transductive"}
    assert rundir.REPORT_MODES[0] == "non_transductive"  # the paper's rows: a method, then its +T row
    assert rundir.eval_csv_name("transductive") == "eval_transductive.csv"


def test_snapshot_commits_the_newest_checkpoint_and_the_theory_state_but_no_temporaries(tmp_path):
    """benchmarks/snapshot_runs.sh, the commit of long runs' progress, in a scratch repository."""
    repo = tmp_path / "repo"
    runs = repo / "results/p/runs"
    run = committed_run(runs, files=("ckpt-20000", "ckpt-24000"))  # the state lists ckpt-24000 only
    theory = runs / "p/theory_combinations"
    theory.mkdir(parents=True)
    for name in ("settings.json", "g1_k1.json", "gk_k2.npz", ".gk_k2.npz.x1y2.npz.tmp"):  # the last: a write in flight
        (theory / name).write_bytes(b"x")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    script = Path(__file__).resolve().parents[1] / "benchmarks/snapshot_runs.sh"
    result = subprocess.run(["bash", str(script), "results/p/runs", "progress"], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    committed = subprocess.run(["git", "ls-files"], cwd=repo, env=env, capture_output=True, text=True).stdout.split()
    prefix = f"{run.relative_to(repo)}/checkpoints"
    assert sorted(committed) == sorted([
        f"{run.relative_to(repo)}/config.json", f"{prefix}/checkpoint", f"{prefix}/ckpt-24000.index",
        f"{prefix}/ckpt-24000.data-00000-of-00001", "results/p/runs/p/theory_combinations/settings.json",
        "results/p/runs/p/theory_combinations/g1_k1.json", "results/p/runs/p/theory_combinations/gk_k2.npz"])


def test_config_differences_name_the_keys_and_ignore_the_environment():
    old = {"seed": 0, "inner_lr": 0.1, "data": {"digest": "a"}, "environment": {"git_commit": "x"}}
    new = {"seed": 1, "inner_lr": 0.1, "data": {"digest": "b"}, "environment": {"git_commit": "y"}}
    assert rundir.config_differences(old, new) == ["data.digest", "seed"]
    assert rundir.config_differences(old, dict(old, environment={"device": "GPU"})) == []

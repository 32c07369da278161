"""Kill/resume fuzz: SIGKILL a real training run at random moments, resume it, and check that the
result is bit-for-bit the result of an uninterrupted run (issue 14, item 8). A benchmark, not a
unit test: it takes tens of minutes.

For each algorithm it trains the run once without interruption (the reference) and evaluates
it, then N times: starts the same `reptile-tf train` command in a fresh directory, sends
SIGKILL at a random moment, re-runs the command until DONE, runs `reptile-tf evaluate`, and
compares with the reference. The moment follows the run's own progress, not the clock (the
machine's load changes a step's time several-fold): with the probability of the reference's
start-up share of its wall time (at most 0.3), a random time in start-up (imports, data, tracing);
otherwise a random iteration, reached by watching metrics.jsonl, plus a random part of one
logging interval, so kills land in steps, validation, metric appends and checkpoint writes.
Compared with the reference:

- every tensor of the final checkpoint (meta-parameters, Adam moments, iteration, seed), bit-exact
  (TensorFlow's own `save_counter`, which counts saves, is excluded: it differs by design);
- metrics.jsonl without `wall_time`, and its line count (no duplicated or missing iteration);
- eval.json and the per-task CSVs, byte for byte;
- config.json without `environment`, and the checkpoint file names (same checkpoints kept);
- no leftovers (`ckpt-N_temp/`, temp state files) after the resume.

    nice python benchmarks/kill_resume_fuzz.py                       # 20 Reptile + 10 MAML kills
    nice python benchmarks/kill_resume_fuzz.py --reptile-kills 2 --maml-kills 1 --work /tmp/fuzz

Writes `<out>/kill_resume_fuzz.csv` (one row per trial, with the command) and `<out>/README.md`
(the command, the machine from `python -m reptile_tf.runtime`, the tally) and exits 1 if any
trial differs. `--resume` keeps the trials already in the CSV and the finished references
(with their timing, `<work>/<algorithm>/timeline.json`) and runs only the missing trials: a fuzz
stopped half-way (the benchmark itself killed) continues where it was. Each trial's kill moment
comes from its own random stream (seed, algorithm, trial), so skipping trials changes no other.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "reptile_tf.cli"]
# Excluded from the checkpoint comparison: TensorFlow counts saves in it, so a run that saved
# again after a resume has a larger value although its training state is the same.
NOT_STATE = ("save_counter/", "_CHECKPOINTABLE_OBJECT_GRAPH")


@dataclasses.dataclass(frozen=True)
class Case:
    """One training configuration to fuzz (small real budgets, Omniglot 5-way 1-shot)."""

    algorithm: str
    kills: int
    iterations: int
    log_every: int
    flags: tuple[str, ...]


def cases(reptile_kills: int, maml_kills: int) -> list[Case]:
    # Reptile: 150 iterations, a checkpoint every 10 (3 kept: the default); validation every 50.
    # MAML: second order, meta-batch 4, 60 iterations, a checkpoint every 10 with only the latest
    # kept (as the committed paper_cpu runs), validation every 20.
    return [
        Case("reptile", reptile_kills, 150, 5, ("--checkpoint-every", "10", "--val-every", "50", "--val-tasks", "5")),
        Case("maml", maml_kills, 60, 5, ("--meta-batch", "4", "--checkpoint-every", "10", "--keep-checkpoints", "1",
                                         "--val-every", "20", "--val-tasks", "5")),
    ]


def train_command(case: Case, run_dir: Path, data_dir: Path) -> list[str]:
    return [*CLI, "train", "--algorithm", case.algorithm, "--dataset", "omniglot", "--ways", "5", "--shots", "1",
            "--seed", "0", "--iterations", str(case.iterations), "--log-every", str(case.log_every), *case.flags,
            "--data-dir", str(data_dir), "--out", str(run_dir), "--no-progress"]


def evaluate_command(run_dir: Path, tasks: int, data_dir: Path) -> list[str]:
    return [*CLI, "evaluate", str(run_dir), "--tasks", str(tasks), "--mode", "both", "--data-dir", str(data_dir),
            "--no-progress"]


def shown(command: list[str]) -> str:
    """The command as a user would type it (`reptile-tf` instead of `python -m reptile_tf.cli`)."""
    return shlex.join(["reptile-tf", *command[len(CLI):]])


def run(command: list[str], log: Path) -> float:
    """Run to completion (output appended to `log`); the wall time. Raises on a non-zero exit."""
    start = time.monotonic()
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{shown(command)} exited {done.returncode}; see {log}")
    return time.monotonic() - start


def child_env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


# ------------------------------------------------------------------------- inspection


def latest_iteration(run_dir: Path) -> int | None:
    """The checkpoint a resume would start from (the state file's latest), without TensorFlow."""
    state = run_dir / "checkpoints" / "checkpoint"
    if not state.is_file():
        return None
    for line in state.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split('"')[1].rsplit("-", 1)[1])
    return None


def leftovers(run_dir: Path) -> list[str]:
    """Partial files a save or an atomic write leaves when interrupted."""
    found = []
    for path in run_dir.rglob("*"):
        name = path.name
        if name.endswith("_temp") or ".tmp" in name or name.startswith(".reptile-tf-probe-"):
            found.append(str(path.relative_to(run_dir)))
    return sorted(found)


def metrics_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append({k: v for k, v in json.loads(line).items() if k != "wall_time"})
        except ValueError:
            rows.append({"unparsable": line})
    return rows


def checkpoint_tensors(run_dir: Path) -> dict[str, bytes]:
    """Every tensor of the latest checkpoint as raw bytes (dtype and shape included)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints"))
    tensors = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(NOT_STATE):
            continue
        value = reader.get_tensor(name)
        tensors[name] = f"{value.dtype}{value.shape}".encode() + value.tobytes()
    return tensors


def config_without_environment(run_dir: Path) -> dict:
    return {k: v for k, v in json.loads((run_dir / "config.json").read_text()).items() if k != "environment"}


def eval_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("eval*")) if p.is_file()}


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "checkpoint")


@dataclasses.dataclass
class Snapshot:
    """Everything compared between a fuzzed run and the reference."""

    tensors: dict[str, bytes]
    metrics: list[dict]
    evaluation: dict[str, bytes]
    config: dict
    checkpoints: list[str]

    @classmethod
    def of(cls, run_dir: Path) -> "Snapshot":
        return cls(checkpoint_tensors(run_dir), metrics_lines(run_dir), eval_files(run_dir),
                   config_without_environment(run_dir), checkpoint_names(run_dir))


def compare(reference: Snapshot, trial: Snapshot) -> dict[str, Any]:
    """Per-aspect equality and, when the parameters differ, which tensors."""
    differing = sorted(k for k in reference.tensors.keys() | trial.tensors.keys()
                       if reference.tensors.get(k) != trial.tensors.get(k))
    result = {
        "params_identical": not differing,
        "metrics_identical": reference.metrics == trial.metrics,
        "eval_identical": reference.evaluation == trial.evaluation,
        "config_identical": reference.config == trial.config,
        "checkpoint_files_identical": reference.checkpoints == trial.checkpoints,
        "differing_tensors": " ".join(differing[:5]),
    }
    return result


# ------------------------------------------------------------------------------ trials


@dataclasses.dataclass(frozen=True)
class Timeline:
    """When the reference run reached its milestones (seconds after its start)."""

    total: float  # the whole `train` process
    startup: float  # until the first metrics line (imports, data, tracing, first steps)
    per_log: float  # seconds per logging interval after start-up
    iterations: int
    log_every: int
    cpu_s: float = 0.0  # CPU time of the reference's train + evaluate processes


@dataclasses.dataclass(frozen=True)
class KillPlan:
    """Kill `after_s` seconds after start (start-up kill), or `extra_s` after the metrics line of
    iteration `after_iteration` appears."""

    after_s: float | None = None
    after_iteration: int | None = None
    extra_s: float = 0.0

    def describe(self) -> str:
        if self.after_s is not None:
            return f"{self.after_s:.2f} s after start"
        return f"{self.extra_s:.2f} s after iteration {self.after_iteration} was logged"


# At most this share of the kills goes to start-up: on a loaded machine start-up (imports, data,
# tracing) is half of a short run's wall time, but the steps and saves are where state is at risk.
MAX_STARTUP_SHARE = 0.3


def plan_kill(timeline: Timeline, rng: random.Random) -> KillPlan:
    if rng.random() < min(MAX_STARTUP_SHARE, timeline.startup / timeline.total):
        return KillPlan(after_s=rng.uniform(0.0, timeline.startup))
    logged = list(range(timeline.log_every, timeline.iterations, timeline.log_every))
    return KillPlan(after_iteration=rng.choice(logged), extra_s=rng.uniform(0.0, timeline.per_log))


def last_logged(run_dir: Path) -> int:
    rows = [r for r in metrics_lines(run_dir) if "iteration" in r]
    return rows[-1]["iteration"] if rows else 0


def run_timed(command: list[str], run_dir: Path, log: Path, iterations: int, log_every: int) -> Timeline:
    """Run the reference to completion, noting when each metrics line appeared."""
    start = time.monotonic()
    seen: dict[int, float] = {}
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        while proc.poll() is None:
            seen.setdefault(last_logged(run_dir), time.monotonic() - start)
            time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{shown(command)} exited {proc.returncode}; see {log}")
    total = time.monotonic() - start
    startup = seen.get(log_every, total)
    per_log = (seen.get(max(seen), total) - startup) / max(1, max(seen) // log_every - 1)
    return Timeline(total, startup, per_log, iterations, log_every)


def kill_when(command: list[str], run_dir: Path, plan: KillPlan, log: Path) -> dict[str, Any]:
    """Start `command`; SIGKILL it as `plan` says (unless it ended first)."""
    start = time.monotonic()
    deadline = None if plan.after_s is None else start + plan.after_s
    with open(log, "a") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        while proc.poll() is None:
            now = time.monotonic()
            if deadline is None and last_logged(run_dir) >= plan.after_iteration:
                deadline = now + plan.extra_s
            if deadline is not None and now >= deadline:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        rc = proc.wait()
    return {"kill_plan": plan.describe(), "kill_after_s": round(time.monotonic() - start, 2),
            "killed": rc == -signal.SIGKILL, "rc_at_kill": rc}


def children_cpu() -> float:
    """CPU seconds of every finished child process so far (user + system)."""
    times = os.times()
    return times.children_user + times.children_system


def reference_run(case: Case, base: Path, data_dir: Path, tasks: int, reuse: bool) -> Timeline:
    """Train and evaluate the uninterrupted reference, or reuse a finished one (`reuse`)."""
    reference_dir = base / "reference"
    timeline_file = base / "timeline.json"
    if reuse and (reference_dir / "DONE").exists() and (reference_dir / "eval.json").exists() \
            and timeline_file.is_file():
        timeline = Timeline(**json.loads(timeline_file.read_text()))
        print(f"{case.algorithm}: reusing the reference in {reference_dir}", flush=True)
        return timeline
    shutil.rmtree(reference_dir, ignore_errors=True)
    cpu = children_cpu()
    reference_train = train_command(case, reference_dir, data_dir)
    timeline = run_timed(reference_train, reference_dir, base / "reference.log", case.iterations, case.log_every)
    run(evaluate_command(reference_dir, tasks, data_dir), base / "reference.log")
    timeline = dataclasses.replace(timeline, cpu_s=round(children_cpu() - cpu, 1))
    timeline_file.write_text(json.dumps(dataclasses.asdict(timeline)))
    print(f"{case.algorithm}: reference trained in {timeline.total:.1f} s (start-up {timeline.startup:.1f} s, "
          f"{timeline.per_log:.2f} s per {case.log_every} iterations): {shown(reference_train)}", flush=True)
    return timeline


def fuzz_case(case: Case, work: Path, data_dir: Path, tasks: int, seed: int, finished: set[int],
              writer: csv.DictWriter, handle: Any) -> tuple[list[dict[str, Any]], Timeline]:
    """Run the trials of `case` not in `finished` (trial numbers); their rows and the reference timing."""
    base = work / case.algorithm
    if not finished:
        shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    timeline = reference_run(case, base, data_dir, tasks, reuse=bool(finished))
    reference = Snapshot.of(base / "reference")

    rows = []
    for trial in range(1, case.kills + 1):
        if trial in finished:
            continue
        run_dir = base / f"trial{trial:02d}"
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished trial of a stopped fuzz starts over
        command = train_command(case, run_dir, data_dir)
        log = base / f"trial{trial:02d}.log"
        log.unlink(missing_ok=True)
        plan = plan_kill(timeline, random.Random(f"{seed}:{case.algorithm}:{trial}"))
        start, cpu = time.monotonic(), children_cpu()
        row: dict[str, Any] = {"algorithm": case.algorithm, "trial": trial}
        row.update(kill_when(command, run_dir, plan, log))
        row.update(checkpoint_at_kill=latest_iteration(run_dir), metrics_lines_at_kill=len(metrics_lines(run_dir)),
                   leftovers_at_kill=" ".join(leftovers(run_dir)), done_at_kill=(run_dir / "DONE").exists())
        resumes = 0
        while not (run_dir / "DONE").exists():
            resumes += 1
            if resumes > 3:
                raise RuntimeError(f"{run_dir}: no DONE after 3 resumes; see {log}")
            run(command, log)
        run(evaluate_command(run_dir, tasks, data_dir), log)
        row.update(resumes=resumes, leftovers_after=" ".join(leftovers(run_dir)),
                   metrics_lines=len(metrics_lines(run_dir)), reference_metrics_lines=len(reference.metrics))
        row.update(compare(reference, Snapshot.of(run_dir)))
        row["identical"] = all(row[k] for k in ("params_identical", "metrics_identical", "eval_identical",
                                                "config_identical", "checkpoint_files_identical")) \
            and not row["leftovers_after"]
        row.update(trial_seconds=round(time.monotonic() - start, 1), trial_cpu_s=round(children_cpu() - cpu, 1),
                   command=shown(command),
                   evaluate_command=shown(evaluate_command(run_dir, tasks, data_dir)))
        writer.writerow(row)
        handle.flush()
        rows.append(row)
        print(f"{case.algorithm} trial {trial}: kill {plan.describe()} at {row['kill_after_s']} s "
              f"(killed={row['killed']}, DONE={row['done_at_kill']}, checkpoint "
              f"{row['checkpoint_at_kill']}, {row['metrics_lines_at_kill']} metric lines), {resumes} resume(s): "
              f"{'identical' if row['identical'] else 'DIFFERENT ' + json.dumps(row)}", flush=True)
        if row["identical"]:
            shutil.rmtree(run_dir)  # keep only what differs, for inspection
    return rows, timeline


COLUMNS = ["algorithm", "trial", "kill_plan", "kill_after_s", "killed", "rc_at_kill", "checkpoint_at_kill",
           "metrics_lines_at_kill", "done_at_kill", "leftovers_at_kill", "resumes", "leftovers_after", "metrics_lines",
           "reference_metrics_lines",
           "params_identical", "metrics_identical", "eval_identical", "config_identical", "checkpoint_files_identical",
           "differing_tensors", "identical", "trial_seconds", "trial_cpu_s", "command", "evaluate_command"]
BOOLEAN_COLUMNS = ("killed", "done_at_kill", "params_identical", "metrics_identical", "eval_identical",
                   "config_identical", "checkpoint_files_identical", "identical")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The trials of an earlier (stopped) fuzz, typed as `fuzz_case` returns them."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            typed: dict[str, Any] = dict(row)
            for key in BOOLEAN_COLUMNS:
                typed[key] = row.get(key) == "True"
            typed["trial"] = int(row["trial"])
            typed["checkpoint_at_kill"] = int(row["checkpoint_at_kill"]) if row.get("checkpoint_at_kill") else None
            for key in ("trial_seconds", "trial_cpu_s"):
                typed[key] = float(row[key]) if row.get(key) else None
            rows.append(typed)
    return rows


def machine_record() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "reptile_tf.runtime"], capture_output=True, text=True,
                         env=child_env(), check=True)
    return json.loads(out.stdout)


def write_readme(out: Path, argv: list[str], rows: list[dict], machine: dict, timelines: list[Timeline],
                 loadavg: str, sessions: int) -> None:
    lines = [
        "# Kill/resume fuzz (issue 14, item 8)",
        "",
        "```",
        shlex.join(["nice", "python", "benchmarks/kill_resume_fuzz.py", *argv]),
        "```",
        "",
        "Each trial starts a real `reptile-tf train` run (Omniglot 5-way 1-shot), sends SIGKILL at a random "
        "moment, re-runs the same command until DONE, evaluates, and compares with the uninterrupted run. "
        "The moment follows the run's progress: with the reference's start-up share of its wall time (at most "
        "0.3) a random "
        "time in start-up (imports, data loading, tracing), else a random logged iteration plus a random part "
        "of one logging interval (steps, validation, metric appends, checkpoint writes). Compared: every "
        "checkpoint tensor bit-exact "
        "(TensorFlow's `save_counter` excluded: it counts saves), metrics.jsonl without `wall_time`, eval.json "
        "and the per-task CSVs byte for byte, config.json without `environment`, the checkpoint file names, "
        "and no `ckpt-N_temp` or temp files left. One row per trial, with its commands: "
        "[`kill_resume_fuzz.csv`](kill_resume_fuzz.csv).",
        "",
        "| algorithm | trials | killed before DONE | identical | killed in start-up | killed before the first "
        "checkpoint | leftovers seen at kill |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm in sorted({r["algorithm"] for r in rows}, key=["reptile", "maml"].index):
        mine = [r for r in rows if r["algorithm"] == algorithm]
        lines.append(f"| {algorithm} | {len(mine)} | {sum(r['killed'] and not r['done_at_kill'] for r in mine)} | "
                     f"{sum(r['identical'] for r in mine)} of {len(mine)} | "
                     f"{sum(r['kill_plan'].endswith('after start') for r in mine)} | "
                     f"{sum(r['checkpoint_at_kill'] is None for r in mine)} | "
                     f"{sum(bool(r['leftovers_at_kill']) for r in mine)} |")
    total = len(rows)
    seconds = sum(t.total for t in timelines) + sum(r["trial_seconds"] or 0 for r in rows)
    cpu = sum(t.cpu_s for t in timelines) + sum(r["trial_cpu_s"] or 0 for r in rows)
    unmeasured = sum(r["trial_cpu_s"] is None for r in rows)
    lines += [
        "",
        f"**{sum(r['identical'] for r in rows)} of {total} identical.** Wall time {seconds / 60:.1f} min "
        f"(the references' training + every trial), CPU time of the child processes "
        f"{cpu / 60:.1f} min"
        + (f" ({unmeasured} trials of an earlier version of this script did not record theirs)" if unmeasured else "")
        + f"; load average at the end: {loadavg}; the machine also ran a long low-priority training job"
        + (f"; the fuzz ran in {sessions} sessions (`--resume`)" if sessions > 1 else "") + ".",
        "",
        "Commands (the fuzzed runs use the same `train` command with their own `--out`):",
        "",
    ]
    for algorithm in sorted({r["algorithm"] for r in rows}, key=["reptile", "maml"].index):
        first = next(r for r in rows if r["algorithm"] == algorithm)
        lines += [f"- {algorithm}: `{first['command']}`, then `{first['evaluate_command']}`"]
    lines += ["", "Machine (`python -m reptile_tf.runtime`):", "", "```json", json.dumps(machine, indent=2), "```", ""]
    (out / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reptile-kills", type=int, default=20)
    parser.add_argument("--maml-kills", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=20, help="evaluation tasks per mode (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "tfds")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "kill_resume_fuzz",
                        help="scratch directory for the runs (identical trials are deleted)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fault_fuzz")
    parser.add_argument("--resume", action="store_true",
                        help="keep the trials already in <out>/kill_resume_fuzz.csv and run only the missing ones")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "kill_resume_fuzz.csv"
    earlier = read_rows(csv_path) if args.resume else []
    sessions_file = args.work / "sessions"
    sessions = (int(sessions_file.read_text()) if args.resume and sessions_file.is_file() else 0) + 1
    args.work.mkdir(parents=True, exist_ok=True)
    sessions_file.write_text(str(sessions))
    rows: list[dict[str, Any]] = list(earlier)
    timelines = []
    with open(csv_path, "w", newline="") as handle:
        # Rewritten whole: rows of an older version of this script get the columns it lacked, empty.
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in earlier)
        handle.flush()
        for case in cases(args.reptile_kills, args.maml_kills):
            finished = {r["trial"] for r in earlier if r["algorithm"] == case.algorithm}
            if case.kills > len(finished & set(range(1, case.kills + 1))):
                new, timeline = fuzz_case(case, args.work, args.data_dir.resolve(), args.tasks, args.seed, finished,
                                          writer, handle)
                rows += new
                timelines.append(timeline)
    order = {"reptile": 0, "maml": 1}
    rows.sort(key=lambda r: (order.get(r["algorithm"], 2), r["trial"]))
    write_readme(args.out, argv, rows, machine_record(), timelines, " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 sessions)
    identical = sum(r["identical"] for r in rows)
    print(f"{identical} of {len(rows)} identical; {args.out / 'README.md'}")
    return 0 if identical == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Attribution experiment for issue 16: which difference from the official Reptile code changes
learning speed at a matched budget? (`--algorithm maml`: the same question for Finn's MAML code,
before the MAML cells of the paper_cpu preset run; issue 11.)

Omniglot 5-way 1-shot Reptile, paper settings cut to `--iterations` (default 2,000; outer step
annealed to 0 over them), evaluated on `--tasks` (default 1,000) fixed test tasks in both
batch-norm modes. One baseline (this project's defaults) and one variant per difference,
switched alone to the official behaviour (reptile_tf.settings.FIDELITY_OPTIONS, the `nearest`
Omniglot preprocessing), each with the same seeds.

    nice -n 19 .venv/bin/python benchmarks/fidelity.py            # the full grid
    nice -n 19 .venv/bin/python benchmarks/fidelity.py --report   # only rewrite the results
    nice -n 19 .venv/bin/python benchmarks/fidelity.py --algorithm maml   # MAML 5-way 1-shot, 1,200 it

`--algorithm fomaml`: the Reptile grid's training differences for FOMAML (5-way 1-shot, 2,000
iterations), plus `no_tail` (no separate final minibatch), into `results/fidelity/fomaml/`.
MAML runs go to `.cache/fidelity/maml/runs` and report to `results/fidelity/maml/`; MAML has
no Adam inner loop, so its variants are the loss scale, the Omniglot resize and Finn's network
(`--network maml`), alone and with his loss scale,
and all his code's choices together (`maml_official_all`).

Not a fidelity question, same machinery: `--variants baseline,mixed_precision` with its own
`--runs-dir`/`--results-dir` compares bfloat16 compute with float32 (issue 15;
`results/fidelity/mixed_precision/README.md` has the command).

Resumable: a run whose eval.json holds both modes for the requested task count is skipped; an
interrupted training run resumes from its last checkpoint (`reptile-tf train` semantics). Runs go
to `.cache/fidelity/runs/<variant>/seed<k>` through the `reptile-tf train` / `evaluate` CLI, in
round-robin order over seeds (every single-difference variant gets seed 0 before any gets seed 1;
the combined variants, `Variant.combined`, come last), and after every
run `results/fidelity/runs.csv`, `summary.csv` and the table in README.md are rewritten, so a
partial grid is always reported as far as it got.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("BIN", ROOT / ".venv" / "bin"))
RUNS = ROOT / ".cache" / "fidelity" / "runs"
RESULTS = ROOT / "results" / "fidelity"
DEFAULT_DATA = ROOT / "data" / "tfds"
NEAREST_DATA = ROOT / ".cache" / "fidelity" / "tfds_nearest"
RAW_OMNIGLOT = ROOT / "data" / "raw" / "omniglot"
MODES = ("non_transductive", "transductive")
TABLE_BEGIN, TABLE_END = "<!-- fidelity-table:begin -->", "<!-- fidelity-table:end -->"


class Variant(NamedTuple):
    flags: list[str]  # `reptile-tf train` flags (evaluation-only variants: config keys, as flags)
    data: Path  # the prepared data dir it trains on
    eval_of: str | None  # the variant whose trained checkpoints it only re-evaluates, or None
    what: str
    combined: bool = False  # several differences together: runs after every single-difference variant


VARIANTS: dict[str, Variant] = {
    "baseline": Variant([], DEFAULT_DATA, None, "this project's defaults"),
    "sequential_adam": Variant(["--inner-adam-mode", "sequential"], DEFAULT_DATA, None,
                               "inner Adam: tasks one after another, one carried state (official)"),
    "sum_loss": Variant(["--loss-reduction", "sum"], DEFAULT_DATA, None,
                        "inner loss summed over the minibatch (official `minimize` of the loss vector)"),
    "nearest_resize": Variant([], NEAREST_DATA, None, "Omniglot resized as the official code: 1-bit NEAREST, binary"),
    "half_eval_lr": Variant(["--eval-inner-lr", "0.0005"], DEFAULT_DATA, "baseline",
                            "evaluation-only proxy of the official summed loss (baseline checkpoints): with sums, the "
                            "first evaluation step is lr * 5 g / (10 sqrt(v)) = 0.5x ours, so adapt with lr/2 (exact "
                            "but for epsilon and for the 0.25x weight of new g^2 in v over the 50 steps)"),
    "sum_eval_only": Variant(["--loss-reduction", "sum"], DEFAULT_DATA, "baseline",
                             "diagnostic, NOT the official semantics: summed loss in evaluation only, on moments "
                             "trained with the mean loss, so evaluation steps are ~5x the baseline's"),
    "fresh_eval_adam": Variant(["--eval-adam-state", "fresh"], DEFAULT_DATA, "baseline",
                               "diagnostic, not official: adaptation from fresh Adam moments (baseline training)"),
    "official_all": Variant(["--inner-adam-mode", "sequential", "--loss-reduction", "sum"], NEAREST_DATA, None,
                            "all official behaviours together", combined=True),
    "sum_per_shot_loss": Variant(["--loss-reduction", "sum_per_shot"], DEFAULT_DATA, None,
                                 "MAML inner loss as Finn's code (`xent / K`, summed): N x the mean, so the inner "
                                 "SGD step 0.4 acts as 0.4 N on the mean loss"),
    "maml_network": Variant(["--network", "maml"], DEFAULT_DATA, None,
                            "Finn's MAML-code conv net: batch norm without scale, offsets not adapted in the inner "
                            "loop, Omniglot global average pooling and an N(0, 1) dense kernel"),
    "maml_network_sum_per_shot": Variant(["--network", "maml", "--loss-reduction", "sum_per_shot"], DEFAULT_DATA, None,
                                         "Finn's network with Finn's inner loss scale (LANCZOS images)"),
    "maml_official_all": Variant(["--network", "maml", "--loss-reduction", "sum_per_shot"], NEAREST_DATA, None,
                                 "Finn's code as it is: his network, his loss scale and his images (his resize script "
                                 "asks PIL for LANCZOS, which PIL ignores for 1-bit images: NEAREST, as the Reptile "
                                 "code)", combined=True),
    "no_tail": Variant(["--tail-shots", "0"], DEFAULT_DATA, None,
                       "FOMAML: the last inner step on the inner minibatches, no separate tail minibatch "
                       "(`--foml` without `--foml-tail`)"),
    "mixed_precision": Variant(["--mixed-precision"], DEFAULT_DATA, None,
                               "not an official difference: bfloat16 compute, float32 variables (issue 15: is "
                               "`--mixed-precision` within noise of float32 at a matched budget?)"),
}
# algorithm -> (its variants in run order, default meta-iterations: 2% of the paper's budget)
ALGORITHMS: dict[str, tuple[tuple[str, ...], int]] = {
    "reptile": (("baseline", "sequential_adam", "sum_loss", "half_eval_lr", "nearest_resize", "fresh_eval_adam",
                 "sum_eval_only", "official_all"), 2000),
    # Finn's resize script passes LANCZOS to PIL, which resizes 1-bit images with NEAREST whatever
    # it is asked: his Omniglot is the official Reptile code's binary NEAREST data
    # FOMAML: the Reptile grid's training differences, and its tail minibatch
    "fomaml": (("baseline", "sequential_adam", "sum_loss", "nearest_resize", "no_tail", "official_all"), 2000),
    "maml": (("baseline", "sum_per_shot_loss", "nearest_resize", "maml_network", "maml_network_sum_per_shot",
              "maml_official_all"), 1200),
}
DEFAULT_VARIANTS = ALGORITHMS["reptile"][0]


def log(message: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_dir(variant: str, seed: int) -> Path:
    return RUNS / variant / f"seed{seed}"


def finished(path: Path, tasks: int) -> bool:
    try:
        result = json.loads((path / "eval.json").read_text())
    except (OSError, ValueError):
        return False
    return all(result.get(mode, {}).get("tasks") == tasks for mode in MODES)


def run(cmd: list[str]) -> float:
    start = time.time()
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return time.time() - start


def ensure_nearest_data() -> None:
    if not (NEAREST_DATA / "omniglot").exists():
        run([BIN / "reptile-tf", "prepare", "omniglot", "--raw", RAW_OMNIGLOT, "--data-dir", NEAREST_DATA,
             "--resize-filter", "nearest"])


def train_flags(algorithm: str, seed: int, iterations: int) -> list[str]:
    return ["--algorithm", algorithm, "--dataset", "omniglot", "--ways", "5", "--shots", "1", "--seed", str(seed),
            "--iterations", str(iterations), "--val-every", "0", "--checkpoint-every", "500",
            "--keep-checkpoints", "1", "--log-every", "100", "--no-progress"]


def derive_eval_only(source: Path, target: Path, flags: list[str]) -> None:
    """A run directory with `source`'s checkpoint and config, plus the evaluation-only settings
    of `flags` (pairs --name value) in its config.json."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(source / "checkpoints", tmp / "checkpoints")
    shutil.copy2(source / "DONE", tmp / "DONE")
    config = json.loads((source / "config.json").read_text())
    for flag, value in zip(flags[::2], flags[1::2]):
        try:
            value = float(value)
        except ValueError:
            pass
        config[flag.removeprefix("--").replace("-", "_")] = value
    config["derived_from"] = os.path.relpath(source, ROOT)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def do_run(variant: str, seed: int, iterations: int, tasks: int, algorithm: str = "reptile") -> None:
    spec = VARIANTS[variant]
    flags, data_dir, eval_of = spec.flags, spec.data, spec.eval_of
    path = run_dir(variant, seed)
    timing_path = path / "fidelity_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    if eval_of is not None:
        source = run_dir(eval_of, seed)
        if not (source / "DONE").exists():
            do_run(eval_of, seed, iterations, tasks, algorithm)
        if not (path / "DONE").exists():
            derive_eval_only(source, path, flags)
        timing["train_seconds"] = None
    elif not (path / "DONE").exists():
        timing["train_seconds"] = run([BIN / "reptile-tf", "train", *train_flags(algorithm, seed, iterations), "--out", path,
                                       "--data-dir", data_dir, *flags])
    timing["eval_seconds"] = run([BIN / "reptile-tf", "evaluate", path, "--tasks", str(tasks), "--mode", "both",
                                  "--no-progress"])
    timing_path.write_text(json.dumps(timing) + "\n")


# ----------------------------------------------------------------------------- report


# runs.csv columns read back as numbers (the rest stay text)
CSV_NUMBERS = {"seed": int, "tasks": int, "iterations": int, "accuracy": float, "ci95": float,
               "train_seconds": float, "eval_seconds": float, "delta": float}


def read_rows(path: Path) -> list[dict]:
    """A CSV this script wrote, with its numbers as numbers (empty cells: None); [] when absent."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: (CSV_NUMBERS[k](v) if v else None) if k in CSV_NUMBERS else v for k, v in row.items()}
                for row in csv.DictReader(fh)]


def with_recorded(fresh: list[dict], recorded: list[dict], key: tuple[str, ...], order: list[str]) -> list[dict]:
    """`fresh` rows, plus the `recorded` rows (the committed CSV) of every `key` absent from `fresh`,
    of variants this script still knows, sorted by variant in `order` (then VARIANTS order), then key:
    the run directories live in `.cache`, so a report on a machine that holds only some of them (a
    fresh clone) must not drop the rows it cannot recompute."""
    have = {tuple(r[k] for k in key) for r in fresh}
    kept = [r for r in recorded if r.get("variant") in VARIANTS and tuple(r.get(k) for k in key) not in have]
    rank = {name: i for i, name in enumerate(dict.fromkeys([*order, *VARIANTS]))}
    return sorted(fresh + kept, key=lambda r: (rank[r["variant"]], *(str(r[k]) for k in key[1:])))


def collect(variants: list[str], seeds: list[int], tasks: int) -> list[dict]:
    """Rows of the finished runs on disk, and of `runs.csv` for the runs not on disk (same task count)."""
    rows = []
    for variant in variants:
        for seed in seeds:
            path = run_dir(variant, seed)
            if not finished(path, tasks):
                continue
            result = json.loads((path / "eval.json").read_text())
            timing_path = path / "fidelity_timing.json"
            timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
            config = json.loads((path / "config.json").read_text())
            for mode in MODES:
                rows.append({"variant": variant, "seed": seed, "mode": mode,
                             "accuracy": round(result[mode]["accuracy"], 4), "ci95": round(result[mode]["ci95"], 4),
                             "tasks": result[mode]["tasks"], "iterations": config["iterations"],
                             "inner_adam_mode": config.get("inner_adam_mode", "parallel_mean"),
                             "loss_reduction": config.get("loss_reduction", "mean"),
                             "eval_adam_state": config.get("eval_adam_state", "training"),
                             "mixed_precision": bool(config.get("mixed_precision")),
                             "data_digest": config["data"]["digest"][:12],
                             "train_seconds": timing.get("train_seconds") and round(timing["train_seconds"], 1),
                             "eval_seconds": timing.get("eval_seconds") and round(timing["eval_seconds"], 1)})
    recorded = [r for r in read_rows(RESULTS / "runs.csv") if r.get("tasks") == tasks]
    return with_recorded(rows, recorded, ("variant", "seed", "mode"), variants)


def summarise(rows: list[dict], variants: list[str]) -> list[dict]:
    by = {}
    for row in rows:
        by.setdefault((row["variant"], row["mode"]), {})[row["seed"]] = row["accuracy"]
    summary = []
    for mode in MODES:
        base = by.get(("baseline", mode), {})
        for variant in variants:
            accs = by.get((variant, mode))
            if not accs:
                continue
            values = list(accs.values())
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            entry = {"variant": variant, "mode": mode, "seeds": " ".join(str(s) for s in sorted(accs)),
                     "n": len(values), "mean": round(mean, 3), "sd": round(sd, 3) if not math.isnan(sd) else "",
                     "min": round(min(values), 3), "max": round(max(values), 3)}
            if variant != "baseline" and base:
                base_values = list(base.values())
                delta = mean - statistics.fmean(base_values)
                base_sd = statistics.stdev(base_values) if len(base_values) > 1 else float("nan")
                spread = max(sd, base_sd) if not (math.isnan(sd) or math.isnan(base_sd)) else float("nan")
                paired = [accs[s] - base[s] for s in accs if s in base]
                entry.update(
                    delta=round(delta, 3),
                    paired_deltas=" ".join(f"{d:+.2f}" for d in paired),
                    beyond_spread=("" if math.isnan(spread) else str(abs(delta) > spread).lower()),
                    ranges_disjoint=("" if min(len(values), len(base_values)) < 2 else
                                     str(min(values) > max(base_values) or max(values) < min(base_values)).lower()))
            summary.append(entry)
    return summary


def paired_task_deltas(rows: list[dict]) -> list[dict]:
    """Evaluation-only variants against their source checkpoints: per-task accuracy differences on
    the same tasks (eval_<mode>.csv), pooled over the seeds both have on disk: mean ± 1.96 SE."""
    done = {(r["variant"], r["seed"]) for r in rows if (run_dir(r["variant"], r["seed"]) / f"eval_{r['mode']}.csv").exists()}
    out = []
    for variant, spec in VARIANTS.items():
        eval_of = spec.eval_of
        if eval_of is None:
            continue
        seeds = sorted(s for v, s in done if v == variant and (eval_of, s) in done)
        for mode in MODES:
            deltas = []
            for seed in seeds:
                a = _per_task(run_dir(variant, seed) / f"eval_{mode}.csv")
                b = _per_task(run_dir(eval_of, seed) / f"eval_{mode}.csv")
                deltas += [x - y for x, y in zip(a, b)]
            if deltas:
                mean = statistics.fmean(deltas)
                se = statistics.pstdev(deltas) / math.sqrt(len(deltas))
                out.append({"variant": variant, "versus": eval_of, "mode": mode, "seeds": " ".join(map(str, seeds)),
                            "tasks": len(deltas), "delta": round(mean, 3), "ci95": round(1.96 * se, 3)})
    return out


def _per_task(path: Path) -> list[float]:
    with open(path) as fh:
        return [float(row["accuracy"]) for row in csv.DictReader(fh)]


def paired_table(paired: list[dict]) -> str:
    if not paired:
        return ""
    lines = ["", "", "Evaluation-only variants, paired by task against the checkpoints they re-evaluate "
             "(same checkpoint, same tasks, same adaptation minibatches; ± = 1.96 SE over tasks x seeds):", "",
             "| variant | versus | mode | seeds | tasks | delta (points) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {e['variant']} | {e['versus']} | {e['mode']} | {e['seeds']} | {e['tasks']} | "
              f"{e['delta']:+.2f} ± {e['ci95']:.2f} |" for e in paired]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def table(summary: list[dict], rows: list[dict], seeds: list[int], variants: list[str], args) -> str:
    lines = [f"Grid: {len(variants)} variants x seeds {seeds}; finished runs: "
             f"{len({(r['variant'], r['seed']) for r in rows})} "
             f"(each evaluated in both modes). Accuracy in %, {args.tasks} test tasks, mean ± sample SD over "
             "seeds; delta = variant mean − baseline mean; paired = per-seed differences (same seed, same "
             "initialisation and task stream); 'beyond spread' = |delta| > the larger of the two seed SDs; "
             "'disjoint' = every seed of one on the same side of every seed of the other.", ""]
    lines += ["| variant | mode | seeds | mean ± SD | min–max | delta | paired | beyond spread | disjoint |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in summary:
        sd = f" ± {e['sd']:.2f}" if e["sd"] != "" else ""
        lines.append(f"| {e['variant']} | {e['mode']} | {e['seeds']} | {e['mean']:.2f}{sd} | "
                     f"{e['min']:.2f}–{e['max']:.2f} | {e.get('delta', '') if e.get('delta') is None else format(e['delta'], '+.2f')} | "
                     f"{e.get('paired_deltas', '')} | {e.get('beyond_spread', '')} | {e.get('ranges_disjoint', '')} |")
    missing = [f"{v}/seed{s}" for s in seeds for v in variants if not any(
        r["variant"] == v and r["seed"] == s for r in rows)]
    lines += ["", f"Not finished: {', '.join(missing) if missing else 'none'}."]
    times = [r["train_seconds"] for r in rows if r.get("train_seconds") and r["mode"] == MODES[0]]
    if times:
        lines.append(f"Training wall time per run (machine load: see the text above the table): "
                     f"{min(times):.0f}–{max(times):.0f} s.")
    return "\n".join(lines)


def report(variants: list[str], seeds: list[int], args) -> None:
    """Rewrite runs.csv, summary.csv and the README table from every finished run on disk (the
    algorithm's grid, or only `--variants` when given, seeds 0-2 and `seeds`) and the recorded rows
    of runs.csv for the runs not on disk: concurrent workers on disjoint parts of the grid then
    never drop each other's rows."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    defaults = ALGORITHMS[args.algorithm][0] if args.variants is None else []
    variants = list(dict.fromkeys([*defaults, *variants]))
    seeds = sorted(set(seeds) | {0, 1, 2})
    rows = collect(variants, seeds, args.tasks)
    variants = list(dict.fromkeys([*variants, *(r["variant"] for r in rows)]))
    summary = summarise(rows, variants)
    paired = with_recorded(paired_task_deltas(rows), read_rows(RESULTS / "paired.csv"), ("variant", "mode"),
                           list(VARIANTS))
    write_csv(RESULTS / "runs.csv", rows)
    write_csv(RESULTS / "summary.csv", summary)
    write_csv(RESULTS / "paired.csv", paired)
    readme = RESULTS / "README.md"
    text = readme.read_text() if readme.exists() else f"# Fidelity at matched budget (issue 16)\n\n{TABLE_BEGIN}\n{TABLE_END}\n"
    if TABLE_BEGIN not in text:
        text += f"\n{TABLE_BEGIN}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1] if TABLE_END in rest else ""
    body = table(summary, rows, seeds, variants, args) + paired_table(paired)
    tmp = readme.with_suffix(".tmp")
    tmp.write_text(f"{head}{TABLE_BEGIN}\n{body}\n{TABLE_END}{tail}")
    tmp.replace(readme)


def main() -> int:
    global RUNS, RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="reptile")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: the algorithm's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=None, help="default: 2%% of the paper's budget")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--report", action="store_true", help="only rewrite the results from finished runs")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the baseline (another worker does); it is still reported")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: .cache/fidelity[/<algorithm>]/runs")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: results/fidelity[/<algorithm>]")
    args = parser.parse_args()
    default_variants, default_iterations = ALGORITHMS[args.algorithm]
    args.iterations = args.iterations or default_iterations
    subdir = "" if args.algorithm == "reptile" else args.algorithm
    RUNS = (args.runs_dir or RUNS.parent / subdir / RUNS.name).resolve()
    RESULTS = (args.results_dir or RESULTS / subdir).resolve()
    variants = [v for v in (args.variants or ",".join(default_variants)).split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.no_baseline:
        variants = [v for v in variants if v != "baseline"]
    elif "baseline" not in variants:
        variants.insert(0, "baseline")
    report(variants, seeds, args)
    if args.report:
        return 0
    if any(VARIANTS[v].data == NEAREST_DATA for v in variants):
        ensure_nearest_data()
    combined = [v for v in variants if VARIANTS[v].combined]
    order = [(v, s) for s in seeds for v in variants if v not in combined] + [(v, s) for v in combined for s in seeds]
    for variant, seed in order:
        if finished(run_dir(variant, seed), args.tasks):
            log(f"{variant}/seed{seed}: done already")
            continue
        do_run(variant, seed, args.iterations, args.tasks, args.algorithm)
        report(variants, seeds, args)
    report(variants, seeds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

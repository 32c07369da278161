"""`reptile-tf theory`: numerical checks of the Reptile paper's theory (sections 5 and 6.2).

Writes into --out (default results/theory/): taylor.csv, taylor_residuals.csv,
coefficients.csv, manifold.csv, gradient_combinations.csv, PNG plots and README.md. The
gradient-combination curves checkpoint into --state while they train (hours at the paper budget):
rerunning the same command resumes them; a finished run removes the state.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

# Before TensorFlow is first imported (by the modules below): its C++ INFO and WARNING lines
# would drown the progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from reptile_tf.data.episodes import load_split  # noqa: E402
from reptile_tf.errors import UserError  # noqa: E402
from reptile_tf.runtime import machine_summary  # noqa: E402
from reptile_tf.theory import combinations, report  # noqa: E402
from reptile_tf.theory.budgets import Budget, get_budget  # noqa: E402
from reptile_tf.theory.coefficients import coefficient_rows, collect_samples  # noqa: E402
from reptile_tf.theory.manifold import manifold_rows, sample_regression_tasks, stable_lr  # noqa: E402
from reptile_tf.theory.problems import omniglot_problem, toy_regression_problem  # noqa: E402
from reptile_tf.theory.taylor import taylor_residuals  # noqa: E402

PARTS = ("taylor", "coefficients", "manifold", "combinations")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/theory", metavar="DIR",
                        help="output directory for the CSVs, plots and README.md (default: results/theory)")
    parser.add_argument("--budget", default="quick", choices=("smoke", "quick", "paper"),
                        help="amount of work: smoke ~2 min, quick ~3-10 min on 2 CPU cores, paper = the paper's "
                             "sizes (section 6.2: 40,000 iterations; about 2.1 h on one CPU core, projected from a measured step)")
    parser.add_argument("--data-dir", default="data/tfds", metavar="DIR",
                        help="prepared TFDS data holding omniglot (default: data/tfds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    parser.add_argument("--parts", default=",".join(PARTS), metavar="PARTS",
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    parser.add_argument("--state", default=None, metavar="DIR",
                        help="where the gradient-combination curves checkpoint while they train, so that a rerun "
                             "of the same command resumes them; removed when the run finishes "
                             "(default: <out>/combinations_state)")
    parser.add_argument("--synthetic-only", action="store_true",
                        help="skip everything that needs Omniglot (the real-network Taylor rows and the "
                             "gradient-combination curves)")


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise UserError(f"unknown --parts {unknown or text!r}; choose a comma-separated subset of {','.join(PARTS)}")
    return parts


def command_line(args: argparse.Namespace) -> str:
    """The exact command that reproduces this run (recorded at the top of the README)."""
    words = ["reptile-tf", "theory", "--out", str(args.out), "--budget", args.budget,
             "--data-dir", str(args.data_dir), "--seed", str(args.seed)]
    if args.parts != ",".join(PARTS):
        words += ["--parts", args.parts]
    if args.synthetic_only:
        words.append("--synthetic-only")
    return " ".join(words)


def state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state) if args.state else Path(args.out) / "combinations_state"


def _load_omniglot(data_dir: str, split: str):
    if not Path(data_dir).is_dir():
        raise UserError(f"no prepared data in {data_dir}; run `reptile-tf fetch omniglot` and `reptile-tf prepare "
                        "omniglot` first, pass --data-dir, or use --synthetic-only")
    return load_split("omniglot", split, data_dir)


def run_taylor(budget: Budget, seed: int, data_dir: str | None) -> list[dict]:
    rows = []
    toy = toy_regression_problem(seed)
    for k in (2, 3, 4):
        rows += taylor_residuals(toy, k, list(budget.toy_alphas), budget.toy_tasks, seed=seed)
    if data_dir is not None:
        images = _load_omniglot(data_dir, "train")
        for variant in budget.omniglot_variants:
            problem = omniglot_problem(images, seed, variant=variant)
            for k in budget.omniglot_ks:
                rows += taylor_residuals(problem, k, list(budget.omniglot_alphas), budget.omniglot_tasks,
                                         seed=seed, compiled=False)
    return rows


def run_coefficients(budget: Budget, seed: int) -> list[dict]:
    toy = toy_regression_problem(seed)
    rows = []
    for k in (2, 3, 4):
        samples = collect_samples(toy, k, list(budget.coef_alphas), budget.coef_tasks, seed=seed + 1)
        rows += coefficient_rows(samples, k, list(budget.coef_alphas), budget.bootstrap, seed=seed)
    return rows


def run_manifold(budget: Budget, seed: int) -> list[dict]:
    tasks = sample_regression_tasks(seed=seed)
    return manifold_rows(tasks, list(budget.manifold_ks), stable_lr(tasks), budget.manifold_iterations)


def run_combinations(budget: Budget, seed: int, data_dir: str, state: Path) -> list[dict]:
    cfg = dataclasses.replace(budget.combinations, seed=seed)
    return combinations.run_combinations(_load_omniglot(data_dir, "train"), _load_omniglot(data_dir, "test"), cfg,
                                         state)


def main(args: argparse.Namespace) -> int:
    budget = get_budget(args.budget)
    parts = parse_parts(args.parts)
    out = Path(args.out)
    data_dir = None if args.synthetic_only else str(args.data_dir)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    timings: dict[str, float] = {}
    runners = {
        "taylor": lambda: run_taylor(budget, args.seed, data_dir),
        "coefficients": lambda: run_coefficients(budget, args.seed),
        "manifold": lambda: run_manifold(budget, args.seed),
        "combinations": lambda: run_combinations(budget, args.seed, data_dir, state_dir(args)),
    }
    for part in parts:
        if part == "combinations" and data_dir is None:
            continue
        t0 = time.perf_counter()
        print(f"reptile-tf theory: {part} ...", flush=True)
        results[part] = runners[part]()
        timings[part] = time.perf_counter() - t0
        print(f"reptile-tf theory: {part} done in {timings[part]:.0f} s", flush=True)
    report.write_all(out, results, timings, command_line(args), time.perf_counter() - started, budget,
                     machine_summary())
    # Finished: the curves are in gradient_combinations.csv; a later run measures anew.
    shutil.rmtree(state_dir(args), ignore_errors=True)
    print(f"reptile-tf theory: wrote {out}/README.md ({time.perf_counter() - started:.0f} s)")
    return 0

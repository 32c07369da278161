"""`reptile-tf bench`: the command's flags and its run (plan -> runner -> report)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any, Callable

# Before TensorFlow is first imported (by the runner, below): its C++ info lines would drown the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from reptile_tf.bench import report, runner  # noqa: E402
from reptile_tf.bench.peers import DEFAULT_PEER_PYTHON, PEER_PYTHON_ENV, peer_python  # noqa: E402
from reptile_tf.bench.plan import ALGORITHMS, SKIPPABLE, Plan, make_plan, parse_cases, parse_skip  # noqa: E402
from reptile_tf.cpu import cpu_class  # noqa: E402
from reptile_tf.errors import UserError  # noqa: E402

# One run per CPU class: results/benchmarks/avx512/, results/benchmarks/avx2/ (reptile_tf.cost reads them).
BENCHMARKS_ROOT = Path("results/benchmarks")


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type=` that reports a UserError as a usage error (message, exit code 2)."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def configure_parser(parser: argparse.ArgumentParser) -> None:
    full, quick = Plan((), (), (), (), ()), make_plan(quick=True)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output directory for throughput.csv, profile.csv and README.md (default: "
                             f"{BENCHMARKS_ROOT}/<CPU class>, here {BENCHMARKS_ROOT / cpu_class()})")
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: Omniglot 5-way for every algorithm + Reptile on the other datasets, "
                             "XLA and reference loop for Reptile Omniglot 5-way only, fewer repeats (default: off, "
                             "every algorithm on Omniglot 5/20-way and Mini-ImageNet 5-way)")
    parser.add_argument("--cases", type=_argument(parse_cases), default=None, metavar="CASES",
                        help="only these ALGORITHM:DATASET:WAYS, comma-separated (e.g. reptile:omniglot:5,"
                             f"maml:mini_imagenet:5; algorithms {', '.join(ALGORITHMS)}), measured fully "
                             "(default: all, or the --quick ones)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help=f"timed repeats per measurement, the median is reported (default: {full.repeats}; "
                             f"--quick {quick.repeats})")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help=f"untimed warm-up calls after tracing (default: {full.warmup}; --quick {quick.warmup})")
    parser.add_argument("--matmul-size", type=int, default=None, metavar="N",
                        help=f"size of the float32 N x N matmul whose speed is the peak (default: {full.matmul_size})")
    parser.add_argument("--skip", type=_argument(parse_skip), default=(), metavar="PARTS",
                        help=f"comma-separated parts to leave out: {', '.join(SKIPPABLE)} (default: none)")
    parser.add_argument("--peer-python", type=Path, default=None, metavar="PYTHON",
                        help="the interpreter of the peers' environment, where learn2learn runs on the same "
                             f"workloads (default: ${PEER_PYTHON_ENV}, else {DEFAULT_PEER_PYTHON}; create it with "
                             "`bash benchmarks/peers/setup.sh`, or leave the peers out with --skip peers)")
    parser.add_argument("--tiny", action="store_true",
                        help="shrink every workload (2 tasks, 1-2 inner steps); for testing the harness only")


def main(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = BENCHMARKS_ROOT / cpu_class()
    plan = make_plan(quick=args.quick, cases=args.cases, tiny=args.tiny, repeats=args.repeats,
                     warmup=args.warmup, matmul_size=args.matmul_size, skip=args.skip, peer_python=args.peer_python)
    if plan.peers:
        peer_python(plan.peer_python)  # a missing peers' environment fails now, not after the measurements
    command = "reptile-tf bench " + args_to_command(args)  # canonical form of the parsed arguments
    rows, profile, info = runner.run_benchmarks(plan)
    report.write_outputs(args.out, command, rows, profile, info)
    runner.log(f"wrote {args.out / 'throughput.csv'} and {args.out / 'README.md'}")
    if info["errors"]:
        runner.log(f"{len(info['errors'])} measurement(s) failed (listed in the README); exit code 1")
        return 1
    return 0


def args_to_command(args: argparse.Namespace) -> str:
    """The flags of parsed `args` in canonical form (the README's first line)."""
    parts = [f"--out {shlex.quote(str(args.out))}"]
    if args.quick:
        parts.append("--quick")
    if args.tiny:
        parts.append("--tiny")
    if args.cases:
        parts.append("--cases " + ",".join(c.label for c in args.cases))
    if args.skip:
        parts.append("--skip " + ",".join(args.skip))
    if args.peer_python is not None:
        parts.append(f"--peer-python {shlex.quote(str(args.peer_python))}")
    for flag in ("repeats", "warmup", "matmul_size"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return " ".join(parts)

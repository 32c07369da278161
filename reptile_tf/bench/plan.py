"""What `reptile-tf bench` measures: the cases, the plan of each part, and the flags that choose them.

No TensorFlow here: the plan is judged and written (targets, report) without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from reptile_tf.errors import UserError
from reptile_tf.settings import Settings, paper_settings

CONFIGS: tuple[tuple[str, int], ...] = (("omniglot", 5), ("omniglot", 20), ("mini_imagenet", 5))
# "maml_fo" = MAML at the MAML paper's settings with first_order=True (the apples-to-apples
# first-order baseline for the "MAML <= 3x FOMAML" target; the paper's FOMAML uses Reptile's settings).
ALGORITHMS = ("reptile", "fomaml", "maml", "maml_fo")
SHOTS = 1  # 1-shot is enough: Reptile/FOMAML training cost does not depend on the test shots.
SKIPPABLE = ("xla", "loop", "eval", "profile", "peers")


@dataclass(frozen=True)
class Case:
    algorithm: str  # one of ALGORITHMS
    dataset: str
    ways: int

    @property
    def label(self) -> str:
        return f"{self.algorithm}:{self.dataset}:{self.ways}"


@dataclass(frozen=True)
class Plan:
    """What to measure, and how often."""

    cases: tuple[Case, ...]
    xla_cases: tuple[Case, ...]  # also measured with XLA on (all cases run with XLA off)
    loop_cases: tuple[Case, ...]  # also timed with the per-task reference loop
    eval_cases: tuple[Case, ...]  # evaluation throughput
    profile_cases: tuple[Case, ...]  # per-op timing of the batched network
    warmup: int = 2
    repeats: int = 10
    matmul_size: int = 2048
    matmul_repeats: int = 10
    eval_repeats: int = 3
    tiny: bool = False  # shrink every workload (tests only): 2 tasks, 1-2 inner steps
    peers: bool = True  # also time learn2learn on the same workloads (bench/peers.py)
    peer_python: Path | None = None  # the peers' interpreter (None: peers.peer_python's default)


def all_cases(algorithms: tuple[str, ...] = ALGORITHMS,
              configs: tuple[tuple[str, int], ...] = CONFIGS) -> tuple[Case, ...]:
    return tuple(Case(a, d, w) for a in algorithms for d, w in configs)


def make_plan(quick: bool = False, cases: tuple[Case, ...] | None = None, tiny: bool = False,
              repeats: int | None = None, warmup: int | None = None, matmul_size: int | None = None,
              skip: tuple[str, ...] = (), peer_python: Path | None = None) -> Plan:
    """The full plan, the `--quick` plan (a few minutes), or a plan for explicit `cases`."""
    omni5 = Case("reptile", "omniglot", 5)
    if cases is not None:
        plan = Plan(cases=cases, xla_cases=cases, loop_cases=cases,
                    eval_cases=tuple(c for c in cases if c.algorithm in ("reptile", "maml")), profile_cases=cases)
    elif quick:
        chosen = all_cases(configs=(("omniglot", 5),)) + (Case("reptile", "omniglot", 20),
                                                          Case("reptile", "mini_imagenet", 5))
        plan = Plan(cases=chosen, xla_cases=(omni5,), loop_cases=(omni5,), eval_cases=(omni5,),
                    profile_cases=(omni5, Case("reptile", "mini_imagenet", 5)),
                    warmup=1, repeats=3, matmul_repeats=5, eval_repeats=2)
    else:
        everything = all_cases()
        plan = Plan(cases=everything, xla_cases=everything, loop_cases=everything,
                    eval_cases=tuple(c for c in everything if c.algorithm in ("reptile", "maml")),
                    profile_cases=(omni5, Case("reptile", "mini_imagenet", 5)))
    if tiny:
        plan = dataclasses.replace(plan, tiny=True, warmup=1, repeats=1, matmul_size=128, matmul_repeats=2,
                                   eval_repeats=1)
    changes = {k: v for k, v in dict(repeats=repeats, warmup=warmup, matmul_size=matmul_size).items() if v is not None}
    if changes.get("repeats", 1) < 1 or changes.get("warmup", 0) < 0 or changes.get("matmul_size", 1) < 1:
        raise UserError("--repeats and --matmul-size must be >= 1 and --warmup >= 0")
    changes.update({f"{part}_cases": () for part in skip if part != "peers"})
    changes.update(peers="peers" not in skip, peer_python=peer_python)
    return dataclasses.replace(plan, **changes)


def parse_skip(text: str) -> tuple[str, ...]:
    """'xla,loop' -> the parts of SKIPPABLE to leave out (validated)."""
    parts = tuple(filter(None, (p.strip() for p in text.split(","))))
    unknown = [p for p in parts if p not in SKIPPABLE]
    if unknown:
        raise UserError(f"unknown --skip part(s) {unknown}; choose from {', '.join(SKIPPABLE)}")
    return parts


def parse_cases(text: str) -> tuple[Case, ...]:
    """'reptile:omniglot:5,maml:mini_imagenet:5' -> cases (validated)."""
    cases = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in ALGORITHMS or (parts[1], _int_or_none(parts[2])) not in CONFIGS:
            raise UserError(f"bad --cases entry {item!r}; use ALGORITHM:DATASET:WAYS with ALGORITHM in "
                            f"{', '.join(ALGORITHMS)} and DATASET:WAYS in "
                            f"{', '.join(f'{d}:{w}' for d, w in CONFIGS)}")
        cases.append(Case(parts[0], parts[1], int(parts[2])))
    if not cases:
        raise UserError("--cases is empty; list at least one ALGORITHM:DATASET:WAYS")
    return tuple(cases)


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def case_settings(case: Case, tiny: bool = False) -> Settings:
    """Paper settings of a case (1-shot); `tiny` shrinks the workload for tests."""
    algorithm = "maml" if case.algorithm == "maml_fo" else case.algorithm
    settings = paper_settings(algorithm, case.dataset, case.ways, SHOTS)
    if case.algorithm == "maml_fo":
        settings = settings.replace(first_order=True)
    if tiny:
        settings = settings.replace(meta_batch=2, inner_steps=2 if case.algorithm == "fomaml" else 1,
                                    eval_inner_steps=2)
    return settings

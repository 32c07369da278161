"""What the measured throughput is judged against: the issue's targets and the published times
of existing implementations (docs/reference.md). No TensorFlow here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reptile_tf.bench.peers import WORKLOADS
from reptile_tf.bench.plan import Case

# docs/reference.md, "Speed of existing implementations on these machines" (seconds), each with
# the (algorithm, dataset, ways) of our row it is compared with ("eval": one evaluation task).
PUBLISHED_TIMES = [
    ("official Reptile code (TF1 graph, TF 2.21)", "Reptile Omniglot 5-way meta-iteration", 0.182, ("reptile", "omniglot", 5)),
    ("learn2learn 0.2.0 (PyTorch, 2 threads)", "Reptile Omniglot 5-way meta-iteration", 0.155, ("reptile", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 5-way 1-shot, meta-batch 32, 1 step, second order", 0.430, ("maml", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 5-way 1-shot, meta-batch 32, 1 step, first order", 0.204, ("maml_fo", "omniglot", 5)),
    ("learn2learn", "MAML Omniglot 20-way 1-shot, meta-batch 16, 5 steps, second order", 2.21, ("maml", "omniglot", 20)),
    ("official Reptile code", "one evaluation task (50 Adam steps, 5-way 1-shot)", 0.296, ("eval", "omniglot", 5)),
]
REFERENCE_PEAK_GFLOPS = 154.0  # docs/reference.md: TensorFlow float32 matmul peak on these machines


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    threshold: float
    higher_is_better: bool
    unit: str
    detail: str

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured >= self.threshold if self.higher_is_better else self.measured <= self.threshold

    def gap(self) -> str:
        if self.met is None:
            return "not measured"
        if self.met:
            return "met"
        if self.higher_is_better:
            return f"missed: needs x{self.threshold / self.measured:.2f}"
        return f"missed: needs /{self.measured / self.threshold:.2f}"


def best_row(rows: list[dict[str, Any]], algorithm: str, dataset: str, ways: int) -> dict[str, Any] | None:
    """The faster XLA mode of a case (None if not measured)."""
    matching = [r for r in rows if (r["algorithm"], r["dataset"], r["ways"]) == (algorithm, dataset, ways)]
    return min(matching, key=lambda r: r["sec_per_meta_iter"]) if matching else None


def our_seconds(rows: list[dict[str, Any]], case: Case, kind: str) -> float | None:
    """Our time of a peer workload: seconds per meta-iteration, or per evaluation task ("eval")."""
    if kind == "eval":
        row = best_row(rows, case.algorithm, case.dataset, case.ways)
        return None if row is None or math.isnan(row["eval_tasks_per_s"]) else 1.0 / row["eval_tasks_per_s"]
    row = best_row(rows, case.algorithm, case.dataset, case.ways)
    return None if row is None else row["sec_per_meta_iter"]


def peer_speedup(rows: list[dict[str, Any]], peers: dict[str, Any] | None, workload: str) -> float | None:
    """learn2learn's seconds / ours on one workload measured in this run (None: not measured)."""
    theirs = (peers or {}).get("seconds", {}).get(workload)
    spec = WORKLOADS[workload]
    ours = our_seconds(rows, spec.case, spec.kind)
    return None if theirs is None or ours is None else theirs / ours


def evaluate_targets(rows: list[dict[str, Any]], peers: dict[str, Any] | None = None) -> list[Target]:
    """The targets (issue 15), each with the measured value (best XLA mode; peers from this run)."""
    def pick(algorithm, dataset, ways, key):
        row = best_row(rows, algorithm, dataset, ways)
        return None if row is None else row[key]

    def xla_of(algorithm, dataset, ways):
        row = best_row(rows, algorithm, dataset, ways)
        return "" if row is None else f" (XLA {'on' if row['xla'] else 'off'})"

    omni = pick("reptile", "omniglot", 5, "fraction_of_peak")
    mini = pick("reptile", "mini_imagenet", 5, "fraction_of_peak")
    speedup = pick("reptile", "omniglot", 5, "speedup_vs_loop")
    maml, first_order = pick("maml", "omniglot", 5, "sec_per_meta_iter"), pick("maml_fo", "omniglot", 5, "sec_per_meta_iter")
    ratio = None if maml is None or first_order is None else maml / first_order
    eval_rate = pick("reptile", "omniglot", 5, "eval_tasks_per_s")
    eval_minutes = None if eval_rate is None or math.isnan(eval_rate) else 10_000 / eval_rate / 60
    peer_note = "learn2learn's time / ours, both measured in this run (bench/peers.py)"
    return [
        Target("Omniglot 5-way Reptile training, speed-up over learn2learn",
               peer_speedup(rows, peers, "reptile_omniglot_5way"), 4.0, True, "x", peer_note),
        Target("Omniglot 5-way Reptile training, fraction of matmul peak", omni, 0.50, True, "",
               "batched meta-step" + xla_of("reptile", "omniglot", 5)),
        Target("Omniglot 20-way Reptile training, speed-up over learn2learn",
               peer_speedup(rows, peers, "reptile_omniglot_20way"), 3.0, True, "x", peer_note),
        Target("Omniglot 5-way MAML training (second order), speed-up over learn2learn",
               peer_speedup(rows, peers, "maml_omniglot_5way_1shot"), 3.0, True, "x", peer_note),
        Target("Mini-ImageNet 5-way Reptile training, fraction of matmul peak", mini, 0.50, True, "",
               "batched meta-step" + xla_of("reptile", "mini_imagenet", 5)),
        Target("batched meta-batch speed-up over the per-task loop (Reptile Omniglot 5-way)", speedup, 2.0, True,
               "x", "benchmarks/reference_loop.py time / batched time"),
        Target("MAML second order / first order time per meta-iteration (Omniglot 5-way)", ratio, 3.0, False,
               "x", "MAML paper settings, meta-batch 32, 1 inner step"),
        Target("evaluation of 10,000 Omniglot 5-way test tasks (Reptile, 50 Adam steps)", eval_minutes, 8.0,
               False, " min", "non-transductive, chunked as `reptile-tf evaluate`"),
    ]

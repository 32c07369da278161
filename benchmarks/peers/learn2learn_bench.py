"""Time learn2learn 0.2.0 (PyTorch, CPU) on the workloads `reptile-tf bench` times.

    .cache/peers/venv/bin/python benchmarks/peers/learn2learn_bench.py --threads 2 --repeats 15 > peers.json

Runs in the peers' own environment (`benchmarks/peers/setup.sh`), never in the project's: it
imports PyTorch, not TensorFlow. Prints one JSON object: the versions, the thread count and, per
workload, the median seconds over `--repeats` after `--warmup` untimed repeats. The workloads use
the hyperparameters of `reptile_tf.settings.paper_settings` for the same cell, passed in by the
caller as `--workloads` JSON (so the two sides cannot drift); the defaults below are those values
for a run by hand.

Each workload follows learn2learn's own examples:
- Reptile (examples/vision/reptile_*.py style): per task, a deep copy of the model trained with
  Adam (beta1 0) on minibatches, then the outer interpolation toward the mean of the task weights.
- MAML (examples/vision/maml_omniglot.py): `l2l.algorithms.MAML(model, lr, first_order)`,
  `clone()`, `adapt()` on the support loss, query loss backpropagated through the adaptation,
  outer Adam.
- Evaluation: one task adapted with 50 Adam steps from a copy, then the queries classified.
The network is `l2l.vision.models.OmniglotCNN` (4 strided 3x3 conv blocks of 64 channels with batch
norm, the MAML/Reptile Omniglot network).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Callable

import learn2learn as l2l
import torch

DEFAULT_WORKLOADS = {
    "reptile_omniglot_5way": {"kind": "reptile", "ways": 5, "train_shots": 10, "inner_batch": 10,
                              "inner_steps": 5, "inner_lr": 0.001, "meta_batch": 5, "outer_lr": 1.0},
    "reptile_omniglot_20way": {"kind": "reptile", "ways": 20, "train_shots": 10, "inner_batch": 20,
                               "inner_steps": 10, "inner_lr": 0.0005, "meta_batch": 5, "outer_lr": 1.0},
    "maml_omniglot_5way_1shot": {"kind": "maml", "ways": 5, "shots": 1, "queries": 1, "inner_steps": 1,
                                 "inner_lr": 0.4, "meta_batch": 32, "outer_lr": 0.001, "first_order": False},
    "maml_fo_omniglot_5way_1shot": {"kind": "maml", "ways": 5, "shots": 1, "queries": 1, "inner_steps": 1,
                                    "inner_lr": 0.4, "meta_batch": 32, "outer_lr": 0.001, "first_order": True},
    "eval_task_omniglot_5way_1shot": {"kind": "eval", "ways": 5, "shots": 1, "queries": 1,
                                      "inner_steps": 50, "inner_batch": 5, "inner_lr": 0.001},
}
IMAGE = (1, 28, 28)


def images(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand((count, *IMAGE), generator=generator)


def labels(ways: int, per_class: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(per_class)


def adam(params, lr: float) -> torch.optim.Optimizer:
    # beta1 = 0: the Reptile paper's inner Adam (docs/reference.md)
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.999), eps=1e-8)


def reptile_runner(w: dict, generator: torch.Generator) -> Callable[[], None]:
    model = l2l.vision.models.OmniglotCNN(w["ways"])
    loss = torch.nn.CrossEntropyLoss()
    per_task = w["ways"] * w["train_shots"]
    x = images(w["meta_batch"] * per_task, generator).view(w["meta_batch"], per_task, *IMAGE)
    y = labels(w["ways"], w["train_shots"])

    def step() -> None:
        start = [p.detach().clone() for p in model.parameters()]
        total = [torch.zeros_like(p) for p in start]
        for task in range(w["meta_batch"]):
            learner = copy.deepcopy(model)
            opt = adam(learner.parameters(), w["inner_lr"])
            order = torch.randperm(per_task, generator=generator)
            for s in range(w["inner_steps"]):
                idx = order[(s * w["inner_batch"]) % per_task:][: w["inner_batch"]]
                opt.zero_grad()
                loss(learner(x[task, idx]), y[idx]).backward()
                opt.step()
            for acc, p in zip(total, learner.parameters()):
                acc.add_(p.detach())
        with torch.no_grad():
            for p, p0, acc in zip(model.parameters(), start, total):
                p.copy_(p0 + w["outer_lr"] * (acc / w["meta_batch"] - p0))

    return step


def maml_runner(w: dict, generator: torch.Generator) -> Callable[[], None]:
    model = l2l.vision.models.OmniglotCNN(w["ways"])
    maml = l2l.algorithms.MAML(model, lr=w["inner_lr"], first_order=w["first_order"])
    opt = torch.optim.Adam(maml.parameters(), lr=w["outer_lr"])
    loss = torch.nn.CrossEntropyLoss()
    n_s, n_q = w["ways"] * w["shots"], w["ways"] * w["queries"]
    xs = images(w["meta_batch"] * n_s, generator).view(w["meta_batch"], n_s, *IMAGE)
    xq = images(w["meta_batch"] * n_q, generator).view(w["meta_batch"], n_q, *IMAGE)
    ys, yq = labels(w["ways"], w["shots"]), labels(w["ways"], w["queries"])

    def step() -> None:
        opt.zero_grad()
        for task in range(w["meta_batch"]):
            learner = maml.clone()
            for _ in range(w["inner_steps"]):
                learner.adapt(loss(learner(xs[task]), ys))
            (loss(learner(xq[task]), yq) / w["meta_batch"]).backward()
        opt.step()

    return step


def eval_runner(w: dict, generator: torch.Generator) -> Callable[[], None]:
    model = l2l.vision.models.OmniglotCNN(w["ways"])
    n_s, n_q = w["ways"] * w["shots"], w["ways"] * w["queries"]
    xs, xq = images(n_s, generator), images(n_q, generator)
    ys = labels(w["ways"], w["shots"])
    loss = torch.nn.CrossEntropyLoss()

    def task() -> None:
        learner = copy.deepcopy(model)
        opt = adam(learner.parameters(), w["inner_lr"])
        for s in range(w["inner_steps"]):
            idx = torch.arange(s * w["inner_batch"], (s + 1) * w["inner_batch"]) % n_s
            opt.zero_grad()
            loss(learner(xs[idx]), ys[idx]).backward()
            opt.step()
        with torch.no_grad():
            learner(xq).argmax(-1)

    return task


RUNNERS = {"reptile": reptile_runner, "maml": maml_runner, "eval": eval_runner}


# The same timing rule as reptile_tf.bench.measure.median_seconds, written again on purpose: this
# script runs in the peers' PyTorch environment, which has neither TensorFlow nor reptile_tf.
def median_seconds(fn: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--workloads", type=json.loads, default=DEFAULT_WORKLOADS,
                        help="JSON {name: hyperparameters} (default: the paper's Omniglot settings)")
    parser.add_argument("--only", nargs="*", help="names of the workloads to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    seconds = {}
    for name, workload in args.workloads.items():
        if args.only and name not in args.only:
            continue
        runner = RUNNERS[workload["kind"]](workload, generator)
        seconds[name] = median_seconds(runner, args.warmup, args.repeats)
        print(f"{name}: {seconds[name]:.4f} s", file=sys.stderr)
    json.dump({"implementation": "learn2learn", "learn2learn": l2l.__version__, "torch": torch.__version__,
               "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
               "workloads": args.workloads, "seconds": seconds}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peers timed in the same run: learn2learn on the workloads we time, in its own environment.

learn2learn needs PyTorch, which must not share a process (or a dependency resolution) with
TensorFlow, so it runs as a subprocess of the peers' virtualenv (`benchmarks/peers/setup.sh`) on
`benchmarks/peers/learn2learn_bench.py`. The hyperparameters it runs are built here from the same
`case_settings` as our measurements, so the two sides time the same workload. No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

from reptile_tf.bench.plan import Case, case_settings
from reptile_tf.errors import UserError
from reptile_tf.settings import Settings

PEERS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
LEARN2LEARN_SCRIPT = PEERS_DIR / "learn2learn_bench.py"
DEFAULT_PEER_PYTHON = Path(".cache/peers/venv/bin/python")
PEER_PYTHON_ENV = "REPTILE_TF_PEER_PYTHON"
TIMEOUT_S = 3600


class PeerWorkload(NamedTuple):
    description: str
    case: Case
    kind: str  # "reptile", "maml" or "eval" (one evaluation task): the peer script's runner


# Our row each learn2learn workload is compared with ("eval": one evaluation task of the case).
WORKLOADS: dict[str, PeerWorkload] = {
    "reptile_omniglot_5way": PeerWorkload("Reptile Omniglot 5-way meta-iteration",
                                          Case("reptile", "omniglot", 5), "reptile"),
    "reptile_omniglot_20way": PeerWorkload("Reptile Omniglot 20-way meta-iteration",
                                           Case("reptile", "omniglot", 20), "reptile"),
    "maml_omniglot_5way_1shot": PeerWorkload("MAML Omniglot 5-way 1-shot, meta-batch 32, second order",
                                             Case("maml", "omniglot", 5), "maml"),
    "maml_fo_omniglot_5way_1shot": PeerWorkload("MAML Omniglot 5-way 1-shot, meta-batch 32, first order",
                                                Case("maml_fo", "omniglot", 5), "maml"),
    "eval_task_omniglot_5way_1shot": PeerWorkload("one evaluation task (Reptile, 5-way 1-shot, 50 Adam steps)",
                                                  Case("reptile", "omniglot", 5), "eval"),
}


def hyperparameters(kind: str, settings: Settings) -> dict[str, Any]:
    """The peer script's description of one workload, from our settings of the same case."""
    if kind == "reptile":
        return {"kind": kind, "ways": settings.ways, "train_shots": settings.train_shots,
                "inner_batch": settings.inner_batch, "inner_steps": settings.inner_steps,
                "inner_lr": settings.inner_lr, "meta_batch": settings.meta_batch, "outer_lr": settings.outer_lr}
    if kind == "maml":
        return {"kind": kind, "ways": settings.ways, "shots": settings.shots, "queries": settings.queries,
                "inner_steps": settings.inner_steps, "inner_lr": settings.inner_lr,
                "meta_batch": settings.meta_batch, "outer_lr": settings.outer_lr,
                "first_order": settings.first_order}
    support = settings.ways * settings.shots
    return {"kind": kind, "ways": settings.ways, "shots": settings.shots, "queries": settings.eval_queries,
            "inner_steps": settings.eval_inner_steps, "inner_batch": settings.eval_inner_batch or support,
            "inner_lr": settings.eval_inner_lr or settings.inner_lr}


def peer_workloads(tiny: bool = False) -> dict[str, dict[str, Any]]:
    return {name: hyperparameters(w.kind, case_settings(w.case, tiny)) for name, w in WORKLOADS.items()}


def peer_python(requested: Path | None = None) -> Path:
    """The peers' interpreter: `requested`, else $REPTILE_TF_PEER_PYTHON, else the default venv."""
    path = requested or Path(os.environ.get(PEER_PYTHON_ENV) or DEFAULT_PEER_PYTHON)
    if not path.exists():
        raise UserError(f"the peers' Python {path} does not exist: create it with `bash benchmarks/peers/setup.sh` "
                        f"(learn2learn on PyTorch, a separate virtualenv), pass --peer-python, or leave the peers "
                        f"out with --skip peers")
    return path


def run_learn2learn(python: Path, threads: int, warmup: int, repeats: int, tiny: bool = False) -> dict[str, Any]:
    """Time learn2learn on WORKLOADS -> the peer script's JSON (versions, threads, seconds per workload)."""
    command = [str(python), str(LEARN2LEARN_SCRIPT), "--threads", str(threads), "--warmup", str(warmup),
               "--repeats", str(repeats), "--workloads", json.dumps(peer_workloads(tiny))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"learn2learn benchmark exited {done.returncode}: {tail}")
    return json.loads(done.stdout)


def peer_label(result: dict[str, Any]) -> str:
    return (f"learn2learn {result['learn2learn']} (PyTorch {result['torch']}, {result['threads']} threads), "
            f"measured in this run")

"""Paper hyperparameters per (algorithm, dataset, ways, shots): the one table in code.

Source: docs/reference.md (Nichol et al. 2018, official supervised-reptile README
commands; Finn et al. 2017, MAML appendix). Configs and CLI flags override these values;
they never copy them.

Reptile and FOMAML use the Reptile paper's settings (its FOMAML numbers come from the
same code with `--foml`); MAML uses the MAML paper's settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reptile_tf.errors import UserError

ALGORITHMS = ("reptile", "fomaml", "maml")
DATASETS = ("omniglot", "mini_imagenet", "sine")


@dataclass(frozen=True)
class Settings:
    """Everything that defines one training + evaluation configuration."""

    algorithm: str
    dataset: str
    ways: int
    shots: int
    # inner loop (training)
    inner_optimizer: str  # "adam" (beta1 = 0) or "sgd"
    inner_lr: float
    inner_steps: int
    inner_batch: int  # minibatch size; 0 = whole support set in every step
    train_shots: int  # images per class drawn for a training task (>= shots for Reptile)
    # outer loop
    meta_batch: int
    iterations: int
    outer_lr: float  # Reptile/FOMAML: initial outer step, annealed linearly to 0; MAML: Adam lr
    outer_optimizer: str  # "sgd" (Reptile/FOMAML, with linear annealing) or "adam" (MAML)
    first_order: bool = False  # MAML only: drop second-order terms (= FOMAML, MAML style)
    tail_shots: int = 0  # FOMAML: size per class of a separate final minibatch (0 = none)
    queries: int = 1  # query images per class in a task
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # evaluation
    eval_inner_steps: int = 50
    eval_inner_batch: int = 5
    eval_inner_lr: float | None = None  # None = same as inner_lr
    eval_tasks: int = 10_000
    eval_queries: int = 1
    # Fidelity to the official supervised-reptile code (issue 16; results/fidelity/README.md).
    # Defaults = this project's behaviour before the options existed; each alternative is the
    # official one. See FIDELITY_OPTIONS for the values and their sources.
    inner_adam_mode: str = "parallel_mean"  # "parallel_mean" | "sequential" (official)
    loss_reduction: str = "mean"  # inner-loop loss over a minibatch: "mean" | "sum" (official)
    eval_adam_state: str = "training"  # adaptation starts from "training" (official) or "fresh" moments
    source: str = field(default="", compare=False)  # where the numbers come from

    def replace(self, **changes) -> "Settings":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown setting(s) {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        """All fields, except FIDELITY_OPTIONS left at their default: a run directory written
        before those fields existed then still matches its config on resume, and a missing
        field reads back as its default (the behaviour such runs had)."""
        values = dataclasses.asdict(self)
        for name, (default, _) in FIDELITY_OPTIONS.items():
            if values.get(name) == default:
                del values[name]
        return values


# Settings fields added for fidelity to the official code (issue 16): name -> (default, allowed values).
# - inner_adam_mode: how the inner Adam state is shared by the tasks of a meta-batch (Reptile/FOMAML).
#   "parallel_mean" (default): tasks run in parallel from the shared moments; afterwards the shared
#   moments become the mean of the tasks' final moments and the step count advances by inner_steps.
#   "sequential": the official code (supervised_reptile/reptile.py `Reptile.train_step`: one
#   tf.train.AdamOptimizer, tasks one after another, `VariableState(tf.trainable_variables())`
#   restores only the weights, so Adam's m, v and beta-power accumulators carry from task to task;
#   the step count advances by meta_batch * inner_steps). No effect with SGD or for MAML.
# - loss_reduction: the minibatch loss the inner loop differentiates (training and adaptation).
#   "mean" (default, as the MAML code). "sum": the official code (models.py `OmniglotModel`:
#   `optimizer.minimize(self.loss)` on the per-example cross-entropy vector, i.e. its sum).
#   Adam is invariant to a constant gradient scale except through epsilon and through moments
#   carried between minibatches of different sizes (training batch -> evaluation batch).
# - eval_adam_state: the inner Adam state each evaluation task starts from (Reptile/FOMAML).
#   "training" (default, official: reptile.py `Reptile.evaluate` exports and re-imports
#   `_full_state`, all global variables, so every test task adapts from the end-of-training Adam
#   moments and step count). "fresh": zero moments, step count 0 (a diagnostic).
# Defaults and presets (the rule, issue 16: a paper preset follows the official code wherever a
# difference moves accuracy by more than the seed-to-seed spread). Measured at a matched budget
# (Omniglot 5-way 1-shot Reptile, 2,000 iterations, 1,000 test tasks, 3 seeds):
# results/fidelity/README.md.
# - loss_reduction "sum": beyond the spread (about -1.5 points non-transductive, -1.2 transductive,
#   through the evaluation step size) -> the paper presets set it for Reptile and FOMAML
#   (workflow/config/config.yaml `budget.per_algorithm`); MAML keeps "mean" (Finn's code: see
#   docs/reference.md). So does Omniglot's NEAREST resize (data.omniglot_resize_filter: nearest).
# - inner_adam_mode "sequential": no effect beyond the spread -> "parallel_mean" everywhere (faster).
# - eval_adam_state: both codes use "training"; "fresh" is a diagnostic only.
# The Settings defaults stay this project's behaviour (quick/smoke presets and their committed
# references use them); the official semantics are one flag away (`--loss-reduction sum`,
# `--inner-adam-mode sequential`, `reptile-tf prepare omniglot --resize-filter nearest`).
FIDELITY_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "inner_adam_mode": ("parallel_mean", ("parallel_mean", "sequential")),
    "loss_reduction": ("mean", ("mean", "sum")),
    "eval_adam_state": ("training", ("training", "fresh")),
}


def check_fidelity_options(settings: "Settings") -> None:
    """UserError for an unknown value of a FIDELITY_OPTIONS field."""
    for name, (_, allowed) in FIDELITY_OPTIONS.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


_REPTILE_SRC = "Reptile paper, official README commands (docs/reference.md)"
_MAML_SRC = "MAML paper appendix (docs/reference.md)"


def _reptile(dataset: str, ways: int, shots: int) -> dict:
    common = dict(
        inner_optimizer="adam", meta_batch=5, outer_lr=1.0, outer_optimizer="sgd",
        eval_inner_steps=50, eval_tasks=10_000, queries=1, eval_queries=1, source=_REPTILE_SRC,
    )
    if dataset == "omniglot" and ways == 5:
        return dict(common, inner_lr=0.001, inner_batch=10, inner_steps=5, train_shots=10,
                    iterations=100_000, eval_inner_batch=5)
    if dataset == "omniglot" and ways == 20:
        return dict(common, inner_lr=0.0005, inner_batch=20, inner_steps=10, train_shots=10,
                    iterations=200_000, eval_inner_batch=10)
    if dataset == "mini_imagenet" and ways == 5:
        return dict(common, inner_lr=0.001, inner_batch=10, inner_steps=8, train_shots=15,
                    iterations=100_000, eval_inner_batch=5 if shots == 1 else 15)
    raise KeyError


def _maml(dataset: str, ways: int, shots: int) -> dict:
    common = dict(inner_optimizer="sgd", outer_lr=0.001, outer_optimizer="adam", iterations=60_000,
                  inner_batch=0, train_shots=shots, eval_tasks=600, source=_MAML_SRC)
    if dataset == "omniglot" and ways == 5:
        return dict(common, inner_steps=1, eval_inner_steps=3, inner_lr=0.4, meta_batch=32,
                    queries=1, eval_queries=1, eval_inner_batch=0)
    if dataset == "omniglot" and ways == 20:
        return dict(common, inner_steps=5, eval_inner_steps=5, inner_lr=0.1, meta_batch=16,
                    queries=1, eval_queries=1, eval_inner_batch=0)
    if dataset == "mini_imagenet" and ways == 5:
        return dict(common, inner_steps=5, eval_inner_steps=10, inner_lr=0.01,
                    meta_batch=4 if shots == 1 else 2, queries=15, eval_queries=15, eval_inner_batch=0)
    raise KeyError


def _sine(algorithm: str) -> dict:
    # Sine regression (MAML paper, section 5.1): 10-shot, inner SGD lr 0.01, meta-batch 25.
    base = dict(inner_optimizer="sgd", inner_lr=0.01, inner_steps=1, inner_batch=0, train_shots=10,
                meta_batch=25, iterations=10_000, queries=10, eval_inner_steps=10,
                eval_inner_batch=0, eval_tasks=600, eval_queries=10, source="MAML paper, section 5.1")
    if algorithm == "maml":
        return dict(base, outer_lr=0.001, outer_optimizer="adam")
    # Not in the papers for Reptile/FOMAML. SGD with outer step 0.1 left the error at ~4.3
    # after 1,000 iterations (measured); the Reptile defaults (Adam, outer step 1.0) learn.
    return dict(base, inner_optimizer="adam", outer_lr=1.0, outer_optimizer="sgd", inner_steps=5,
                source="Reptile defaults on the MAML sine task (docs/reference.md has no sine settings)")


def paper_settings(algorithm: str, dataset: str, ways: int, shots: int) -> Settings:
    """The paper's configuration for this setting (docs/reference.md)."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if ways < 1 or shots < 1:
        raise UserError(f"ways and shots must be positive (got ways={ways}, shots={shots})")
    try:
        if dataset == "sine":
            values = _sine(algorithm)
        elif algorithm == "maml":
            values = _maml(dataset, ways, shots)
        else:
            values = _reptile(dataset, ways, shots)
    except KeyError:
        raise UserError(
            f"no published configuration for {algorithm} on {dataset} {ways}-way {shots}-shot; the paper "
            "settings are Omniglot 5/20-way and Mini-ImageNet 5-way, 1 or 5 shots. Pass every "
            "hyperparameter explicitly (see `reptile-tf train --help`) to run another setting."
        ) from None
    if algorithm == "fomaml":
        # Official code, `--foml --foml-tail 5` on Omniglot/Mini-ImageNet: a separate final minibatch.
        values["tail_shots"] = 5 if dataset != "sine" else 0
    return Settings(algorithm=algorithm, dataset=dataset, ways=ways, shots=shots, **values)


# Published accuracies (%), docs/reference.md Tables 1 and 2: (method, transductive, dataset, ways, shots) -> (mean, ±)
PUBLISHED: dict[tuple[str, bool, str, int, int], tuple[float, float]] = {
    ("maml", True, "omniglot", 5, 1): (98.7, 0.4), ("maml", True, "omniglot", 5, 5): (99.9, 0.1),
    ("maml", True, "omniglot", 20, 1): (95.8, 0.3), ("maml", True, "omniglot", 20, 5): (98.9, 0.2),
    ("fomaml", True, "omniglot", 5, 1): (98.3, 0.5), ("fomaml", True, "omniglot", 5, 5): (99.2, 0.2),
    ("fomaml", True, "omniglot", 20, 1): (89.4, 0.5), ("fomaml", True, "omniglot", 20, 5): (97.9, 0.1),
    ("reptile", False, "omniglot", 5, 1): (95.39, 0.09), ("reptile", False, "omniglot", 5, 5): (98.90, 0.10),
    ("reptile", False, "omniglot", 20, 1): (88.14, 0.15), ("reptile", False, "omniglot", 20, 5): (96.65, 0.33),
    ("reptile", True, "omniglot", 5, 1): (97.68, 0.04), ("reptile", True, "omniglot", 5, 5): (99.48, 0.06),
    ("reptile", True, "omniglot", 20, 1): (89.43, 0.14), ("reptile", True, "omniglot", 20, 5): (97.12, 0.32),
    ("maml", True, "mini_imagenet", 5, 1): (48.70, 1.84), ("maml", True, "mini_imagenet", 5, 5): (63.11, 0.92),
    ("fomaml", True, "mini_imagenet", 5, 1): (48.07, 1.75), ("fomaml", True, "mini_imagenet", 5, 5): (63.15, 0.91),
    ("reptile", False, "mini_imagenet", 5, 1): (47.07, 0.26), ("reptile", False, "mini_imagenet", 5, 5): (62.74, 0.37),
    ("reptile", True, "mini_imagenet", 5, 1): (49.97, 0.32), ("reptile", True, "mini_imagenet", 5, 5): (65.99, 0.58),
}

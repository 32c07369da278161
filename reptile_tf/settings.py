"""Paper hyperparameters per (algorithm, dataset, ways, shots): the one table in code.

Source: docs/reference.md (Nichol et al. 2018, official supervised-reptile README
commands; Finn et al. 2017, MAML appendix). Configs and CLI flags override these values;
they never copy them.

Reptile and FOMAML use the Reptile paper's settings (FOMAML as the official Reptile code's
`--foml`, the code of its section 6.2); MAML uses the MAML paper's settings. The published
FOMAML accuracies, though, come from Finn's MAML code run first-order at the MAML settings
(docs/reference.md), i.e. `algorithm="maml", first_order=True` here: the `maml_first_order`
recipe (`RECIPES`, the workflow's `train_as`), reported in the FOMAML row (`table_method`).

`Settings` is also the one home of what makes a configuration valid (`Settings.problems` /
`validate`, `check_value` for pure functions called without a Settings, `override_value` for the
workflow's config) and of the facts derived from it (`is_classifier`, `metric_name`,
`num_outputs`, `synthetic`, `uses_tail_batch`, `training_task_shape`). Dataset facts come from
`reptile_tf.datasets`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from reptile_tf import datasets
from reptile_tf.errors import UserError
from reptile_tf.networks import DEFAULT_NETWORK, NETWORKS

ALGORITHMS = ("reptile", "fomaml", "maml")
DATASETS = datasets.NAMES
# The outer step of each algorithm (meta.ALGORITHMS holds the code): Reptile and FOMAML move phi
# towards the adapted weights with an annealed step size (outer_optimizer "sgd"); MAML steps its
# outer optimizer along a meta-gradient. Only FOMAML may end on a tail minibatch (`--foml-tail`).
INTERPOLATING_ALGORITHMS = ("reptile", "fomaml")
TAIL_ALGORITHMS = ("fomaml",)


class Recipe(typing.NamedTuple):
    """How a table row's algorithm is trained: `reptile-tf train --algorithm` and the settings the
    recipe fixes (on top of the paper's settings for `algorithm` and the config's overrides)."""

    algorithm: str
    fixed: dict[str, Any]
    what: str


# The workflow's `train_as` (workflow/schemas/config.schema.yaml). The papers' FOMAML rows come from
# Finn's MAML code run first-order at the MAML settings (docs/reference.md); the Reptile code's
# `--foml` at the Reptile settings is the `fomaml` recipe, 6 points lower at the full budget
# (results/paper_cpu/README.md).
RECIPES: dict[str, Recipe] = {
    "reptile": Recipe("reptile", {}, "Reptile at the Reptile paper's settings"),
    "fomaml": Recipe("fomaml", {}, "first-order MAML as the official Reptile code's --foml, Reptile paper's settings"),
    "maml": Recipe("maml", {}, "MAML at the MAML paper's settings"),
    "maml_first_order": Recipe("maml", {"first_order": True},
                               "first-order MAML as Finn's MAML code run first-order, MAML paper's settings"),
}


def table_method(algorithm: str, first_order: bool) -> str:
    """The row of the papers' tables a run reports in: MAML with the first-order approximation is
    FOMAML (the papers' FOMAML rows were made so), whichever code path trained it."""
    return "fomaml" if algorithm == "maml" and first_order else algorithm


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
    loss_reduction: str = "mean"  # inner-loop loss over a minibatch: "mean" | "sum" | "sum_per_shot"
    eval_adam_state: str = "training"  # adaptation starts from "training" (official) or "fresh" moments
    network: str = DEFAULT_NETWORK  # conv nets of the Reptile code ("reptile") or of Finn's MAML code ("maml")
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

    # ------------------------------------------------------------ validation (the one home)

    def problems(self, fields: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(field, what is wrong) for every problem that needs no data; [] for usable settings.

        Pure and shared by the CLI (`validate`), the workflow's config check and `meta`, so all
        reject the same values with the same words. At most one problem per field. `fields`:
        check only these (a problem between fields counts for the field it names).
        """
        names = list(field_types()) if fields is None else list(fields)
        found: dict[str, str] = {}
        for check in _VALUE_CHECKS:
            for name in names:
                if name not in found:
                    problem = check(name, getattr(self, name))
                    if problem:
                        found[name] = problem
        for name, check, needs in _BETWEEN_FIELDS:
            if name in names and name not in found and not any(_value_problem(n, getattr(self, n)) for n in needs):
                problem = check(self)
                if problem:
                    found[name] = problem
        return list(found.items())

    def validate(self, fields: Iterable[str] | None = None) -> None:
        """UserError naming every problem of `problems(fields)` and the fix. (The checks that
        need the data are in `data.tasks.check_task_shape`.)"""
        problems = self.problems(fields)
        if problems:
            raise UserError(f"invalid hyperparameters: {'; '.join(message for _, message in problems)}. "
                            "Pass other values (`reptile-tf train --help` lists the flags).")

    def seed_group_problem(self, seeds: int) -> str | None:
        """Why `seeds` runs of these settings cannot train together in one compiled call
        (`reptile-tf train --seeds`, the workflow's `train.seed_groups`); None when they can."""
        if seeds > 1 and self.inner_adam_mode == "sequential":
            return ("inner_adam_mode 'sequential' runs the tasks of a meta-batch one after another, so seeds "
                    "cannot share one call")
        return None

    # ------------------------------------------------------------ derived facts

    @property
    def dataset_spec(self) -> datasets.Dataset:
        """The registry entry of `dataset` (reptile_tf.datasets)."""
        return datasets.get(self.dataset)

    @property
    def synthetic(self) -> bool:
        """Tasks are generated in memory (sine): no data files, no data dir."""
        return self.dataset_spec.synthetic

    @property
    def is_classifier(self) -> bool:
        return self.dataset_spec.is_classifier

    @property
    def metric_name(self) -> str:
        """What evaluation scores: "accuracy" (classification) or "mse" (regression)."""
        return "accuracy" if self.is_classifier else "mse"

    @property
    def num_outputs(self) -> int:
        """Network outputs: one logit per class, or the regression value."""
        return self.ways if self.is_classifier else 1

    @property
    def uses_tail_batch(self) -> bool:
        """FOMAML with `tail_shots > 0` (official `--foml-tail`): the last inner step is on a
        separate tail minibatch, the episode's query images."""
        return self.algorithm in TAIL_ALGORITHMS and self.tail_shots > 0

    @property
    def training_task_shape(self) -> tuple[int, int]:
        """(support shots, queries) per class of a training task, as `meta.meta_step` expects.

        Reptile: `train_shots` support images (queries unused). MAML: `train_shots` (= shots)
        support + `queries` query images. FOMAML with a tail (official `--foml-tail`): the
        task's `train_shots` images per class are split into `train_shots - tail_shots` for the
        inner minibatches and `tail_shots` for the final tail minibatch (query_x).
        """
        if self.uses_tail_batch:
            problem = _tail_problem(self)
            if problem:
                raise UserError(f"{problem}; raise --train-shots or lower --tail-shots")
            return self.train_shots - self.tail_shots, self.tail_shots
        return self.train_shots, self.queries


# Settings fields added for fidelity to the official code (issue 16): name -> (default, allowed values).
# - inner_adam_mode: how the inner Adam state is shared by the tasks of a meta-batch (Reptile/FOMAML).
#   "parallel_mean" (default): tasks run in parallel from the shared moments; afterwards the shared
#   moments become the mean of the tasks' final moments and the step count advances by inner_steps.
#   "sequential": the official code (supervised_reptile/reptile.py `Reptile.train_step`: one
#   tf.train.AdamOptimizer, tasks one after another, `VariableState(tf.trainable_variables())`
#   restores only the weights, so Adam's m, v and beta-power accumulators carry from task to task;
#   the step count advances by meta_batch * inner_steps). No effect with SGD or for MAML.
# - loss_reduction: the minibatch loss the inner loop differentiates (training and adaptation).
#   "mean" (default). "sum": the official Reptile code (models.py `OmniglotModel`:
#   `optimizer.minimize(self.loss)` on the per-example cross-entropy vector, i.e. its sum).
#   "sum_per_shot": the official MAML code (cbfinn/maml utils.py `xent` divides the per-example
#   cross-entropy by K, `tf.gradients` sums it: sum / K = N x the mean on an N-way K-shot set),
#   so with plain SGD the paper's inner step 0.4 acts as 0.4 N on the mean.
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
#   (workflow/config/config.yaml `budget.per_algorithm`). So does Omniglot's NEAREST resize
#   (data.omniglot_resize_filter: nearest).
# - MAML: Finn's "sum_per_shot" (step 0.4 on N x the mean) with this project's network learns
#   slower and collapses under 3 test steps (Omniglot 5-way 1-shot, 1,200 iterations: 45.9% against
#   91.3% transductive; results/fidelity/maml/README.md). His step size goes with his network: the
#   paper presets set both (network "maml", "sum_per_shot"), which trails our defaults by 2 points
#   at 6,000 of 60,000 iterations and is closing (results/fidelity/maml_6000/README.md).
# - inner_adam_mode "sequential": no effect beyond the spread at 2,000 iterations, but at the full
#   100,000 it moved Reptile Omniglot 5-way 1-shot by +0.20 / +0.29 (seed 0) and +0.37 / +0.52
#   (seed 1) points (+T / not), paired on 10,000 test tasks, onto the published values
#   (results/paper_cpu/reptile_5w1s_sequential_adam/README.md) -> the paper presets set it for Reptile.
# - eval_adam_state: both codes use "training"; "fresh" is a diagnostic only.
# - network (issue 11, fidelity to Finn's MAML code): the conv nets of reptile_tf.networks.NETWORKS.
#   "reptile" (default): the official Reptile code's, which this project always built. "maml": cbfinn/maml
#   `construct_conv_weights` / `forward_conv`: batch norm without scale whose offsets the inner loop
#   does not adapt, Omniglot global average pooling and an N(0, 1) dense kernel, Mini-ImageNet 'VALID'
#   max-pool; the network Finn's step sizes ("sum_per_shot" above) were tuned with.
# The Settings defaults stay this project's behaviour (quick/smoke presets and their committed
# references use them); the official semantics are one flag away (`--loss-reduction sum`,
# `--inner-adam-mode sequential`, `reptile-tf prepare omniglot --resize-filter nearest`).
FIDELITY_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "inner_adam_mode": ("parallel_mean", ("parallel_mean", "sequential")),
    "loss_reduction": ("mean", ("mean", "sum", "sum_per_shot")),
    "eval_adam_state": ("training", ("training", "fresh")),
    "network": (DEFAULT_NETWORK, tuple(NETWORKS)),
}


# ------------------------------------------------------------------ the checks

# Settings fields chosen by positional-style flags, not generated as overrides.
IDENTITY_FIELDS = ("algorithm", "dataset", "ways", "shots")
NOT_A_FLAG = frozenset(IDENTITY_FIELDS) | {"source"}
# Settings fields that count something: at least 1.
POSITIVE_FIELDS = ("ways", "shots", "inner_steps", "meta_batch", "iterations", "train_shots", "queries",
                   "eval_inner_steps", "eval_tasks", "eval_queries")
# Fields that may be 0 (inner_batch/eval_inner_batch 0 = the whole support set; tail_shots 0 = no tail).
NON_NEGATIVE_FIELDS = ("inner_batch", "eval_inner_batch", "tail_shots")
LEARNING_RATE_FIELDS = ("inner_lr", "outer_lr", "eval_inner_lr")
# The optimizer names (meta.INNER_OPTIMIZERS / OUTER_OPTIMIZERS build them).
OPTIMIZERS = ("adam", "sgd")
# Fields with a fixed set of values (the flags show them as `{a,b}`).
CHOICES: dict[str, tuple[str, ...]] = {
    "algorithm": ALGORITHMS, "dataset": DATASETS, "inner_optimizer": OPTIMIZERS, "outer_optimizer": OPTIMIZERS,
    **{name: allowed for name, (_, allowed) in FIDELITY_OPTIONS.items()},
}


@functools.cache
def field_types() -> dict[str, Any]:
    """Settings field -> its type annotation, in declaration order."""
    return typing.get_type_hints(Settings)


def flag_type(annotation: Any) -> Any:
    """`float | None` -> float; plain types unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def flag_fields() -> list[str]:
    """The Settings fields that are hyperparameter flags / workflow `overrides` keys."""
    return [name for name in field_types() if name not in NOT_A_FLAG]


def _type_problem(name: str, value: Any) -> str | None:
    """Why `value` does not have the type Settings declares for `name` (None: it does)."""
    annotation = field_types()[name]
    kind = flag_type(annotation)
    if value is None:
        return None if type(None) in typing.get_args(annotation) else f"{name} is missing (null)"
    if kind is bool:
        return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
    if isinstance(value, bool):  # bool is an int subclass: True is not a learning rate
        return f"{name}={value!r} must be a number ({kind.__name__}), not a boolean"
    if kind is float:
        return None if isinstance(value, (int, float)) else f"{name}={value!r} must be a number"
    if kind is int:
        return None if isinstance(value, int) else f"{name}={value!r} must be an integer"
    return None if isinstance(value, kind) else f"{name}={value!r} must be a {kind.__name__}"


def _count_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in POSITIVE_FIELDS and value < 1:
        return f"{name}={value} must be at least 1"
    if name in NON_NEGATIVE_FIELDS and value < 0:
        return (f"{name}={value} must be >= 0 (0 = "
                f"{'no tail minibatch' if name == 'tail_shots' else 'the whole support set'})")
    return None


def _finite_problem(name: str, value: Any) -> str | None:
    # `nan <= 0` is False: without this a NaN learning rate passes and trains NaN parameters.
    if value is not None and flag_type(field_types()[name]) is float and not math.isfinite(value):
        return f"{name}={value} is not a finite number"
    return None


def _range_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in LEARNING_RATE_FIELDS and value <= 0:
        return f"{name}={value} must be positive (a learning rate)"
    if name in ("adam_beta1", "adam_beta2") and not 0 <= value < 1:
        return f"{name}={value} must be in [0, 1)"
    if name == "adam_epsilon" and value <= 0:
        return f"{name}={value} must be positive"
    return None


def _choice_problem(name: str, value: Any) -> str | None:
    allowed = CHOICES.get(name)
    if allowed is None or value is None or value in allowed:
        return None
    if name in IDENTITY_FIELDS:
        return f"unknown {name} {value!r}; choose one of {', '.join(allowed)}"
    if allowed == OPTIMIZERS:
        return f"{name}={value!r} is not supported; use 'adam' or 'sgd'"
    return f"{name}={value!r} is not supported; use one of {', '.join(allowed)}"


# One field's checks, in the order they run; a field's first problem is its only one (a value of
# the wrong type is not range-checked).
_VALUE_CHECKS: tuple[Callable[[str, Any], str | None], ...] = (
    _type_problem, _count_problem, _finite_problem, _range_problem, _choice_problem)


def _value_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` as Settings field `name` on its own (None: nothing)."""
    for check in _VALUE_CHECKS:
        problem = check(name, value)
        if problem:
            return problem
    return None


def check_value(name: str, value: Any) -> None:
    """UserError unless `value` is a valid Settings field `name`: for pure functions called without a
    Settings (meta.InnerConfig, meta.maml_update), with the words `Settings.validate` uses."""
    problem = _value_problem(name, value)
    if problem:
        raise UserError(f"invalid hyperparameter: {problem}. Pass another value "
                        "(`reptile-tf train --help` lists the flags).")


def _tail_problem(settings: Settings) -> str | None:
    if settings.uses_tail_batch and settings.train_shots <= settings.tail_shots:
        return (f"FOMAML with tail_shots={settings.tail_shots} needs train_shots > tail_shots "
                f"(got train_shots={settings.train_shots})")
    return None


def _network_problem(settings: Settings) -> str | None:
    if settings.network != DEFAULT_NETWORK and settings.dataset not in NETWORKS[settings.network]:
        return (f"network={settings.network!r} has no {settings.dataset} net (it has "
                f"{', '.join(NETWORKS[settings.network])}); use network={DEFAULT_NETWORK!r} for {settings.dataset}")
    return None


def _outer_optimizer_problem(settings: Settings) -> str | None:
    if settings.algorithm in INTERPOLATING_ALGORITHMS and settings.outer_optimizer != "sgd":
        return (f"{settings.algorithm} interpolates with an annealed step size; set outer_optimizer "
                f"to 'sgd' (got {settings.outer_optimizer!r})")
    return None


# Problems between fields: (the field named, check, the fields it reads, which must be valid first).
_BETWEEN_FIELDS: tuple[tuple[str, Callable[[Settings], str | None], tuple[str, ...]], ...] = (
    ("train_shots", _tail_problem, ("algorithm", "tail_shots", "train_shots")),
    ("outer_optimizer", _outer_optimizer_problem, ("algorithm", "outer_optimizer")),
    ("network", _network_problem, ("dataset", "network")),
)


def override_value(name: str, value: Any) -> Any:
    """`value` as `reptile-tf train --<name> <value>` would receive it; UserError naming `name`
    when the CLI would reject it or `name` is not a hyperparameter.

    The workflow checks its `overrides` with this before any job runs, so the config and the
    CLI accept exactly the same names and values (both come from the Settings table).
    """
    known = flag_fields()
    if name not in known:
        raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(known)}")
    kind = flag_type(field_types()[name])
    if value is None:
        raise UserError(f"{name}: null is not a value; remove the key to keep the paper's value")
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name}={value!r} must be true or false")
        return value
    if isinstance(value, bool):
        raise UserError(f"{name}={value!r} must be a {kind.__name__}, not a boolean")
    try:
        # What argparse does with the flag's text (YAML 1.1 reads `1e-3` as a string; the CLI takes it).
        converted = kind(str(value))
    except ValueError:
        raise UserError(f"{name}={value!r} is not {'an' if kind is int else 'a'} {kind.__name__}") from None
    if kind is float and not math.isfinite(converted):
        raise UserError(f"{name}={value!r} is not a finite number")
    return converted


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
    # Queries per class as Finn's main.py builds its DataGenerator (docs/reference.md): Omniglot K
    # support + K query images in training and test; Mini-ImageNet trains with 15 queries and tests
    # with K. They set the outer loss's batch and the transductive batch-norm statistics.
    common = dict(inner_optimizer="sgd", outer_lr=0.001, outer_optimizer="adam", iterations=60_000,
                  inner_batch=0, train_shots=shots, eval_tasks=600, eval_queries=shots, eval_inner_batch=0,
                  source=_MAML_SRC)
    if dataset == "omniglot" and ways == 5:
        return dict(common, inner_steps=1, eval_inner_steps=3, inner_lr=0.4, meta_batch=32, queries=shots)
    if dataset == "omniglot" and ways == 20:
        return dict(common, inner_steps=5, eval_inner_steps=5, inner_lr=0.1, meta_batch=16, queries=shots)
    if dataset == "mini_imagenet" and ways == 5:
        return dict(common, inner_steps=5, eval_inner_steps=10, inner_lr=0.01,
                    meta_batch=4 if shots == 1 else 2, queries=15)
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
    for name, value in (("algorithm", algorithm), ("dataset", dataset)):
        problem = _choice_problem(name, value)
        if problem:
            raise UserError(problem)
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
    if algorithm in TAIL_ALGORITHMS:
        # Official code, `--foml --foml-tail 5` on Omniglot/Mini-ImageNet: a separate final minibatch.
        values["tail_shots"] = 5 if dataset != "sine" else 0
    return Settings(algorithm=algorithm, dataset=dataset, ways=ways, shots=shots, **values)


def merge_settings(algorithm: str, dataset: str, ways: int, shots: int,
                   overrides: dict[str, Any] | None = None) -> Settings:
    """The paper's settings with `overrides` on top, not yet validated (`train.resolve_settings`
    validates them; the workflow reports each problem at its config key).

    A setting without a published configuration works when every field without a default is given.
    """
    overrides = dict(overrides or {})
    try:
        base = paper_settings(algorithm, dataset, ways, shots)
    except UserError:
        required = [f.name for f in dataclasses.fields(Settings)
                    if f.name not in NOT_A_FLAG and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if overrides.get(name) is None]
        if missing or algorithm not in ALGORITHMS or dataset not in DATASETS:
            raise
        return Settings(algorithm=algorithm, dataset=dataset, ways=ways, shots=shots,
                        **{k: v for k, v in overrides.items() if v is not None})
    return base.replace(**overrides)


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

# Independent reruns of the official code at the README's commands, one training run each (all
# --seed 0, on different machines and GPUs), by a third party: docs/reference.md, "Reruns of the
# official code". Accuracies (%), keyed as PUBLISHED; what `tables` compares our cells with besides
# the single published value (whose ± does not cover the run-to-run spread these show).
OFFICIAL_CODE_RERUNS: dict[tuple[str, bool, str, int, int], tuple[float, ...]] = {
    ("reptile", False, "omniglot", 5, 1): (95.484, 95.556, 95.248),
    ("reptile", True, "omniglot", 5, 1): (97.74, 97.79, 97.614),
    ("reptile", False, "omniglot", 5, 5): (98.898, 99.01, 99.148),
    ("reptile", True, "omniglot", 5, 5): (99.52, 99.534, 99.528),
    ("reptile", False, "omniglot", 20, 1): (88.1155, 87.928, 88.004),
    ("reptile", True, "omniglot", 20, 1): (89.296, 89.129, 89.1275),
    ("reptile", False, "omniglot", 20, 5): (96.5645, 96.5305, 96.5595),
    ("reptile", True, "omniglot", 20, 5): (97.55, 97.0515, 96.9905),
    ("reptile", False, "mini_imagenet", 5, 1): (46.712, 47.154),
    ("reptile", True, "mini_imagenet", 5, 1): (49.952, 49.234),
    ("reptile", False, "mini_imagenet", 5, 5): (62.846, 63.32),
    ("reptile", True, "mini_imagenet", 5, 5): (65.802, 66.136),
}


def settings_from_config(config: dict[str, Any]) -> Settings:
    """The Settings a run was trained with, from its config.json (every field at the top level;
    a field the file lacks, e.g. a FIDELITY_OPTIONS field left at its default, is its default)."""
    names = {f.name for f in dataclasses.fields(Settings)}
    missing = [n for n in IDENTITY_FIELDS if n not in config]
    if missing:
        raise UserError(f"config.json lacks {missing}; it was not written by reptile-tf train")
    try:
        return Settings(**{k: v for k, v in config.items() if k in names})
    except TypeError as err:
        raise UserError(f"config.json does not describe a complete run ({err}); re-run reptile-tf train") from None

"""Help texts of `reptile-tf train`'s hyperparameter flags (one per Settings field).

Each flag's help says what the hyperparameter does, then the published values, generated from
`reptile_tf.settings.paper_settings` over the papers' 18 settings (never copied), so `--help`
and the table cannot disagree. A Settings field without an entry in OVERRIDE_HELP fails
tests/test_cli.py.
"""

from __future__ import annotations

from typing import Any

from reptile_tf import settings as settings_table
from reptile_tf.settings import ALGORITHMS, paper_settings

OVERRIDE_HELP: dict[str, str] = {
    "inner_optimizer": "inner-loop optimizer: adam (with --adam-beta1/2, --adam-epsilon) or sgd",
    "inner_lr": "inner-loop learning rate in training",
    "inner_steps": "inner-loop steps per task in training (k)",
    "inner_batch": "inner-loop minibatch size in images; 0 = the whole support set in every step",
    "train_shots": "images per class drawn for a training task (Reptile trains on more than --shots)",
    "meta_batch": "tasks per meta-iteration",
    "iterations": "meta-iterations (outer updates) to train",
    "outer_lr": "outer step: Reptile/FOMAML step size, annealed linearly to 0; MAML: its Adam learning rate",
    "outer_optimizer": "outer update: sgd (Reptile/FOMAML, linear annealing) or adam (MAML)",
    "first_order": "MAML only: drop the second-order terms of the meta-gradient (first-order MAML)",
    "tail_shots": "FOMAML: images per class of a separate last inner minibatch (official --foml-tail); 0 = none",
    "queries": "query images per class in a training task",
    "adam_beta1": "inner Adam beta1 (0: no momentum, as in the Reptile code)",
    "adam_beta2": "inner Adam beta2",
    "adam_epsilon": "inner Adam epsilon",
    "eval_inner_steps": "adaptation steps per test task at evaluation",
    "eval_inner_batch": "adaptation minibatch size at evaluation; 0 = the whole support set",
    "eval_inner_lr": "adaptation learning rate at evaluation (default: --inner-lr)",
    "eval_tasks": "test tasks per batch-norm mode for `reptile-tf evaluate`",
    "eval_queries": "query images per class in a test task",
    "inner_adam_mode": "how the tasks of a meta-batch share the inner Adam state: parallel_mean (tasks in "
                       "parallel, moments averaged after) or sequential (the official code: one state carried "
                       "from task to task); Reptile/FOMAML with Adam only",
    "loss_reduction": "inner-loop loss over a minibatch: mean, sum (the official Reptile code) or "
                      "sum_per_shot (sum / K = N x the mean: the official MAML code)",
    "eval_adam_state": "inner Adam state each test task adapts from: training (the end-of-training moments, "
                       "as the official code) or fresh (zero moments; a diagnostic)",
    "network": "conv nets of the image datasets: reptile (the official Reptile code's) or maml (Finn's official "
               "MAML code's: batch norm without scale, its offsets fixed in the inner loop (so Reptile/FOMAML "
               "never train them), Omniglot global average pooling and an N(0, 1) dense kernel, "
               "Mini-ImageNet 'valid' max-pool)",
}


def flag_metavar(name: str) -> str:
    """`{a,b}` for a flag with a fixed set of values, else the field name in capitals. The values are
    checked by `Settings.problems` (shared with the workflow's config check), so these flags
    take no argparse `choices`."""
    allowed = settings_table.CHOICES
    return "{" + ",".join(allowed[name]) + "}" if name in allowed else name.upper()


_PAPER_CELLS = (("omniglot", 5), ("omniglot", 20), ("mini_imagenet", 5))
_DATASET_LABELS = {"omniglot": "Omniglot", "mini_imagenet": "Mini-ImageNet"}


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _describe_cells(cells: dict[tuple[str, int, int], Any]) -> str:
    """The most common value, then the settings that differ: "0.001 (Omniglot 20-way 0.0005)"."""
    if all(value == shots for (_, _, shots), value in cells.items()):
        return "= --shots"
    values = list(cells.values())
    common = max(values, key=values.count)
    exceptions = []
    for dataset, ways in _PAPER_CELLS:
        one, five = cells[(dataset, ways, 1)], cells[(dataset, ways, 5)]
        label = f"{_DATASET_LABELS[dataset]} {ways}-way"
        if one == five:
            if one != common:
                exceptions.append(f"{label} {_value_text(one)}")
        else:
            exceptions += [f"{label} {shots}-shot {_value_text(v)}" for shots, v in ((1, one), (5, five)) if v != common]
    return _value_text(common) + (f" ({', '.join(exceptions)})" if exceptions else "")


def paper_values(name: str) -> str:
    """The published values of Settings field `name` over the papers' 18 settings (settings.py), e.g.
    "reptile/fomaml 0.001 (Omniglot 20-way 0.0005); maml 0.4 (...)"."""
    groups: dict[str, list[str]] = {}
    for algorithm in ALGORITHMS:
        cells = {(dataset, ways, shots): getattr(paper_settings(algorithm, dataset, ways, shots), name)
                 for dataset, ways in _PAPER_CELLS for shots in (1, 5)}
        groups.setdefault(_describe_cells(cells), []).append(algorithm)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{'/'.join(algorithms)} {text}" for text, algorithms in groups.items())


def override_help(name: str) -> str:
    """The help of hyperparameter flag `name`: what it is, then its paper value(s) or its default."""
    text = OVERRIDE_HELP[name]
    if name in settings_table.FIDELITY_OPTIONS:
        default = settings_table.FIDELITY_OPTIONS[name][0]
        return f"{text}. Default: {default} (the papers do not say; see results/fidelity/README.md)"
    if name == "eval_inner_lr":
        return text
    return f"{text}. Paper: {paper_values(name)}"

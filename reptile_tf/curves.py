"""Learning curves of run directories (training and validation accuracy per meta-iteration), as
the tables (one plot per setting) and MLflow (one per run) show them; and the display names
both reports use. No TensorFlow."""

from __future__ import annotations

from pathlib import Path

from reptile_tf.io import atomic_path
from reptile_tf.rundir import RunRecord, read_metrics

ALGORITHM_LABELS = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}
_COLORS = {"reptile": "tab:green", "fomaml": "tab:orange", "maml": "tab:blue"}


def setting_label(ways: int, shots: int) -> str:
    return f"{shots}-shot {ways}-way"


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window shrinks at the start), for readable noisy curves."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_learning_curves(runs: list[RunRecord], dataset: str, ways: int, shots: int, path: Path) -> bool:
    """Training (and validation, if logged) accuracy vs iteration, one line per algorithm and seed.

    Returns False (and writes nothing) when no run of this setting logged metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = [r for r in runs if (r.dataset, r.ways, r.shots) == (dataset, ways, shots)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drew = False
    for run in sorted(selected, key=lambda r: (r.method, r.seed)):
        metrics = read_metrics(run.path)  # accuracies in percent
        train = [(m["iteration"], m["accuracy"]) for m in metrics if m.get("accuracy") is not None]
        if not train:
            continue
        steps, acc = zip(*train)
        label = f"{ALGORITHM_LABELS.get(run.method, run.method)} seed {run.seed}"
        color = _COLORS.get(run.method)
        ax.plot(steps, moving_average(list(acc), 10), color=color, lw=1, label=f"{label} (train)")
        val = [(m["iteration"], m["val_accuracy"]) for m in metrics if m.get("val_accuracy") is not None]
        if val:
            vsteps, vacc = zip(*val)
            ax.plot(vsteps, list(vacc), color=color, lw=1, ls="--", label=f"{label} (val)")
        drew = True
    if not drew:
        plt.close(fig)
        return False
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%), moving average of 10 logs")
    ax.set_title(f"{dataset} {setting_label(ways, shots)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True

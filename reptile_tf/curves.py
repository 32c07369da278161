"""Learning curves of run directories (training and validation accuracy per meta-iteration), as
the tables (one plot per setting) and MLflow (one per run) show them; and the display names
both reports use. No TensorFlow."""

from __future__ import annotations

from pathlib import Path

from reptile_tf.io import atomic_path
from reptile_tf.rundir import RunRecord, read_metrics

ALGORITHM_LABELS = {"maml": "MAML", "fomaml": "FOMAML", "reptile": "Reptile"}
_COLORS = {"reptile": "tab:green", "fomaml": "tab:orange", "maml": "tab:blue"}
_SEED_MARKERS = "osv^D"  # seeds of one algorithm share its colour


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


# The training accuracy each algorithm optimises: MAML's "accuracy" is measured before adaptation,
# at chance by design (labels are permuted per task), so its curve is the query accuracy after the
# inner steps; Reptile logs only "accuracy" (its inner minibatches while it adapts).
# Key -> legend text, in order of preference.
TRAINING_ACCURACY = {"query_accuracy": "train, after adaptation", "accuracy": "train"}


def curve_points(metrics: list[dict]) -> tuple[str | None, list[tuple[int, float]], list[tuple[int, float]]]:
    """(training-accuracy key, its (iteration, value) points, validation points) of one run's
    metrics: the first key of `TRAINING_ACCURACY` the run logged (None if neither)."""
    key = next((k for k in TRAINING_ACCURACY if any(m.get(k) is not None for m in metrics)), None)
    train = [(m["iteration"], m[key]) for m in metrics if key and m.get(key) is not None]
    val = [(m["iteration"], m["val_accuracy"]) for m in metrics if m.get("val_accuracy") is not None]
    return key, train, val


def plot_learning_curves(runs: list[RunRecord], dataset: str, ways: int, shots: int, path: Path) -> bool:
    """Training (`curve_points`) and validation (if logged) accuracy vs iteration, one line per
    algorithm and seed.

    Returns False (and writes nothing) when no run of this setting logged metrics.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = [r for r in runs if (r.dataset, r.ways, r.shots) == (dataset, ways, shots)]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drew = False
    for run in sorted(selected, key=lambda r: (r.method, r.seed)):
        key, train, val = curve_points(read_metrics(run.path))  # accuracies in percent
        if not train:
            continue
        steps, acc = zip(*train)
        label = f"{ALGORITHM_LABELS.get(run.method, run.method)} seed {run.seed}"
        color = _COLORS.get(run.method)
        ax.plot(steps, moving_average(list(acc), 10), color=color, lw=1,
                label=f"{label} ({TRAINING_ACCURACY[key]})")
        if val:
            vsteps, vacc = zip(*val)
            # markers: a run validates every few thousand iterations, a line alone hides one point
            marker = _SEED_MARKERS[run.seed % len(_SEED_MARKERS)]
            ax.plot(vsteps, list(vacc), color=color, lw=1, ls="--", marker=marker, ms=3, label=f"{label} (val)")
        drew = True
    if not drew:
        plt.close(fig)
        return False
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("accuracy (%); train: moving average of 10 logs")
    ax.set_title(f"{dataset} {setting_label(ways, shots)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return True

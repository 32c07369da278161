"""Time the meta-step with each conv path of the model (`models.CONV_PATHS`).

Variants (all in this process, one after another): `model` (the path the model picks here,
`models.choose_conv_path`) and every name of `models.CONV_PATHS` this TensorFlow can
differentiate: `grouped` (tasks folded into the channels, one grouped `tf.nn.conv2d` per layer,
fused batch norm), `split` (same layout, one `tf.nn.conv2d` per task), `sliced` (task-major,
9 shifted slices + one einsum, unfused batch norm: the float64 path), `task_major_grouped`
(the grouped conv folded and unfolded around every layer). Prints wall and process-CPU seconds
per meta-iteration for each variant (CPU seconds are the fairer comparison on a loaded machine).
With `--xla` on CPU the grouped variants are very slow (XLA's CPU backend compiles grouped
convolutions poorly).

    .venv/bin/python benchmarks/compare_conv.py [--cases reptile:omniglot:5,...] [--variants model,split]
        [--xla] [--repeats 5] [--shots K] [--network maml]

`--shots` and `--network` time the paper presets' MAML-family cells (`--network maml`: Finn's conv
net with his inner-loss scale, `sum_per_shot`, as `workflow/config/config.yaml` trains MAML and
FOMAML; `--cases maml_fo:...` is FOMAML), e.g. the 5-shot cells with 5 queries per class:
`--cases maml:omniglot:5,maml_fo:omniglot:5 --shots 5 --network maml`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from reptile_tf import flops, models  # noqa: E402
from reptile_tf.bench.measure import median_seconds  # noqa: E402
from reptile_tf.bench.plan import Case, case_settings, parse_cases  # noqa: E402
from reptile_tf.bench.workloads import make_meta_runner  # noqa: E402
from reptile_tf.networks import DEFAULT_NETWORK, NETWORKS  # noqa: E402
from reptile_tf.settings import Settings, paper_settings  # noqa: E402


def patched_get_model(variant: str):
    """`models.get_model` with the conv path `variant` (or the model's own for "model")."""

    def get_model(arch: str, num_outputs: int, conv_path: str | None = None, network: str = DEFAULT_NETWORK):
        return ORIGINAL_GET_MODEL(arch, num_outputs, None if variant == "model" else variant, network)

    return get_model


def timed_settings(case: Case, shots: int | None, network: str) -> Settings:
    """The case's paper settings (1-shot unless `shots`), on `network` ("maml": with Finn's loss scale)."""
    settings = case_settings(case)
    if shots:
        settings = paper_settings(settings.algorithm, case.dataset, case.ways, shots).replace(
            first_order=settings.first_order)
    if network == "maml":
        settings = settings.replace(loss_reduction="sum_per_shot")
    return settings.replace(network=network)


def time_case(settings: Settings, variant: str, xla: bool, warmup: int, repeats: int) -> tuple[float, float]:
    """(median wall seconds, mean process-CPU seconds) per meta-iteration of `settings` with `variant`."""
    # bench.workloads looks get_model up on the models module at call time.
    models.get_model = patched_get_model(variant)
    try:
        run = make_meta_runner(settings, xla)
        wall = median_seconds(run, warmup + 1, repeats)
        start = time.process_time()  # CPU seconds of this process: less sensitive to other load
        for _ in range(repeats):
            run()
        return wall, (time.process_time() - start) / repeats
    finally:
        models.get_model = ORIGINAL_GET_MODEL


ORIGINAL_GET_MODEL = models.get_model
VARIANTS = ("model", *models.available_conv_paths())


def parse_variants(text: str) -> tuple[str, ...]:
    """Comma-separated variant names, each one of VARIANTS."""
    variants = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown or text!r}; choose from {', '.join(VARIANTS)}")
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=parse_cases,
                        default=parse_cases("reptile:omniglot:5,maml:omniglot:5,reptile:mini_imagenet:5"))
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", type=parse_variants, default=VARIANTS,
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--shots", type=int, default=None, help="shots of the cells timed (default: 1)")
    parser.add_argument("--network", choices=tuple(NETWORKS), default=DEFAULT_NETWORK,
                        help="conv-net family (maml: Finn's, with his inner-loss scale)")
    args = parser.parse_args()
    print("case | xla | " + " | ".join(f"{v} wall s / CPU s" for v in args.variants) + " | best GFLOP/s (wall)")
    for case in args.cases:
        settings = timed_settings(case, args.shots, args.network)
        work = flops.meta_iteration_flops(settings).total
        times = [time_case(settings, variant, args.xla, args.warmup, args.repeats) for variant in args.variants]
        label = f"{case.label} {settings.shots}-shot, {settings.queries} queries, network {settings.network}"
        print(f"{label} | {args.xla} | " + " | ".join(f"{wall:.4f} / {cpu:.4f}" for wall, cpu in times)
              + f" | {work / min(wall for wall, _ in times) / 1e9:.1f}", flush=True)


if __name__ == "__main__":
    main()

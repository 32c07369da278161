"""What Omniglot's polarity changes in the first layer of Finn's MAML network, at initialisation.

Finn's MAML code feeds Omniglot inverted (`1.0 - image / 255`: strokes 1, background 0); the
Reptile code, and this project unless `reptile-tf prepare omniglot --invert`, feed it as the
archives draw it (strokes 0, background 1). His first layer is a 3x3 conv, stride 2, 'SAME'
padding, then batch norm over the batch (`conv_block`, `normalize`). Inverting the input and
negating the kernel would give the same normalised activations, but for TF's zero padding: a
stride-2 'SAME' conv of 28 pixels pads the bottom row and the right column only, and the padded 0
is background in his images but a stroke in ours, so ours carry a constant artificial edge that
enters the batch statistics of every channel. This script measures, on the test images and at his
initialisation (Glorot uniform; the conv bias cancels in batch norm): how far the normalised
activations of the two polarities are apart in the interior and on the padded edge, the ratio of
the per-channel batch SDs, and how often a real stroke touches the padded edge. It says how large
the difference is where training starts, not what it does to accuracy at the end of training
(that takes a run on inverted images: `results/paper_cpu/maml_5w5s_diagnosis/README.md`).

    .venv/bin/python benchmarks/omniglot_polarity.py --data-dir data/tfds_nearest \
        --out results/paper_cpu/maml_5w5s_diagnosis
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import reptile_tf  # noqa: E402,F401  (before TensorFlow: it chooses the oneDNN default)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from reptile_tf import io, runtime  # noqa: E402
from reptile_tf.data import episodes  # noqa: E402

FILTERS = 64  # his Omniglot network's width
BN_EPSILON = 1e-3  # tf.contrib.layers.batch_norm's default, as in his `normalize`


def first_layer(images: np.ndarray, kernel: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(batch-normalised first-conv activations [B, 14, 14, C], per-channel batch SD [C])."""
    h = tf.nn.conv2d(images, kernel, 2, "SAME")
    mean, var = tf.nn.moments(h, [0, 1, 2])
    return ((h - mean) / tf.sqrt(var + BN_EPSILON)).numpy(), np.sqrt(var.numpy())


def measure(images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """`images`: float [B, 28, 28, 1] in the archives' polarity (background 1)."""
    kernel = tf.keras.initializers.GlorotUniform(seed=seed)([3, 3, 1, FILTERS])
    ours, sd_ours = first_layer(images, kernel)
    finns, sd_finns = first_layer(1.0 - images, -kernel)
    gap = np.abs(ours - finns)
    edge = np.concatenate([gap[:, -1, :], gap[:, :-1, -1]], axis=1)
    ratio = sd_ours / sd_finns
    strokes = images[..., 0] < 0.5
    return {
        "interior": float(gap[:, :-1, :-1].mean()),
        "edge": float(edge.mean()),
        "sd_ratio_median": float(np.median(ratio)),
        "sd_ratio_max": float(ratio.max()),
        "stroke_on_edge_percent": float(100 * (strokes[:, -1, :].any(1) | strokes[:, :, -1].any(1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/tfds_nearest"),
                        help="Omniglot prepared without --invert (default data/tfds_nearest)")
    parser.add_argument("--out", type=Path, required=True, help="directory for omniglot_polarity.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Glorot kernel")
    args = parser.parse_args(argv)
    if episodes.omniglot_recipe(args.data_dir).get("omniglot_inverted"):
        print(f"error: {args.data_dir} holds inverted Omniglot; pass one prepared without --invert", file=sys.stderr)
        return 2
    test = episodes.load_split_array("omniglot", "test", args.data_dir, "reptile")
    images = test.reshape(-1, *test.shape[-3:]).astype(np.float32) / 255.0
    m = measure(images, args.seed)
    machine = runtime.runtime_info()
    report = f"""# Omniglot polarity in the first layer of Finn's network, at initialisation

`{' '.join(sys.argv)}` ({len(images):,} test images of {args.data_dir}, Glorot uniform kernel
of seed {args.seed}). Machine: {machine['cpu_model']} ({machine['cpu_class']}), oneDNN
{'on' if machine['onednn'] else 'off'}. What each number is: `benchmarks/omniglot_polarity.py`.

| measure | value |
| --- | --- |
| mean \\|ours − Finn's\\| after batch norm, interior (13 x 13 of 14 x 14) | {m['interior']:.3f} |
| mean \\|ours − Finn's\\| after batch norm, padded bottom row and right column | {m['edge']:.3f} |
| per-channel batch SD, ours / Finn's: median (max) | {m['sd_ratio_median']:.2f} ({m['sd_ratio_max']:.2f}) |
| test images with a stroke in the last row or column | {m['stroke_on_edge_percent']:.1f}% |
"""
    io.write_text_atomic(args.out / "omniglot_polarity.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The datasets this project knows: one entry each, the one home of their facts.

Settings, the models, the FLOP counts, `reptile-tf fetch` / `prepare`, the episode loader and the
workflow's wildcard constraint all read their names, shapes and splits from `DATASETS`.
Imports nothing heavy (no TensorFlow): the CLI's argument parsers and the workflow load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reptile_tf.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """One dataset.

    input_shape: one example as the network sees it: (H, W, C) for images, (1,) for sine's x.
    is_classifier: labels are classes (scored by accuracy); otherwise regression (scored by MSE).
    protocols: split protocol -> its splits, the default protocol first; empty for synthetic tasks.
    tfds_name: the TFDS builder `reptile-tf prepare` builds from the files `reptile-tf fetch`
        gets; None = tasks are generated in memory (no files, no data dir).
    images: images in the complete dataset, where that is one fixed number (Mini-ImageNet is
        often used as a subset of its 60,000 images).
    """

    name: str
    input_shape: tuple[int, ...]
    is_classifier: bool
    protocols: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    tfds_name: str | None = None
    images: int | None = None

    @property
    def synthetic(self) -> bool:
        """Tasks are generated in memory: nothing to fetch or prepare."""
        return self.tfds_name is None

    @property
    def default_protocol(self) -> str | None:
        return next(iter(self.protocols), None)


DATASETS: dict[str, Dataset] = {
    # 1,623 characters x 20 drawings, resized to 28x28 grayscale. Protocols: the Reptile paper's
    # (1,200 training characters x 4 rotations, 423 test) and Vinyals et al.'s split files.
    "omniglot": Dataset("omniglot", (28, 28, 1), is_classifier=True,
                        protocols={"reptile": ("train", "test"), "vinyals": ("train", "val", "test", "trainval")},
                        tfds_name="omniglot", images=1623 * 20),
    # Ravi & Larochelle's split of Mini-ImageNet, 84x84 RGB.
    "mini_imagenet": Dataset("mini_imagenet", (84, 84, 3), is_classifier=True,
                             protocols={"ravi": ("train", "val", "test")}, tfds_name="mini_imagenet"),
    # MAML's sine regression toy (section 5.1): x -> A sin(x - phase).
    "sine": Dataset("sine", (1,), is_classifier=False),
}
NAMES: tuple[str, ...] = tuple(DATASETS)
# Datasets with files: what `reptile-tf fetch` and `prepare` accept and the workflow builds.
FETCHED: tuple[str, ...] = tuple(name for name, dataset in DATASETS.items() if not dataset.synthetic)
# Image datasets: the conv nets of `reptile_tf.models` and the FLOP counts of `reptile_tf.flops`.
IMAGE_DATASETS: tuple[str, ...] = tuple(name for name, dataset in DATASETS.items() if len(dataset.input_shape) == 3)
# Where `reptile-tf prepare` writes and train/evaluate/track read by default (relative to the project root).
DEFAULT_DATA_DIR = Path("data/tfds")
DEFAULT_RAW_DIR = Path("data/raw")


def get(name: str, among: tuple[str, ...] = NAMES) -> Dataset:
    """The registry entry of `name`; UserError listing `among` when it is not one of them."""
    if name not in among:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(among)}")
    return DATASETS[name]


def wildcard_pattern() -> str:
    """The Snakemake wildcard constraint of `{dataset}`: the fetched datasets (workflow/rules/common.smk)."""
    return "|".join(FETCHED)

"""TFDS builder for Mini-ImageNet with the Ravi & Larochelle split (84x84 RGB).

The manual directory (= the fetched raw dir, `data/raw/mini_imagenet/`) holds
`splits/ravi/{train,val,test}.csv` (`filename,label`) and the images, either as archives
whose members are `images/<filename>` (`images-train.zip`, `images-val.zip`,
`images-test.zip`, read directly, no extraction) or as an `images/` folder.

Where the raw data holds fewer images than the CSVs list (the offline mirror's train and
val archives are subsets: 400 and 300 of the 600 images per class), the builder uses the
images present and reports the counts it found: in the log, on the `prepare` command's
output and in the dataset metadata (`metadata.json`: `images_listed`, `images_found`,
per split and class). It never fails for that and never pretends.

Images that are already 84x84 RGB JPEGs (the standard distribution) are stored
byte-for-byte; any other image is converted to RGB, resized to 84x84 with PIL's LANCZOS
filter and re-encoded as JPEG (quality 95).
"""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np

from reptile_tf.data import omniglot as _omniglot  # noqa: F401  (applies the TFDS import work-around)

import tensorflow_datasets as tfds  # noqa: E402

from reptile_tf.datasets import DATASETS  # noqa: E402

log = logging.getLogger(__name__)

SPLITS = DATASETS["mini_imagenet"].protocols["ravi"]
ARCHIVES = ("images-train.zip", "images-val.zip", "images-test.zip")
IMAGE_SIZE = DATASETS["mini_imagenet"].input_shape[0]


def csv_path(raw_dir: Path, split: str) -> Path:
    return Path(raw_dir) / "splits" / "ravi" / f"{split}.csv"


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """Rows (filename, label) of one Ravi CSV, in file order."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return [(row["filename"], row["label"]) for row in reader]


def image_index(raw_dir: Path) -> dict[str, Callable[[], bytes]]:
    """file name -> a function returning its bytes, over all archives and `images/`."""
    raw_dir = Path(raw_dir)
    index: dict[str, Callable[[], bytes]] = {}
    folder = raw_dir / "images"
    if folder.is_dir():
        for path in folder.iterdir():
            index[path.name] = path.read_bytes
    for archive in ARCHIVES:
        path = raw_dir / archive
        if not path.is_file():
            continue
        zf = zipfile.ZipFile(path)  # kept open for the duration of the build
        for member in zf.namelist():
            if not member.endswith("/"):
                index[PurePosixPath(member).name] = (lambda zf=zf, m=member: zf.read(m))
    return index


def standard_jpeg(data: bytes) -> bytes:
    """`data` unchanged if it is an 84x84 RGB JPEG, else resized/re-encoded (see module doc)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # header only: cheap
        if img.format == "JPEG" and img.mode == "RGB" and img.size == (IMAGE_SIZE, IMAGE_SIZE):
            return data
        resized = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="JPEG", quality=95)
    return out.getvalue()


def count_images(rows: list[tuple[str, str]], present: set[str] | dict) -> tuple[dict, dict]:
    """(listed, found) image counts per class label, classes in CSV order."""
    listed: dict[str, int] = {}
    found: dict[str, int] = {}
    for filename, label in rows:
        listed[label] = listed.get(label, 0) + 1
        found[label] = found.get(label, 0) + (filename in present)
    return listed, found


class MiniImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Mini-ImageNet (Vinyals et al. 2016), Ravi & Larochelle split, 84x84 RGB."""

    name = "mini_imagenet"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Ravi split; images present in the raw data, counts in metadata."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Mini-ImageNet has no public download URL. Run `reptile-tf fetch mini_imagenet` with "
        "REPTILE_TF_MIRROR pointing at your copy; it places splits/ravi/*.csv and the images "
        "in data/raw/mini_imagenet/."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg"),
                "label": tfds.features.Text(),  # WordNet id, e.g. n01532829
                "class_index": np.int32,  # order of first appearance in the split's CSV
                "filename": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/twitter/meta-learning-lstm",
        )

    def _split_generators(self, dl_manager):
        raw_dir = Path(dl_manager.manual_dir)
        index = image_index(raw_dir)
        listed_all, found_all, generators = {}, {}, {}
        for split in SPLITS:
            rows = read_split_csv(csv_path(raw_dir, split))
            listed, found = count_images(rows, index)
            listed_all[split], found_all[split] = listed, found
            log.info(
                "mini_imagenet %s: %d classes, %d of %d listed images present (per class: min %d, max %d)",
                split, len(listed), sum(found.values()), len(rows), min(found.values()), max(found.values()))
            generators[split] = self._generate_examples(rows, index, list(listed))
        self.info.metadata["images_listed"] = listed_all
        self.info.metadata["images_found"] = found_all
        return generators

    def _generate_examples(self, rows, index, labels) -> Iterator:
        class_index = {label: i for i, label in enumerate(labels)}
        for filename, label in rows:
            if filename not in index:
                continue
            yield filename, {
                "image": standard_jpeg(index[filename]()),
                "label": label,
                "class_index": class_index[label],
                "filename": filename,
            }


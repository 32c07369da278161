"""TFDS builder for Omniglot (all 1,623 characters) and its two split protocols.

The builder reads the fetched archives directly (no extraction): `images_background.zip`
and `images_evaluation.zip` from the manual directory (= the fetched raw dir,
`data/raw/omniglot/`). Every drawing is stored once, unrotated, with its alphabet and
character ids; the protocol splits (Reptile, Vinyals) are computed at load time from
those ids by `reptile_tf.data.episodes`, so one prepared dataset serves both.

Resize filter: the 105x105 1-bit PNG is converted to 8-bit grayscale ('L', 0/255) and
resized to 28x28 with PIL's LANCZOS filter. Polarity is kept as in the archives and as
the official Reptile code's PIL pipeline gives it: background bright (255), strokes dark.
(The official Reptile code resizes the 1-bit image with PIL's default filter, which for mode
'1' is nearest neighbour, giving binary 0/1 images; Finn's MAML code asks for LANCZOS on the
same 1-bit image, which PIL ignores: NEAREST too. LANCZOS on 'L' keeps anti-aliased stroke
edges instead, which is the common choice of later TF/PyTorch ports.)
`reptile-tf prepare omniglot --resize-filter nearest` builds the official variant instead
(`resize_drawing(..., "nearest")`: exactly `np.array(Image.open(png).resize((28, 28)))` of
the official omniglot.py, stored as 0/255); use a separate --data-dir for it. The filter is
recorded in the dataset metadata ("resize_filter") and changes the data digest of runs.

Polarity: `reptile-tf prepare omniglot --invert` stores 255 - x instead (strokes bright,
background 0): after the loader's x/255 that is exactly Finn's MAML code's `1.0 - image / 255`
(`data_generator.py`). It matters to a network with zero padding: TF pads a stride-2 'SAME' conv
of 28 pixels at the bottom and right, and the padding's 0 is background in his images but stroke
in the archives' polarity. Recorded as "inverted" in the metadata; use its own --data-dir too.

The Vinyals split files (`splits/vinyals/{train,val,test,trainval}.txt`) are copied into
the dataset metadata so that loading never reaches back to the raw directory.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from reptile_tf.datasets import DATASETS

log = logging.getLogger(__name__)

ARCHIVES = ("images_background", "images_evaluation")
VINYALS_SPLITS = DATASETS["omniglot"].protocols["vinyals"]
IMAGE_SIZE = DATASETS["omniglot"].input_shape[0]
NUM_CHARACTERS = 1623
DRAWINGS_PER_CHARACTER = 20

# The characters are stored in sorted (alphabet, character) order, the order the Reptile
# protocol's shuffle starts from (`episodes.reptile_characters` holds that protocol).
RESIZE_FILTERS = ("lanczos", "nearest")
DEFAULT_RESIZE_FILTER = "lanczos"
# What `reptile-tf prepare omniglot` can change: builder attribute = metadata key -> (default, the
# option that asks for a value). Only values other than the default are recorded.
RECIPE_OPTIONS = {"resize_filter": (DEFAULT_RESIZE_FILTER, "--resize-filter {}"), "inverted": (False, "--invert")}


def raw_files(raw_dir: Path) -> list[Path]:
    """The raw files the builder needs (missing ones are reported by `prepare`)."""
    return [Path(raw_dir) / f"{name}.zip" for name in ARCHIVES]


def character_name(member: str) -> tuple[str, str, str] | None:
    """`images_background/Alphabet/character01/0709_01.png` -> (alphabet, character, file)."""
    parts = PurePosixPath(member).parts
    if len(parts) != 4 or not parts[3].endswith(".png"):
        return None
    return parts[1], parts[2], parts[3]


def resize_drawing(png_bytes: bytes, resize_filter: str = DEFAULT_RESIZE_FILTER,
                   inverted: bool = False) -> np.ndarray:
    """One raw 105x105 1-bit PNG -> uint8 [28, 28, 1], background 255, strokes dark.

    "lanczos": 8-bit grayscale, LANCZOS. "nearest": the official code's `img.resize((28, 28))`
    of the 1-bit image (PIL always resizes mode '1' with NEAREST), binary 0/255.
    `inverted`: 255 - that (background 0, strokes bright), Finn's MAML code's polarity.
    """
    from PIL import Image

    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize_filter!r}; choose one of {', '.join(RESIZE_FILTERS)}")
    with Image.open(io.BytesIO(png_bytes)) as img:
        if resize_filter == "nearest":
            binary = np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=bool)
            image = binary.astype(np.uint8) * 255
        else:
            image = np.asarray(img.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.LANCZOS),
                               dtype=np.uint8)
    return (255 - image if inverted else image)[:, :, None]


def list_drawings(raw_dir: Path) -> list[tuple[str, str, str, str]]:
    """All (archive, alphabet, character, file) in the raw archives, sorted."""
    found = []
    for archive in ARCHIVES:
        with zipfile.ZipFile(Path(raw_dir) / f"{archive}.zip") as zf:
            for member in zf.namelist():
                name = character_name(member)
                if name is not None:
                    found.append((archive, *name))
    return sorted(found, key=lambda t: (t[1], t[2], t[3]))


def read_vinyals_splits(raw_dir: Path) -> dict[str, list[str]]:
    """Lines `Alphabet/characterNN/rotDDD` of each Vinyals split file present."""
    split_dir = Path(raw_dir) / "splits" / "vinyals"
    splits = {}
    for split in VINYALS_SPLITS:
        path = split_dir / f"{split}.txt"
        if path.is_file():
            splits[split] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return splits


class Omniglot(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Omniglot, 32,460 drawings of 1,623 characters, 28x28 grayscale.

    Registration is skipped: TFDS ships its own `omniglot` builder (different features),
    and this one is always constructed explicitly by `reptile_tf.data`.
    """

    VERSION = tfds.core.Version("1.0.0")
    # Set on the instance before download_and_prepare (`prepare(..., resize_filter=...)`).
    resize_filter = DEFAULT_RESIZE_FILTER
    inverted = False
    RELEASE_NOTES = {"1.0.0": "All 1,623 characters, LANCZOS 28x28, Vinyals splits in metadata."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `reptile-tf fetch omniglot` first; it places images_background.zip, "
        "images_evaluation.zip and splits/vinyals/*.txt in data/raw/omniglot/."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), encoding_format="png"),
                "alphabet": tfds.features.Text(),
                "character": tfds.features.Text(),  # "Alphabet/characterNN"
                "alphabet_id": np.int32,  # index in the sorted list of 50 alphabets
                "character_id": np.int32,  # index in the sorted list of 1,623 characters
                "drawing": tfds.features.Text(),  # file name in the archive
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://github.com/brendenlake/omniglot",
        )

    def _split_generators(self, dl_manager):
        raw_dir = Path(dl_manager.manual_dir)
        drawings = list_drawings(raw_dir)
        # sorted as (alphabet, character) pairs, like the official code's nested sorted(os.listdir())
        characters = sorted({f"{d[1]}/{d[2]}" for d in drawings}, key=lambda name: tuple(name.split("/")))
        alphabets = sorted({d[1] for d in drawings})
        counts = {archive: sum(d[0] == archive for d in drawings) for archive in ARCHIVES}
        log.info("omniglot: found %d drawings of %d characters (%s)", len(drawings), len(characters), counts)
        self.info.metadata["characters"] = characters
        self.info.metadata["images_found"] = counts
        self.info.metadata["vinyals"] = read_vinyals_splits(raw_dir)
        for key, (default, _) in RECIPE_OPTIONS.items():  # default datasets keep their metadata as before
            if getattr(self, key) != default:
                self.info.metadata[key] = getattr(self, key)
        char_ids = {name: i for i, name in enumerate(characters)}
        alpha_ids = {name: i for i, name in enumerate(alphabets)}
        return {
            archive.removeprefix("images_"): self._generate_examples(
                raw_dir / f"{archive}.zip", archive, char_ids, alpha_ids)
            for archive in ARCHIVES
        }

    def _generate_examples(self, zip_path: Path, archive: str, char_ids: dict, alpha_ids: dict) -> Iterator:
        from PIL import Image

        with zipfile.ZipFile(zip_path) as zf:
            for member in sorted(zf.namelist()):
                name = character_name(member)
                if name is None:
                    continue
                alphabet, character, drawing = name
                pixels = resize_drawing(zf.read(member), self.resize_filter, self.inverted)
                image = Image.fromarray(pixels[:, :, 0], mode="L")
                yield member, {
                    "image": image,
                    "alphabet": alphabet,
                    "character": f"{alphabet}/{character}",
                    "alphabet_id": alpha_ids[alphabet],
                    "character_id": char_ids[f"{alphabet}/{character}"],
                    "drawing": drawing,
                }

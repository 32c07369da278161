"""What the project itself knows about the raw files: their names, digests and content.

These values are the authority for verification: a mirror's own `SHA256SUMS` can never
override them (a mirror could be stale, corrupt or hostile), it only covers files that are
not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from reptile_tf import datasets as registry

DATASETS = registry.FETCHED
# Folder of each dataset inside a mirror root (the mirror's own naming).
MIRROR_FOLDER = {"omniglot": "omniglot", "mini_imagenet": "miniimagenet"}

# Split files: one per split of the Vinyals (Omniglot) and Ravi (Mini-ImageNet) protocols.
OMNIGLOT_SPLITS = registry.DATASETS["omniglot"].protocols["vinyals"]
RAVI_SPLITS = registry.DATASETS["mini_imagenet"].protocols["ravi"]

# Files of each dataset, relative to DEST (= the mirror's per-dataset folder). Split files come
# first: the Mini-ImageNet archive check reads the Ravi CSVs.
OMNIGLOT_FILES = tuple(f"splits/vinyals/{s}.txt" for s in OMNIGLOT_SPLITS) + (
    "images_background.zip",
    "images_evaluation.zip",
)
MINI_CSV_FILES = tuple(f"splits/ravi/{s}.csv" for s in RAVI_SPLITS)
MINI_ARCHIVES = tuple(f"images-{s}.zip" for s in RAVI_SPLITS)
MINI_FILES = MINI_CSV_FILES + MINI_ARCHIVES
DATASET_FILES = {"omniglot": OMNIGLOT_FILES, "mini_imagenet": MINI_FILES}

# sha256 of the offline mirror's files (../shared/data/SHA256SUMS), keyed by (dataset, file).
KNOWN_SHA256: dict[tuple[str, str], str] = {
    ("mini_imagenet", "images-test.zip"): "a7d12b14392f4825d4658c0eac2c0032806adae5d67490f43bc73ac2c6c713b1",
    ("mini_imagenet", "images-train.zip"): "e62948e91cc1d0ad3d101e5d14f7f2b5fb4dbc93126a839761b4ea79274bb9b9",
    ("mini_imagenet", "images-val.zip"): "65e5f930c91cdeab6c11ac673c0f068fa62f7d348d607e9fbae6fd5543ac64d7",
    ("mini_imagenet", "splits/ravi/test.csv"): "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa",
    ("mini_imagenet", "splits/ravi/train.csv"): "498519cd8e49ce97ed26a4a3638966698ae41ab35e9c68538319fc9b46ba7d2f",
    ("mini_imagenet", "splits/ravi/val.csv"): "5658a59921ca027ee76af92949869c5d6f41d77592ff3b18db325a9d10c893b9",
    ("omniglot", "images_background.zip"): "67ade8c6c15cbe0a469deabc822fc6a90c38b6600cfc46be9de3e94f389d1921",
    ("omniglot", "images_evaluation.zip"): "046704d8dbec028daa9e24d2e7bb099c4f057fec57b7a8f5931eff697f91758f",
    ("omniglot", "splits/vinyals/test.txt"): "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
    ("omniglot", "splits/vinyals/train.txt"): "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
    ("omniglot", "splits/vinyals/trainval.txt"): "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
    ("omniglot", "splits/vinyals/val.txt"): "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
}
# The official Omniglot archives (canonical URLs), as recorded in tensorflow-datasets'
# url_checksums/omniglot.txt. The mirror repacks the same images, so its archive hash differs.
OFFICIAL_SHA256: dict[tuple[str, str], str] = {
    ("omniglot", "images_background.zip"): "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    ("omniglot", "images_evaluation.zip"): "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}


@dataclass(frozen=True)
class ArchiveContent:
    """What a known archive holds, independently of how it was packed (../shared/data/README.md)."""

    images: int
    tree_digest: str


KNOWN_ARCHIVES: dict[tuple[str, str], ArchiveContent] = {
    ("omniglot", "images_background.zip"): ArchiveContent(
        19_280, "75288906d655255988a488b7e81923d9c2194356d17b82642d9c51b19bd58594"
    ),
    ("omniglot", "images_evaluation.zip"): ArchiveContent(
        13_180, "8e90acd002099b58eaaf049e5d5d404f36553a151330c05a2c9c30cde54f4d42"
    ),
    ("mini_imagenet", "images-test.zip"): ArchiveContent(
        12_000, "cf1bbd80a3a1c66d29a974b9135824bb9386d4ea761f16bb64aeedffbdcec613"
    ),
    ("mini_imagenet", "images-val.zip"): ArchiveContent(
        4_800, "e3c900926fbf4e2efbb78c45d0b3219e7bf3bb88e9813c62f82328702f7d1928"
    ),
    ("mini_imagenet", "images-train.zip"): ArchiveContent(
        25_600, "32198997525a34bc85a36c17584438800a593c52ef4c06ba4eece2feebe4baed"
    ),
}
# Archives every acceptable copy of which holds exactly KNOWN_ARCHIVES[...].images images (the
# official archives and the mirror's repack alike). Mini-ImageNet archives are not in it: users
# supply their own copies (full or subset), checked against the split's Ravi CSV instead.
EXACT_IMAGE_COUNT = frozenset(key for key in KNOWN_ARCHIVES if key[0] == "omniglot")
USER_COPY_ARCHIVES = frozenset(("mini_imagenet", rel) for rel in MINI_ARCHIVES)
IMAGE_SUFFIXES = {"omniglot": (".png",), "mini_imagenet": (".jpg", ".jpeg")}


def project_sha256(dataset: str, rel: str) -> dict[str, str]:
    """The sha256 values the project accepts for a file: {digest: method label}."""
    key = (dataset, rel)
    accepted = {}
    if key in OFFICIAL_SHA256:
        accepted[OFFICIAL_SHA256[key]] = "sha256 (project: official archive, as recorded by tensorflow-datasets)"
    if key in KNOWN_SHA256:
        accepted[KNOWN_SHA256[key]] = "sha256 (project)"
    return accepted


def project_knows(dataset: str, rel: str) -> bool:
    """True when the project has its own rule for this file (then a mirror's checksum is ignored)."""
    key = (dataset, rel)
    return key in KNOWN_SHA256 or key in OFFICIAL_SHA256 or key in KNOWN_ARCHIVES or key in USER_COPY_ARCHIVES

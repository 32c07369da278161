"""`reptile-tf fetch`: download (or copy) the raw Omniglot / Mini-ImageNet files and verify them.

Sources are tried file by file, in order: `--source` (the dataset folder itself, a path or
URL), then mirrors (`--mirror` options, then `REPTILE_TF_MIRROR`; a mirror root holds
`omniglot/` and `miniimagenet/` folders and a `SHA256SUMS`), then the canonical URL (Omniglot
only: Mini-ImageNet has no public download). Every file is written to a temporary file in
DEST, verified, and only then renamed into place, so DEST never holds a partial file.

Verification of one file, first rule that applies:
1. the source is a mirror whose `SHA256SUMS` lists the file -> its sha256 must match;
2. the sha256 equals a digest embedded below (the mirror's files; the official Omniglot
   archives as recorded by tensorflow-datasets) -> accepted;
3. archives: every member name must be safe, then the image count and tree digest (see
   ../shared/data/README.md) must match the embedded values; a Mini-ImageNet archive of
   unknown content (a user's own copy) is accepted when it is a sound zip whose images are all
   listed in that split's Ravi CSV and cover every class of the split;
4. split files (Vinyals txt, Ravi csv) have no other check: their sha256 must match.

A verified DEST gets a `VERIFIED.json` stamp (sizes, mtimes, digests); a later fetch that
finds every stamped file unchanged (size + mtime) returns at once without touching anything.

This module must not import tensorflow (the CLI stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import http.client
import os
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Sequence

from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, read_json, write_json_atomic

DATASETS = ("omniglot", "mini_imagenet")
ENV_MIRROR = "REPTILE_TF_MIRROR"
STAMP_NAME = "VERIFIED.json"
STAMP_VERSION = 1
# Folder of each dataset inside a mirror root (the mirror's own naming).
MIRROR_FOLDER = {"omniglot": "omniglot", "mini_imagenet": "miniimagenet"}

OMNIGLOT_SPLITS = ("train", "val", "test", "trainval")
RAVI_SPLITS = ("train", "val", "test")

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

_OMNIGLOT_ZIP_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
_VINYALS_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/{name}"
)
# Canonical download per file (Omniglot only). Tests point these at a local server.
CANONICAL_URLS: dict[str, dict[str, str]] = {
    "omniglot": {
        **{f"splits/vinyals/{s}.txt": _VINYALS_URL.format(name=f"{s}.txt") for s in OMNIGLOT_SPLITS},
        **{name: _OMNIGLOT_ZIP_URL.format(name=name) for name in ("images_background.zip", "images_evaluation.zip")},
    },
    "mini_imagenet": {},
}

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
IMAGE_SUFFIXES = {"omniglot": (".png",), "mini_imagenet": (".jpg", ".jpeg")}

_CHUNK = 1 << 20
_HTTP_TIMEOUT_S = 60


# --------------------------------------------------------------------------- errors (internal)


class _Missing(Exception):
    """The source does not have the file, or cannot be reached: try the next source."""


class _Rejected(Exception):
    """The source's copy failed verification: try the next source, report it if none works."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One place files may come from. `base` is the dataset folder (dir path or URL)."""

    kind: str  # "source", "mirror" or "canonical"
    label: str  # how the user gave it (for messages)
    base: str = ""
    urls: dict[str, str] = field(default_factory=dict)  # canonical: file -> URL
    sums: dict[str, str] = field(default_factory=dict)  # mirror SHA256SUMS: file -> sha256
    sums_location: str = ""

    def locate(self, rel: str) -> str | None:
        if self.kind == "canonical":
            return self.urls.get(rel)
        return _join(self.base, rel)

    def is_directory(self) -> bool:
        return self.kind != "canonical" and not _is_url(self.base)


def mirrors_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """Mirrors listed in `REPTILE_TF_MIRROR` (space-separated directories or URLs)."""
    value = (os.environ if environ is None else environ).get(ENV_MIRROR, "")
    return value.split()


def _is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https", "file")


def _join(base: str, rel: str) -> str:
    if _is_url(base):
        return base.rstrip("/") + "/" + urllib.parse.quote(rel)
    return str(Path(base) / rel)


def _parse_sha256sums(text: str, prefix: str) -> dict[str, str]:
    """`<sha256>  <path>` lines (optionally `*path`, `./path`) -> {path under prefix: sha256}."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            continue
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        while name.startswith("./"):
            name = name[2:]
        if name.startswith(prefix + "/"):
            sums[name[len(prefix) + 1 :]] = digest
    return sums


def _read_small(location: str) -> bytes:
    with _open_location(location) as (stream, _total):
        return stream.read()


def _mirror_source(dataset: str, mirror: str) -> Source:
    folder = MIRROR_FOLDER[dataset]
    sums_location = _join(mirror, "SHA256SUMS")
    try:
        sums = _parse_sha256sums(_read_small(sums_location).decode("utf-8", "replace"), folder)
    except _Missing:
        sums = {}  # a mirror without SHA256SUMS: embedded digests and content checks apply
    return Source("mirror", mirror, base=_join(mirror, folder), sums=sums, sums_location=sums_location)


def build_sources(dataset: str, mirrors: Sequence[str], source: str | None) -> list[Source]:
    """The sources in the order they are tried."""
    sources = []
    if source:
        sources.append(Source("source", source, base=source))
    sources += [_mirror_source(dataset, m) for m in mirrors]
    if CANONICAL_URLS[dataset]:
        sources.append(Source("canonical", "canonical URL", urls=dict(CANONICAL_URLS[dataset])))
    return sources


@contextlib.contextmanager
def _open_location(location: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open a file path or URL for reading; yield (stream, size if known). Missing -> _Missing."""
    if not _is_url(location):
        try:
            stream = open(location, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _Missing("not found") from None
        except OSError as err:
            raise _Missing(f"cannot be read ({err.strerror})") from None
        with stream:
            yield stream, os.fstat(stream.fileno()).st_size
        return
    try:
        response = urllib.request.urlopen(location, timeout=_HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise _Missing(f"not found (HTTP {err.code})") from None
    except urllib.error.URLError as err:
        raise _Missing(f"unreachable ({err.reason})") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Missing(f"unreachable ({err})") from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm  # only needed when copying

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        disable=not (enabled and sys.stderr.isatty()), leave=False,
    )


def _copy_location(location: str, target: Path, desc: str, progress: bool) -> str:
    """Stream `location` into `target` (a temp file), returning the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with _open_location(location) as (stream, total):
        written = 0
        with open(target, "wb") as out, _progress_bar(total, desc, progress) as bar:
            while True:
                try:
                    chunk = stream.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _Missing(f"transfer failed after {written:,} bytes ({err!r})") from None
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if total is not None and written != total:
        raise _Missing(f"transfer truncated: received {written:,} of {total:,} bytes")
    return digest.hexdigest()


# --------------------------------------------------------------------------- verification


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could write outside the destination, or None if it is safe."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "contains '..'"
    return None


def _check_members_safe(archive: zipfile.ZipFile, label: str) -> None:
    for info in archive.infolist():
        reason = unsafe_member_reason(info)
        if reason:
            raise _Rejected(f"{label} is unsafe: member {info.filename!r} {reason}; refusing to use it")


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a zip into `dest`, refusing members with absolute paths, `..` or symlinks.

    All members are checked before anything is written. Returns the extracted file paths.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            try:
                _check_members_safe(archive, str(zip_path))
            except _Rejected as err:
                raise UserError(f"{err}. Obtain the archive again from a trusted source.") from None
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            written = []
            for info in archive.infolist():
                target = (root / info.filename).resolve()
                if root not in target.parents and target != root:  # belt and braces
                    raise UserError(f"{zip_path}: member {info.filename!r} would escape {dest}; refusing")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written.append(target)
            return written
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise UserError(f"{zip_path} is not a readable zip archive ({err}); it is corrupt or truncated") from None


def tree_digest(zip_path: str | os.PathLike) -> tuple[str, int]:
    """(tree digest, number of files) of an archive: sha256 over sorted `<name>\\t<sha256>\\n` lines."""
    lines = []
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            digest = hashlib.sha256()
            with archive.open(info) as member:  # CRC is checked on read: corruption raises
                for chunk in iter(lambda: member.read(_CHUNK), b""):
                    digest.update(chunk)
            lines.append(f"{info.filename}\t{digest.hexdigest()}\n")
    lines.sort()
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest(), len(lines)


def read_ravi_csv(path: str | os.PathLike) -> dict[str, str]:
    """{file name: class label} of a Ravi split CSV (`filename,label`)."""
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise _Rejected(f"{path} does not start with the header 'filename,label'")
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}


def count_listed_images(names: Sequence[str], listed: dict[str, str]) -> tuple[int, int, list[str]]:
    """(images found that the CSV lists, classes with at least one image, unlisted names)."""
    found, unlisted = set(), []
    for name in names:
        base = PurePosixPath(name).name
        if base in listed:
            found.add(base)
        else:
            unlisted.append(name)
    classes = {listed[n] for n in found}
    return len(found), len(classes), unlisted


def _expectation_text(dataset: str, rel: str, listed_sha: str | None) -> str:
    """The expected value(s) for a file, for error messages."""
    key = (dataset, rel)
    options = []
    if listed_sha:
        options.append(f"sha256 {listed_sha} (mirror SHA256SUMS)")
    if key in KNOWN_SHA256:
        options.append(f"sha256 {KNOWN_SHA256[key]}")
    if key in OFFICIAL_SHA256:
        options.append(f"sha256 {OFFICIAL_SHA256[key]} (official archive)")
    if key in KNOWN_ARCHIVES:
        content = KNOWN_ARCHIVES[key]
        options.append(f"{content.images:,} images with tree digest {content.tree_digest}")
    if dataset == "mini_imagenet" and rel in MINI_ARCHIVES:
        options.append(f"a sound zip of images/<filename> listed in splits/ravi/{_split_of(rel)}.csv covering every class")
    return " or ".join(options) if options else "a known sha256"


def _split_of(archive_rel: str) -> str:
    return archive_rel[len("images-") : -len(".zip")]


@dataclass
class VerifyContext:
    """What verification of later files needs from earlier ones (the Ravi CSV rows)."""

    dataset: str
    dest: Path
    ravi: dict[str, dict[str, str]] = field(default_factory=dict)

    def ravi_rows(self, split: str) -> dict[str, str]:
        if split not in self.ravi:
            self.ravi[split] = read_ravi_csv(self.dest / f"splits/ravi/{split}.csv")
        return self.ravi[split]


def verify_file(path: Path, rel: str, sha256: str, ctx: VerifyContext, listed_sha: str | None = None) -> dict:
    """Verify one fetched file (at `path`, destined for DEST/`rel`). Returns how; raises _Rejected."""
    dataset, key = ctx.dataset, (ctx.dataset, rel)
    expected = _expectation_text(dataset, rel, listed_sha)
    if listed_sha is not None:
        if sha256 == listed_sha:
            return {"method": "sha256 (mirror SHA256SUMS)"}
        raise _Rejected(f"{rel}: sha256 is {sha256}, expected {listed_sha} (mirror SHA256SUMS); "
                        "the copy is corrupt, truncated or a different file")
    if sha256 == KNOWN_SHA256.get(key):
        return {"method": "sha256 (embedded digest)"}
    if sha256 == OFFICIAL_SHA256.get(key):
        return {"method": "sha256 (official archive digest, as recorded by tensorflow-datasets)"}
    if not rel.endswith(".zip"):
        raise _Rejected(f"{rel}: sha256 is {sha256}, expected {expected}; the file is corrupt, truncated or a different file")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members_safe(archive, rel)
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
        digest, count = tree_digest(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise _Rejected(f"{rel} is not a readable zip archive ({err}): corrupt or truncated; expected {expected}") from None
    known = KNOWN_ARCHIVES.get(key)
    if known is not None and (digest, count) == (known.tree_digest, known.images):
        return {"method": "image count + tree digest", "tree_digest": digest, "images": count}
    if dataset == "mini_imagenet":
        return _verify_user_mini_archive(rel, names, ctx, digest)
    raise _Rejected(f"{rel}: {count:,} files with tree digest {digest}, expected {expected}; "
                    "the archive is corrupt, incomplete or a different file")


def _verify_user_mini_archive(rel: str, names: list[str], ctx: VerifyContext, digest: str) -> dict:
    """A Mini-ImageNet archive of unknown content: its images must fit the split's Ravi CSV."""
    split = _split_of(rel)
    listed = ctx.ravi_rows(split)
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES["mini_imagenet"])]
    found, classes, unlisted = count_listed_images(images, listed)
    all_classes = len(set(listed.values()))
    if unlisted or not found or classes != all_classes:
        raise _Rejected(
            f"{rel}: {found:,} images listed in splits/ravi/{split}.csv covering {classes} of {all_classes} "
            f"classes, {len(unlisted):,} images not listed (e.g. {unlisted[:2]}); expected "
            f"{_expectation_text(ctx.dataset, rel, None)}; is it the archive of another split?")
    return {"method": "Ravi CSV membership (user copy)", "tree_digest": digest, "images": found}


# --------------------------------------------------------------------------- the stamp


def _stat_entry(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_is_current(dest: Path, dataset: str) -> bool:
    """True when DEST/VERIFIED.json exists for `dataset` and every stamped file is unchanged."""
    stamp_path = dest / STAMP_NAME
    try:
        stamp = read_json(stamp_path)
    except (OSError, ValueError):
        return False
    if stamp.get("version") != STAMP_VERSION or stamp.get("dataset") != dataset:
        return False
    files = stamp.get("files") or {}
    for rel, entry in files.items():
        try:
            if _stat_entry(dest / rel) != {"size": entry.get("size"), "mtime_ns": entry.get("mtime_ns")}:
                return False
        except OSError:
            return False
    folder = stamp.get("image_folder")
    if folder is not None and _count_files(dest / "images") != folder.get("files"):
        return False
    return bool(files)


def _count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file())
    except OSError:
        return -1


# --------------------------------------------------------------------------- fetching


def _fetch_one(rel: str, sources: list[Source], dest: Path, ctx: VerifyContext, progress: bool,
               stamp_entry: dict | None) -> dict:
    """Make DEST/rel a verified file: keep a verified existing one, else try each source."""
    target = dest / rel
    if target.is_file():
        if stamp_entry and _stat_entry(target) == {k: stamp_entry.get(k) for k in ("size", "mtime_ns")}:
            return stamp_entry
        sha = file_sha256(target)
        try:
            how = verify_file(target, rel, sha, ctx)
            return {**how, **_stat_entry(target), "sha256": sha, "source": "already in DEST"}
        except _Rejected as err:
            _warn(f"existing {target} failed verification ({err}); fetching it again")
    attempts = []
    for src in sources:
        location = src.locate(rel)
        if location is None:
            continue
        try:
            with atomic_path(target) as tmp:
                sha = _copy_location(location, tmp, rel, progress)
                how = verify_file(tmp, rel, sha, ctx, src.sums.get(rel))
            return {**how, **_stat_entry(target), "sha256": sha, "source": location}
        except _Missing as err:
            attempts.append(f"{src.kind} {location}: {err}")
        except _Rejected as err:
            attempts.append(f"{src.kind} {location}: REJECTED: {err}")
            _warn(f"{location} rejected: {err}")
    raise UserError(_no_source_message(ctx.dataset, rel, dest, attempts))


def _no_source_message(dataset: str, rel: str, dest: Path, attempts: list[str]) -> str:
    tried = "; ".join(f"({i}) {a}" for i, a in enumerate(attempts, 1)) or "none (no source was given)"
    folder = MIRROR_FOLDER[dataset]
    if dataset == "mini_imagenet":
        how = ("Mini-ImageNet has no public download: give --source DIR holding splits/ravi/{train,val,test}.csv "
               "and images-{train,val,test}.zip (or an images/ folder of jpgs), or a mirror")
    else:
        how = "give a mirror"
    return (f"could not obtain a verified {dataset} file {rel!r}. Sources tried: {tried}. To fix: {how} with "
            f"--mirror DIR_OR_URL or the {ENV_MIRROR} environment variable (space-separated directories or "
            f"URLs), laid out as <mirror>/{folder}/{rel} with an optional <mirror>/SHA256SUMS. Nothing partial "
            f"was left in {dest}.")


def _warn(message: str) -> None:
    print(f"reptile-tf fetch: warning: {message}", file=sys.stderr)


def _image_folder_source(dataset: str, source: str | None) -> Path | None:
    """A user `--source` directory with an `images/` folder and no archives (Mini-ImageNet only)."""
    if dataset != "mini_imagenet" or not source or _is_url(source):
        return None
    root = Path(source)
    if (root / "images").is_dir() and not any((root / a).exists() for a in MINI_ARCHIVES):
        return root / "images"
    return None


def _looks_like_jpeg(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(3) == b"\xff\xd8\xff"


def _fetch_image_folder(folder: Path, dest: Path, ctx: VerifyContext) -> dict:
    """Copy the jpgs the Ravi CSVs list from a user's `images/` folder into DEST/images (atomically)."""
    target = dest / "images"
    report, copied = {}, 0
    tmp = Path(tempfile.mkdtemp(prefix=".images.", suffix=".tmp", dir=dest))
    try:
        for split in RAVI_SPLITS:
            listed = ctx.ravi_rows(split)
            found, bad = [], []
            for name in sorted(listed):
                src = folder / name
                if not src.is_file():
                    continue
                (found if _looks_like_jpeg(src) else bad).append(name)
            if bad:
                raise UserError(f"{folder}: {len(bad)} listed images are not JPEG files (e.g. {bad[:3]}); "
                                "expected 84x84 JPEGs named as in splits/ravi/*.csv. Replace them and retry.")
            classes = {listed[n] for n in found}
            all_classes = set(listed.values())
            if classes != all_classes:
                raise UserError(
                    f"{folder}: the {split} split has images for {len(classes)} of {len(all_classes)} classes "
                    f"(missing e.g. {sorted(all_classes - classes)[:3]}); expected at least one image per "
                    f"class of splits/ravi/{split}.csv. Point --source at a complete images/ folder.")
            for name in found:
                shutil.copy2(folder / name, tmp / name)
            copied += len(found)
            report[split] = {"images": len(found), "listed": len(listed), "classes": len(classes)}
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"files": copied, "splits": report, "source": str(folder)}


def _archive_image_counts(dest: Path, ctx: VerifyContext) -> dict:
    """Per split: images in the archive that the CSV lists (the mirror's train/val are subsets)."""
    report = {}
    for rel in MINI_ARCHIVES:
        split = _split_of(rel)
        listed = ctx.ravi_rows(split)
        with zipfile.ZipFile(dest / rel) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
        found, classes, _ = count_listed_images(names, listed)
        report[split] = {"images": found, "listed": len(listed), "classes": classes}
    return report


def fetch(dataset: str, dest: str | os.PathLike, mirrors: Sequence[str] = (), source: str | None = None,
          progress: bool = True) -> Path:
    """Make `dest` hold the verified raw files of `dataset`; return it.

    Sources, file by file: `source`, then `mirrors`, then the mirrors in `REPTILE_TF_MIRROR`,
    then the canonical URL. Raises UserError, leaving no partial file, when some file has no
    verified source.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} exists and is not a directory; give a directory path")
    if stamp_is_current(dest, dataset):
        return dest
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _fetch_into(dataset, dest, _unique(list(mirrors) + mirrors_from_env()), source, progress)
    except BaseException:
        _prune_empty_dirs(dest, dataset, remove_root=created)  # no empty skeleton left behind either
        raise


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _prune_empty_dirs(dest: Path, dataset: str, remove_root: bool) -> None:
    """Remove the folders fetch made for its files (e.g. splits/vinyals) when they stayed empty."""
    folders = {parent for rel in DATASET_FILES[dataset] for parent in (dest / rel).parents if dest in parent.parents}
    if remove_root:
        folders.add(dest)
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # missing or not empty: keep it
            folder.rmdir()


def _fetch_into(dataset: str, dest: Path, mirrors: list[str], source: str | None, progress: bool) -> Path:
    old_stamp = _read_stamp(dest, dataset)
    (dest / STAMP_NAME).unlink(missing_ok=True)  # the stamp exists only while everything is verified
    sources = build_sources(dataset, mirrors, source)
    ctx = VerifyContext(dataset, dest)
    folder = _image_folder_source(dataset, source)
    wanted = MINI_CSV_FILES if folder is not None else DATASET_FILES[dataset]
    files = {rel: _fetch_one(rel, sources, dest, ctx, progress, old_stamp.get("files", {}).get(rel)) for rel in wanted}
    stamp = {"version": STAMP_VERSION, "dataset": dataset, "files": files}
    if folder is not None:
        image_folder = _fetch_image_folder(folder, dest, ctx)
        stamp["image_folder"] = image_folder
        stamp["images"] = image_folder["splits"]
    elif dataset == "mini_imagenet":
        stamp["images"] = _archive_image_counts(dest, ctx)
    write_json_atomic(dest / STAMP_NAME, stamp)
    return dest


def _read_stamp(dest: Path, dataset: str) -> dict:
    try:
        stamp = read_json(dest / STAMP_NAME)
    except (OSError, ValueError):
        return {}
    ok = isinstance(stamp, dict) and stamp.get("version") == STAMP_VERSION and stamp.get("dataset") == dataset
    return stamp if ok else {}


def summary(dest: Path) -> str:
    """One line per file / split of a verified DEST (from its stamp)."""
    stamp = read_json(Path(dest) / STAMP_NAME)
    lines = [f"{stamp['dataset']}: verified {dest}"]
    for rel, entry in sorted(stamp["files"].items()):
        lines.append(f"  {rel}: {entry['size']:,} bytes, {entry['method']}")
    for split, counts in (stamp.get("images") or {}).items():
        lines.append(f"  {split}: {counts['images']:,} of {counts['listed']:,} listed images present "
                     f"({counts['classes']} classes)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--dest", required=True, help="directory to hold the verified raw files")
    parser.add_argument("--mirror", action="append", default=[], metavar="DIR_OR_URL",
                        help=f"mirror root (repeatable), tried before ${ENV_MIRROR} and the canonical URL")
    parser.add_argument("--source", default=None, metavar="PATH_OR_URL",
                        help="the dataset folder itself (tried first), e.g. your own Mini-ImageNet copy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    already = stamp_is_current(dest, args.dataset)
    fetch(args.dataset, dest, mirrors=args.mirror, source=args.source, progress=not args.no_progress)
    print(f"{args.dataset}: already verified, nothing to do ({dest / STAMP_NAME})" if already else summary(dest))
    return 0

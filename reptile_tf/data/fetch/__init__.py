"""`reptile-tf fetch`: download (or copy) the raw Omniglot / Mini-ImageNet files and verify them.

Sources are tried file by file, in order: `--source` (the dataset folder itself, a path or
URL), then mirrors (`--mirror` options, then `REPTILE_TF_MIRROR`; a mirror root holds
`omniglot/` and `miniimagenet/` folders and a `SHA256SUMS`), then the canonical URL (Omniglot
only: Mini-ImageNet has no public download). Every file is written to a temporary file in
DEST, verified, and only then renamed into place, so DEST never holds a partial file.

Verification (verify.py) trusts the project, not the mirror: a file the project knows must
match the project's own sha256 or tree digest, whatever a mirror's `SHA256SUMS` says, and
archive structure checks (safe member names, no links, image counts) always run. A mirror's
checksums only cover files the project does not know. The stamp and the summary name the
check that verified each file ("sha256 (project)", "tree digest (project)", ...).

Transfers (transfer.py) have a per-file deadline and a minimum rate (`--timeout`,
`--min-rate`, `--rate-window`). Temp files are removed on any exit, SIGTERM included, and
temp files of an earlier killed fetch are removed by the next one (guard.py). Errors writing
DEST (read-only, full) are reported in one line.

A verified DEST gets a `VERIFIED.json` stamp (sizes, mtimes, digests); a later fetch that
finds every stamped file unchanged (size + mtime) returns at once without touching anything.

This package must not import tensorflow (the CLI stays fast).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from reptile_tf import datasets as registry
from reptile_tf.data.fetch.guard import (
    STALE_AGE_UNLOCKED_S,
    Terminated,
    dest_lock,
    os_error_message,
    raise_on_termination,
    remove_paths,
    stale_temp_paths,
)
from reptile_tf.data.fetch.known import (
    DATASET_FILES,
    DATASETS,
    EXACT_IMAGE_COUNT,
    IMAGE_SUFFIXES,
    KNOWN_ARCHIVES,
    KNOWN_SHA256,
    MINI_ARCHIVES,
    MINI_CSV_FILES,
    MINI_FILES,
    MIRROR_FOLDER,
    OFFICIAL_SHA256,
    OMNIGLOT_FILES,
    OMNIGLOT_SPLITS,
    RAVI_SPLITS,
    USER_COPY_ARCHIVES,
    ArchiveContent,
    project_knows,
    project_sha256,
)
from reptile_tf.data.fetch.transfer import (
    DEADLINE_HELP,
    DEFAULT_MIN_RATE,
    DEFAULT_WINDOW_S,
    Missing,
    TooSlow,
    TransferLimits,
    copy_location,
    format_rate,
    is_url,
    parse_rate,
    read_small,
)
from reptile_tf.data.fetch.verify import (
    Rejected,
    VerifyContext,
    count_listed_images,
    file_sha256,
    read_ravi_csv,
    split_of,
    tree_digest,
    unsafe_member_reason,
    verify_file,
)
from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, read_json, write_json_atomic
from reptile_tf.progress import cli_mode

ENV_MIRROR = "REPTILE_TF_MIRROR"
STAMP_NAME = "VERIFIED.json"
# 2: verification no longer lets a mirror's SHA256SUMS vouch for files the project knows, so
# stamps written by version 1 are not trusted: their files are verified again (not re-fetched).
STAMP_VERSION = 2

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
        return self.kind != "canonical" and not is_url(self.base)


def mirrors_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """Mirrors listed in `REPTILE_TF_MIRROR` (space-separated directories or URLs)."""
    value = (os.environ if environ is None else environ).get(ENV_MIRROR, "")
    return value.split()


def _join(base: str, rel: str) -> str:
    if is_url(base):
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


def _mirror_source(dataset: str, mirror: str, limits: TransferLimits) -> Source:
    folder = MIRROR_FOLDER[dataset]
    sums_location = _join(mirror, "SHA256SUMS")
    try:
        sums = _parse_sha256sums(read_small(sums_location, limits).decode("utf-8", "replace"), folder)
    except TooSlow as err:
        _warn(f"{sums_location}: {err}; using the mirror without it")
        sums = {}
    except Missing:
        sums = {}  # a mirror without SHA256SUMS: the project's own checks apply
    return Source("mirror", mirror, base=_join(mirror, folder), sums=sums, sums_location=sums_location)


def build_sources(dataset: str, mirrors: Sequence[str], source: str | None,
                  limits: TransferLimits | None = None) -> list[Source]:
    """The sources in the order they are tried."""
    limits = limits or TransferLimits()
    sources = []
    if source:
        sources.append(Source("source", source, base=source))
    sources += [_mirror_source(dataset, m, limits) for m in mirrors]
    if CANONICAL_URLS[dataset]:
        sources.append(Source("canonical", "canonical URL", urls=dict(CANONICAL_URLS[dataset])))
    return sources


# --------------------------------------------------------------------------- the stamp


def _stat_entry(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stamp_is_current(dest: Path, dataset: str) -> bool:
    """True when DEST/VERIFIED.json exists for `dataset` and every stamped file is unchanged."""
    stamp = _read_stamp(Path(dest), dataset)
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


def _read_stamp(dest: Path, dataset: str) -> dict:
    try:
        stamp = read_json(dest / STAMP_NAME)
    except (OSError, ValueError):
        return {}
    ok = isinstance(stamp, dict) and stamp.get("version") == STAMP_VERSION and stamp.get("dataset") == dataset
    return stamp if ok else {}


def _count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.is_file())
    except OSError:
        return -1


# --------------------------------------------------------------------------- fetching


def _fetch_one(rel: str, sources: list[Source], dest: Path, ctx: VerifyContext, progress: bool,
               stamp_entry: dict | None, limits: TransferLimits) -> dict:
    """Make DEST/rel a verified file: keep a verified existing one, else try each source."""
    target = dest / rel
    if target.is_file():
        if stamp_entry and _stat_entry(target) == {k: stamp_entry.get(k) for k in ("size", "mtime_ns")}:
            return stamp_entry
        sha = file_sha256(target)
        try:
            how = verify_file(target, rel, sha, ctx)
            return {**how, **_stat_entry(target), "sha256": sha, "source": "already in DEST"}
        except Rejected as err:
            _warn(f"existing {target} failed verification ({err}); fetching it again")
    attempts = []
    for src in sources:
        location = src.locate(rel)
        if location is None:
            continue
        try:
            # Errors writing the temp file (read-only or full DEST) are OSErrors: they end the
            # fetch (another source would not help); atomic_path removes the temp file.
            with atomic_path(target) as tmp:
                sha = copy_location(location, tmp, limits, rel, progress)
                how = verify_file(tmp, rel, sha, ctx, src.sums.get(rel))
            return {**how, **_stat_entry(target), "sha256": sha, "source": location}
        except TooSlow as err:
            attempts.append(f"{src.kind} {location}: {err}")
            _warn(f"{location}: {err}")
        except Missing as err:
            attempts.append(f"{src.kind} {location}: {err}")
        except Rejected as err:
            attempts.append(f"{src.kind} {location}: REJECTED: {err}")
            _warn(f"{location} rejected: {err}")
        except OSError as err:
            if err.filename is None:  # e.g. ENOSPC from write(): say which file did not fit
                err.filename = str(target)
            raise
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
    if dataset != "mini_imagenet" or not source or is_url(source):
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
        split = split_of(rel)
        listed = ctx.ravi_rows(split)
        with zipfile.ZipFile(dest / rel) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
        found, classes, _ = count_listed_images(names, listed)
        report[split] = {"images": found, "listed": len(listed), "classes": classes}
    return report


def fetch(dataset: str, dest: str | os.PathLike, mirrors: Sequence[str] = (), source: str | None = None,
          progress: bool | str = True, limits: TransferLimits | None = None) -> Path:
    """Make `dest` hold the verified raw files of `dataset`; return it.

    `progress`: True = byte-counting bars on a terminal, plain lines for large files in logs;
    False = nothing; or a `reptile_tf.progress` mode.

    Sources, file by file: `source`, then `mirrors`, then the mirrors in `REPTILE_TF_MIRROR`,
    then the canonical URL; each transfer obeys `limits` (default: TransferLimits()). Raises
    UserError, leaving no partial file, when some file has no verified source or DEST cannot
    be written. SIGTERM / SIGHUP raise Terminated (a SystemExit) after temp files are removed.
    """
    registry.get(dataset, among=DATASETS)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--dest {dest} exists and is not a directory; give a directory path")
    if stamp_is_current(dest, dataset):
        return dest
    limits = limits or TransferLimits()
    created = not dest.exists()
    try:
        with raise_on_termination():
            try:
                dest.mkdir(parents=True, exist_ok=True)
                with dest_lock(dest, lambda: _warn(f"another fetch is writing into {dest}; waiting for it")) as held:
                    if stamp_is_current(dest, dataset):  # the fetch we waited for did the work
                        return dest
                    _remove_stale_temp_files(dest, dataset, held)
                    return _fetch_into(dataset, dest, _unique(list(mirrors) + mirrors_from_env()), source, progress,
                                       limits)
            except BaseException:
                _prune_empty_dirs(dest, dataset, remove_root=created)  # no empty skeleton left behind either
                raise
    except OSError as err:
        raise UserError(os_error_message(dest, err)) from None
    except Terminated as term:
        print(f"reptile-tf fetch: stopped by {term.signal_name}; temporary files removed, nothing partial left in "
              f"{dest}; run the same command again to resume", file=sys.stderr)
        raise


def _remove_stale_temp_files(dest: Path, dataset: str, locked: bool) -> None:
    """Remove temp files a killed fetch left (SIGKILL, power loss: no handler could run)."""
    rels = (*DATASET_FILES[dataset], STAMP_NAME, "images")
    stale = stale_temp_paths(dest, rels, min_age_s=0.0 if locked else STALE_AGE_UNLOCKED_S)
    if stale:
        _warn(f"removing {len(stale)} temporary file(s) left in {dest} by an interrupted fetch "
              f"(e.g. {stale[0].name})")
        remove_paths(stale)


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


def _fetch_into(dataset: str, dest: Path, mirrors: list[str], source: str | None, progress: bool,
                limits: TransferLimits) -> Path:
    old_stamp = _read_stamp(dest, dataset)
    (dest / STAMP_NAME).unlink(missing_ok=True)  # the stamp exists only while everything is verified
    sources = build_sources(dataset, mirrors, source, limits)
    ctx = VerifyContext(dataset, dest)
    folder = _image_folder_source(dataset, source)
    wanted = MINI_CSV_FILES if folder is not None else DATASET_FILES[dataset]
    old_files = old_stamp.get("files", {})
    files = {rel: _fetch_one(rel, sources, dest, ctx, progress, old_files.get(rel), limits) for rel in wanted}
    stamp = {"version": STAMP_VERSION, "dataset": dataset, "files": files}
    if folder is not None:
        image_folder = _fetch_image_folder(folder, dest, ctx)
        stamp["image_folder"] = image_folder
        stamp["images"] = image_folder["splits"]
    elif dataset == "mini_imagenet":
        stamp["images"] = _archive_image_counts(dest, ctx)
    write_json_atomic(dest / STAMP_NAME, stamp)
    return dest


def summary(dest: Path) -> str:
    """One line per file / split of a verified DEST (from its stamp), naming the check used."""
    stamp = read_json(Path(dest) / STAMP_NAME)
    lines = [f"{stamp['dataset']}: verified {dest}"]
    for rel, entry in sorted(stamp["files"].items()):
        images = f", {entry['images']:,} images" if "images" in entry else ""
        lines.append(f"  {rel}: {entry['size']:,} bytes{images}, verified by {entry['method']}")
    for split, counts in (stamp.get("images") or {}).items():
        lines.append(f"  {split}: {counts['images']:,} of {counts['listed']:,} listed images present "
                     f"({counts['classes']} classes)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS,
                        help="omniglot (downloaded from its canonical URLs when no mirror has it) or "
                             "mini_imagenet (no public download: give --source or a mirror)")
    parser.add_argument("--dest", required=True, metavar="DIR",
                        help="directory to hold the verified raw files (the pipeline uses data/raw/<dataset>)")
    parser.add_argument("--mirror", action="append", default=[], metavar="DIR_OR_URL",
                        help=f"mirror root (repeatable), tried before ${ENV_MIRROR} and the canonical URL; laid out "
                             "as <mirror>/omniglot/..., <mirror>/miniimagenet/... with an optional SHA256SUMS "
                             "(default: none)")
    parser.add_argument("--source", default=None, metavar="PATH_OR_URL",
                        help="the dataset folder itself (tried first), e.g. your own Mini-ImageNet copy "
                             "(default: none)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars: for files of several MB a plain line with bytes, rate and time "
                             "left every few seconds instead, as when stderr is not a terminal (logs)")
    limits = parser.add_argument_group("download limits (a source breaking them is abandoned for the next one)")
    limits.add_argument("--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                        help=f"deadline for each file's transfer (default: {DEADLINE_HELP})")
    limits.add_argument("--min-rate", type=_rate, default=float(DEFAULT_MIN_RATE), metavar="RATE",
                        help=f"minimum average rate in bytes/s, suffixes K, M (default: {format_rate(DEFAULT_MIN_RATE)}"
                             "); 0 = no minimum")
    limits.add_argument("--rate-window", type=_positive_seconds, default=DEFAULT_WINDOW_S, metavar="SECONDS",
                        help=f"the rate is averaged over this many seconds (default: {DEFAULT_WINDOW_S:g})")


def limits_from_args(args: argparse.Namespace) -> TransferLimits:
    return TransferLimits(timeout_s=getattr(args, "timeout", None),
                          min_rate=getattr(args, "min_rate", float(DEFAULT_MIN_RATE)),
                          window_s=getattr(args, "rate_window", DEFAULT_WINDOW_S))


def main(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    already = stamp_is_current(dest, args.dataset)
    fetch(args.dataset, dest, mirrors=args.mirror, source=args.source, progress=cli_mode(args.no_progress),
          limits=limits_from_args(args))
    print(f"{args.dataset}: already verified, nothing to do ({dest / STAMP_NAME})" if already else summary(dest))
    return 0


__all__ = [
    "ArchiveContent", "CANONICAL_URLS", "DATASETS", "DATASET_FILES", "ENV_MIRROR", "EXACT_IMAGE_COUNT",
    "IMAGE_SUFFIXES", "KNOWN_ARCHIVES", "KNOWN_SHA256", "MINI_ARCHIVES", "MINI_CSV_FILES", "MINI_FILES",
    "MIRROR_FOLDER", "OFFICIAL_SHA256", "OMNIGLOT_FILES", "OMNIGLOT_SPLITS", "RAVI_SPLITS", "STAMP_NAME",
    "STAMP_VERSION", "Source", "TransferLimits", "USER_COPY_ARCHIVES", "VerifyContext", "build_sources",
    "configure_parser", "count_listed_images", "fetch", "file_sha256", "limits_from_args", "main",
    "mirrors_from_env", "project_knows", "project_sha256", "read_ravi_csv", "stamp_is_current",
    "summary", "tree_digest", "unsafe_member_reason", "verify_file",
]

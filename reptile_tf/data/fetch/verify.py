"""Verification of fetched files against what the project knows (see known.py).

Rules for one file, checked in this order:
1. archives (`*.zip`), always: a readable zip whose member names are all safe (no absolute
   path, no `..`, no symbolic link);
2. the file's sha256 equals one the project records -> "sha256 (project)"; an Omniglot
   archive must still hold exactly the expected number of images;
3. an archive whose content the project records: image count + tree digest must match ->
   "tree digest (project)"; a Mini-ImageNet archive of other content (a user's own copy) must
   hold only images its split's Ravi CSV lists, covering every class;
4. any other file the project knows fails here, whatever a mirror's SHA256SUMS says;
5. a file the project does not know is accepted only when a mirror's SHA256SUMS lists it and
   its sha256 matches -> "sha256 (mirror SHA256SUMS)".
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from reptile_tf.data.fetch.known import (
    EXACT_IMAGE_COUNT,
    IMAGE_SUFFIXES,
    KNOWN_ARCHIVES,
    KNOWN_SHA256,
    OFFICIAL_SHA256,
    USER_COPY_ARCHIVES,
    project_knows,
    project_sha256,
)

_CHUNK = 1 << 20
# What reading a damaged zip can raise: zlib.error comes from a corrupt deflate stream.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, ValueError)


class Rejected(Exception):
    """The source's copy failed verification: try the next source, report it if none works."""


# --------------------------------------------------------------------------- digests


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------- archive structure


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


def check_members_safe(archive: zipfile.ZipFile, label: str) -> None:
    for info in archive.infolist():
        reason = unsafe_member_reason(info)
        if reason:
            raise Rejected(f"{label} is unsafe: member {info.filename!r} {reason}; refusing to use it")


@dataclass(frozen=True)
class ArchiveFacts:
    """What the cheap structural pass over an archive found (no member is decompressed)."""

    names: tuple[str, ...]  # non-directory members
    images: int


def inspect_archive(path: Path, rel: str, dataset: str, expected: str) -> ArchiveFacts:
    """Open the zip and check every member name; raise Rejected if unreadable or unsafe."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_members_safe(archive, rel)
            names = tuple(i.filename for i in archive.infolist() if not i.is_dir())
    except _ZIP_ERRORS as err:
        raise Rejected(f"{rel} is not a readable zip archive ({err}): corrupt or truncated; "
                       f"expected {expected}") from None
    images = sum(1 for n in names if n.lower().endswith(IMAGE_SUFFIXES[dataset]))
    return ArchiveFacts(names, images)


def read_ravi_csv(path: str | os.PathLike) -> dict[str, str]:
    """{file name: class label} of a Ravi split CSV (`filename,label`)."""
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise Rejected(f"{path} does not start with the header 'filename,label'")
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


def split_of(archive_rel: str) -> str:
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


# --------------------------------------------------------------------------- the rules


def expectation_text(dataset: str, rel: str, listed_sha: str | None) -> str:
    """The expected value(s) for a file, for error messages."""
    key = (dataset, rel)
    options = []
    if key in KNOWN_SHA256:
        options.append(f"sha256 {KNOWN_SHA256[key]}")
    if key in OFFICIAL_SHA256:
        options.append(f"sha256 {OFFICIAL_SHA256[key]} (official archive)")
    if key in KNOWN_ARCHIVES:
        content = KNOWN_ARCHIVES[key]
        options.append(f"{content.images:,} images with tree digest {content.tree_digest}")
    if key in USER_COPY_ARCHIVES:
        options.append(f"a sound zip of images/<filename> listed in splits/ravi/{split_of(rel)}.csv "
                       "covering every class")
    if not project_knows(dataset, rel):
        options.append(f"sha256 {listed_sha} (mirror SHA256SUMS)" if listed_sha
                       else "a sha256 listed in a mirror's SHA256SUMS")
    return " or ".join(options)


def verify_file(path: Path, rel: str, sha256: str, ctx: VerifyContext, listed_sha: str | None = None) -> dict:
    """Verify one fetched file (at `path`, destined for DEST/`rel`); see the module docstring.

    `listed_sha` is the sha256 a mirror's SHA256SUMS gives for the file; it counts only for
    files the project does not know. Returns how the file was verified; raises Rejected.
    """
    dataset, key = ctx.dataset, (ctx.dataset, rel)
    expected = expectation_text(dataset, rel, listed_sha)
    facts = inspect_archive(path, rel, dataset, expected) if rel.endswith(".zip") else None
    extra = {"images": facts.images} if facts is not None else {}

    accepted = project_sha256(dataset, rel)
    if sha256 in accepted:
        if facts is not None and key in EXACT_IMAGE_COUNT and facts.images != KNOWN_ARCHIVES[key].images:
            raise Rejected(f"{rel}: {facts.images:,} images, expected {KNOWN_ARCHIVES[key].images:,}; "
                           "the archive is incomplete or a different file")
        return {"method": accepted[sha256], **extra}

    if facts is not None and (key in KNOWN_ARCHIVES or key in USER_COPY_ARCHIVES):
        try:
            digest, count = tree_digest(path)
        except _ZIP_ERRORS as err:
            raise Rejected(f"{rel} is not a readable zip archive ({err}): corrupt or truncated; "
                           f"expected {expected}") from None
        known = KNOWN_ARCHIVES.get(key)
        if known is not None and (digest, count, facts.images) == (known.tree_digest, known.images, known.images):
            return {"method": "tree digest (project)", "tree_digest": digest, "images": count}
        if key in USER_COPY_ARCHIVES:
            return _verify_user_mini_archive(rel, facts.names, ctx, digest)
        raise Rejected(f"{rel}: {count:,} files with tree digest {digest}, expected {expected}; "
                       "the archive is corrupt, incomplete or a different file")

    if project_knows(dataset, rel):
        raise Rejected(f"{rel}: sha256 is {sha256}, expected {expected}; the file is corrupt, truncated or a "
                       "different file")
    # Only here may a mirror vouch for a file: the project has no rule of its own for it.
    if listed_sha is None:
        raise Rejected(f"{rel}: no checksum is known for it (the project records none and no mirror's "
                       "SHA256SUMS lists it); refusing an unverified file")
    if sha256 != listed_sha:
        raise Rejected(f"{rel}: sha256 is {sha256}, expected {listed_sha} (mirror SHA256SUMS); "
                       "the copy is corrupt, truncated or a different file")
    return {"method": "sha256 (mirror SHA256SUMS)", **extra}


def _verify_user_mini_archive(rel: str, names: Sequence[str], ctx: VerifyContext, digest: str) -> dict:
    """A Mini-ImageNet archive of unknown content: its images must fit the split's Ravi CSV."""
    split = split_of(rel)
    listed = ctx.ravi_rows(split)
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES["mini_imagenet"])]
    found, classes, unlisted = count_listed_images(images, listed)
    all_classes = len(set(listed.values()))
    if unlisted or not found or classes != all_classes:
        raise Rejected(
            f"{rel}: {found:,} images listed in splits/ravi/{split}.csv covering {classes} of {all_classes} "
            f"classes, {len(unlisted):,} images not listed (e.g. {unlisted[:2]}); expected "
            f"{expectation_text(ctx.dataset, rel, None)}; is it the archive of another split?")
    return {"method": "Ravi CSV membership (user copy)", "tree_digest": digest, "images": found}


__all__ = [
    "ArchiveFacts", "Rejected", "VerifyContext", "check_members_safe", "count_listed_images",
    "expectation_text", "file_sha256", "inspect_archive", "read_ravi_csv", "split_of", "tree_digest",
    "unsafe_member_reason", "verify_file",
]

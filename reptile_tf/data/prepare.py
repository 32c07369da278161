"""`reptile-tf prepare`: build the TFDS datasets `omniglot` and `mini_imagenet` from fetched files.

    reptile-tf prepare omniglot --raw data/raw/omniglot --data-dir data/tfds
    reptile-tf prepare mini_imagenet --raw data/raw/mini_imagenet --data-dir data/tfds

Idempotent: when the dataset is already built in `--data-dir`, nothing is done.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from reptile_tf import datasets as registry
from reptile_tf.data import mini_imagenet, omniglot
from reptile_tf.errors import UserError
from reptile_tf.progress import Progress, cli_mode, format_duration, resolve_mode

log = logging.getLogger(__name__)

DATASETS = registry.FETCHED
DEFAULT_DATA_DIR = registry.DEFAULT_DATA_DIR


def default_raw_dir(dataset: str) -> Path:
    return registry.DEFAULT_RAW_DIR / dataset


def prepare_command(dataset: str, data_dir: str | os.PathLike) -> str:
    """The command a user should run to build `dataset` into `data_dir` (for error messages)."""
    return f"reptile-tf prepare {dataset} --raw {default_raw_dir(dataset)} --data-dir {data_dir}"


def builder_class(dataset: str):
    """The TFDS builder class of `dataset` (imports TensorFlow Datasets)."""
    registry.get(dataset, among=DATASETS)
    if dataset == "omniglot":
        return omniglot.Omniglot
    return mini_imagenet.MiniImagenet


def get_builder(dataset: str, data_dir: str | os.PathLike):
    """A builder instance for `dataset` in the TFDS `data_dir` (built or not)."""
    return builder_class(dataset)(data_dir=os.fspath(Path(data_dir).resolve()))


def is_prepared(builder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


def missing_raw_files(dataset: str, raw_dir: Path) -> list[str]:
    """Raw files the builder needs that are absent from `raw_dir` (empty = all present)."""
    if dataset == "omniglot":
        return [str(p) for p in omniglot.raw_files(raw_dir) if not p.is_file()]
    missing = [str(mini_imagenet.csv_path(raw_dir, s)) for s in mini_imagenet.SPLITS
               if not mini_imagenet.csv_path(raw_dir, s).is_file()]
    has_images = (raw_dir / "images").is_dir() or any((raw_dir / a).is_file() for a in mini_imagenet.ARCHIVES)
    if not has_images:
        missing.append(f"{raw_dir}/images-{{train,val,test}}.zip or {raw_dir}/images/")
    return missing


def prepare(dataset: str, raw_dir: str | os.PathLike, data_dir: str | os.PathLike,
            resize_filter: str | None = None, progress: bool | str = True, inverted: bool | None = None) -> None:
    """Build the TFDS dataset `dataset` from the fetched files in `raw_dir` into `data_dir`.

    `resize_filter` (Omniglot only): "lanczos" (default) or "nearest" (the official code's
    preprocessing); `inverted` (Omniglot only): strokes bright on 0, Finn's MAML code's polarity.
    Build a non-default variant into its own `data_dir`; None = whatever `data_dir` holds.
    `progress`: True = TFDS's bars on a terminal, plain lines otherwise; False = neither; or a
    `reptile_tf.progress` mode.

    A second call with the dataset already built does nothing. TFDS writes into a
    temporary directory and renames it at the end, so an interrupted build leaves no
    half-built dataset behind.
    """
    registry.get(dataset, among=DATASETS)
    raw_dir = Path(raw_dir)
    builder = get_builder(dataset, data_dir)
    if resize_filter is not None and resize_filter not in omniglot.RESIZE_FILTERS:
        raise UserError(f"unknown resize filter {resize_filter!r}; choose one of {', '.join(omniglot.RESIZE_FILTERS)}")
    requests = {"resize_filter": resize_filter, "inverted": inverted}
    wording = {"resize_filter": lambda value: f"resize filter {value!r}",
               "inverted": lambda value: ("inverted images (--invert)" if value
                                          else "the archives' polarity (no --invert)")}
    for key, (default, option) in omniglot.RECIPE_OPTIONS.items():
        requested, describe, option = requests[key], wording[key], option.split()[0]
        if requested is None:
            continue
        if dataset != "omniglot":
            raise UserError(f"{option} applies to omniglot only")
        recorded = (builder.info.metadata or {}).get(key, default) if is_prepared(builder) else requested
        if recorded != requested:
            raise UserError(f"omniglot in {data_dir} was prepared with {describe(recorded)}, not "
                            f"{describe(requested)}; use another --data-dir")
        setattr(builder, key, requested)
    if is_prepared(builder):
        log.info("%s already prepared in %s; nothing to do", dataset, builder.data_dir)
        return
    missing = missing_raw_files(dataset, raw_dir)
    if missing:
        raise UserError(
            f"raw {dataset} files missing: {', '.join(missing)}; "
            f"run `reptile-tf fetch {dataset} --dest {raw_dir}` first (or pass --raw DIR)")

    import tensorflow_datasets as tfds

    incomplete = Path(builder.data_dir)
    if incomplete.exists():
        # A version dir without dataset_info.json (e.g. a workflow tool deleted that file as a
        # stale output): TFDS would "reuse" it and build nothing, so remove it and rebuild.
        log.warning("removing the incomplete %s dataset in %s and building it again", dataset, incomplete)
        shutil.rmtree(incomplete)
    started = time.monotonic()
    log.info("prepare %s: building the TFDS dataset from %s into %s", dataset, raw_dir, builder.data_dir)
    # Downloads are not used (manual dir), but TFDS wants a download dir: keep it out of data_dir.
    with tempfile.TemporaryDirectory(prefix="reptile-tf-prepare-") as download_dir, \
            tfds_progress(resolve_mode(progress), f"prepare {dataset}"):
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(raw_dir.resolve()),
            compute_stats=tfds.download.ComputeStatsMode.SKIP,  # saves a full pass over the data
        )
        builder.download_and_prepare(download_dir=download_dir, download_config=config)
    log.info("%s prepared in %s (%s)", dataset, builder.data_dir, format_duration(time.monotonic() - started))


class _TfdsLines:
    """Stands in for the tqdm bar TFDS puts around its loops (generating, shuffling a split):
    plain progress lines instead of a bar (`reptile_tf.progress`, "lines" mode)."""

    def __init__(self, prefix: str, iterable: Any = None, desc: str = "", total: int | None = None,
                 unit: str = "it", **_: Any) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self._iterable = iterable
        label = str(desc).strip().rstrip(".") or "working"
        if label.startswith("Shuffling "):  # "Shuffling <dir>/<name>.tfrecord-<shard pattern>"
            label = "Shuffling " + os.path.basename(label[len("Shuffling "):]).split(".tfrecord")[0]
        self._progress = Progress(total, f"{prefix}: {label}", mode="lines", unit=str(unit).strip() or "it",
                                  every_fraction=0.1, max_interval_s=30.0, min_interval_s=2.0)

    def __iter__(self) -> Iterator:
        return self._progress.iterate(self._iterable if self._iterable is not None else ())

    def __enter__(self) -> "_TfdsLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.close()

    def update(self, n: int = 1) -> None:
        self._progress.update(n)

    def close(self) -> None:
        self._progress.close()

    def __getattr__(self, name: str) -> Callable[..., None]:  # set_description, refresh, ...: ignored
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tfds_progress(mode: str, prefix: str) -> Iterator[None]:
    """TFDS's progress display while building: its own bars ("bar"), none ("off"), or plain lines
    ("lines": no terminal escape codes in logs).

    "lines" replaces `tensorflow_datasets.core.utils.tqdm`, the function TFDS's builders call for
    their loops, for the duration; a TFDS without it gets no bars and no lines (only the start and
    end lines `prepare` logs itself).
    """
    if mode == "bar":
        yield
        return
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import utils as tfds_utils
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    original = getattr(tfds_utils, "tqdm", None)
    tfds.display_progress_bar(False)
    if mode == "lines" and original is not None:
        tfds_utils.tqdm = functools.partial(_TfdsLines, prefix)
    try:
        yield
    finally:
        if mode == "lines" and original is not None:
            tfds_utils.tqdm = original
        tfds.display_progress_bar(was_active)


def found_counts(dataset: str, data_dir: str | os.PathLike) -> dict:
    """The image counts recorded by the builder (from the dataset metadata)."""
    builder = get_builder(dataset, data_dir)
    metadata = builder.info.metadata or {}
    return {key: metadata[key] for key in ("images_listed", "images_found") if key in metadata}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS,
                        help="omniglot (1,623 characters, resized to 28x28) or mini_imagenet (Ravi split, 84x84)")
    parser.add_argument("--raw", type=Path, default=None, metavar="DIR",
                        help="the verified raw directory of `reptile-tf fetch` (default: data/raw/<dataset>)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                        help="TFDS data directory to build into (default: data/tfds)")
    parser.add_argument("--resize-filter", choices=("lanczos", "nearest"), default=None,
                        help="omniglot only: 28x28 resize filter (default lanczos; nearest = official code, "
                             "binary images; give it its own --data-dir)")
    parser.add_argument("--invert", action="store_true",
                        help="omniglot only: strokes bright on a 0 background, as Finn's MAML code feeds them "
                             "(1 - x/255); give it its own --data-dir")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars: plain progress lines instead, as when stderr is not a terminal "
                             "(logs)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw_dir = args.raw if args.raw is not None else default_raw_dir(args.dataset)
    prepare(args.dataset, raw_dir, args.data_dir, getattr(args, "resize_filter", None),
            progress=cli_mode(getattr(args, "no_progress", False)),
            inverted=True if getattr(args, "invert", False) else None)
    counts = found_counts(args.dataset, args.data_dir)
    if counts:
        print(json.dumps({args.dataset: summarize_counts(counts)}, indent=2))
    return 0


def summarize_counts(counts: dict) -> dict:
    """Per split: classes, images listed/found, and the per-class minimum/maximum found."""
    found = counts.get("images_found", {})
    listed = counts.get("images_listed", {})
    summary = {}
    for split, per_class in found.items():
        if not isinstance(per_class, dict):
            summary[split] = per_class
            continue
        summary[split] = {
            "classes": len(per_class),
            "images_found": sum(per_class.values()),
            "images_listed": sum(listed.get(split, {}).values()),
            "min_per_class": min(per_class.values()),
            "max_per_class": max(per_class.values()),
        }
    return summary

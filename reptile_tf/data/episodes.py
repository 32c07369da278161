"""In-memory splits, in-graph N-way K-shot task sampling, and fixed evaluation episode sets.

- `load_split(dataset, split, data_dir, protocol=None)`: a whole split as one uint8 tensor
  `[num_classes, images_per_class, H, W, C]`. Decoding the TFDS records is done once per
  prepared dataset and cached as `.npy` files under `<data_dir>/reptile_tf_cache/<name>/
  <version>-<digest of dataset_info.json>/`; protocol splits (Reptile, Vinyals) are then
  assembled from the cached arrays in well under a second (rotations with numpy).
- `sample_tasks(images, num_tasks, ways, shots, queries, seed)`: pure TF ops with a
  stateless RNG, so it runs inside `tf.function` with no per-image Python work.
- `make_eval_episodes(...)` / `EvalEpisodes`: fixed index sets drawn with numpy, a
  deterministic function of their arguments, so every algorithm is scored on the very
  same tasks; `.save` / `.load` (`.npz`), `.gather(images, start, stop)` (vectorised).

Within a task the support and query images come in a random order (not grouped by class),
so consecutive inner-loop minibatches mix classes; labels are 0..ways-1, assigned to the
task's classes in a random order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reptile_tf import datasets as registry
from reptile_tf.data import prepare as prep
from reptile_tf.data.omniglot import RECIPE_OPTIONS
from reptile_tf.errors import UserError
from reptile_tf.io import atomic_path, read_json, write_json_atomic

log = logging.getLogger(__name__)

# The split protocols of the datasets with files (reptile_tf.datasets).
DEFAULT_PROTOCOL = {name: registry.DATASETS[name].default_protocol for name in registry.FETCHED}
SPLITS = {(name, protocol): splits for name in registry.FETCHED
          for protocol, splits in registry.DATASETS[name].protocols.items()}
CACHE_DIRNAME = "reptile_tf_cache"
# Reptile protocol (official supervised-reptile code, docs/reference.md): sorted characters,
# random.Random(0).shuffle, first 1,200 train x 4 rotations, the other 423 test.
REPTILE_SEED = 0
REPTILE_TRAIN_CHARACTERS = 1200
REPTILE_ROTATIONS = (0, 90, 180, 270)


# --------------------------------------------------------------------------- splits

def resolve_protocol(dataset: str, split: str, protocol: str | None = None) -> str:
    """The protocol to use for (dataset, split); UserError for any unknown combination."""
    if dataset not in DEFAULT_PROTOCOL:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DEFAULT_PROTOCOL)}")
    protocol = protocol or DEFAULT_PROTOCOL[dataset]
    known = sorted(p for d, p in SPLITS if d == dataset)
    if (dataset, protocol) not in SPLITS:
        raise UserError(f"unknown protocol {protocol!r} for {dataset}; choose one of {', '.join(known)}")
    splits = SPLITS[(dataset, protocol)]
    if split not in splits:
        hint = " (the Reptile protocol has no validation split: use test, or protocol 'vinyals')" \
            if (dataset, protocol, split) == ("omniglot", "reptile", "val") else ""
        raise UserError(f"unknown split {split!r} for {dataset} protocol {protocol!r}{hint}; "
                        f"choose one of {', '.join(splits)}")
    return protocol


def reptile_characters(num_characters: int) -> tuple[list[int], list[int]]:
    """(train, test) character indices of the Reptile protocol, in the official order.

    `random.shuffle`'s permutation depends only on the list length and the RNG state, so
    shuffling indices reproduces the official code's shuffle of the character list.
    """
    order = list(range(num_characters))
    random.Random(REPTILE_SEED).shuffle(order)
    return order[:REPTILE_TRAIN_CHARACTERS], order[REPTILE_TRAIN_CHARACTERS:]


def reptile_classes(num_characters: int, split: str) -> list[tuple[int, int]]:
    """(character index, rotation in degrees) of every class of a Reptile-protocol split."""
    train, test = reptile_characters(num_characters)
    if split == "train":
        return [(c, r) for c in train for r in REPTILE_ROTATIONS]
    return [(c, 0) for c in test]


def vinyals_classes(lines: list[str], characters: list[str]) -> list[tuple[int, int]]:
    """Parse `Alphabet/characterNN/rotDDD` lines into (character index, rotation)."""
    index = {name: i for i, name in enumerate(characters)}
    classes = []
    for line in lines:
        name, _, rot = line.rpartition("/")
        if name not in index or not rot.startswith("rot") or int(rot[3:]) % 90:
            raise UserError(f"bad Vinyals split line {line!r}: unknown character or rotation; "
                            "re-fetch the Omniglot split files and re-run `reptile-tf prepare omniglot`")
        classes.append((index[name], int(rot[3:])))
    return classes


def rotated_classes(base: np.ndarray, classes: list[tuple[int, int]]) -> np.ndarray:
    """Stack base[character] rotated counter-clockwise (as PIL's rotate) for each class."""
    out = np.empty((len(classes),) + base.shape[1:], dtype=base.dtype)
    for i, (char, degrees) in enumerate(classes):
        out[i] = np.rot90(base[char], k=degrees // 90, axes=(1, 2))
    return out


# --------------------------------------------------------------------------- loading

def _builder(dataset: str, data_dir: str | os.PathLike):
    builder = prep.get_builder(dataset, data_dir)
    if not prep.is_prepared(builder):
        raise UserError(f"{dataset} is not prepared in {data_dir}; run `{prep.prepare_command(dataset, data_dir)}`")
    return builder


def _cache_dir(builder) -> Path:
    data_path = Path(builder.data_dir)  # <root>/<name>/<version>
    digest = hashlib.sha256((data_path / "dataset_info.json").read_bytes()).hexdigest()[:12]
    return data_path.parents[1] / CACHE_DIRNAME / builder.name / f"{builder.version}-{digest}"


def _read_records(builder, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All examples of a TFDS split as numpy arrays (images decoded by tf.data)."""
    import tensorflow as tf

    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
    parts: dict[str, list] = {k: [] for k in keys}
    for batch in ds.batch(1024).prefetch(2).as_numpy_iterator():
        for k in keys:
            parts[k].append(batch[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def group_by_class(images: np.ndarray, class_ids: np.ndarray, sort_keys: np.ndarray,
                   num_classes: int) -> tuple[np.ndarray, list[int]]:
    """[num_classes, min count, ...] from flat images, each class ordered by `sort_keys`.

    Returns the array and the per-class counts found (the caller warns if unequal).
    """
    order = np.lexsort((sort_keys, class_ids))
    class_ids = class_ids[order]
    counts = np.bincount(class_ids, minlength=num_classes)
    if counts.min() == 0:
        raise UserError(f"a class has no images (counts {counts.tolist()[:10]}...); the prepared dataset "
                        "is incomplete: delete it and re-run `reptile-tf prepare`")
    per_class = int(counts.min())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = (starts[:, None] + np.arange(per_class)[None, :]).reshape(-1)
    grouped = images[order][take].reshape((num_classes, per_class) + images.shape[1:])
    return grouped, counts.tolist()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy" to a name
            np.save(fh, array)


def _cached_base(builder, key: str, build) -> np.ndarray:
    """The array `key` of this prepared dataset, from the cache or built (and cached) by `build()`.

    `build() -> (array, counts)`; the counts are kept beside the array so that unequal
    class sizes are reported on every load, not only the first.
    """
    cache = _cache_dir(builder)
    array_path, counts_path = cache / f"{key}.npy", cache / f"{key}.counts.json"
    if array_path.is_file() and counts_path.is_file():
        array, counts = np.load(array_path), read_json(counts_path)
    else:
        log.info("decoding %s %s once; caching it in %s", builder.name, key, cache)
        array, counts = build()
        try:
            _save_npy_atomic(array_path, array)
            write_json_atomic(counts_path, counts)
        except OSError as err:  # a read-only data dir still works, only slower
            warnings.warn(f"could not write the decoded-images cache {array_path}: {err}", stacklevel=3)
    if min(counts) != max(counts):
        warnings.warn(
            f"{builder.name} {key}: classes hold different numbers of images ({min(counts)} to {max(counts)}); "
            f"using the first {min(counts)} of each class", stacklevel=3)
    return array


def omniglot_base(data_dir: str | os.PathLike) -> tuple[np.ndarray, list[str], dict]:
    """(images [1623, 20, 28, 28, 1] in sorted character order, character names, Vinyals lines)."""
    builder = _builder("omniglot", data_dir)
    characters = list(builder.info.metadata["characters"])

    def build():
        parts = [_read_records(builder, s, ("image", "character_id", "drawing")) for s in ("background", "evaluation")]
        records = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return group_by_class(records["image"], records["character_id"].astype(np.int64),
                              records["drawing"], len(characters))

    images = _cached_base(builder, "all", build)
    return images, characters, dict(builder.info.metadata.get("vinyals", {}))


def omniglot_recipe(data_dir: str | os.PathLike) -> dict[str, Any]:
    """How the Omniglot in `data_dir` was prepared (`reptile-tf prepare --resize-filter/--invert`), as a
    run's config.json records it under "data": only what differs from the default, so that the configs
    of runs on default images stay as they were."""
    metadata = _builder("omniglot", data_dir).info.metadata or {}
    return {f"omniglot_{key}": metadata[key] for key, (default, _) in RECIPE_OPTIONS.items()
            if metadata.get(key, default) != default}


def omniglot_prepare_flags(recipe: dict[str, Any]) -> str:
    """The `reptile-tf prepare omniglot` options that build the images an `omniglot_recipe` describes."""
    return " ".join(RECIPE_OPTIONS[key.removeprefix("omniglot_")][1].format(value) for key, value in recipe.items())


def mini_imagenet_base(split: str, data_dir: str | os.PathLike) -> np.ndarray:
    """Images [classes, images per class, 84, 84, 3] of a Ravi split, classes in CSV order."""
    builder = _builder("mini_imagenet", data_dir)

    def build():
        records = _read_records(builder, split, ("image", "class_index", "filename"))
        num_classes = int(records["class_index"].max()) + 1
        return group_by_class(records["image"], records["class_index"].astype(np.int64),
                              records["filename"], num_classes)

    return _cached_base(builder, split, build)


def load_split_array(dataset: str, split: str, data_dir: str | os.PathLike,
                     protocol: str | None = None) -> np.ndarray:
    """`load_split` as a numpy array (no TensorFlow tensor copy)."""
    protocol = resolve_protocol(dataset, split, protocol)
    if dataset == "mini_imagenet":
        return mini_imagenet_base(split, data_dir)
    base, characters, vinyals = omniglot_base(data_dir)
    if protocol == "reptile":
        return rotated_classes(base, reptile_classes(len(characters), split))
    if split not in vinyals:
        raise UserError(
            f"the prepared Omniglot in {data_dir} has no Vinyals {split!r} split (splits/vinyals/{split}.txt "
            "was missing from the raw dir when it was prepared); re-run `reptile-tf fetch omniglot`, delete "
            f"{Path(data_dir) / 'omniglot'} and run `reptile-tf prepare omniglot`")
    return rotated_classes(base, vinyals_classes(vinyals[split], characters))


def load_split(dataset: str, split: str, data_dir: str | os.PathLike, protocol: str | None = None):
    """A whole split in memory: uint8 tf.Tensor [num_classes, images_per_class, H, W, C].

    Omniglot: protocol "reptile" (default; train 4,800 = 1,200 characters x 4 rotations,
    test 423) or "vinyals" (train/val/test/trainval). Mini-ImageNet: "ravi" train/val/test
    (with the images present in the raw data; unequal class sizes -> minimum, with a warning).
    """
    import tensorflow as tf

    return tf.convert_to_tensor(load_split_array(dataset, split, data_dir, protocol))


# --------------------------------------------------------------------------- sampling

def check_request(num_classes: int | None, images_per_class: int | None,
                  ways: int, shots: int, queries: int) -> None:
    """UserError for a task request the split cannot satisfy (None = unknown dimension)."""
    if ways < 1 or shots < 1 or queries < 0:
        raise UserError(f"bad task size ways={ways}, shots={shots}, queries={queries}: "
                        "need ways >= 1, shots >= 1, queries >= 0")
    if num_classes is not None and ways > num_classes:
        raise UserError(f"{ways}-way tasks need {ways} classes but the split has only {num_classes}; "
                        "lower --ways or use a larger split")
    if images_per_class is not None and shots + queries > images_per_class:
        raise UserError(f"{shots} shots + {queries} queries = {shots + queries} images per class, but the split "
                        f"has only {images_per_class} images per class; lower shots or queries")


def _as_seed(seed: Any):
    import tensorflow as tf

    if isinstance(seed, (int, np.integer)):
        return tf.constant([0, int(seed)], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    return seed


def _random_order(shape, seed):
    """Indices of a uniformly random permutation along the last axis, for each leading index."""
    import tensorflow as tf

    # Full-range int32 keys: ties (broken towards low indices, a bias) are ~500x rarer than
    # with float32 uniform keys, which hold only 23 random bits.
    keys = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None, dtype=tf.int32)
    return tf.argsort(keys, axis=-1, stable=True)


def gather_images(images, classes, picks):
    """float32 [..., H, W, C] in [0, 1] of images[classes, picks] (index tensors of equal shape)."""
    import tensorflow as tf

    x = tf.gather_nd(images, tf.stack([classes, picks], axis=-1))
    # A multiplication (not a division, which graph mode rewrites into one) keeps eager and
    # tf.function results bit-identical; float32(1/255) * 255 rounds to exactly 1.0.
    return tf.cast(x, tf.float32) * (1.0 / 255.0)


def sample_tasks(images, num_tasks: int, ways: int, shots: int, queries: int, seed) -> dict:
    """`num_tasks` random N-way tasks from uint8 `images` [classes, per class, H, W, C].

    In-graph (tf ops only; works inside tf.function). `seed`: int tensor [2] for the
    stateless RNG (a Python int is accepted too). Classes of a task are distinct, support
    and query images disjoint. Returns the Episodes dict of docs/interfaces.md.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    check_request(images.shape[0], images.shape[1], ways, shots, queries)
    class_seed, image_seed, support_seed, query_seed = tf.unstack(
        tf.random.experimental.stateless_split(_as_seed(seed), num=4))
    num_classes, per_class = tf.shape(images)[0], tf.shape(images)[1]
    if images.shape[0] is None or images.shape[1] is None:  # checked at run time instead
        with tf.control_dependencies([
            tf.debugging.assert_greater_equal(num_classes, ways, message=f"{ways}-way tasks need more classes"),
            tf.debugging.assert_greater_equal(per_class, shots + queries,
                                              message=f"{shots} shots + {queries} queries need more images per class"),
        ]):
            num_classes, per_class = tf.identity(num_classes), tf.identity(per_class)
    classes = _random_order([num_tasks, num_classes], class_seed)[:, :ways]  # [T, W], random order
    picks = _random_order([num_tasks, ways, per_class], image_seed)[:, :, :shots + queries]  # distinct
    classes = tf.broadcast_to(classes[:, :, None], tf.shape(picks))
    labels = tf.broadcast_to(tf.range(ways, dtype=tf.int32)[None, :, None], tf.shape(picks))

    def part(lo: int, hi: int, order_seed) -> tuple:
        size = ways * (hi - lo)
        flat = [tf.reshape(t[:, :, lo:hi], [num_tasks, size]) for t in (classes, picks, labels)]
        order = _random_order([num_tasks, size], order_seed)  # mix classes within the task
        cls, pick, label = (tf.gather(t, order, batch_dims=1) for t in flat)
        return gather_images(images, cls, pick), label

    support_x, support_y = part(0, shots, support_seed)
    query_x, query_y = part(shots, shots + queries, query_seed)
    return {"support_x": support_x, "support_y": support_y, "query_x": query_x, "query_y": query_y}


# --------------------------------------------------------------------------- fixed evaluation sets

_EVAL_ARRAYS = ("support_class", "support_image", "support_y", "query_class", "query_image", "query_y")
_CHUNK = 1024  # tasks drawn per numpy call: bounds memory for large splits


@dataclass(frozen=True)
class EvalEpisodes:
    """Fixed evaluation tasks as index arrays into a split `[num_classes, images_per_class, ...]`.

    `support_class` / `support_image` / `support_y`: int32 [count, ways*shots] (class index,
    image index within the class, label); likewise `query_*` [count, ways*queries].
    """

    num_classes: int
    images_per_class: int
    ways: int
    shots: int
    queries: int
    seed: int
    name: str
    support_class: np.ndarray
    support_image: np.ndarray
    support_y: np.ndarray
    query_class: np.ndarray
    query_image: np.ndarray
    query_y: np.ndarray

    def __len__(self) -> int:
        return int(self.support_class.shape[0])

    def meta(self) -> dict:
        return {k: getattr(self, k) for k in
                ("num_classes", "images_per_class", "ways", "shots", "queries", "seed", "name")}

    def save(self, path: str | os.PathLike) -> None:
        """Write an `.npz` (atomically)."""
        arrays = {k: getattr(self, k) for k in _EVAL_ARRAYS}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file handle: np.savez would append ".npz"
                np.savez(fh, meta=np.array(json.dumps(self.meta())), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvalEpisodes":
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in _EVAL_ARRAYS}
        except (OSError, KeyError, ValueError) as err:
            raise UserError(f"cannot read evaluation episodes from {path} ({err}); delete it to regenerate") from err
        return cls(**meta, **arrays)

    def class_rotations(self) -> np.ndarray:
        """int32 [count, ways]: quarter turns (0-3) for each class of each task, for `gather(rotations=...)`.

        Finn's MAML code tests Omniglot on characters each rotated by a random multiple of 90
        degrees per task (`data_generator.py`); the Reptile code does not rotate test classes.
        Drawn from the fifth child of the tasks' seed sequence (the tasks use the first four),
        row by row, so the first n tasks' rotations do not depend on the count either.
        """
        child = _eval_seed_sequence(self.num_classes, self.images_per_class, self.ways, self.shots,
                                    self.queries, self.seed, self.name).spawn(5)[4]
        return np.random.default_rng(child).integers(0, 4, size=(len(self), self.ways)).astype(np.int32)

    def gather(self, images, start: int = 0, stop: int | None = None, rotations: np.ndarray | None = None) -> dict:
        """The Episodes dict of tasks [start, stop) from `images` (one vectorised gather each).

        `rotations`: `class_rotations()` (drawn once by the caller, sliced here): each class of a
        task turned counter-clockwise by its quarter turns, support and query alike (square images only)."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        shape = tuple(images.shape[:2])
        if shape != (self.num_classes, self.images_per_class):
            raise UserError(
                f"these evaluation episodes index a split of {self.num_classes} classes x {self.images_per_class} "
                f"images, but the images given are {shape[0]} x {shape[1]}; regenerate the episodes for this split")
        sl = slice(start, stop)
        tasks = {
            "support_x": gather_images(images, self.support_class[sl], self.support_image[sl]),
            "support_y": tf.constant(self.support_y[sl]),
            "query_x": gather_images(images, self.query_class[sl], self.query_image[sl]),
            "query_y": tf.constant(self.query_y[sl]),
        }
        if rotations is not None:
            if images.shape[2] != images.shape[3]:
                raise UserError(f"rotating classes needs square images; {self.name} images are "
                                f"{images.shape[2]} x {images.shape[3]}")
            turns = tf.constant(rotations[sl])
            for part in ("support", "query"):
                tasks[f"{part}_x"] = rotate_by_label(tasks[f"{part}_x"], tasks[f"{part}_y"], turns)
        return tasks


def rotate_by_label(x, y, turns):
    """x [T, n, H, W, C] with image i of task t turned counter-clockwise by turns[t, y[t, i]]
    quarter turns (as `np.rot90(image, k, axes=(0, 1))`)."""
    import tensorflow as tf

    quarter = [x]
    for _ in range(3):  # one more quarter turn: flip the columns, then swap rows and columns
        quarter.append(tf.transpose(tf.reverse(quarter[-1], axis=[3]), [0, 1, 3, 2, 4]))
    per_image = tf.gather(turns, y, batch_dims=1)  # [T, n]
    return tf.gather(tf.stack(quarter, axis=2), per_image, batch_dims=2)


def _eval_seed_sequence(num_classes, images_per_class, ways, shots, queries, seed, name) -> np.random.SeedSequence:
    name_key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.SeedSequence([int(seed), num_classes, images_per_class, ways, shots, queries, name_key])


def _random_orders(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """[count, *shape] random permutations along the last axis, drawn in chunks of tasks.

    Chunks consume the stream task by task, exactly as one big draw would, so the first
    n tasks do not depend on `count`.
    """
    chunks = [np.argsort(rng.random((min(_CHUNK, count - lo),) + shape), axis=-1, kind="stable")
              for lo in range(0, count, _CHUNK)]
    return np.concatenate(chunks).astype(np.int32) if chunks else np.zeros((0,) + shape, np.int32)


def make_eval_episodes(num_classes: int, images_per_class: int, ways: int, shots: int, queries: int,
                       seed: int, count: int, name: str = "") -> EvalEpisodes:
    """`count` fixed tasks: a deterministic function of the arguments (numpy Generator).

    `name` (e.g. "omniglot/test") keeps different splits of the same shape apart. The
    first n tasks are the same for every count >= n (each random stream is drawn row by row).
    """
    check_request(num_classes, images_per_class, ways, shots, queries)
    if count < 0:
        raise UserError(f"count must be >= 0, got {count}")
    class_ss, image_ss, support_ss, query_ss = _eval_seed_sequence(
        num_classes, images_per_class, ways, shots, queries, seed, name).spawn(4)
    classes = _random_orders(np.random.default_rng(class_ss), count, (num_classes,))[:, :ways]
    picks = _random_orders(np.random.default_rng(image_ss), count, (ways, images_per_class))[:, :, :shots + queries]
    cls = np.broadcast_to(classes[:, :, None], picks.shape)
    labels = np.broadcast_to(np.arange(ways, dtype=np.int32)[None, :, None], picks.shape)

    def part(lo: int, hi: int, ss) -> tuple:
        flat = [t[:, :, lo:hi].reshape(count, ways * (hi - lo)) for t in (cls, picks, labels)]
        order = _random_orders(np.random.default_rng(ss), count, (ways * (hi - lo),))
        return tuple(np.take_along_axis(t, order, axis=1).astype(np.int32) for t in flat)

    support = part(0, shots, support_ss)
    query = part(shots, shots + queries, query_ss)
    return EvalEpisodes(num_classes, images_per_class, ways, shots, queries, int(seed), name,
                        *support, *query)

"""The tasks of a run: training and validation samplers for `train`, the fixed evaluation
episodes for `evaluate`, and the checks that a split can hold them.

Training tasks are sampled in-graph (usable inside the training step's tf.function) from the
stateless seed the step passes; validation and evaluation tasks come from the fixed seeds of
`reptile_tf.seeds`, so every run is validated and evaluated on the same tasks.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from reptile_tf.data import episodes
from reptile_tf.datasets import DEFAULT_DATA_DIR
from reptile_tf.errors import UserError
from reptile_tf.seeds import EVAL_KEY, EVAL_SEED, VALIDATION_SEED
from reptile_tf.settings import Settings
from reptile_tf.sine import sample_sine_tasks

# (start, stop) -> Episodes of tasks start, ..., stop-1
ChunkGetter = Callable[[int, int], dict]


@dataclasses.dataclass
class TaskSource:
    """Everything `train` needs from the data: a sampler usable inside tf.function."""

    sample: Callable[[int, Any], dict]  # (num_tasks, seed int32[2]) -> Episodes, training tasks
    validation: Callable[[int], dict]  # (num_tasks) -> fixed validation Episodes (eager)
    info: dict[str, Any]  # goes into config.json["data"]


def array_digest(array: np.ndarray | tf.Tensor) -> str:
    """sha256 of an array's shape, dtype and bytes: identifies a split's content."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def load_images(dataset: str, split: str, data_dir: Path, protocol: str | None) -> tf.Tensor:
    try:
        return episodes.load_split(dataset, split, data_dir, protocol=protocol)
    except UserError:
        raise
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UserError(f"cannot load the {dataset} {split} split from {data_dir} ({err}); run "
                        f"`reptile-tf fetch {dataset}` and `reptile-tf prepare {dataset}` or pass --data-dir") from None


def check_task_shape(settings: Settings, num_classes: int, images_per_class: int, split: str,
                     shots: int, queries: int) -> None:
    """UserError unless tasks of `ways` classes with shots+queries images each fit the split."""
    if settings.ways > num_classes:
        raise UserError(f"{settings.ways}-way tasks need {settings.ways} classes but the {settings.dataset} "
                        f"{split} split has {num_classes}; use --ways <= {num_classes}")
    if shots + queries > images_per_class:
        raise UserError(f"tasks need {shots} shots + {queries} queries = {shots + queries} images per class, "
                        f"but the {settings.dataset} {split} split has {images_per_class}; "
                        "lower --shots/--train-shots/--queries/--eval-queries")


def validation_source(settings: Settings, protocol: str) -> str:
    """Which data the periodic validation tasks come from (recorded in config.json)."""
    if settings.synthetic:
        return "sine tasks from a fixed validation seed"
    if settings.dataset == "omniglot" and protocol == "reptile":
        # The Reptile protocol has no val split; the test split stays untouched until evaluate.
        return "train split tasks from a fixed validation seed (disjoint from training seeds)"
    return "val split"


def make_task_source(settings: Settings, data_dir: Path | None, protocol: str,
                     train_images: np.ndarray | tf.Tensor | None = None) -> TaskSource:
    """Load the training split (or use `train_images`) and build samplers for training and validation."""
    val_seed = tf.constant(VALIDATION_SEED, tf.int32)
    if settings.synthetic:
        probe = sample_sine_tasks(2, 5, 5, tf.constant([0, 0], tf.int32))
        digest = hashlib.sha256(b"".join(
            tf.convert_to_tensor(probe[k]).numpy().tobytes() for k in sorted(probe))).hexdigest()
        return TaskSource(
            sample=lambda n, seed: sample_sine_tasks(n, *settings.training_task_shape, seed),
            validation=lambda n: sample_sine_tasks(n, settings.shots, settings.eval_queries, val_seed),
            info={"train_split": "synthetic", "digest": digest,
                  "validation": validation_source(settings, protocol)},
        )

    split_protocol = protocol if settings.dataset == "omniglot" else None
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    images = train_images if train_images is not None else load_images(settings.dataset, "train", data_dir, split_protocol)
    images = tf.convert_to_tensor(images)
    num_classes, per_class = int(images.shape[0]), int(images.shape[1])
    train_support, train_queries = settings.training_task_shape
    check_task_shape(settings, num_classes, per_class, "train", train_support, train_queries)
    info = {"train_split": "train", "train_shape": list(images.shape), "digest": array_digest(images.numpy()),
            "validation": validation_source(settings, protocol)}
    if settings.dataset == "omniglot" and train_images is None:
        info.update(episodes.omniglot_recipe(data_dir))
    if settings.dataset == "omniglot" and protocol == "reptile":
        val_images = images
    else:
        val_images = tf.convert_to_tensor(load_images(settings.dataset, "val", data_dir, split_protocol))
        info["val_digest"] = array_digest(val_images.numpy())
    check_task_shape(settings, int(val_images.shape[0]), int(val_images.shape[1]), "validation",
                     settings.shots, settings.eval_queries)
    return TaskSource(
        sample=lambda n, seed: episodes.sample_tasks(images, n, settings.ways, train_support, train_queries, seed),
        validation=lambda n: episodes.sample_tasks(val_images, n, settings.ways, settings.shots,
                                                   settings.eval_queries, val_seed),
        info=info,
    )


def check_omniglot_recipe(run_data: dict[str, Any], data_dir: Path) -> None:
    """Refuse to score a run on Omniglot prepared otherwise than the images it trained on (its
    config.json "data"): a model trained on inverted or NEAREST images scores lower on the others."""
    trained = {key: value for key, value in run_data.items() if key.startswith("omniglot_")}
    found = episodes.omniglot_recipe(data_dir)
    if trained != found:
        flags = episodes.omniglot_prepare_flags
        prepare = " ".join(filter(None, ("reptile-tf prepare omniglot", flags(trained), "--data-dir NEW_DIR")))
        raise UserError(
            f"this run trained on Omniglot prepared with {flags(trained) or 'the default options'}, but "
            f"{data_dir} holds Omniglot prepared with {flags(found) or 'the default options'}; pass the "
            f"--data-dir it trained on, or build one with `{prepare}`")


# eval.json's record of `rotate_classes` (Finn's MAML Omniglot test protocol)
CLASS_ROTATIONS = "random quarter turn per class and task"


def episode_source(settings: Settings, split: str, num_tasks: int, data_dir: Path,
                   protocol: str | None, rotate_classes: bool = False) -> tuple[ChunkGetter, dict[str, Any]]:
    """(get_chunk(start, stop) -> Episodes, info) for the fixed evaluation tasks of `split`.

    `rotate_classes`: Omniglot only; see `EvalEpisodes.class_rotations`."""
    if rotate_classes and settings.dataset != "omniglot":
        raise UserError(f"--rotate-classes is the MAML code's Omniglot test protocol; {settings.dataset} "
                        "tasks are evaluated unrotated (drop --rotate-classes)")
    if settings.synthetic:
        tasks = sample_sine_tasks(num_tasks, settings.shots, settings.eval_queries,
                                  tf.constant([EVAL_KEY, 0], tf.int32))
        return (lambda a, b: {k: v[a:b] for k, v in tasks.items()}), {"split": "synthetic"}

    images, fixed, info = fixed_eval_episodes(settings, split, num_tasks, data_dir, protocol)
    rotations = None
    if rotate_classes:
        rotations = fixed.class_rotations()  # once, not per chunk
        info["class_rotations"] = CLASS_ROTATIONS
    return (lambda a, b: fixed.gather(images, a, b, rotations=rotations)), info


def fixed_eval_episodes(settings: Settings, split: str, num_tasks: int, data_dir: Path,
                        protocol: str | None) -> tuple[tf.Tensor, episodes.EvalEpisodes, dict[str, Any]]:
    """(images of `split`, its fixed evaluation tasks as index arrays, info) of a real dataset."""
    if settings.dataset == "omniglot" and protocol == "reptile" and split == "val":
        raise UserError("the Reptile Omniglot protocol has no val split; use --split test "
                        "(or train with --protocol vinyals)")
    images = tf.convert_to_tensor(load_images(settings.dataset, split, data_dir, protocol))
    num_classes, per_class = int(images.shape[0]), int(images.shape[1])
    check_task_shape(settings, num_classes, per_class, split, settings.shots, settings.eval_queries)
    fixed = episodes.make_eval_episodes(num_classes, per_class, settings.ways, settings.shots,
                                        settings.eval_queries, EVAL_SEED, num_tasks,
                                        name=f"{settings.dataset}/{split}")
    return images, fixed, {"split": split, "data_digest": array_digest(images.numpy())}

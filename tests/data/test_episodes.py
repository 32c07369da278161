"""Episode sampling (`sample_tasks`), fixed evaluation sets (`EvalEpisodes`) and bad requests.

Most tests use a synthetic split whose pixels encode (class, image index), so every
sampled image can be traced back to where it came from.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf.data import episodes as E
from reptile_tf.errors import UserError

NUM_CLASSES, PER_CLASS = 30, 12


@pytest.fixture(scope="module")
def traced_images() -> tf.Tensor:
    """uint8 [30, 12, 2, 2, 1]: pixel (0, 0) = class index, pixel (0, 1) = image index."""
    images = np.zeros((NUM_CLASSES, PER_CLASS, 2, 2, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(NUM_CLASSES)[:, None]
    images[:, :, 0, 1, 0] = np.arange(PER_CLASS)[None, :]
    images[:, :, 1, 1, 0] = 255
    return tf.constant(images)


def trace(x) -> np.ndarray:
    """[..., 2, 2, 1] float images -> [..., 2] (class, image index)."""
    pixels = np.rint(np.asarray(x) * 255).astype(int)
    return np.stack([pixels[..., 0, 0, 0], pixels[..., 0, 1, 0]], axis=-1)


def check_episodes(ep: dict, num_tasks: int, ways: int, shots: int, queries: int) -> None:
    """Every property a batch of tasks must have (shapes, dtypes, classes, labels, disjointness)."""
    assert tuple(ep["support_x"].shape) == (num_tasks, ways * shots, 2, 2, 1)
    assert tuple(ep["query_x"].shape) == (num_tasks, ways * queries, 2, 2, 1)
    assert ep["support_x"].dtype == tf.float32 and ep["support_y"].dtype == tf.int32
    assert ep["query_y"].dtype == tf.int32
    support_x = ep["support_x"].numpy()
    assert support_x.min() >= 0.0 and support_x.max() == 1.0
    support, query = trace(support_x), trace(ep["query_x"])
    support_y, query_y = ep["support_y"].numpy(), ep["query_y"].numpy()
    for t in range(num_tasks):
        assert sorted(np.bincount(support_y[t], minlength=ways)) == [shots] * ways
        label_to_class = {}
        for (cls, _), y in zip(np.concatenate([support[t], query[t]]), np.concatenate([support_y[t], query_y[t]])):
            assert label_to_class.setdefault(int(y), int(cls)) == cls  # one class per label
        assert sorted(label_to_class) == list(range(ways))
        assert len(set(label_to_class.values())) == ways  # distinct classes
        support_images = {tuple(p) for p in support[t]}
        query_images = {tuple(p) for p in query[t]}
        assert len(support_images) == ways * shots and len(query_images) == ways * queries
        assert not support_images & query_images  # disjoint


# --------------------------------------------------------------------------- sample_tasks

@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 1), (5, 5, 3), (20, 2, 0), (30, 6, 6)])
def test_sampled_tasks_have_every_property(traced_images, ways, shots, queries):
    ep = E.sample_tasks(traced_images, 7, ways, shots, queries, tf.constant([3, 4], tf.int32))
    check_episodes(ep, 7, ways, shots, queries)


def test_sampling_is_reproducible_and_seed_dependent(traced_images):
    sample = lambda seed: E.sample_tasks(traced_images, 4, 5, 2, 1, tf.constant(seed, tf.int32))  # noqa: E731
    first, again, other = sample([1, 2]), sample([1, 2]), sample([1, 3])
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), again[key].numpy())
    assert not np.array_equal(first["support_x"].numpy(), other["support_x"].numpy())


def test_sampling_inside_tf_function_matches_eager(traced_images):
    @tf.function
    def sample(seed):
        return E.sample_tasks(traced_images, 6, 5, 3, 2, seed)

    seed = tf.constant([7, 11], tf.int32)
    compiled, eager = sample(seed), E.sample_tasks(traced_images, 6, 5, 3, 2, seed)
    check_episodes(compiled, 6, 5, 3, 2)
    for key in eager:
        np.testing.assert_array_equal(compiled[key].numpy(), eager[key].numpy())
    # a new seed value reuses the same graph (no retracing) and gives new tasks
    other = sample(tf.constant([7, 12], tf.int32))
    assert sample.experimental_get_tracing_count() == 1
    assert not np.array_equal(other["support_y"].numpy(), compiled["support_y"].numpy())


def test_labels_and_order_are_random(traced_images):
    ep = E.sample_tasks(traced_images, 50, 5, 4, 0, tf.constant([0, 1]))
    support, labels = trace(ep["support_x"]), ep["support_y"].numpy()
    # label 0 is not always the lowest class index of the task
    lowest_is_zero = [support[t][labels[t] == 0][0, 0] == support[t][:, 0].min() for t in range(50)]
    assert 0 < sum(lowest_is_zero) < 50
    # images are not grouped by label (inner-loop minibatches mix classes)
    assert sum(np.array_equal(labels[t], np.sort(labels[t])) for t in range(50)) < 5


def test_every_class_is_drawn(traced_images):
    ep = E.sample_tasks(traced_images, 200, 5, 1, 0, 123)  # a Python int seed is accepted too
    assert set(trace(ep["support_x"])[..., 0].ravel()) == set(range(NUM_CLASSES))


def test_real_omniglot_20_way_5_shot(omniglot_train_images):
    ep = E.sample_tasks(omniglot_train_images, 2, 20, 5, 1, tf.constant([5, 6]))
    assert tuple(ep["support_x"].shape) == (2, 100, 28, 28, 1)
    assert tuple(ep["query_x"].shape) == (2, 20, 28, 28, 1)
    x = ep["support_x"].numpy()
    assert 0.0 <= x.min() < 0.2 and x.max() == 1.0  # dark strokes on a white background


# --------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("ways,shots,queries,message", [
    (31, 1, 1, "31-way tasks need 31 classes but the split has only 30"),
    (5, 10, 3, "13 images per class, but the split has only 12"),
    (5, 0, 1, "need ways >= 1, shots >= 1"),
    (5, 1, -1, "queries >= 0"),
])
def test_impossible_tasks_are_refused(traced_images, ways, shots, queries, message):
    with pytest.raises(UserError, match=message):
        E.sample_tasks(traced_images, 1, ways, shots, queries, tf.constant([0, 0]))
    with pytest.raises(UserError, match=message):
        E.make_eval_episodes(NUM_CLASSES, PER_CLASS, ways, shots, queries, seed=0, count=3)


@pytest.mark.parametrize("dataset,split,protocol,message", [
    ("omniglot", "val", None, "no validation split: use test, or protocol 'vinyals'"),
    ("omniglot", "holdout", "vinyals", "unknown split 'holdout'.*train, val, test, trainval"),
    ("omniglot", "train", "ravi", "unknown protocol 'ravi' for omniglot; choose one of reptile, vinyals"),
    ("mini_imagenet", "trainval", None, "unknown split 'trainval'"),
    ("cifar", "train", None, "unknown dataset 'cifar'"),
])
def test_bad_split_requests(tmp_path, dataset, split, protocol, message):
    with pytest.raises(UserError, match=message):
        E.load_split(dataset, split, tmp_path, protocol=protocol)


@pytest.mark.parametrize("dataset", ["omniglot", "mini_imagenet"])
def test_unprepared_data_names_the_prepare_command(tmp_path, dataset):
    with pytest.raises(UserError, match=f"not prepared.*run `reptile-tf prepare {dataset} --raw "):
        E.load_split(dataset, "test", tmp_path / "tfds")


def test_group_by_class_uses_the_minimum_count():
    images = np.arange(7)[:, None]
    grouped, counts = E.group_by_class(images, np.array([1, 0, 1, 0, 1, 0, 1]), np.array([6, 5, 4, 3, 2, 1, 0]), 2)
    assert counts == [3, 4]
    np.testing.assert_array_equal(grouped[..., 0], [[5, 3, 1], [6, 4, 2]])  # ordered by sort key


# --------------------------------------------------------------------------- fixed evaluation sets

def make(count=40, seed=9, name="omniglot/test", **kw):
    args = dict(num_classes=NUM_CLASSES, images_per_class=PER_CLASS, ways=5, shots=2, queries=3)
    args.update(kw)
    return E.make_eval_episodes(seed=seed, count=count, name=name, **args)


def arrays(episodes: E.EvalEpisodes) -> list[np.ndarray]:
    return [episodes.support_class, episodes.support_image, episodes.support_y,
            episodes.query_class, episodes.query_image, episodes.query_y]


def test_eval_episodes_are_deterministic():
    for a, b in zip(arrays(make()), arrays(make())):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("change", [dict(seed=10), dict(name="omniglot/train"), dict(shots=1), dict(ways=6)])
def test_eval_episodes_depend_on_every_argument(change):
    assert not np.array_equal(make().support_class, make(**change).support_class)


def test_first_tasks_do_not_depend_on_count():
    short, long = make(count=5), make(count=3000)  # 3,000 > one drawing chunk of 1,024 tasks
    assert len(short) == 5 and len(long) == 3000
    for a, b in zip(arrays(short), arrays(long)):
        np.testing.assert_array_equal(a, b[:5])


def test_eval_episodes_save_and_load_round_trip(tmp_path):
    episodes = make()
    path = tmp_path / "sub" / "omniglot-test-5w2s.npz"
    episodes.save(path)
    loaded = E.EvalEpisodes.load(path)
    assert loaded.meta() == episodes.meta() and len(loaded) == 40
    for a, b in zip(arrays(episodes), arrays(loaded)):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_unreadable_episode_file_is_a_user_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(UserError, match="delete it to regenerate"):
        E.EvalEpisodes.load(path)


def test_gather_returns_the_indexed_tasks(traced_images):
    episodes = make()
    ep = episodes.gather(traced_images, 10, 25)
    check_episodes(ep, 15, 5, 2, 3)
    np.testing.assert_array_equal(trace(ep["support_x"]),
                                  np.stack([episodes.support_class[10:25], episodes.support_image[10:25]], -1))
    np.testing.assert_array_equal(trace(ep["query_x"]),
                                  np.stack([episodes.query_class[10:25], episodes.query_image[10:25]], -1))
    np.testing.assert_array_equal(ep["query_y"].numpy(), episodes.query_y[10:25])


def test_gather_refuses_images_of_another_split(traced_images):
    episodes = make(num_classes=20)
    with pytest.raises(UserError, match="20 classes x 12 images, but the images given are 30 x 12"):
        episodes.gather(traced_images, 0, 1)


def test_class_rotations_are_fixed_quarter_turns_and_the_first_tasks_do_not_depend_on_count():
    short, long = make(count=5).class_rotations(), make(count=3000).class_rotations()
    assert short.shape == (5, 5) and long.shape == (3000, 5) and short.dtype == np.int32
    np.testing.assert_array_equal(short, long[:5])
    np.testing.assert_array_equal(long, make(count=3000).class_rotations())
    assert set(np.unique(long)) == {0, 1, 2, 3}
    assert np.all(np.abs(np.bincount(long.ravel()) / long.size - 0.25) < 0.02)  # uniform
    assert not np.array_equal(long, make(count=3000, seed=10).class_rotations())


def test_rotated_gather_turns_each_class_of_a_task_by_its_quarter_turns():
    rng = np.random.default_rng(3)
    images = tf.constant(rng.integers(0, 256, size=(NUM_CLASSES, PER_CLASS, 4, 4, 1)), tf.uint8)
    episodes = make()
    plain, rotated = episodes.gather(images, 3, 20), episodes.gather(images, 3, 20, rotations=episodes.class_rotations())
    turns = episodes.class_rotations()[3:20]
    for part in ("support", "query"):
        np.testing.assert_array_equal(rotated[f"{part}_y"].numpy(), plain[f"{part}_y"].numpy())
        x, y = plain[f"{part}_x"].numpy(), plain[f"{part}_y"].numpy()
        want = np.stack([np.stack([np.rot90(x[t, i], turns[t, y[t, i]], axes=(0, 1)) for i in range(x.shape[1])])
                         for t in range(x.shape[0])])
        np.testing.assert_array_equal(rotated[f"{part}_x"].numpy(), want)
        assert not np.array_equal(rotated[f"{part}_x"].numpy(), x)


def test_rotated_gather_refuses_non_square_images():
    images = tf.zeros((NUM_CLASSES, PER_CLASS, 2, 3, 1), tf.uint8)
    with pytest.raises(UserError, match="square images"):
        make().gather(images, 0, 2, rotations=make().class_rotations())


def test_eval_episodes_on_real_omniglot_test(omniglot_test_images):
    episodes = E.make_eval_episodes(423, 20, 20, 5, 1, seed=0, count=100, name="omniglot/test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ep = episodes.gather(omniglot_test_images, 0, 100)
    assert tuple(ep["support_x"].shape) == (100, 100, 28, 28, 1)
    assert tuple(ep["query_y"].shape) == (100, 20)
    assert all(len(set(row)) == 20 for row in episodes.query_class)


def test_sampling_with_unknown_split_shape_checks_at_run_time(traced_images):
    @tf.function(input_signature=[tf.TensorSpec([None, None, 2, 2, 1], tf.uint8), tf.TensorSpec([2], tf.int32)])
    def sample(images, seed):
        return E.sample_tasks(images, 3, 5, 4, 2, seed)

    check_episodes(sample(traced_images, tf.constant([1, 2])), 3, 5, 4, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="4 shots \\+ 2 queries need more images"):
        sample(traced_images[:, :5], tf.constant([1, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="5-way tasks need more classes"):
        sample(traced_images[:4], tf.constant([1, 2]))

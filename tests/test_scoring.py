"""`reptile_tf.scoring`: chunked scoring of tasks, shared by validation, evaluate and the MLflow model."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from reptile_tf import meta, scoring
from reptile_tf.errors import UserError
from reptile_tf.models import get_model
from reptile_tf.seeds import EVAL_KEY
from reptile_tf.settings import paper_settings
from reptile_tf.sine import sample_sine_tasks


@pytest.fixture(scope="module")
def sine_setup():
    model = get_model("sine", 1)
    settings = paper_settings("reptile", "sine", 1, 10).replace(eval_inner_steps=3, eval_inner_batch=5)
    state = meta.init_meta_state(model, model.init(0), settings)
    episodes = sample_sine_tasks(7, 10, 5, tf.constant([3, 3]))
    return model, settings, state, episodes


def test_task_seeds_are_the_evaluation_key_and_the_task_index():
    seeds = scoring.task_seeds(5, 3).numpy()
    assert seeds.dtype == np.int32 and seeds.tolist() == [[EVAL_KEY, 5], [EVAL_KEY, 6], [EVAL_KEY, 7]]


def test_scores_do_not_depend_on_the_chunk_size(sine_setup):
    model, settings, state, episodes = sine_setup
    whole = scoring.score_episodes(model, settings, state, episodes, "transductive", chunk_size=7)
    chunked = scoring.score_episodes(model, settings, state, episodes, "transductive", chunk_size=3)  # pads 7 -> 9
    assert whole.shape == (7,) and whole.dtype == np.float64
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    first = scoring.score_episodes(model, settings, state, {k: v[:2] for k, v in episodes.items()},
                                   "transductive", chunk_size=3)
    np.testing.assert_allclose(first, whole[:2], rtol=1e-6)


def test_the_per_task_metric_is_the_mse_for_regression(sine_setup):
    model, settings, state, episodes = sine_setup
    scores = scoring.score_episodes(model, settings, state, episodes, "transductive", chunk_size=7)
    adapted = meta.adapt(model, settings, meta.params_from_state(state), episodes["support_x"],
                         episodes["support_y"], scoring.task_seeds(0, 7), scoring.adaptation_adam_state(settings, state))
    want = model.loss(model.apply(adapted, episodes["query_x"]), episodes["query_y"]).numpy()
    np.testing.assert_allclose(scores, want, rtol=1e-5)
    assert settings.metric_name == "mse"


def test_unknown_mode_is_a_user_error(sine_setup):
    model, settings, _, _ = sine_setup
    with pytest.raises(UserError, match="unknown evaluation mode 'sometimes'"):
        scoring.make_chunk_scorer(model, settings, "sometimes")


def test_default_chunk_size_follows_the_memory_of_a_task():
    assert scoring.default_chunk_size(paper_settings("maml", "sine", 1, 10)) == 500
    small = paper_settings("reptile", "omniglot", 5, 1)
    assert scoring.default_chunk_size(small) == scoring.MAX_CHUNK_TASKS  # a small task: the speed cap
    large = paper_settings("reptile", "omniglot", 20, 5)  # non-transductive: 20 queries x 101 images
    size = scoring.default_chunk_size(large)
    per_task = 20 * (20 * 5 + 1) * scoring._FIRST_LAYER_BYTES["omniglot"]
    assert 1 < size == scoring.CALL_ACTIVATION_BUDGET // per_task < scoring.MAX_CHUNK_TASKS


def test_modes_scored_together_adapt_once_and_equal_each_mode_alone():
    """Adaptation sees only the support set, so `score_chunks_by_mode` adapts each task once for
    both batch-norm modes; every mode's scores are exactly those of scoring that mode alone."""
    model = get_model("omniglot", 5)
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(eval_inner_steps=2)
    state = meta.init_meta_state(model, model.init(0), settings)
    rng = np.random.default_rng(0)
    tasks, ways = 4, 5
    episodes = {"support_x": tf.constant(rng.random((tasks, ways, 28, 28, 1)), tf.float32),
                "support_y": tf.constant(np.tile(np.arange(ways), (tasks, 1)), tf.int32),
                "query_x": tf.constant(rng.random((tasks, 2 * ways, 28, 28, 1)), tf.float32),
                "query_y": tf.constant(np.tile(np.arange(ways), (tasks, 2)), tf.int32)}
    both = scoring.score_chunks_by_mode(model, settings, state, lambda a, b: {k: v[a:b] for k, v in episodes.items()},
                                        tasks, ("non_transductive", "transductive"), chunk_size=3, progress=False)
    assert list(both) == ["non_transductive", "transductive"]
    for mode, scores in both.items():
        alone = scoring.score_episodes(model, settings, state, episodes, mode, chunk_size=3)
        np.testing.assert_array_equal(scores, alone)
    # the modes differ on these tasks, so the test can tell them apart
    outputs = scoring.adapted_query_outputs_by_mode(
        model, settings, meta.params_from_state(state), scoring.adaptation_adam_state(settings, state),
        scoring.task_seeds(0, tasks), episodes["support_x"], episodes["support_y"], episodes["query_x"],
        ("non_transductive", "transductive"))
    assert not np.allclose(outputs[0].numpy(), outputs[1].numpy())

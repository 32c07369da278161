"""The conv path chosen by measurement (reptile_tf.autotune): the fastest, cached per machine and
shape, forced by the flag or $REPTILE_TF_CONV_PATH, and recorded in the run's config.json."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from reptile_tf import autotune, models
from reptile_tf.errors import UserError
from reptile_tf.settings import paper_settings
from reptile_tf.train import RunOptions, train


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "conv_paths.json"
    monkeypatch.setenv(autotune.CACHE_ENV, str(path))
    monkeypatch.delenv(models.CONV_PATH_ENV, raising=False)
    return path


def fake_timings(monkeypatch, ms: dict[str, float]) -> list[str]:
    timed: list[str] = []

    def time_conv_path(arch, path, num_outputs, tasks, batch, dtype, network="reptile"):
        timed.append(path)
        return ms[path] / 1000

    monkeypatch.setattr(autotune, "time_conv_path", time_conv_path)
    monkeypatch.setattr(autotune, "available_conv_paths", lambda: sorted(ms))
    return timed


def test_the_fastest_path_is_chosen_once_and_cached(cache, monkeypatch):
    timed = fake_timings(monkeypatch, {"grouped": 3.0, "split": 1.0, "sliced": 9.0})
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "split"
    assert sorted(timed) == ["grouped", "sliced", "split"]
    entry = json.loads(cache.read_text())["machines"][autotune.machine_key()]["omniglot 5x10 float32"]
    assert entry["path"] == "split" and entry["ms"]["grouped"] == 3.0
    timed.clear()
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "split"  # from the cache: nothing timed
    assert timed == []
    assert autotune.tuned_conv_path("omniglot", 5, 32, 5) == "split"  # another shape is timed anew
    assert len(timed) == 3


def test_each_network_family_is_timed_and_cached_on_its_own(cache, monkeypatch):
    # The default family keeps the key caches were written with before the families existed.
    assert autotune.shape_key("omniglot", 5, 10, "float32") == "omniglot 5x10 float32"
    assert autotune.shape_key("omniglot", 5, 10, "float32", "maml") == "omniglot/maml 5x10 float32"
    fake_timings(monkeypatch, {"split": 1.0, "sliced": 3.0})
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "split"
    timed = fake_timings(monkeypatch, {"split": 3.0, "sliced": 1.0})
    assert autotune.tuned_model("omniglot", 5, 5, 10, network="maml").conv_path == "sliced"
    assert sorted(timed) == ["sliced", "split"]  # not the Reptile net's cached choice
    machine = json.loads(cache.read_text())["machines"][autotune.machine_key()]
    assert machine["omniglot 5x10 float32"]["path"] == "split"
    assert machine["omniglot/maml 5x10 float32"]["path"] == "sliced"
    settings = paper_settings("maml", "omniglot", 5, 1).replace(network="maml", meta_batch=5, inner_batch=10)
    timed.clear()
    model = autotune.training_model(settings)
    assert (model.network, model.conv_path, timed) == ("maml", "sliced", [])  # from the cache


def test_jobs_tuning_one_shape_at_once_take_one_choice(cache, monkeypatch):
    # Two jobs starting together on an empty cache (a workflow's training jobs): timed separately on
    # a busy machine, each could find another path the fastest, and train with other rounding than
    # the cached choice later runs take (CI saw it: a SLURM run and a local run of one preset
    # differed in one cell). Here each job's timings favour another path: the first to take the lock
    # times and caches, the other waits and takes its choice, timing nothing.
    favourite = {"job-a": "split", "job-b": "sliced"}
    timed: list[tuple[str, str]] = []

    def time_conv_path(arch, path, num_outputs, tasks, batch, dtype, network="reptile"):
        job = threading.current_thread().name
        timed.append((job, path))
        time.sleep(0.2)  # both jobs are inside tuning at once without the lock
        return 0.001 if path == favourite[job] else 0.002

    monkeypatch.setattr(autotune, "time_conv_path", time_conv_path)
    monkeypatch.setattr(autotune, "available_conv_paths", lambda: ["sliced", "split"])
    chosen: dict[str, str] = {}
    jobs = [threading.Thread(name=name, target=lambda: chosen.update(
        {threading.current_thread().name: autotune.tuned_conv_path("omniglot", 5, 5, 10)})) for name in favourite]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    first = timed[0][0]
    assert chosen == {"job-a": favourite[first], "job-b": favourite[first]}
    assert {job for job, _ in timed} == {first} and len(timed) == 2
    entry = json.loads(cache.read_text())["machines"][autotune.machine_key()]["omniglot 5x10 float32"]
    assert entry["path"] == favourite[first]


def test_a_cached_choice_this_machine_cannot_run_is_measured_again(cache, monkeypatch):
    fake_timings(monkeypatch, {"grouped": 1.0, "split": 2.0})
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "grouped"
    # The same cache on a machine where the grouped-conv gradient is missing (oneDNN off).
    timed = fake_timings(monkeypatch, {"split": 2.0, "sliced": 5.0})
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "split"
    assert timed == ["sliced", "split"]


@pytest.mark.parametrize("content", ["{not json", '{"version": 0}', "[]"])
def test_a_damaged_or_old_cache_is_measured_again_not_an_error(cache, monkeypatch, content):
    cache.write_text(content)
    fake_timings(monkeypatch, {"grouped": 2.0, "split": 1.0})
    assert autotune.tuned_conv_path("mini_imagenet", 5, 5, 10) == "split"
    assert json.loads(cache.read_text())["version"] == autotune.CACHE_VERSION


def test_a_forced_path_is_not_measured_and_a_bad_one_names_the_choices(cache, monkeypatch):
    timed = fake_timings(monkeypatch, {"grouped": 2.0, "split": 1.0})
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10, requested="sliced") == "sliced"
    monkeypatch.setenv(models.CONV_PATH_ENV, "sliced")
    assert autotune.tuned_conv_path("omniglot", 5, 5, 10) == "sliced"
    assert timed == [] and not cache.exists()
    with pytest.raises(UserError, match="unknown conv path 'nope'.*grouped"):
        autotune.tuned_conv_path("omniglot", 5, 5, 10, requested="nope")


def test_measured_timings_are_real_and_the_model_without_convs_is_not_tuned(cache):
    seconds = autotune.time_conv_path("omniglot", "sliced", 5, 2, 3)
    assert 0 < seconds < 10
    assert autotune.tuned_model("sine", 1, 5, 10).conv_path is None and not cache.exists()


def test_training_records_the_chosen_path_in_config(cache, monkeypatch, tmp_path):
    # A tiny Omniglot run on random images, with the path forced and then tuned.
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(iterations=1, meta_batch=2, inner_steps=1,
                                                                  inner_batch=5, train_shots=1)
    images = np.random.default_rng(0).integers(0, 255, size=(10, 4, 28, 28, 1), dtype=np.uint8)
    forced = train(settings, 0, tmp_path / "forced", RunOptions(checkpoint_every=1), progress=False,
                   train_images=images, conv_path="split")
    assert json.loads((forced / "config.json").read_text())["environment"]["conv_path"] == "split"
    fake_timings(monkeypatch, {path: 1.0 + (path != "sliced") for path in models.available_conv_paths()})
    tuned = train(settings, 0, tmp_path / "tuned", RunOptions(checkpoint_every=1), progress=False,
                  train_images=images)
    assert json.loads((tuned / "config.json").read_text())["environment"]["conv_path"] == "sliced"

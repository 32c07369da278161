"""Issue 16: the official-code options (Settings.FIDELITY_OPTIONS), how they are recorded in a
run's config, the evaluation start state, and the bookkeeping of benchmarks/fidelity.py."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from reptile_tf import rundir, train
from reptile_tf.errors import UserError
from reptile_tf.settings import FIDELITY_OPTIONS, paper_settings, settings_from_config

ROOT = Path(__file__).resolve().parents[1]


def test_fidelity_options_default_to_the_previous_behaviour_and_are_validated():
    settings = paper_settings("reptile", "omniglot", 5, 1)
    assert (settings.inner_adam_mode, settings.loss_reduction, settings.eval_adam_state) == \
        ("parallel_mean", "mean", "training")
    for name, (default, allowed) in FIDELITY_OPTIONS.items():
        assert getattr(settings, name) == default and default in allowed
        for value in allowed:
            settings.replace(**{name: value}).validate()
        with pytest.raises(UserError, match=name):
            settings.replace(**{name: "bogus"}).validate()


def test_config_records_non_default_options_and_old_configs_still_match():
    settings = paper_settings("reptile", "omniglot", 5, 1)
    old_style = settings.to_dict()
    assert not set(FIDELITY_OPTIONS) & set(old_style)  # defaults: the config a run had before the options
    assert settings_from_config(old_style) == settings  # a missing field reads back as its default
    official = settings.replace(inner_adam_mode="sequential", loss_reduction="sum", eval_adam_state="fresh",
                                network="maml")
    recorded = official.to_dict()
    assert {k: recorded[k] for k in FIDELITY_OPTIONS} == {
        "inner_adam_mode": "sequential", "loss_reduction": "sum", "eval_adam_state": "fresh", "network": "maml"}
    assert settings_from_config(recorded) == official
    assert rundir.config_differences(old_style, settings.to_dict()) == []
    assert rundir.config_differences(old_style, recorded) == sorted(FIDELITY_OPTIONS)


def test_train_cli_has_a_flag_per_option():
    settings = train.resolve_settings("reptile", "omniglot", 5, 1, {"inner_adam_mode": "sequential",
                                                                    "loss_reduction": "sum"})
    assert settings.inner_adam_mode == "sequential" and settings.loss_reduction == "sum"
    import argparse

    parser = argparse.ArgumentParser()
    train.configure_parser(parser)
    args = parser.parse_args(["--algorithm", "reptile", "--dataset", "omniglot", "--ways", "5", "--shots", "1",
                              "--seed", "0", "--eval-adam-state", "fresh"])
    assert train.settings_overrides(args) == {"eval_adam_state": "fresh"}


def test_evaluation_adapts_from_training_or_fresh_adam_state():
    import tensorflow as tf

    from reptile_tf import meta, scoring
    from reptile_tf.models import get_model
    from reptile_tf.sine import sample_sine_tasks

    model = get_model("sine", 1)
    settings = paper_settings("reptile", "sine", 1, 10).replace(inner_optimizer="adam", eval_inner_steps=3)
    state = meta.init_meta_state(model, model.init(0), settings)
    state, _ = meta.meta_step(model, settings, state, sample_sine_tasks(2, 10, 0, tf.constant([1, 1])),
                              tf.constant(1.0))
    assert scoring.adaptation_adam_state(settings, state)["t"] is state["inner_adam/t"]
    fresh_settings = settings.replace(eval_adam_state="fresh")
    assert scoring.adaptation_adam_state(fresh_settings, state) is None
    episodes = sample_sine_tasks(4, 10, 5, tf.constant([3, 3]))
    scores = {s.eval_adam_state: scoring.score_episodes(model, s, state, episodes, "transductive", chunk_size=4)
              for s in (settings, fresh_settings)}
    seeds = scoring.task_seeds(0, 4)
    for choice, opt_state in (("training", meta.inner_adam_from_state(state)), ("fresh", None)):
        adapted = meta.adapt(model, settings, meta.params_from_state(state), episodes["support_x"],
                             episodes["support_y"], seeds, opt_state)
        want = model.loss(model.apply(adapted, episodes["query_x"]), episodes["query_y"]).numpy()
        np.testing.assert_allclose(scores[choice], want, rtol=1e-5)
    assert not np.allclose(scores["training"], scores["fresh"])
    with pytest.raises(UserError, match="eval_adam_state"):  # the value's check lives in Settings
        settings.replace(eval_adam_state="warm").validate()


def _load_fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_bench", ROOT / "benchmarks" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_fidelity_summary_compares_each_variant_with_the_baseline():
    fidelity = _load_fidelity()
    rows = []
    for seed, (base, seq) in enumerate([(90.0, 86.0), (91.0, 87.5), (92.0, 86.5)]):
        for variant, accuracy in (("baseline", base), ("sequential_adam", seq)):
            rows.append({"variant": variant, "seed": seed, "mode": "non_transductive", "accuracy": accuracy})
    rows.append({"variant": "sum_loss", "seed": 0, "mode": "non_transductive", "accuracy": 90.5})
    summary = {e["variant"]: e for e in fidelity.summarise(rows, ["baseline", "sequential_adam", "sum_loss"])}
    assert summary["baseline"]["mean"] == 91.0 and summary["baseline"]["sd"] == 1.0
    seq = summary["sequential_adam"]
    assert seq["delta"] == -4.333 and seq["beyond_spread"] == "true" and seq["ranges_disjoint"] == "true"
    assert seq["paired_deltas"] == "-4.00 -3.50 -5.50"
    assert summary["sum_loss"]["n"] == 1 and summary["sum_loss"]["beyond_spread"] == ""  # one seed: no spread
    assert summary["sum_loss"]["ranges_disjoint"] == ""
    assert all(set(variants) <= set(fidelity.VARIANTS) for variants, _ in fidelity.ALGORITHMS.values())


def test_fidelity_maml_grid_ends_with_finns_network_alone_with_his_loss_scale_and_his_data():
    fidelity = _load_fidelity()
    variants, _ = fidelity.ALGORITHMS["maml"]
    assert variants[:3] == ("baseline", "sum_per_shot_loss", "nearest_resize")  # the runs already made keep their order
    assert variants[3:] == ("maml_network", "maml_network_sum_per_shot", "maml_official_all")
    assert fidelity.VARIANTS["maml_network"].flags == ["--network", "maml"]
    assert fidelity.VARIANTS["maml_network_sum_per_shot"].flags == ["--network", "maml", "--loss-reduction", "sum_per_shot"]
    # Finn's code as it is: his network and loss scale on the binary NEAREST images his resize gives
    official = fidelity.VARIANTS["maml_official_all"]
    assert official.flags == ["--network", "maml", "--loss-reduction", "sum_per_shot"]
    assert official.data == fidelity.NEAREST_DATA and official.combined
    overrides = {"network": "maml", "loss_reduction": "sum_per_shot"}  # what the flags set, as the CLI takes them
    assert train.resolve_settings("maml", "omniglot", 5, 1, overrides).network == "maml"


def test_fidelity_pairs_evaluation_only_variants_task_by_task(tmp_path, monkeypatch):
    fidelity = _load_fidelity()
    monkeypatch.setattr(fidelity, "RUNS", tmp_path)
    per_task = {"baseline": [100.0, 80.0, 60.0, 100.0], "sum_eval_only": [80.0, 80.0, 40.0, 100.0]}
    rows = []
    for variant, values in per_task.items():
        path = fidelity.run_dir(variant, 0)
        path.mkdir(parents=True)
        for mode in fidelity.MODES:
            (path / f"eval_{mode}.csv").write_text("task,accuracy\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
            rows.append({"variant": variant, "seed": 0, "mode": mode, "accuracy": float(np.mean(values))})
    paired = fidelity.paired_task_deltas(rows)
    assert [(e["variant"], e["versus"], e["tasks"], e["delta"]) for e in paired] == \
        [("sum_eval_only", "baseline", 4, -10.0)] * 2
    assert paired[0]["ci95"] == round(1.96 * np.std([-20, 0, -20, 0]) / 2, 3)
    assert "sum_eval_only | baseline" in fidelity.paired_table(paired)


def test_fidelity_report_keeps_recorded_rows_of_runs_not_on_disk(tmp_path, monkeypatch):
    # The runs live in .cache: a report from a fresh clone holds none of them and must not wipe
    # the committed runs.csv / paired.csv; a run that is on disk replaces its recorded row.
    fidelity = _load_fidelity()
    runs, results = tmp_path / "runs", tmp_path / "results"
    monkeypatch.setattr(fidelity, "RUNS", runs)
    monkeypatch.setattr(fidelity, "RESULTS", results)
    results.mkdir()
    recorded = [{"variant": v, "seed": s, "mode": m, "accuracy": acc + s, "ci95": 1.0, "tasks": 10, "iterations": 5}
                for v, acc in (("baseline", 80.0), ("sum_loss", 70.0)) for s in (0, 1) for m in fidelity.MODES]
    fidelity.write_csv(results / "runs.csv", recorded)
    fidelity.write_csv(results / "paired.csv", [{"variant": "half_eval_lr", "versus": "baseline", "mode": "transductive",
                                                 "seeds": "0 1", "tasks": 20, "delta": -1.5, "ci95": 0.5}])
    path = fidelity.run_dir("baseline", 1)  # one run on disk, with another result than recorded
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({m: {"accuracy": 90.0, "ci95": 2.0, "tasks": 10} for m in fidelity.MODES}))
    (path / "config.json").write_text(json.dumps({"iterations": 5, "data": {"digest": "abc"}}))
    args = argparse.Namespace(algorithm="reptile", tasks=10, variants=None)
    fidelity.report(["baseline"], [0, 1], args)
    rows = fidelity.read_rows(results / "runs.csv")
    got = {(r["variant"], r["seed"], r["mode"]): r["accuracy"] for r in rows}
    assert len(rows) == len(recorded)
    assert got[("baseline", 1, "transductive")] == 90.0  # the run on disk wins
    assert got[("baseline", 0, "transductive")] == 80.0 and got[("sum_loss", 1, "non_transductive")] == 71.0
    assert [r["variant"] for r in rows[::2]] == ["baseline"] * 2 + ["sum_loss"] * 2
    assert fidelity.read_rows(results / "paired.csv")[0]["delta"] == -1.5
    readme = (results / "README.md").read_text()
    assert "| sum_loss | transductive | 0 1 |" in readme and "half_eval_lr | baseline | transductive" in readme


def test_adam_state_swap_takes_only_the_inner_adam_entries():
    """benchmarks/adam_state_swap.py: one run's weights with the other's inner Adam state (issue 11)."""
    spec = importlib.util.spec_from_file_location("adam_state_swap", ROOT / "benchmarks" / "adam_state_swap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = {"params/w": 1.0, "inner_adam/m/w": 2.0, "inner_adam/v/w": 3.0, "inner_adam/t": 4}
    adam = {"params/w": 10.0, "inner_adam/m/w": 20.0, "inner_adam/v/w": 30.0, "inner_adam/t": 40}
    assert module.swap_inner_adam(weights, adam) == {"params/w": 1.0, "inner_adam/m/w": 20.0,
                                                     "inner_adam/v/w": 30.0, "inner_adam/t": 40}
    with pytest.raises(SystemExit, match="same layout"):
        module.swap_inner_adam(weights, {"params/w": 10.0})

"""`reptile_tf.settings.Settings`: the one home of what makes a configuration valid and of the
facts derived from it (no TensorFlow needed)."""

from __future__ import annotations

import dataclasses

import pytest

from reptile_tf import settings as S
from reptile_tf.errors import UserError
from reptile_tf.settings import Settings, paper_settings

PAPER_CELLS = [(algorithm, dataset, ways, shots) for algorithm in S.ALGORITHMS
               for dataset, ways in (("omniglot", 5), ("omniglot", 20), ("mini_imagenet", 5))
               for shots in (1, 5)] + [(algorithm, "sine", 1, 10) for algorithm in S.ALGORITHMS]


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("cell", PAPER_CELLS)
def test_every_paper_setting_is_valid(cell):
    settings = paper_settings(*cell)
    assert settings.problems() == []
    settings.validate()


def test_problems_name_each_field_once():
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(
        inner_lr=float("nan"), meta_batch=0, adam_beta1=1.0, inner_optimizer="rmsprop")
    fields = [field for field, _ in settings.problems()]
    assert sorted(fields) == ["adam_beta1", "inner_lr", "inner_optimizer", "meta_batch"]
    wrong_type = paper_settings("maml", "omniglot", 5, 1).replace(inner_lr="0.4")
    assert wrong_type.problems() == [("inner_lr", "inner_lr='0.4' must be a number")]


@pytest.mark.parametrize("changes, field, message", [
    ({"inner_steps": 0}, "inner_steps", "inner_steps=0 must be at least 1"),
    ({"eval_tasks": -3}, "eval_tasks", "eval_tasks=-3 must be at least 1"),
    ({"inner_batch": -1}, "inner_batch", "inner_batch=-1 must be >= 0 (0 = the whole support set)"),
    ({"tail_shots": -1}, "tail_shots", "tail_shots=-1 must be >= 0 (0 = no tail minibatch)"),
    ({"outer_lr": float("inf")}, "outer_lr", "outer_lr=inf is not a finite number"),
    ({"inner_lr": -1.0}, "inner_lr", "inner_lr=-1.0 must be positive (a learning rate)"),
    ({"eval_inner_lr": 0.0}, "eval_inner_lr", "eval_inner_lr=0.0 must be positive (a learning rate)"),
    ({"adam_beta2": 1.5}, "adam_beta2", "adam_beta2=1.5 must be in [0, 1)"),
    ({"adam_epsilon": 0.0}, "adam_epsilon", "adam_epsilon=0.0 must be positive"),
    ({"outer_optimizer": "lamb"}, "outer_optimizer", "outer_optimizer='lamb' is not supported; use 'adam' or 'sgd'"),
    ({"loss_reduction": "max"}, "loss_reduction", "loss_reduction='max' is not supported; use one of mean, sum, sum_per_shot"),
    ({"first_order": 1}, "first_order", "first_order=1 must be true or false"),
    ({"meta_batch": 2.5}, "meta_batch", "meta_batch=2.5 must be an integer"),
    ({"iterations": True}, "iterations", "iterations=True must be a number (int), not a boolean"),
    ({"inner_steps": None}, "inner_steps", "inner_steps is missing (null)"),
    ({"algorithm": "protonet"}, "algorithm", "unknown algorithm 'protonet'; choose one of reptile, fomaml, maml"),
    ({"dataset": "cifar"}, "dataset", "unknown dataset 'cifar'; choose one of omniglot, mini_imagenet, sine"),
    ({"train_shots": 5}, "train_shots", "FOMAML with tail_shots=5 needs train_shots > tail_shots (got train_shots=5)"),
    ({"outer_optimizer": "adam"}, "outer_optimizer",
     "fomaml interpolates with an annealed step size; set outer_optimizer to 'sgd' (got 'adam')"),
])
def test_each_problem_is_named_with_its_field(changes, field, message):
    # dataclasses.replace: Settings.replace drops None (= keep the value), and a null is one of the cases
    settings = dataclasses.replace(paper_settings("fomaml", "omniglot", 5, 1), **changes)
    assert settings.problems() == [(field, message)]


def test_validate_names_every_problem_and_the_fix():
    settings = paper_settings("reptile", "omniglot", 5, 1).replace(meta_batch=0, inner_lr=-1.0)
    with pytest.raises(UserError) as err:
        settings.validate()
    assert str(err.value) == ("invalid hyperparameters: meta_batch=0 must be at least 1; inner_lr=-1.0 must be "
                              "positive (a learning rate). Pass other values (`reptile-tf train --help` lists "
                              "the flags).")


def test_a_subset_of_fields_is_checked_alone():
    settings = paper_settings("reptile", "sine", 1, 10).replace(eval_tasks=0, inner_steps=0)
    assert settings.problems(["inner_steps"]) == [("inner_steps", "inner_steps=0 must be at least 1")]
    settings.validate(["algorithm", "inner_optimizer"])  # eval_tasks and inner_steps are not looked at
    # a problem between fields counts for the field it names, and waits for the fields it reads to be valid
    tail = paper_settings("fomaml", "omniglot", 5, 1).replace(train_shots=2)
    assert [f for f, _ in tail.problems(["train_shots"])] == ["train_shots"]
    assert tail.problems(["tail_shots"]) == []
    assert [f for f, _ in tail.replace(tail_shots="5").problems()] == ["tail_shots"]


def test_check_value_is_the_same_check_for_one_field():
    S.check_value("inner_optimizer", "adam")
    with pytest.raises(UserError, match="invalid hyperparameter: inner_lr=-0.1 must be positive"):
        S.check_value("inner_lr", -0.1)
    with pytest.raises(UserError, match="loss_reduction='max' is not supported"):
        S.check_value("loss_reduction", "max")


def test_override_value_converts_as_the_cli_does():
    assert S.override_value("inner_lr", "1e-3") == 0.001
    assert S.override_value("meta_batch", 4) == 4 and S.override_value("first_order", True) is True
    for name, value, message in (("algorithm", "maml", "unknown hyperparameter 'algorithm'"),
                                 ("inner_lr", None, "null is not a value"),
                                 ("meta_batch", "four", "is not an int"),
                                 ("outer_lr", "inf", "is not a finite number")):
        with pytest.raises(UserError, match=message):
            S.override_value(name, value)
    assert "inner_lr" in S.flag_fields() and not set(S.NOT_A_FLAG) & set(S.flag_fields())


def test_unpublished_settings_need_every_field_without_a_default():
    with pytest.raises(UserError, match="no published configuration"):
        S.merge_settings("reptile", "omniglot", 10, 1, {"inner_lr": 0.1})
    full = {"inner_optimizer": "adam", "inner_lr": 0.001, "inner_steps": 5, "inner_batch": 10, "train_shots": 10,
            "meta_batch": 5, "iterations": 10, "outer_lr": 1.0, "outer_optimizer": "sgd"}
    assert S.merge_settings("reptile", "omniglot", 10, 1, full).problems() == []


def test_choices_are_what_the_checks_accept():
    settings = paper_settings("maml", "omniglot", 5, 1)
    for name, allowed in S.CHOICES.items():
        for value in allowed:
            assert settings.replace(**{name: value}).problems([name]) == [], (name, value)
        assert [f for f, _ in settings.replace(**{name: "bogus"}).problems([name])] == [name]


# ------------------------------------------------------------------ derived facts


def test_uses_tail_batch_is_fomaml_with_tail_shots():
    fomaml = paper_settings("fomaml", "omniglot", 5, 1)
    assert fomaml.tail_shots == 5 and fomaml.uses_tail_batch
    assert not fomaml.replace(tail_shots=0).uses_tail_batch
    assert not paper_settings("fomaml", "sine", 1, 10).uses_tail_batch  # sine: no tail
    assert not paper_settings("reptile", "omniglot", 5, 1).replace(tail_shots=5).uses_tail_batch
    assert not paper_settings("maml", "omniglot", 5, 1).replace(tail_shots=5).uses_tail_batch


def test_fomaml_tail_takes_its_shots_out_of_the_training_shots():
    fomaml = paper_settings("fomaml", "omniglot", 5, 1)
    assert fomaml.training_task_shape == (fomaml.train_shots - fomaml.tail_shots, fomaml.tail_shots)
    assert paper_settings("maml", "omniglot", 5, 1).training_task_shape == (1, 1)
    reptile = paper_settings("reptile", "mini_imagenet", 5, 5)
    assert reptile.training_task_shape == (reptile.train_shots, reptile.queries)
    with pytest.raises(UserError, match="train_shots > tail_shots.*raise --train-shots or lower --tail-shots"):
        fomaml.replace(train_shots=5).training_task_shape


@pytest.mark.parametrize("dataset, ways, shots, train, test", [
    ("omniglot", 5, 1, 1, 1), ("omniglot", 5, 5, 5, 5), ("omniglot", 20, 1, 1, 1), ("omniglot", 20, 5, 5, 5),
    ("mini_imagenet", 5, 1, 15, 1), ("mini_imagenet", 5, 5, 15, 5)])
def test_maml_queries_per_class_are_finns(dataset, ways, shots, train, test):
    """Finn's main.py (docs/reference.md): Omniglot K support + K query images per class in training
    and test; Mini-ImageNet 15 queries in training, K at test."""
    settings = paper_settings("maml", dataset, ways, shots)
    assert (settings.queries, settings.eval_queries) == (train, test)
    assert settings.training_task_shape == (shots, train)
    assert settings.problems() == []


@pytest.mark.parametrize("dataset, ways, shots, classifier, metric, outputs, synthetic", [
    ("omniglot", 20, 1, True, "accuracy", 20, False),
    ("mini_imagenet", 5, 5, True, "accuracy", 5, False),
    ("sine", 1, 10, False, "mse", 1, True),
])
def test_dataset_facts(dataset, ways, shots, classifier, metric, outputs, synthetic):
    settings = paper_settings("maml", dataset, ways, shots)
    assert settings.dataset_spec.name == dataset
    assert (settings.is_classifier, settings.metric_name, settings.num_outputs, settings.synthetic) == \
        (classifier, metric, outputs, synthetic)


def test_derived_facts_are_not_fields():
    # config.json is `to_dict()`: the derived facts must not be written into it (old runs stay readable)
    settings = paper_settings("fomaml", "omniglot", 5, 1)
    assert set(settings.to_dict()) <= set(S.field_types())
    assert isinstance(Settings.uses_tail_batch, property) and "uses_tail_batch" not in S.field_types()


# ------------------------------------------------------------------ network (issue 11)


def test_network_defaults_to_the_reptile_nets_and_old_configs_load():
    settings = paper_settings("maml", "omniglot", 5, 1)
    assert settings.network == "reptile"
    written = settings.to_dict()
    assert "network" not in written  # a config.json as written before the field existed
    assert S.settings_from_config(written) == settings
    finn = settings.replace(network="maml")
    assert finn.problems() == [] and finn.to_dict()["network"] == "maml"
    assert S.settings_from_config(finn.to_dict()) == finn
    assert S.override_value("network", "maml") == "maml"  # a workflow `overrides: {network: maml}`
    assert S.merge_settings("maml", "omniglot", 5, 1, {"network": "maml"}) == finn


def test_a_bad_network_is_a_user_error_naming_the_choices():
    settings = paper_settings("maml", "omniglot", 5, 1)
    assert settings.replace(network="finn").problems() == [
        ("network", "network='finn' is not supported; use one of reptile, maml")]
    with pytest.raises(UserError, match="network='finn' is not supported; use one of reptile, maml"):
        settings.replace(network="finn").validate()
    with pytest.raises(UserError, match="network='finn'"):
        S.check_value("network", "finn")
    sine = paper_settings("maml", "sine", 1, 10).replace(network="maml")
    assert sine.problems() == [("network", "network='maml' has no sine net (it has omniglot, mini_imagenet); "
                                           "use network='reptile' for sine")]


def test_recipes_train_each_table_row_and_the_schema_lists_them():
    # Every recipe trains one of the algorithms and reports in one table row: its own, except MAML
    # run first-order, which is FOMAML (as the papers' FOMAML cells were made).
    from pathlib import Path

    import yaml

    for name, recipe in S.RECIPES.items():
        assert recipe.algorithm in S.ALGORITHMS and recipe.what
        trained = paper_settings(recipe.algorithm, "omniglot", 5, 1).replace(**recipe.fixed)
        assert trained.problems() == []
        method = S.table_method(trained.algorithm, trained.first_order)
        assert method == ("fomaml" if name == "maml_first_order" else name)
    assert S.table_method("maml", False) == "maml" and S.table_method("fomaml", True) == "fomaml"
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    assert schema["definitions"]["budget"]["properties"]["train_as"]["enum"] == list(S.RECIPES)

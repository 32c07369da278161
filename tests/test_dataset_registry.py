"""`reptile_tf.datasets`: one registry entry per dataset, and every stage reads its names, shapes
and splits from it (models, FLOP counts, fetch, prepare, episodes, settings, the workflow).

(Named apart from tests/data/test_datasets.py, the TFDS builder tests: pytest's default import
mode needs distinct test file names.)
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reptile_tf import cli, datasets, flops, models, settings
from reptile_tf.data import episodes, prepare
from reptile_tf.data import fetch as fetch_lib
from reptile_tf.data.fetch import known
from reptile_tf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_names_and_derived_lists():
    assert datasets.NAMES == ("omniglot", "mini_imagenet", "sine")
    assert datasets.FETCHED == ("omniglot", "mini_imagenet")
    assert datasets.IMAGE_DATASETS == ("omniglot", "mini_imagenet")
    for name, dataset in datasets.DATASETS.items():
        assert dataset.name == name
        assert dataset.synthetic == (dataset.tfds_name is None) == (not dataset.protocols)
    assert datasets.DATASETS["omniglot"].input_shape == (28, 28, 1)
    assert datasets.DATASETS["mini_imagenet"].input_shape == (84, 84, 3)
    assert datasets.DATASETS["sine"].input_shape == (1,) and not datasets.DATASETS["sine"].is_classifier


def test_get_names_the_choices():
    assert datasets.get("sine").synthetic
    with pytest.raises(UserError, match="unknown dataset 'cifar'; choose one of omniglot, mini_imagenet, sine"):
        datasets.get("cifar")
    with pytest.raises(UserError, match="unknown dataset 'sine'; choose one of omniglot, mini_imagenet$"):
        datasets.get("sine", among=datasets.FETCHED)


def test_the_registry_and_settings_import_no_tensorflow():
    code = ("import sys; import reptile_tf.datasets, reptile_tf.settings, reptile_tf.flops; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("name", datasets.NAMES)
def test_each_dataset_has_a_network_taking_its_shape(name):
    import tensorflow as tf

    dataset = datasets.DATASETS[name]
    ways = 5 if dataset.is_classifier else 1
    model = models.get_model(name, ways)
    assert (model.input_shape, model.is_classifier) == (dataset.input_shape, dataset.is_classifier)
    params = models.broadcast_params(model.init(0), 2)
    outputs = model.apply(params, tf.zeros([2, 3, *dataset.input_shape]))
    assert outputs.shape == (2, 3, ways)
    assert settings.paper_settings("maml", name, *((5, 1) if dataset.is_classifier else (1, 10))).num_outputs == ways


def test_models_and_flops_cover_the_registry():
    assert models.ARCHS == datasets.NAMES
    assert flops.ARCHS == datasets.IMAGE_DATASETS
    for name in flops.ARCHS:
        height, width, channels = datasets.DATASETS[name].input_shape
        first = flops.network_layers(name, 5)[0]
        assert first.macs == math.prod(first.output_shape) * 3 * 3 * channels
    with pytest.raises(UserError, match="no FLOP count"):
        flops.network_layers("sine", 1)


# ------------------------------------------------------------------ fetch, prepare, episodes, workflow


def test_fetch_and_prepare_accept_exactly_the_datasets_with_files(tmp_path):
    assert known.DATASETS == fetch_lib.DATASETS == prepare.DATASETS == datasets.FETCHED
    for command in ("fetch", "prepare"):
        parser = cli.build_parser(only=command)
        action = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions
                      if a.dest == "dataset")
        assert tuple(action.choices) == datasets.FETCHED
    with pytest.raises(UserError, match="unknown dataset 'sine'"):
        fetch_lib.fetch("sine", tmp_path / "raw")
    with pytest.raises(UserError, match="unknown dataset 'sine'"):
        prepare.prepare("sine", tmp_path / "raw", tmp_path / "tfds")


def test_tfds_builders_carry_the_registered_names():
    for name in datasets.FETCHED:
        assert prepare.builder_class(name).name == datasets.DATASETS[name].tfds_name


def test_splits_per_protocol_come_from_the_registry():
    for name in datasets.FETCHED:
        dataset = datasets.DATASETS[name]
        assert episodes.DEFAULT_PROTOCOL[name] == dataset.default_protocol
        for protocol, splits in dataset.protocols.items():
            assert episodes.SPLITS[(name, protocol)] == splits
    assert set(episodes.SPLITS) == {(n, p) for n in datasets.FETCHED for p in datasets.DATASETS[n].protocols}
    assert datasets.DATASETS["omniglot"].default_protocol == "reptile"
    # the split files fetch verifies: one per split of the file-based protocols
    assert known.OMNIGLOT_SPLITS == datasets.DATASETS["omniglot"].protocols["vinyals"]
    assert known.RAVI_SPLITS == datasets.DATASETS["mini_imagenet"].protocols["ravi"]


def test_omniglot_image_count_is_what_its_archives_hold():
    held = sum(content.images for (name, _), content in known.KNOWN_ARCHIVES.items() if name == "omniglot")
    assert held == datasets.DATASETS["omniglot"].images == 32_460


def test_the_workflow_accepts_exactly_the_datasets_with_files():
    assert datasets.wildcard_pattern() == "omniglot|mini_imagenet"
    assert all(re.fullmatch(datasets.wildcard_pattern(), name) for name in datasets.FETCHED)
    assert not re.fullmatch(datasets.wildcard_pattern(), "sine")
    common = (ROOT / "workflow/rules/common.smk").read_text()
    assert 'dataset=_import_reptile_tf("datasets").wildcard_pattern()' in common
    assert "omniglot|mini_imagenet" not in common  # no second copy of the names
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    grid_dataset = schema["properties"]["grid"]["properties"]["settings"]["items"]["properties"]["dataset"]
    assert tuple(grid_dataset["enum"]) == datasets.FETCHED  # the schema cannot import it: checked here


def test_evaluation_memory_model_reads_the_first_conv_layer():
    from reptile_tf import scoring

    # float32 activations of the first conv layer: Omniglot 14x14x64 (stride 2), Mini-ImageNet 84x84x32
    assert scoring._FIRST_LAYER_BYTES == {"omniglot": 14 * 14 * 64 * 4, "mini_imagenet": 84 * 84 * 32 * 4}
    assert scoring.default_chunk_size(settings.paper_settings("reptile", "sine", 1, 10)) == 500

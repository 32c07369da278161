"""FLOP counts (reptile_tf.flops) against hand counts and TensorFlow's own profiler."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from reptile_tf import flops
from reptile_tf.errors import UserError
from reptile_tf.networks import NETWORKS
from reptile_tf.settings import paper_settings

# Hand count, per image, multiply-adds of each linear layer (Omniglot, 5 ways):
# conv1 14x14x64 outputs x 3x3x1, conv2 7x7x64 x 3x3x64, conv3 4x4x64 x 576, conv4 2x2x64 x 576,
# dense 256 x 5.
OMNIGLOT_5WAY_MACS = [14 * 14 * 64 * 9, 7 * 7 * 64 * 576, 4 * 4 * 64 * 576, 2 * 2 * 64 * 576, 256 * 5]
# Mini-ImageNet (5 ways): 84x84x32 x 27, 42x42x32 x 288, 21x21x32 x 288, 11x11x32 x 288, dense 6*6*32 x 5.
MINI_5WAY_MACS = [84 * 84 * 32 * 27, 42 * 42 * 32 * 288, 21 * 21 * 32 * 288, 11 * 11 * 32 * 288, 1152 * 5]


@pytest.mark.parametrize("arch, macs", [("omniglot", OMNIGLOT_5WAY_MACS), ("mini_imagenet", MINI_5WAY_MACS)])
def test_layer_macs_match_hand_count(arch, macs):
    assert [layer.macs for layer in flops.network_layers(arch, 5)] == macs
    assert flops.forward_flops(arch, 5).matmul == 2 * sum(macs)


def test_reptile_omniglot_meta_iteration_is_the_reference_3_93_gflop():
    # docs/reference.md: 5 tasks x 5 Adam steps x batch 10 = 3.93 GFLOP (conv + dense work).
    count = flops.meta_iteration_flops(paper_settings("reptile", "omniglot", 5, 1))
    assert count.matmul == pytest.approx(3.93e9, rel=1e-3)
    # 250 image passes of forward + backward, the first layer without an input gradient.
    per_image = 3 * 2 * sum(OMNIGLOT_5WAY_MACS) - 2 * OMNIGLOT_5WAY_MACS[0]
    assert count.matmul == 250 * per_image
    # Batch norm is a small separate term: 2 multiply-adds per normalised element, x3 for backward.
    bn_elements = 14 * 14 * 64 + 7 * 7 * 64 + 4 * 4 * 64 + 2 * 2 * 64
    assert count.bn == 250 * 3 * 4 * bn_elements
    assert count.bn < 0.02 * count.matmul


def test_algorithm_counts_follow_their_inner_loops():
    reptile = flops.meta_iteration_flops(paper_settings("reptile", "omniglot", 20, 1))
    per_pass = flops.train_pass_flops("omniglot", 20).total
    assert reptile.total == pytest.approx(5 * 10 * 20 * per_pass)  # 5 tasks x 10 steps x batch 20
    # FOMAML with the official 5-shot tail: 9 steps of 20 images, then one tail batch of 20 x 5.
    fomaml = flops.meta_iteration_flops(paper_settings("fomaml", "omniglot", 20, 1))
    assert fomaml.total == pytest.approx(5 * (9 * 20 + 100) * per_pass)
    # MAML second order: each inner step's forward + backward is differentiated again (x3).
    maml = paper_settings("maml", "omniglot", 5, 1)
    second, first = flops.meta_iteration_flops(maml), flops.meta_iteration_flops(maml.replace(first_order=True))
    per_pass5 = flops.train_pass_flops("omniglot", 5).total
    assert first.total == pytest.approx(32 * (5 + 5) * per_pass5)
    assert second.total == pytest.approx(32 * (3 * 5 + 5) * per_pass5)


def test_eval_task_count_adds_prediction_forwards():
    settings = paper_settings("reptile", "omniglot", 5, 1)
    adapt = 50 * 5 * flops.train_pass_flops("omniglot", 5).total
    fwd = flops.forward_flops("omniglot", 5).total
    assert flops.eval_task_flops(settings, transductive=True).total == pytest.approx(adapt + 5 * fwd)
    assert flops.eval_task_flops(settings, transductive=False).total == pytest.approx(adapt + 5 * 6 * fwd)


def test_bad_arch_is_a_user_error():
    with pytest.raises(UserError, match="arch"):
        flops.network_layers("resnet", 5)
    with pytest.raises(UserError, match="network 'finn'"):
        flops.network_layers("omniglot", 5, "finn")


def test_finns_maml_nets_count_their_own_dense_layer():
    # The same convs; Omniglot's dense layer sees the 64 channel means, Mini-ImageNet's the 'valid'
    # pooled 5x5x32 map (84 -> 42 -> 21 -> 10 -> 5), so its last conv is the same and the dense smaller.
    assert [layer.macs for layer in flops.network_layers("omniglot", 5, "maml")] == OMNIGLOT_5WAY_MACS[:-1] + [64 * 5]
    assert [layer.macs for layer in flops.network_layers("mini_imagenet", 5, "maml")] == \
        MINI_5WAY_MACS[:3] + [10 * 10 * 32 * 288, 800 * 5]
    maml = paper_settings("maml", "omniglot", 5, 1)
    per_pass = flops.train_pass_flops("omniglot", 5, "maml").total
    assert flops.meta_iteration_flops(maml.replace(network="maml")).total == pytest.approx(32 * (3 * 5 + 5) * per_pass)
    assert flops.eval_task_flops(maml.replace(network="maml")).total < flops.eval_task_flops(maml).total


def _profile_network(arch: str, ways: int, batch: int, with_gradients: bool) -> dict[str, int]:
    """TF profiler float_ops per op type of the network built from tf.nn.conv2d / tf.matmul."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        height, channels, filters, stride, pool = (
            (28, 1, 64, 2, False) if arch == "omniglot" else (84, 3, 32, 1, True))
        out = tf.compat.v1.placeholder(tf.float32, [batch, height, height, channels])
        weights = []
        for _ in range(4):
            kernel = tf.compat.v1.placeholder(tf.float32, [3, 3, out.shape[-1], filters])
            weights.append(kernel)
            out = tf.nn.conv2d(out, kernel, strides=stride, padding="SAME")
            if pool:
                out = tf.nn.max_pool2d(out, 2, 2, "SAME")
            out = tf.nn.relu(out)
        out = tf.reshape(out, [batch, -1])
        dense = tf.compat.v1.placeholder(tf.float32, [out.shape[-1], ways])
        weights.append(dense)
        logits = tf.matmul(out, dense)
        if with_gradients:
            tf.gradients(tf.reduce_sum(logits), weights)
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph, options=options)
    by_type: dict[str, int] = {}
    for node in profile.children:
        op_type = graph.get_operation_by_name(node.name).type
        by_type[op_type] = by_type.get(op_type, 0) + node.total_float_ops
    return by_type


@pytest.mark.parametrize("arch, ways", [("omniglot", 5), ("omniglot", 20), ("mini_imagenet", 5)])
def test_forward_count_matches_tensorflow_profiler(arch, ways):
    batch = 10
    profiled = _profile_network(arch, ways, batch, with_gradients=False)
    # The profiler counts conv and matmul as 2 x multiply-adds, exactly our convention.
    assert profiled["Conv2D"] + profiled["MatMul"] == batch * flops.forward_flops(arch, ways).matmul


def test_backward_count_matches_tensorflow_profiler_for_stride_one_convs():
    # Mini-ImageNet convs have stride 1, where the profiler's gradient-op counts are exact
    # (for stride 2 it approximates the backprop shapes). The graph also holds the first layer's
    # input-gradient op, which is pruned at run time (no gradient with respect to the images).
    batch, arch = 10, "mini_imagenet"
    profiled = _profile_network(arch, 5, batch, with_gradients=True)
    first_layer_input_grad = 2 * flops.network_layers(arch, 5)[0].macs * batch
    profiled_train = (profiled["Conv2D"] + profiled["Conv2DBackpropFilter"] + profiled["Conv2DBackpropInput"]
                      + profiled["MatMul"] - first_layer_input_grad)
    assert profiled_train == batch * flops.train_pass_flops(arch, 5).matmul


def test_flatten_size_matches_the_model():
    import tensorflow as tf

    from reptile_tf.models import get_model

    for arch in flops.ARCHS:
        for network in NETWORKS:
            model = get_model(arch, 5, network=network)
            params = model.init(0)
            assert params["dense/kernel"].shape[0] == flops.flatten_size(arch, network)
            # Conv output shapes of the real model agree with the layer list (one image, one task).
            x = tf.zeros([1, 2, *model.input_shape])
            logits = model.apply({k: v[None] for k, v in params.items()}, x)
            assert logits.shape == (1, 2, 5)

"""The papers' conv nets, one per image dataset and network family: the one home of their shape
(docs/reference.md "Networks": 4 blocks of 3x3 conv, batch norm, ReLU; Omniglot strided,
Mini-ImageNet max-pooled).

Two families (`NETWORKS`, chosen by the Settings field `network`):
- "reptile" (default): the official supervised-reptile code's layers (`tf.layers`): batch norm
  with a learned scale and offset, both adapted by the inner loop; 'SAME' max-pool; the last
  feature map flattened into a glorot-uniform dense layer.
- "maml": Finn's official MAML code (cbfinn/maml, maml.py `construct_conv_weights` /
  `forward_conv`, utils.py `conv_block` / `normalize`): `tf.contrib.layers.batch_norm` with its
  defaults, i.e. an offset but no scale; the offsets are not in its `weights` dict, so the inner
  loop never adapts them and only the outer (meta) optimizer trains them. Omniglot: global
  average pooling over the last 2x2 map (64 features), dense kernel `tf.random_normal` (std 1).
  Mini-ImageNet: 'VALID' max-pool (84 -> 42 -> 21 -> 10 -> 5, 800 features), glorot dense.
  Its conv bias sits right before a batch norm on batch statistics, which cancels it exactly
  (zero gradient), so no family has one.
Both: xavier (glorot) uniform conv kernels, batch statistics always (the codes' `training=True`
/ `is_training=True`), epsilon 1e-3. Finn's block applies ReLU before the max-pool, ours after:
ReLU is monotone, so max-pool and ReLU commute exactly.

No TensorFlow: `models` builds them, `flops` counts them, and the benchmarks' per-op profile and
reference loop time them. The input shapes are the dataset registry's (`reptile_tf.datasets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ConvNet:
    filters: int  # channels of every conv layer
    stride: int  # stride of every conv layer
    max_pool: bool  # a 2x2 max-pool (stride 2) after every block
    pool_padding: str = "SAME"  # a key of POOLED_SIZE
    bn_scale: bool = True  # batch norm has a learned scale (gamma); without it the scale is 1
    inner_adapts_bn: bool = True  # the inner loop adapts the batch-norm parameters (else only the outer update)
    head: str = "flatten"  # the dense layer's features, a key of HEAD_FEATURES
    dense_init: str = "glorot_uniform"  # the dense kernel's initialiser: "glorot_uniform" or "normal" (N(0, 1))


# Every net has this many conv blocks (the parameter names conv0..conv3 and bn0..bn3 follow it).
BLOCKS = 4
DEFAULT_NETWORK = "reptile"
NETWORKS: dict[str, dict[str, ConvNet]] = {
    "reptile": {
        "omniglot": ConvNet(filters=64, stride=2, max_pool=False),
        "mini_imagenet": ConvNet(filters=32, stride=1, max_pool=True),
    },
    "maml": {
        "omniglot": ConvNet(filters=64, stride=2, max_pool=False, bn_scale=False, inner_adapts_bn=False,
                            head="mean", dense_init="normal"),
        "mini_imagenet": ConvNet(filters=32, stride=1, max_pool=True, pool_padding="VALID", bn_scale=False,
                                 inner_adapts_bn=False),
    },
}
# The default family's nets (what every net was before `network` existed).
CONV_NETS: dict[str, ConvNet] = NETWORKS[DEFAULT_NETWORK]

# max-pool padding -> output size of a 2x2, stride-2 pool on `size` pixels
POOLED_SIZE: dict[str, Callable[[int], int]] = {
    "SAME": lambda size: -(-size // 2),
    "VALID": lambda size: size // 2,
}
# head -> features the dense layer sees, from the last feature map's (height, width, channels)
HEAD_FEATURES: dict[str, Callable[[int, int, int], int]] = {
    "flatten": lambda height, width, channels: height * width * channels,
    "mean": lambda height, width, channels: channels,  # global average over height and width
}


def conv_output_size(size: int, net: ConvNet) -> int:
    """Side of one block's output: 'SAME' conv with the net's stride, then its max-pool if any."""
    out = -(-size // net.stride)
    return POOLED_SIZE[net.pool_padding](out) if net.max_pool else out


def feature_size(net: ConvNet, input_shape: tuple[int, ...]) -> int:
    """Input size of the dense layer of `net` on images of `input_shape` (height, width, channels)."""
    height, width = input_shape[0], input_shape[1]
    for _ in range(BLOCKS):
        height, width = conv_output_size(height, net), conv_output_size(width, net)
    return HEAD_FEATURES[net.head](height, width, net.filters)

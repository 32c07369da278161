"""The papers' conv nets, one per image dataset: the one home of their shape (docs/reference.md
"Networks": 4 blocks of 3x3 conv, batch norm, ReLU; Omniglot strided, Mini-ImageNet max-pooled).

No TensorFlow: `models` builds them, `flops` counts them, and the benchmarks' per-op profile and
reference loop time them. The input shapes are the dataset registry's (`reptile_tf.datasets`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvNet:
    filters: int  # channels of every conv layer
    stride: int  # stride of every conv layer
    max_pool: bool  # a 2x2 max-pool after every block


# Every net has this many conv blocks (the parameter names conv0..conv3 and bn0..bn3 follow it).
BLOCKS = 4
CONV_NETS: dict[str, ConvNet] = {
    "omniglot": ConvNet(filters=64, stride=2, max_pool=False),
    "mini_imagenet": ConvNet(filters=32, stride=1, max_pool=True),
}

"""FLOP counts of the two few-shot networks and of one meta-iteration per algorithm.

Written out by hand (no TensorFlow needed) so that achieved FLOP/s can be compared with the
measured matmul peak. Conventions:

- One multiply-add = 2 FLOPs. Convolutions and the dense layer count their multiply-adds
  (bias adds, ReLU and max-pool are ignored: they are < 0.5% and not matmul work).
- Batch norm (batch statistics): 2 multiply-adds per output element (one accumulating the
  statistics, one applying the normalisation + affine transform). An approximation, about 1% of
  the total; it is reported separately (`bn`) from the matmul work (`matmul`).
- Backward = 2 x forward (input gradient + weight gradient), except that the first layer needs
  no gradient with respect to the input image, so its backward = 1 x forward.
  With this rule the Reptile Omniglot 5-way meta-iteration is 3.930 GFLOP of matmul work,
  the figure in docs/reference.md.
- MAML second order: every inner step's gradient computation (forward + backward) is itself
  differentiated. Reverse mode through a graph of bilinear ops (conv, matmul and their
  gradients) costs 2 x that graph, so an inner step costs 3 x (forward + backward). This is an
  approximation (an upper bound: a few products whose gradient is not needed, e.g. with respect
  to the images, are counted).
"""

from __future__ import annotations

from dataclasses import dataclass

from reptile_tf import datasets
from reptile_tf.networks import BLOCKS, CONV_NETS, DEFAULT_NETWORK, HEAD_FEATURES, NETWORKS, conv_output_size
from reptile_tf.errors import UserError

# The conv nets (reptile_tf.networks, every family has one per image dataset); their input shapes
# come from the dataset registry.
ARCHS = tuple(CONV_NETS)


@dataclass(frozen=True)
class Layer:
    """One linear layer of a network, for a single input image."""

    name: str
    kind: str  # "conv" or "dense"
    macs: int  # multiply-adds of the forward pass
    bn_elements: int  # output elements normalised by batch norm (0 = no batch norm)
    output_shape: tuple[int, ...]


@dataclass(frozen=True)
class Flops:
    """A FLOP count split into matmul work (conv + dense) and batch norm."""

    matmul: float
    bn: float

    @property
    def total(self) -> float:
        return self.matmul + self.bn

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.matmul + other.matmul, self.bn + other.bn)

    def scale(self, factor: float) -> "Flops":
        return Flops(self.matmul * factor, self.bn * factor)


def _same_out(size: int, stride: int) -> int:
    # "SAME" padding: ceil(size / stride).
    return -(-size // stride)


def network_layers(arch: str, num_outputs: int, network: str = DEFAULT_NETWORK) -> list[Layer]:
    """The linear layers of `arch` of family `network` (docs/reference.md "Networks") with
    per-image costs.

    omniglot: 28x28x1, 4 x [conv3x3 64, stride 2, same padding, BN, ReLU], dense on the
    flattened 2x2x64 map ("maml": on its 64 channel means).
    mini_imagenet: 84x84x3, 4 x [conv3x3 32, stride 1, same, BN, max-pool 2x2 stride 2 (same
    padding, as in the official code: 84 -> 42 -> 21 -> 11 -> 6; "maml": valid, -> 10 -> 5), ReLU],
    dense.
    """
    if arch not in ARCHS:
        raise UserError(f"no FLOP count for arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if network not in NETWORKS:
        raise UserError(f"no FLOP count for network {network!r}; choose one of {', '.join(NETWORKS)}")
    net = NETWORKS[network][arch]
    (height, _, channels), filters = datasets.DATASETS[arch].input_shape, net.filters
    if num_outputs < 1:
        raise UserError(f"num_outputs must be positive (got {num_outputs}); pass the number of ways")
    layers = []
    for index in range(BLOCKS):
        out = _same_out(height, net.stride)
        elements = out * out * filters
        layers.append(Layer(f"conv{index + 1}", "conv", elements * 3 * 3 * channels, elements,
                            (out, out, filters)))
        height, channels = conv_output_size(height, net), filters
    flat = HEAD_FEATURES[net.head](height, height, channels)
    layers.append(Layer("dense", "dense", flat * num_outputs, 0, (num_outputs,)))
    return layers


def flatten_size(arch: str, network: str = DEFAULT_NETWORK) -> int:
    """Input size of the final dense layer (checked against the model's kernel shape in tests)."""
    return network_layers(arch, 1, network)[-1].macs


def forward_flops(arch: str, num_outputs: int, network: str = DEFAULT_NETWORK) -> Flops:
    """FLOPs of one forward pass of one image."""
    layers = network_layers(arch, num_outputs, network)
    return Flops(matmul=2.0 * sum(layer.macs for layer in layers),
                 bn=2.0 * 2 * sum(layer.bn_elements for layer in layers))


def train_pass_flops(arch: str, num_outputs: int, network: str = DEFAULT_NETWORK) -> Flops:
    """FLOPs of forward + backward (weight and input gradients) for one image."""
    layers = network_layers(arch, num_outputs, network)
    fwd = forward_flops(arch, num_outputs, network)
    # backward = 2 x forward, but no input gradient for the first layer (the image).
    first_input_grad = Flops(matmul=2.0 * layers[0].macs, bn=0.0)
    return Flops(3 * fwd.matmul - first_input_grad.matmul, 3 * fwd.bn)


def _support_batch(settings, steps_batch: int) -> int:
    # inner_batch 0 means "the whole support set in every step".
    return steps_batch if steps_batch > 0 else settings.ways * settings.shots


def images_per_task(settings) -> dict[str, float]:
    """Image passes per task of one meta-iteration, by kind of pass.

    Keys: "train" (forward + backward), "second_order" (forward + backward passes that are
    differentiated again, MAML only), "forward" (forward only).
    """
    algorithm = settings.algorithm
    if algorithm == "reptile":
        return {"train": settings.inner_steps * settings.inner_batch, "second_order": 0, "forward": 0}
    if algorithm == "fomaml":
        if settings.uses_tail_batch:
            # Official code (--foml-tail): inner_steps - 1 minibatches, then one tail batch.
            train = (settings.inner_steps - 1) * settings.inner_batch + settings.ways * settings.tail_shots
        else:
            train = settings.inner_steps * settings.inner_batch
        return {"train": train, "second_order": 0, "forward": 0}
    if algorithm == "maml":
        support = settings.inner_steps * _support_batch(settings, settings.inner_batch)
        query = settings.ways * settings.queries
        if settings.first_order:
            return {"train": support + query, "second_order": 0, "forward": 0}
        return {"train": query, "second_order": support, "forward": 0}
    raise UserError(f"no FLOP count for algorithm {algorithm!r}; choose reptile, fomaml or maml")


def meta_iteration_flops(settings) -> Flops:
    """FLOPs of one meta-iteration (all tasks of the meta-batch) for `settings`.

    Counts the network passes only; optimizer updates (O(parameters), < 1%) are ignored.
    """
    arch, network = settings.dataset, settings.network
    train = train_pass_flops(arch, settings.ways, network)
    counts = images_per_task(settings)
    per_task = (train.scale(counts["train"]) + train.scale(3 * counts["second_order"])
                + forward_flops(arch, settings.ways, network).scale(counts["forward"]))
    return per_task.scale(settings.meta_batch)


def eval_task_flops(settings, transductive: bool = True) -> Flops:
    """FLOPs of evaluating one task: adaptation on the support set, then predicting the queries.

    Adaptation: `eval_inner_steps` steps on minibatches of `eval_inner_batch` (0 = the whole
    support set). Prediction: transductive = one forward of all queries; non-transductive =
    one forward per query of the support set plus that query.
    """
    arch, network = settings.dataset, settings.network
    support = settings.ways * settings.shots
    batch = settings.eval_inner_batch if settings.eval_inner_batch > 0 else support
    queries = settings.ways * settings.eval_queries
    predict_images = queries if transductive else queries * (support + 1)
    return (train_pass_flops(arch, settings.ways, network).scale(settings.eval_inner_steps * batch)
            + forward_flops(arch, settings.ways, network).scale(predict_images))


def matmul_flops(size: int) -> float:
    """FLOPs of one size x size float32 matmul (the peak measurement)."""
    return 2.0 * size ** 3

"""Start training from an exported ``model.onnx`` (the bundled model, or any run's export) instead of a Keras file.

The exported graph keeps every weight, but not in Keras's shape: tf2onnx folds each convolution's batch norm
into the convolution's kernel and bias (or, after a depthwise convolution, into a per-channel multiply and
add). The function that matters, ``scale * conv(x, K) + shift`` per channel, is all that survives. This module
puts it back into a freshly built classifier of the same architecture:

- each Keras convolution gets the exported kernel ``K``;
- each batch norm after it gets statistics measured on real faces (the mean and variance of ``conv(x, K)``
  over ``images``) and the gamma and beta that make it compute exactly ``scale * conv + shift`` with them.

Measured statistics, rather than a dummy mean 0 / variance 1, matter for fine-tuning: in training mode a batch
norm normalises by the batch's own statistics, which for real faces are close to the measured ones, so the first
training steps start from the exported network's function instead of an unrelated one. The import is accepted
only when the rebuilt Keras classifier reproduces the ONNX probabilities on ``images`` (`PARITY_TOLERANCE`).

Keras layers are found in the graph by name: tf2onnx keeps them in its node and tensor names
(``.../block_3_expand_1/convolution/...``), as long as the graph was exported by this trainer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import card_path_of
from .export import PARITY_TOLERANCE, onnx_probabilities


class GraphImportError(ValueError):
    """The ONNX file is not a graph this trainer exported for this architecture; the message says why."""


@dataclass(frozen=True)
class _Affine:
    """One Keras layer's exported function: ``scale * op(x, kernel) + shift`` per output channel."""

    kernel: np.ndarray  # in Keras's layout
    scale: np.ndarray
    shift: np.ndarray


def card_of(onnx_path: Path) -> dict:
    """The model card beside an exported graph (``model.json``); empty when there is none."""
    card = card_path_of(onnx_path)
    return json.loads(card.read_text()) if card.is_file() else {}


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _layer_name(node) -> str | None:
    """The Keras layer a Conv or MatMul node came from, read from its own name or its weight's name."""
    for text in (node.name, *node.input[1:2]):
        found = re.search(r"/([^/]+?)_\d+/(?:convolution|depthwise|MatMul)", text)
        if found:
            return found.group(1)
    return None


def _exported_layers(path: Path) -> dict[str, _Affine]:
    """Every Conv and MatMul of the graph with the per-channel multiply/add that follows it, by Keras layer."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = _constants(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant_operand(node) -> np.ndarray | None:
        operands = [constants[name] for name in node.input if name in constants]
        return operands[0] if len(operands) == 1 and len(node.input) == 2 else None

    layers: dict[str, _Affine] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul"):
            continue
        name = _layer_name(node)
        if name is None or node.input[1] not in constants:
            continue
        weight = constants[node.input[1]]
        channels = weight.shape[-1] if node.op_type == "MatMul" else weight.shape[0]
        if node.op_type == "MatMul":
            kernel = weight  # [in, out], as Keras's Dense
        elif _attribute(node, "group", 1) > 1:
            kernel = weight.transpose(2, 3, 0, 1)  # depthwise [C, 1, kh, kw] -> [kh, kw, C, 1]
        else:
            kernel = weight.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
        scale = np.ones(channels, np.float32)
        shift = (
            constants[node.input[2]].reshape(-1) if len(node.input) > 2 else np.zeros(channels, np.float32)
        )
        # Follow the chain of constant multiplies and adds a folded batch norm (or a Dense bias) leaves behind.
        output = node.output[0]
        while len(consumers.get(output, [])) == 1:
            nxt = consumers[output][0]
            operand = constant_operand(nxt) if nxt.op_type in ("Mul", "Add") else None
            if operand is None or operand.size != channels:
                break
            if nxt.op_type == "Mul":
                scale, shift = scale * operand.reshape(-1), shift * operand.reshape(-1)
            else:
                shift = shift + operand.reshape(-1)
            output = nxt.output[0]
        affine = _Affine(kernel.astype(np.float32), scale.astype(np.float32), shift.astype(np.float32))
        if name in layers and not _same(layers[name], affine):
            raise GraphImportError(
                f"{path}: layer {name} appears twice with different weights (an ensemble?); "
                "import a single network"
            )
        layers[name] = affine  # a flip-TTA export runs the one network twice: the same weights, twice
    return layers


def _same(a: _Affine, b: _Affine) -> bool:
    return all(
        np.array_equal(x, y) for x, y in ((a.kernel, b.kernel), (a.scale, b.scale), (a.shift, b.shift))
    )


def _attribute(node, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _conv_bn_pairs(backbone) -> list[tuple[Any, Any | None]]:
    """Each convolution of the backbone with the batch norm right after it (None when it has none)."""
    from keras import layers

    pairs: list[tuple[Any, Any | None]] = []
    items = backbone.layers
    for i, layer in enumerate(items):
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            following = items[i + 1] if i + 1 < len(items) else None
            bn = following if isinstance(following, layers.BatchNormalization) else None
            pairs.append((layer, bn))
    return pairs


def import_onnx(classifier, path: Path, images: np.ndarray, flip_tta: bool = False) -> float:
    """Fill ``classifier`` (built for the exported graph's architecture and normalisation) from ``path``.

    ``images`` (float32 [N, S, S, 1], 0-255, a few hundred real faces) give the batch norms their statistics and
    check the result. ``flip_tta``: the graph averages each face with its mirror image (the card's
    ``export.flip_tta``), and the check does the same. Returns the largest probability difference against
    onnxruntime; raises `GraphImportError` when the graph does not fit the classifier or the rebuilt network does
    not reproduce it.
    """
    from keras.layers import DepthwiseConv2D

    from .model import backbone_of

    exported = _exported_layers(path)
    backbone = backbone_of(classifier)
    pairs = _conv_bn_pairs(backbone)
    head = classifier.get_layer("probs")
    expected = [conv.name for conv, _ in pairs] + [head.name]
    missing = [name for name in expected if name not in exported]
    if missing:
        raise GraphImportError(
            f"{path}: no exported weights for {len(missing)} layer(s) of this architecture "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); is it the same "
            "backbone, and exported by this trainer?"
        )

    def shaped(layer, kernel: np.ndarray) -> np.ndarray:
        want = tuple(layer.get_weights()[0].shape)
        if kernel.shape != want:
            raise GraphImportError(
                f"{path}: layer {layer.name} has shape {kernel.shape} in the graph and {want} "
                "here; the backbone, alpha or input size differ"
            )
        return kernel

    # Pass 1: kernels, and batch norms that compute the exported affine map with placeholder statistics, so that
    # every layer upstream of a convolution is already exact when pass 2 measures that convolution's output.
    for conv, bn in pairs:
        affine = exported[conv.name]
        kernel = shaped(conv, affine.kernel)
        if bn is None:  # the exported map goes into the convolution itself (a bias-free one: exactly when 0)
            per_channel = affine.scale.reshape(-1, 1) if isinstance(conv, DepthwiseConv2D) else affine.scale
            conv.set_weights([kernel * per_channel, affine.shift][: len(conv.get_weights())])
            continue
        bias = [np.zeros_like(affine.shift)] if len(conv.get_weights()) == 2 else []  # folded into the shift
        conv.set_weights([kernel, *bias])
        _set_batch_norm(bn, affine, np.zeros_like(affine.scale), np.ones_like(affine.scale))
    dense = exported[head.name]
    head.set_weights([shaped(head, dense.kernel * dense.scale), dense.shift])

    # Pass 2: the statistics of every convolution's output on real faces; the map stays exact.
    with_bn = [(conv, bn) for conv, bn in pairs if bn is not None]
    for (conv, bn), (mean, var) in zip(
        with_bn, _output_statistics(classifier, [c for c, _ in with_bn], images), strict=True
    ):
        _set_batch_norm(bn, exported[conv.name], mean, var)

    got = classifier.predict(images, verbose=0, batch_size=128)
    if flip_tta:
        got = (got + classifier.predict(images[:, :, ::-1], verbose=0, batch_size=128)) / 2
    want = onnx_probabilities(path, images)
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise GraphImportError(
            f"{path}: the rebuilt network differs from the graph by {diff:.2e} (tolerance "
            f"{PARITY_TOLERANCE:.0e}); was it exported with a different normalisation or TTA?"
        )
    return diff


def _output_statistics(classifier, convs: list, images: np.ndarray, batch: int = 128) -> list:
    """Per-channel (mean, variance) of each of ``convs``' outputs over ``images``, accumulated batch by batch."""
    import keras

    from .model import backbone_of

    backbone = backbone_of(classifier)
    # The layer just before the backbone (normalisation or grey-to-RGB) outputs what the backbone is fed.
    feeder = keras.Model(
        classifier.inputs[0], classifier.layers[classifier.layers.index(backbone) - 1].output
    )
    probe = keras.Model(backbone.inputs[0], [conv.output for conv in convs])
    sums = [np.zeros(conv.output.shape[-1]) for conv in convs]
    squares = [np.zeros(conv.output.shape[-1]) for conv in convs]
    values_per_channel = [0] * len(convs)  # faces x positions: each layer has its own resolution
    for start in range(0, len(images), batch):
        outputs = probe(feeder(images[start : start + batch], training=False), training=False)
        for i, output in enumerate(outputs):
            values = np.asarray(output, dtype=np.float64).reshape(-1, output.shape[-1])
            sums[i] += values.sum(axis=0)
            squares[i] += np.square(values).sum(axis=0)
            values_per_channel[i] += values.shape[0]
    statistics = []
    for total, square, n in zip(sums, squares, values_per_channel, strict=True):
        mean = total / n
        statistics.append((mean, np.maximum(square / n - mean**2, 0.0)))
    return statistics


def _set_batch_norm(bn, affine: _Affine, mean: np.ndarray, var: np.ndarray) -> None:
    """gamma, beta, mean, var with ``gamma * (z - mean) / sqrt(var + eps) + beta == scale * z + shift``."""
    std = np.sqrt(var + bn.epsilon)
    gamma = affine.scale * std
    beta = affine.shift + affine.scale * mean
    bn.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, var)])

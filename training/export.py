"""Export a trained classifier to ONNX with tf2onnx and prove the exported numbers match Keras.

Export needs TensorFlow (tf2onnx converts TensorFlow graphs), so it runs on a CPU machine even when the
model was trained elsewhere with ``KERAS_BACKEND=jax``; the ``.keras`` checkpoint is backend-neutral.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from emotion_batch.files import atomic_path

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "probs"


class ExportError(RuntimeError):
    """The exported graph failed to convert or does not reproduce the Keras model's numbers."""


@contextlib.contextmanager
def _without_transpose_optimizer():
    """tf2onnx 1.17's transpose optimiser mis-rewrites MobileNetV3's hard-sigmoid; run without it."""
    from tf2onnx import optimizer

    saved = optimizer._optimizers.copy()
    optimizer._optimizers.pop("optimize_transpose", None)
    try:
        yield
    finally:
        optimizer._optimizers.clear()
        optimizer._optimizers.update(saved)


def _serving_function(classifier, flip_tta: bool):
    """A tf.function over the inference graph; flip TTA averages the mirrored image's probabilities in-graph."""
    import tensorflow as tf

    height, width = classifier.input_shape[1:3]
    spec = tf.TensorSpec([None, height, width, 1], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image):
        probs = classifier(image, training=False)
        if flip_tta:
            probs = (probs + classifier(tf.reverse(image, axis=[2]), training=False)) / 2.0
        return {OUTPUT_NAME: probs}

    return serve, spec


def _convert(serve, spec, opset: int, path: Path, skip_transpose: bool) -> None:
    import tf2onnx

    context = _without_transpose_optimizer() if skip_transpose else contextlib.nullcontext()
    with context:
        tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset, output_path=str(path))


def onnx_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session; one thread by default, as the runtime runs a model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def export_onnx(
    classifier, path: Path, check_images: np.ndarray, flip_tta: bool = False, opset: int = 17
) -> dict:
    """Write ``path`` atomically once its outputs match Keras within PARITY_TOLERANCE on ``check_images``.

    Tries the full tf2onnx optimiser first and, if that fails to convert or to match, again without the
    transpose optimiser; raises ExportError when neither graph reproduces the Keras numbers.
    """
    serve, spec = _serving_function(classifier, flip_tta)
    check_images = np.asarray(check_images, dtype=np.float32)
    expected = serve(check_images)[OUTPUT_NAME].numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for skip_transpose in (False, True):
        attempt = "without" if skip_transpose else "with"
        with atomic_path(path, suffix=".tmp.onnx") as pending:  # replaces `path` only if not discarded
            try:
                _convert(serve, spec, opset, pending.path, skip_transpose)
                got = onnx_probabilities(pending.path, check_images)
            except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types; any means this attempt failed
                failures.append(f"{attempt} transpose optimiser: conversion failed: {exc}")
                pending.discard()
                continue
            max_diff = float(np.max(np.abs(got - expected)))
            if not max_diff <= PARITY_TOLERANCE:
                failures.append(
                    f"{attempt} transpose optimiser: max |onnx - keras| = {max_diff:.3e} > {PARITY_TOLERANCE}"
                )
                pending.discard()
                continue
        log.info(
            "exported %s (%s transpose optimiser): max |onnx - keras| = %.2e on %d images",
            path,
            attempt,
            max_diff,
            len(check_images),
        )
        return {
            "max_abs_diff": max_diff,
            "tolerance": PARITY_TOLERANCE,
            "images": len(check_images),
            "argmax_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
            "transpose_optimizer": not skip_transpose,
            "opset": opset,
            "flip_tta": flip_tta,
        }
    raise ExportError(f"{path}: ONNX export does not match the Keras model; " + "; ".join(failures))

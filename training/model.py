"""The classifier graph: greyscale 0-255 in, class probabilities out, every preprocessing step inside.

Keeping the resize, grey-to-RGB replication and the backbone's normalisation inside the graph means the
exported ONNX model and the runtime cannot preprocess differently from training.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from .config import BACKBONES, NORMALISATIONS, SCRATCH_BACKBONES, ModelConfig

__all__ = ["BACKBONES", "ModelConfig", "PerImageContrast", "build_classifier", "load_classifier"]

CLASSIFIER_NAME = "classifier"


class WeightsUnavailable(RuntimeError):
    """ImageNet weights that Keras cannot download here; the message says what to pass instead."""


def _application(factory, config: ModelConfig, **kwargs) -> keras.Model:
    """Build one Keras application; an ImageNet download that fails becomes one line naming the alternatives."""
    try:
        return factory(**kwargs)
    except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...") when offline
        if config.weights != "imagenet":
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsUnavailable(
            f"--weights imagenet: Keras could not download the {config.backbone} ImageNet weights ({reason}); "
            "pass a local no-top file with --weights PATH.h5, or train from scratch with --weights none"
        ) from None


def small_cnn(config: ModelConfig) -> keras.Model:
    """``cnn3``: three conv blocks (conv, batch norm, ReLU, 2x2 max pool) and global average pooling.

    A from-scratch floor that a pretrained MobileNet should beat clearly, and a backbone that builds and
    traces in seconds, for quick experiments on one's own faces. ``alpha`` scales its 32/64/128 channels.
    """
    inputs = keras.Input((config.input_size, config.input_size, 3))
    x = inputs
    for block, channels in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(
            max(8, round(channels * config.alpha)),
            3,
            padding="same",
            use_bias=False,
            name=f"block{block}_conv",
        )(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.ReLU(name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    outputs = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="cnn3")


def _backbone(config: ModelConfig) -> keras.Model:
    """The backbone without its top, global-average pooled: a Keras application, or `small_cnn`."""
    from keras import applications

    if config.backbone in SCRATCH_BACKBONES and config.weights != "none":
        raise ValueError(
            f"backbone {config.backbone} has no pretrained weights; train it with --weights none"
        )
    shape = (config.input_size, config.input_size, 3)
    keras_weights = "imagenet" if config.weights == "imagenet" else None
    common = {
        "input_shape": shape,
        "alpha": config.alpha,
        "include_top": False,
        "weights": keras_weights,
        "pooling": "avg",
    }
    factories = {
        "mobilenet": (applications.MobileNet, {}),
        "mobilenetv2": (applications.MobileNetV2, {}),
        "mobilenetv3small": (applications.MobileNetV3Small, {"include_preprocessing": False}),
        "mobilenetv3large": (applications.MobileNetV3Large, {"include_preprocessing": False}),
    }
    if config.backbone == "cnn3":
        base = small_cnn(config)
    elif config.backbone in factories:
        factory, extra = factories[config.backbone]
        base = _application(factory, config, **common, **extra)
    else:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose from {', '.join(BACKBONES)}")
    if config.weights not in ("imagenet", "none"):
        path = Path(config.weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found")
        # Legacy .h5 files from keras-applications load by layer order into a freshly built backbone.
        base.load_weights(str(path))
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    return base


@keras.saving.register_keras_serializable(package="emotion_train")
class PerImageContrast(layers.Layer):
    """Each face to zero mean and a fixed contrast: ``(x - mean) / max(std, min_std) * target_std / 127.5``.

    The backbone then sees the same input for ``a * face + b`` as for the face itself (any gain a > 0 that keeps
    its standard deviation above ``min_std``), so a face in a dark room or a washed-out one reads like a
    well-exposed one. ``target_std`` 55 is the typical spread of a FER-2013 face (54 grey levels on PublicTest),
    so for a well-exposed face the output is close to the fixed [-1, 1] scaling's; ``min_std`` keeps a flat
    patch from having its noise blown up.
    """

    def __init__(self, target_std: float = 55.0, min_std: float = 8.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_std = float(target_std)
        self.min_std = float(min_std)

    def call(self, x):
        from keras import ops

        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True))
        return (x - mean) / ops.maximum(std, self.min_std) * (self.target_std / 127.5)

    def get_config(self) -> dict:
        return {**super().get_config(), "target_std": self.target_std, "min_std": self.min_std}


def build_classifier(config: ModelConfig) -> keras.Model:
    """Inference graph: [N, S, S, 1] float 0-255 -> [N, C] probabilities."""
    if config.normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalise {config.normalise!r}; choose from {', '.join(NORMALISATIONS)}")
    inputs = keras.Input((config.image_size, config.image_size, 1), name="image")
    x = inputs
    # MobileNet v1, v2 and v3 (without include_preprocessing) all expect about [-1, 1].
    if config.normalise == "per-image":
        x = PerImageContrast(name="normalise")(x)  # on the stored resolution: the statistics are the same
    if config.image_size != config.input_size:
        x = layers.Resizing(config.input_size, config.input_size, interpolation="bilinear", name="upsample")(
            x
        )
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if config.normalise == "fixed":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(x)
    x = _backbone(config)(x)
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    regulariser = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    outputs = layers.Dense(
        config.num_classes, activation="softmax", kernel_regularizer=regulariser, name="probs"
    )(x)
    return keras.Model(inputs, outputs, name=CLASSIFIER_NAME)


def load_classifier(path: str | Path) -> keras.Model:
    """A saved classifier (``checkpoints/best.keras``); importing this module registers its layers with Keras."""
    return keras.models.load_model(path, compile=False)


def build_training_model(classifier: keras.Model) -> keras.Model:
    """The classifier wrapped as one layer, so checkpoints and best.keras name it the same way.

    Augmentation happens on the data side (training/augment.py), where one composed warp resamples once.
    """
    inputs = keras.Input(classifier.input_shape[1:], name="image")
    outputs = classifier(inputs)
    return keras.Model(inputs, outputs, name="trainer")


def classifier_of(training_model: keras.Model) -> keras.Model:
    return training_model.get_layer(CLASSIFIER_NAME)


def backbone_of(classifier: keras.Model) -> keras.Model:
    """The nested Keras application inside the classifier."""
    for layer in classifier.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError("classifier has no nested backbone model")


def set_trainable(classifier: keras.Model, stage: int, fine_tune_layers: int) -> None:
    """Stage 1: head only. Stage 2: the top ``fine_tune_layers`` backbone layers, or all of them when 0."""
    base = backbone_of(classifier)
    if stage == 1:
        base.trainable = False
        return
    base.trainable = True
    if fine_tune_layers > 0:
        for layer in base.layers[:-fine_tune_layers]:
            layer.trainable = False

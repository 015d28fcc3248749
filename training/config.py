"""What a classifier is (backbone, sizes, weights, head), with no TensorFlow import.

The command line reads these before it knows whether the step needs Keras at all: `ensemble` and `quantize`
work on exported ONNX files and should not pay TensorFlow's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKBONES = ("mobilenet", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "cnn3")
#: Backbones with no pretrained weights: trained from scratch only (``--weights none``).
SCRATCH_BACKBONES = ("cnn3",)
NORMALISATIONS = ("fixed", "per-image")  # ModelConfig.normalise


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "mobilenetv2"
    alpha: float = 1.0
    image_size: int = 48  # resolution the data is stored at; the ONNX input
    input_size: int = 96  # resolution the backbone sees; upsampled inside the graph
    num_classes: int = 7
    weights: str = "none"  # "imagenet", "none" or a path to a no-top .h5 file
    dropout: float = 0.3
    l2: float = 0.0
    bn_momentum: float = 0.99
    # "fixed": the backbone's [-1, 1] scaling of 0-255. "per-image": each face's own mean and contrast, so a
    # dark or washed-out face reaches the backbone as a well-exposed one would (see PerImageContrast).
    normalise: str = "fixed"

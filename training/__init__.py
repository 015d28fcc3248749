"""emotion_train: the trainer for emotion-batch's classifier (installed with the ``train`` extra).

Keras 3 transfer learning on a folder-per-class dataset, exported to a self-contained ONNX model that
the TensorFlow-free runtime (``emotion_batch``) runs with onnxruntime.
"""

"""From a frame to faces and emotions: detection, classification, tracking, and the model files they load."""

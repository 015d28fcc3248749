"""Small factories for real test media: a face photo, a video with a moving face, a variable-frame-rate file.

Everything is generated with OpenCV and the standard library, so the tests need neither ffmpeg nor network.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CANVAS = (640, 360)  # width, height of generated videos
FACE_IMAGE_SIZE = 300  # the astronaut photo is scaled to this square inside the canvas


def astronaut_bgr() -> np.ndarray:
    """skimage's astronaut (Eileen Collins, smiling), as OpenCV BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def no_face_bgr() -> np.ndarray:
    """skimage's rocket photo: a real photo in which YuNet finds no face."""
    from skimage import data

    return cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2BGR)


@dataclass(frozen=True)
class MovingFaceVideo:
    path: Path
    fps: float
    frames: int
    #: x offset of the astronaut photo inside the canvas, per frame.
    offsets: tuple[int, ...]


def write_moving_face_video(
    path: Path, fps: float = 25.0, seconds: float = 4.0, travel: int = 340
) -> MovingFaceVideo:
    """An mp4 (mp4v) in which the astronaut photo slides left to right across a grey canvas."""
    face = cv2.resize(astronaut_bgr(), (FACE_IMAGE_SIZE, FACE_IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    frames = round(fps * seconds)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, CANVAS)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    offsets = []
    top = (CANVAS[1] - FACE_IMAGE_SIZE) // 2
    for i in range(frames):
        x = round(travel * i / max(1, frames - 1))
        canvas = np.full((CANVAS[1], CANVAS[0], 3), 96, np.uint8)
        canvas[top : top + FACE_IMAGE_SIZE, x : x + FACE_IMAGE_SIZE] = face
        writer.write(canvas)
        offsets.append(x)
    writer.release()
    return MovingFaceVideo(path, fps, frames, tuple(offsets))


@dataclass(frozen=True)
class PassingFaceVideo:
    path: Path
    fps: float
    frames: int
    #: Frames [start, end) in which the second face is there.
    visible: tuple[int, int]


def write_passing_face_video(
    path: Path, visible: tuple[int, int], fps: float = 25.0, seconds: float = 4.0, size: int = 240
) -> PassingFaceVideo:
    """An mp4 (mp4v): the astronaut stands still on the left all along; a mirrored copy, side by side with her on
    the right, is there only in frames `visible` (e.g. one sample's worth: a face seen once)."""
    face = cv2.resize(astronaut_bgr(), (size, size), interpolation=cv2.INTER_AREA)
    frames = round(fps * seconds)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, CANVAS)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    top, gap = (CANVAS[1] - size) // 2, (CANVAS[0] - 2 * size) // 3
    for i in range(frames):
        canvas = np.full((CANVAS[1], CANVAS[0], 3), 96, np.uint8)
        canvas[top : top + size, gap : gap + size] = face
        if visible[0] <= i < visible[1]:
            canvas[top : top + size, 2 * gap + size : 2 * gap + 2 * size] = face[:, ::-1]
        writer.write(canvas)
    writer.release()
    return PassingFaceVideo(path, fps, frames, visible)


def _index_image(index: int) -> np.ndarray:
    """A 160x96 frame showing `index` in binary: 8 blocks, white for 1, black for 0 (survives lossy coding)."""
    image = np.zeros((96, 160, 3), np.uint8)
    for bit in range(8):
        if index >> bit & 1:
            image[20:76, bit * 20 : bit * 20 + 20] = 255
    return image


def read_frame_index(image: np.ndarray) -> int:
    """Decode the index drawn by `_index_image` from a decoded frame."""
    return sum(1 << bit for bit in range(8) if image[30:66, bit * 20 + 5 : bit * 20 + 15].mean() > 127)


def write_indexed_video(path: Path, frames: int, fps: float = 25.0) -> None:
    """A constant-rate mp4 whose frame i shows i in binary (see read_frame_index); at most 256 frames."""
    assert frames <= 256
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 96))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(frames):
        writer.write(_index_image(i))
    writer.release()


def write_bframe_video(path: Path, frames: int, fps: int = 25) -> None:
    """An H.264 mp4 with B-frames (x264 via PyAV), frame i showing i in binary: the files decoders reorder."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"bframes": "3", "b-pyramid": "normal", "g": "50", "crf": "18"}
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(_index_image(i), format="bgr24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


# --- variable frame rate: rewrite the sample durations of an mp4 -----------------------------------------------
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _boxes(buf: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    out, off = [], start
    while off < end:
        size, kind = struct.unpack(">I4s", buf[off : off + 8])
        assert size >= 8, "64-bit or zero-size boxes are not expected in OpenCV-written files"
        out.append((kind, buf[off + 8 : off + size]))
        off += size
    return out


def _pack(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _rewrite(kind: bytes, payload: bytes, deltas: list[int], media_total: int, movie_total: dict) -> bytes:
    if kind in _CONTAINERS:
        children = _boxes(payload, 0, len(payload))
        return _pack(kind, b"".join(_rewrite(k, p, deltas, media_total, movie_total) for k, p in children))
    if kind == b"stts":  # time-to-sample: one entry per frame with its own duration
        entries = b"".join(struct.pack(">II", 1, d) for d in deltas)
        return _pack(kind, payload[:4] + struct.pack(">I", len(deltas)) + entries)
    if kind == b"mdhd":  # media duration, in media timescale
        assert payload[0] == 0, "version 0 mdhd expected"
        return _pack(kind, payload[:16] + struct.pack(">I", media_total) + payload[20:])
    if kind == b"mvhd":  # movie duration, in movie timescale
        assert payload[0] == 0, "version 0 mvhd expected"
        return _pack(kind, payload[:16] + struct.pack(">I", movie_total["value"]) + payload[20:])
    if kind == b"tkhd":
        return _pack(kind, payload[:20] + struct.pack(">I", movie_total["value"]) + payload[24:])
    if kind == b"elst":  # single edit covering the whole track
        count = struct.unpack(">I", payload[4:8])[0]
        assert count == 1, "one edit list entry expected"
        return _pack(kind, payload[:8] + struct.pack(">I", movie_total["value"]) + payload[12:])
    return _pack(kind, payload)


def _media_timescale(moov: bytes) -> int:
    found = []

    def walk(payload: bytes) -> None:
        for kind, body in _boxes(payload, 0, len(payload)):
            if kind == b"mdhd":
                found.append(struct.unpack(">I", body[12:16])[0])
            elif kind in _CONTAINERS:
                walk(body)

    walk(moov)
    assert len(found) == 1, "exactly one track expected"
    return found[0]


def write_vfr_video(path: Path, durations_s: list[float]) -> list[float]:
    """A genuinely variable-frame-rate mp4: frame i lasts durations_s[i] in the container.

    Writes a constant-rate file with OpenCV, then rewrites the `stts` box (sample durations) and the duration
    fields of `mvhd`/`tkhd`/`mdhd`/`elst`. OpenCV puts `moov` after `mdat`, so no chunk offset moves.
    Returns each frame's presentation time in seconds, as the container now states it.
    """
    tmp = path.with_suffix(".cfr.mp4")
    write_indexed_video(tmp, len(durations_s))
    buf = tmp.read_bytes()
    tmp.unlink()
    top = _boxes(buf, 0, len(buf))
    kinds = [k for k, _ in top]
    assert kinds.index(b"mdat") < kinds.index(b"moov"), "moov must follow mdat"
    moov = dict(top)[b"moov"]
    scale = _media_timescale(moov)
    deltas = [max(1, round(d * scale)) for d in durations_s]
    media_total = sum(deltas)
    mvhd = next(body for kind, body in _boxes(moov, 0, len(moov)) if kind == b"mvhd")
    movie = {"value": round(media_total / scale * struct.unpack(">I", mvhd[12:16])[0])}
    out = b"".join(
        _rewrite(kind, body, deltas, media_total, movie) if kind == b"moov" else _pack(kind, body)
        for kind, body in top
    )
    path.write_bytes(out)
    starts = np.concatenate([[0], np.cumsum(deltas)[:-1]]) / scale
    return [float(t) for t in starts]


# --- a tiny but real ONNX emotion model ---------------------------------------------------------------------
def write_tiny_model(path: Path, labels: list[str], size: int = 48) -> Path:
    """A small ONNX model honouring the model contract: [N, size, size, 1] float32 0-255 -> [N, C] softmax.

    Its output depends on mean brightness only, so it exercises the real loading, batching and label mapping
    code without the bundled model. Writes the card (`.json`) beside it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 1])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(labels)])
    weights = numpy_helper.from_array(np.linspace(-0.02, 0.02, len(labels), dtype=np.float32)[None, :], "W")
    bias = numpy_helper.from_array(np.zeros(len(labels), np.float32), "B")
    shape = numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["column"]),
        helper.make_node("MatMul", ["column", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny_emotion", [x], [y], [weights, bias, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    card = {
        "labels": labels,
        "input": {"height": size, "width": size, "channels": 1, "dtype": "float32", "range": [0, 255]},
        "backbone": "tiny-test",
        "metrics": {},
        "training": {},
    }
    path.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    return path

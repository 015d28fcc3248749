"""Default settings, in a module light enough for the CLI to import before OpenCV or onnxruntime load."""

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, e.g. under taskset or cgroups)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


#: Video samples per second when neither --fps nor --every is given.
DEFAULT_FPS = 2.0
#: Minimum detector score for a face (YuNet).
DEFAULT_SCORE_THRESHOLD = 0.6
#: Faces whose shorter box side is below this many full-resolution pixels are ignored.
DEFAULT_MIN_FACE = 20
#: Frames wider than this are downscaled for detection; boxes are mapped back to full resolution. YuNet's cost
#: grows with pixels: at 512 px it costs about 0.65x of 640 px and still finds 96.8% of the faces it finds at
#: 640 px in the shared videos (the ones it misses are under ~15 px wide at 640 px). Photos: see below.
DEFAULT_WORKING_WIDTH = 512
#: Photos are detected at least this wide: a photo costs one detection, and a face missed there is a person
#: missed, not one sample of a track (at 512 px one of the shared photos' faces falls just under the score).
PHOTO_MIN_WORKING_WIDTH = 640
DETECTOR_CHOICES = ("auto", "yunet", "haar")
#: Width of the bins of the timeline table (`<out stem>_timeline.csv`), in seconds: one minute.
DEFAULT_BIN_S = 60.0
#: Sampled video frames decoded ahead by the background decoding thread (0: decode in the consumer's thread).
DEFAULT_PREFETCH = 2
#: Files processed in parallel, one worker process each: one per usable core.
DEFAULT_WORKERS = usable_cores()
#: Images whose header claims more pixels than this are refused before decoding (decompression bombs);
#: 250 megapixels covers 200 MP phone photos and keeps one decoded BGR image under about 750 MB.
DEFAULT_MAX_PIXELS = 250_000_000

#: Decoding threads per video (FFmpeg frame threading). Unset or 0: OpenCV's default, one per core, which suits a
#: single file being analysed; 1 suits runs where every core already has its own worker process: on 2 cores, 2
#: workers over the shared videos at --fps 5 spent 2-12% less CPU and up to 11% less wall time with 1 (three A/B
#: runs). A worker pool can set it in its workers' environment; decoding stays sequential either way.
DECODER_THREADS_ENV = "EMOTION_BATCH_DECODER_THREADS"

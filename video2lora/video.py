"""Video files for the project: the one frame sampler, and writing clips with PyAV.

Reading lives in the Hub file `video_processing_video2lora.py` ([`sample_video`]), so that a checkpoint loaded with
`trust_remote_code` samples a video exactly as the command line, the teacher, the trainer and the evaluation do; it is
re-exported here. [`write_video`] writes clips for the generated world and for tests.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from video_processing_video2lora import (
    SEGMENT_LAYOUTS,
    SampledVideo,
    VideoDecodeError,
    open_with_previous,
    place_segment,
    sample_indices,
    sample_video,
    segment_fraction,
    segment_spans,
    video_duration,
)

__all__ = ["SEGMENT_LAYOUTS", "SampledVideo", "VideoDecodeError", "open_with_previous", "place_segment", "sample_indices", "sample_video",
           "segment_fraction", "segment_spans", "video_duration", "write_video"]

# Codec picked by `write_video` from the file suffix when none is given.
DEFAULT_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}

# Quality-over-size settings: the written clips are re-read for training, so the round trip should stay close to the
# source; speed settings matter because the generated world writes thousands of small clips on CPU.
_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: float = 8.0, codec: str | None = None) -> None:
    """Encode `[T, H, W, 3]` uint8 RGB frames to a video file with PyAV, atomically.

    Even sizes are encoded as yuv420p (what every player supports). Odd sizes cannot be yuv420p, whose chroma is
    subsampled 2x2, so they are encoded as yuv444p instead of being padded or cropped: the decoded size then equals
    the written size. The file is written to a temporary name in the same directory and moved into place, so readers
    never see a half-written video.

    Args:
        path (`str` or `os.PathLike`): Destination; the suffix picks the container (`.mp4`, `.webm`, `.mkv`, `.mov`).
        frames (`np.ndarray`): `[T, H, W, 3]` uint8 RGB frames, `T >= 1`.
        fps (`float`, *optional*, defaults to 8.0): Frame rate.
        codec (`str`, *optional*): FFmpeg encoder name. Defaults by suffix: libx264 for `.mp4`/`.mkv`/`.mov`,
            libvpx-vp9 for `.webm`.

    Raises:
        `ValueError`: Bad frames, fps, an unknown suffix without `codec`, or an odd size with a codec that has no
            yuv444p mode.
    """
    path = Path(path)
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"frames must be a [T, H, W, 3] uint8 RGB array, got shape {shape} and dtype {dtype}")
    num_total, height, width = frames.shape[:3]
    if num_total == 0 or height == 0 or width == 0:
        raise ValueError(f"frames must hold at least one non-empty frame, got shape {tuple(frames.shape)}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    suffix = path.suffix.lower()
    if codec is None:
        if suffix not in DEFAULT_CODECS:
            raise ValueError(
                f"cannot pick a codec for suffix '{suffix}' of '{path}'; use one of {sorted(DEFAULT_CODECS)} or pass "
                "codec="
            )
        codec = DEFAULT_CODECS[suffix]

    pixel_format = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    supported_formats = {video_format.name for video_format in av.Codec(codec, "w").video_formats or ()}
    if supported_formats and pixel_format not in supported_formats:
        raise ValueError(
            f"codec {codec} cannot encode {width}x{height} frames ({pixel_format} unsupported); use even sizes or a "
            "codec with yuv444p such as libx264"
        )

    # 30000/1001-style NTSC rates survive the float round trip; plain rates stay exact.
    rate = Fraction(fps).limit_denominator(1001)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the real suffix so FFmpeg picks the same container format.
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(descriptor)
    try:
        with av.open(temporary_name, mode="w") as container:
            stream = container.add_stream(codec, rate=rate, options=_ENCODER_OPTIONS.get(codec, {}))
            stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
            for index, array in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = index
                frame.time_base = Fraction(1) / rate
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        # mkstemp creates the file private (0600); give it the replaced file's mode, or the usual 0644.
        os.chmod(temporary_name, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise

"""Video decoding, frame sampling and writing with PyAV.

There is no torchvision in this environment, so there is no `SmolVLMVideoProcessor` (DESIGN.md §9): this module is
the project's whole video input path. [`read_video`] decodes a file sequentially and keeps only the frames it samples,
so memory stays flat however long the clip is; [`sample_frames`] applies the same sampling to frames already in
memory; [`write_video`] writes clips for the generated world and for tests.

Sampling is uniform in *time*: the span is cut into `num_frames` equal bins and the frame on screen at the centre of
each bin is kept. Centres rather than bin starts keep the first and last frames of the span symmetric (neither edge
is favoured) and never land exactly on the span's end, which belongs to the next clip.

Timestamps are read from the container's presentation timestamps, never guessed from a frame rate, and are
expressed in seconds from the start of the sampled span (the clip's first frame when no span is given). That keeps
them within `[0, duration)`, which is what SmolVLM2's "Frame from MM:SS" prompt lines describe.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image

__all__ = ["SampledVideo", "VideoDecodeError", "read_video", "sample_frames", "write_video"]

# Codec picked by `write_video` from the file suffix when none is given.
DEFAULT_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}

# Quality-over-size settings: the written clips are re-read for training, so the round trip should stay close to the
# source; speed settings matter because the generated world writes thousands of small clips on CPU.
_ENCODER_OPTIONS = {
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"},
}

_RESAMPLE = PIL.Image.Resampling.BICUBIC

_GENERIC_HINT = (
    "check that the file plays (e.g. `ffprobe FILE`) or re-encode it (`ffmpeg -i FILE -c:v libx264 out.mp4`)"
)


class VideoDecodeError(ValueError):
    """Raised for every video that cannot be read, whatever the cause.

    The message is one line: `cannot read video '<path>': <reason>; <hint>`.

    Args:
        path (`str`): The video's path as the caller gave it.
        reason (`str`): What is wrong with the file.
        hint (`str`, *optional*): What to do about it; a generic suggestion when omitted.
    """

    def __init__(self, path: str | os.PathLike, reason: str, hint: str | None = None):
        self.path = os.fspath(path)
        # FFmpeg messages occasionally carry newlines; the message must stay on one line for logs and manifests.
        self.reason = " ".join(str(reason).split())
        self.hint = hint if hint is not None else _GENERIC_HINT
        super().__init__(f"cannot read video '{self.path}': {self.reason}; {self.hint}")

    def __reduce__(self):
        # Exceptions are pickled when they cross process boundaries (DataLoader workers, `datasets.map(num_proc=...)`);
        # the default reduce would call __init__ with the message alone.
        return type(self), (self.path, self.reason, self.hint)


@dataclass(frozen=True)
class SampledVideo:
    """Frames sampled from one clip.

    Args:
        frames (`np.ndarray`): `[N, H, W, 3]` uint8 RGB frames, in presentation order.
        timestamps (`list[float]`): For each frame, the second (from the start of the sampled span) at which it is on
            screen; non-decreasing and within `[0, duration)`.
        duration (`float`): Length in seconds of the whole clip, or of the span when `start`/`end` were given.
        path (`str`, *optional*): The file the frames were read from; `None` for frames that came from memory.
    """

    frames: np.ndarray
    timestamps: list[float]
    duration: float
    path: str | None

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)


def _check_num_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")


def _check_max_edge(max_edge: int | None) -> None:
    if max_edge is not None and (
        isinstance(max_edge, bool) or not isinstance(max_edge, (int, np.integer)) or max_edge < 1
    ):
        raise ValueError(f"max_edge must be a positive integer or None, got {max_edge!r}")


def _bin_centres(span_start: float, span_end: float, num_bins: int) -> list[float]:
    """Centres of `num_bins` equal bins over `[span_start, span_end)` (see the module docstring for why centres)."""
    bin_width = (span_end - span_start) / num_bins
    return [span_start + (index + 0.5) * bin_width for index in range(num_bins)]


def _fitted_size(width: int, height: int, max_edge: int | None) -> tuple[int, int]:
    """`(width, height)` scaled so the longest edge is at most `max_edge`, keeping aspect ratio, never upscaling."""
    if max_edge is None or max(width, height) <= max_edge:
        return width, height
    scale = max_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_array(image: PIL.Image.Image, size: tuple[int, int]) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, resample=_RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def _ffmpeg_reason(error: av.FFmpegError) -> str:
    # `str(error)` repeats the filename and errno; the strerror alone reads better after "cannot read video '...'".
    return error.strerror or str(error)


def _open_container(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r")
    except av.FFmpegError as error:
        raise VideoDecodeError(
            path,
            f"FFmpeg cannot open it as a video ({_ffmpeg_reason(error)}); it may be truncated or not a video at all",
        ) from error


def _probe_span(
    path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[float, float]:
    """Demux (without decoding) the video stream once to find where its frames start and end, in seconds.

    Container metadata cannot be trusted for this: Matroska/WebM often lack a per-stream duration and the container
    duration includes audio. Demuxing reads the packets' own timestamps at a fraction of the cost of decoding, and
    keeps only a running min/max so memory stays flat.
    """
    time_base = stream.time_base
    first_pts: int | None = None
    end_pts: int | None = None
    num_packets = 0
    for packet in container.demux(stream):
        if packet.pts is None:  # the demuxer's final empty flush packet, or a stream without timestamps
            continue
        num_packets += 1
        packet_end = packet.pts + (packet.duration or 0)
        first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
        end_pts = packet_end if end_pts is None else max(end_pts, packet_end)
    if first_pts is None or end_pts is None:
        raise VideoDecodeError(path, "the video stream contains no frames (no timestamped packets)")
    # MP4 stores a frame index up front; fewer packets than indexed means the file was cut short (e.g. a partial
    # download of a "faststart" MP4, which opens fine and would otherwise silently yield a prefix).
    if stream.frames and num_packets < stream.frames:
        raise VideoDecodeError(
            path,
            f"file is truncated: its index lists {stream.frames} frames but only {num_packets} are present",
            "re-download or re-encode the file",
        )
    start = float(first_pts * time_base)
    end = float(end_pts * time_base)
    if end <= start:
        # Packets without durations (a single frame, or some raw streams): the last frame lasts one frame period.
        rate = stream.average_rate or stream.guessed_rate or Fraction(1)
        end = start + float(1 / rate)
    return start, end


def read_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 12,
    start: float | None = None,
    end: float | None = None,
    max_edge: int | None = 384,
) -> SampledVideo:
    """Decode a video file and sample `num_frames` frames uniformly in time.

    The frames are decoded sequentially (no seeking, which is frame-inaccurate in many containers) and only the
    sampled ones are kept, so memory stays flat in the clip's length. Target times are the centres of `num_frames`
    equal bins over the span; for each, the frame on screen at that time is kept. A span holding `num_frames` frames
    or fewer returns all of them, once each.

    Args:
        path (`str` or `os.PathLike`): The video file (any container/codec FFmpeg reads: MP4, WebM, MKV, ...).
        num_frames (`int`, *optional*, defaults to 12): How many frames to sample.
        start (`float`, *optional*): Span start in seconds from the clip's first frame; defaults to the clip start.
        end (`float`, *optional*): Span end in seconds (exclusive); defaults to the clip end, and is clamped to it.
        max_edge (`int`, *optional*, defaults to 384): Resize so the longest edge is at most this many pixels,
            keeping the aspect ratio and never upscaling. `None` keeps the decoded size.

    Returns:
        [`SampledVideo`]: The frames, their timestamps (seconds from the span start), the span's duration and the path.

    Raises:
        `ValueError`: Invalid arguments (`num_frames < 1`, negative `start`, `start >= end`, a span past the clip end).
        [`VideoDecodeError`]: The file is missing, empty, not a video, truncated, has no video stream or no decodable
            frame.
    """
    _check_num_frames(num_frames)
    _check_max_edge(max_edge)
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"the span must satisfy start < end, got start={start} and end={end}")

    path_str = os.fspath(path)
    if not os.path.exists(path_str):
        raise VideoDecodeError(
            path_str, "file does not exist", "check the path (relative paths resolve against the data root)"
        )
    if os.path.isdir(path_str):
        raise VideoDecodeError(path_str, "path is a directory, not a file", "point to the video file itself")
    if os.path.getsize(path_str) == 0:
        raise VideoDecodeError(path_str, "file is empty (0 bytes)", "re-download or re-encode the file")

    with _open_container(path_str) as container:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "none"
            raise VideoDecodeError(
                path_str, f"the container has no video stream (streams: {kinds})", "pass a file that contains video"
            )
        try:
            clip_start, clip_end = _probe_span(path_str, container, container.streams.video[0])
        except av.FFmpegError as error:
            raise VideoDecodeError(path_str, f"demuxing failed ({_ffmpeg_reason(error)})") from error

    clip_duration = clip_end - clip_start
    span_start = 0.0 if start is None else float(start)
    span_end = clip_duration if end is None else min(float(end), clip_duration)
    if span_start >= clip_duration:
        raise ValueError(
            f"span start {span_start:.3f} s is at or past the end of '{path_str}' ({clip_duration:.3f} s long)"
        )

    # Second pass, decoding. Reopening rather than seeking back keeps the decode strictly sequential.
    with _open_container(path_str) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            times, frames = _decode_and_sample(
                container, stream, clip_start, span_start, span_end, num_frames, max_edge
            )
        except av.FFmpegError as error:
            raise VideoDecodeError(path_str, f"decoding failed ({_ffmpeg_reason(error)})") from error

    if not frames:
        where = "in the file" if start is None and end is None else f"in the span [{span_start}, {span_end})"
        raise VideoDecodeError(path_str, f"no frame could be decoded {where}")
    # Frames shown before the span starts are on screen at its start; report them at the span start.
    timestamps = [max(time, span_start) - span_start for time in times]
    return SampledVideo(frames=np.stack(frames), timestamps=timestamps, duration=span_end - span_start, path=path_str)


def _decode_and_sample(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    clip_start: float,
    span_start: float,
    span_end: float,
    num_frames: int,
    max_edge: int | None,
) -> tuple[list[float], list[np.ndarray]]:
    """Decode sequentially, keeping the frame on screen at each bin centre, plus every frame of a short span.

    A frame is on screen from its own timestamp until the next frame's, so a frame's fate is decided when the next
    one arrives (or the stream ends). Returns the kept frames' times (seconds from the clip start) and arrays.
    """
    targets = _bin_centres(span_start, span_end, num_frames)
    next_target = 0
    sampled_times: list[float] = []
    sampled_frames: list[np.ndarray] = []
    # Every frame on screen during the span, while there are at most `num_frames` of them; then dropped (None), so
    # memory stays bounded by 2 * num_frames frames. This guarantees "all frames, once each" for short spans even
    # with variable frame rates, where bin centres could skip a brief frame.
    span_times: list[float] | None = []
    span_frames: list[np.ndarray] | None = []
    output_size: tuple[int, int] | None = None

    previous_time: float | None = None
    previous_frame: av.VideoFrame | None = None

    def close_previous(next_time: float) -> None:
        """Decide the fate of the previous frame, which is on screen during `[previous_time, next_time)`."""
        nonlocal next_target, span_times, span_frames, output_size
        hits_target = False
        while next_target < len(targets) and targets[next_target] < next_time:
            hits_target = True
            next_target += 1
        on_screen_in_span = previous_time < span_end and next_time > span_start
        if not (hits_target or (on_screen_in_span and span_frames is not None)):
            return
        if output_size is None:
            # Fixed from the first kept frame so every frame has the same size even if the stream changes resolution.
            output_size = _fitted_size(previous_frame.width, previous_frame.height, max_edge)
        array = _to_array(previous_frame.to_image(), output_size)
        if hits_target:
            sampled_times.append(previous_time)
            sampled_frames.append(array)
        if on_screen_in_span and span_frames is not None:
            span_times.append(previous_time)
            span_frames.append(array)
            if len(span_frames) > num_frames:
                span_times = span_frames = None

    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        time = float(frame.pts * stream.time_base) - clip_start
        if previous_frame is not None:
            close_previous(time)
        if time >= span_end:
            # Nothing from here on is on screen during the span: stop decoding early.
            previous_frame = None
            break
        previous_time, previous_frame = time, frame
    if previous_frame is not None:
        # The last decoded frame stays on screen until the clip ends.
        close_previous(math.inf)

    if span_frames:
        return span_times, span_frames
    return sampled_times, sampled_frames


def sample_frames(
    frames: np.ndarray | Sequence[PIL.Image.Image],
    *,
    num_frames: int,
    fps: float | None = None,
    max_edge: int | None = 384,
) -> SampledVideo:
    """Sample and resize frames that are already in memory, exactly as [`read_video`] does for a file.

    Frame `i` is taken to be on screen from `i / fps` seconds; the frames at the centres of `num_frames` equal bins
    are kept, or all of them when there are at most `num_frames`.

    Args:
        frames (`np.ndarray` or `Sequence[PIL.Image.Image]`): A `[T, H, W, 3]` uint8 RGB array, or `T` PIL images of
            one size.
        num_frames (`int`): How many frames to sample.
        fps (`float`, *optional*): Frame rate used for the timestamps and the duration; 1.0 when `None`.
        max_edge (`int`, *optional*, defaults to 384): Longest-edge limit, as in [`read_video`].

    Returns:
        [`SampledVideo`] with `path=None`.

    Raises:
        `ValueError`: Empty input, wrong array shape or dtype, images of different sizes, or invalid arguments.
    """
    _check_num_frames(num_frames)
    _check_max_edge(max_edge)
    fps = 1.0 if fps is None else float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")

    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be a [T, H, W, 3] RGB array, got shape {tuple(frames.shape)}")
        if frames.dtype != np.uint8:
            raise ValueError(
                f"frames must have dtype uint8 (values 0-255), got {frames.dtype}; convert floats in [0, 1] with "
                "`(frames * 255).round().astype(np.uint8)`"
            )
        num_total, height, width = frames.shape[:3]
        if num_total == 0 or height == 0 or width == 0:
            raise ValueError(f"frames must hold at least one non-empty frame, got shape {tuple(frames.shape)}")

        def image_at(index: int) -> PIL.Image.Image:
            return PIL.Image.fromarray(frames[index], mode="RGB")

    else:
        images = list(frames)
        if not images:
            raise ValueError("frames is empty: pass at least one frame")
        for index, image in enumerate(images):
            if not isinstance(image, PIL.Image.Image):
                raise ValueError(
                    f"frames must be a [T, H, W, 3] uint8 array or a sequence of PIL images; item {index} is a "
                    f"{type(image).__name__}"
                )
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            raise ValueError(f"all PIL images must have the same size, got sizes {sorted(sizes)}")
        num_total = len(images)
        width, height = images[0].size

        def image_at(index: int) -> PIL.Image.Image:
            return images[index]

    if num_total <= num_frames:
        indices = list(range(num_total))
    else:
        # Frame i covers [i, i + 1) in units of frame periods, so the frame on screen at bin centre c is floor(c).
        indices = [math.floor(centre) for centre in _bin_centres(0.0, float(num_total), num_frames)]
    size = _fitted_size(width, height, max_edge)
    return SampledVideo(
        frames=np.stack([_to_array(image_at(index), size) for index in indices]),
        timestamps=[index / fps for index in indices],
        duration=num_total / fps,
        path=None,
    )


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

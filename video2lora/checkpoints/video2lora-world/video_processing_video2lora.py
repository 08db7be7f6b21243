"""The one frame sampler: a video file, a `[T, H, W, 3]` array or a list of PIL images in, sampled frames out.

Every door into Video2LoRA (`Video2LoRAModel.internalize`, the `video2lora` command line, the teacher, the trainer's
data and the evaluation) calls [`sample_video`], usually through `Video2LoRAProcessor.sample_video`, which fills in the
settings saved with the processor. One file therefore always gives the same frames, and so the same adapter.

Which frames are kept:
- **`fps` set (SmolVLM2's rule, the default for a real base).** The count is `round(fps * duration)`, at least 1 and
  at most `num_frames`; the indices are `linspace(first, last, count)` over the clip's frames, where `first` and
  `last` skip `skip_secs` at both ends when the clip is long enough. This is `SmolVLMVideoProcessor.sample_frames`
  (transformers 5.24) applied to the clip's frame count and rate, so a video gives the indices SmolVLM2 would take.
- **`fps=None` (exactly `num_frames`, uniform in time).** The span is cut into `num_frames` equal bins and the frame
  on screen at the centre of each bin is kept. Centres keep the first and last frames symmetric and never land on the
  span's end, which belongs to the next clip. The embedded default samples this way.
- Either way, a span holding no more frames than the rule asks for returns each of its frames once.

Frames are decoded with PyAV sequentially (no seeking, which is frame-inaccurate in many containers) and only the
sampled ones are kept, so memory stays flat in the clip's length. Decoding goes packet by packet, so a few damaged
packets (a bad block in a download, a flaky disk) do not lose the video: a sampled frame that does not decode is
replaced by the nearest frame that does, and `SampledVideo.damaged_frames` counts the replacements. A file where
fewer than half of the span's frames decode is refused, as are still images (a PNG or JPEG, even renamed `.mp4`):
their frames can be passed as an array instead. Timestamps are read from the container's
presentation timestamps, never guessed from a frame rate, and are seconds from the start of the sampled span, which
is what SmolVLM2's "Frame from MM:SS" prompt lines describe. Frames are resized so their longest edge is at most
`max_edge` (the base's vision resolution), keeping the aspect ratio and never upscaling.

This is a Hub file: it imports only torch, transformers, their own dependencies (numpy, Pillow, and PyAV, the decoder
transformers itself uses for video), its sibling Hub files and the standard library.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import PIL.Image

__all__ = ["SampledVideo", "VideoDecodeError", "check_sampling", "place_segment", "sample_indices", "sample_video",
           "segment_fraction", "segment_spans", "video_duration"]

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
        shown_path = self.path.replace("\r", "\\r").replace("\n", "\\n")  # a file name may hold a line break
        super().__init__(f"cannot read video '{shown_path}': {self.reason}; {self.hint}")

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
        damaged_frames (`int`, *optional*, defaults to 0): How many of the sampled frames did not decode (a damaged
            packet in the file) and were replaced by the nearest frame that did; their timestamps stay those of the
            frames they replace. Always 0 for frames from memory.
    """

    frames: np.ndarray
    timestamps: list[float]
    duration: float
    path: str | None
    damaged_frames: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)


# ---- the sampling rule ----------------------------------------------------------------------------------------------


def check_sampling(num_frames: int, fps: float | None, skip_secs: float, max_edge: int | None) -> None:
    """Raise `ValueError` naming the first sampling setting that is out of range."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                            or fps <= 0):
        raise ValueError(f"fps (frames sampled per second) must be a positive number or None, got {fps!r}")
    if not isinstance(skip_secs, (int, float)) or skip_secs < 0:
        raise ValueError(f"skip_secs must be a number >= 0, got {skip_secs!r}")
    if max_edge is not None and (
        isinstance(max_edge, bool) or not isinstance(max_edge, (int, np.integer)) or max_edge < 1
    ):
        raise ValueError(f"max_edge must be a positive integer or None, got {max_edge!r}")


def sample_indices(total_frames: int, frame_rate: float, *, num_frames: int, fps: float | None = None,
                   skip_secs: float = 1.0) -> list[int]:
    """
    Indices of the frames to keep out of `total_frames` frames shown at `frame_rate` per second (see the module
    docstring for the two rules).

    Args:
        total_frames (`int`): Frames in the clip (or span).
        frame_rate (`float`): The clip's own frame rate.
        num_frames (`int`): Most frames to keep; exactly this many (or all) when `fps` is `None`.
        fps (`float`, *optional*): Frames to keep per second of video, SmolVLM2's rule; `None` keeps `num_frames`.
        skip_secs (`float`, *optional*, defaults to 1): Seconds skipped at both ends of a long clip when `fps` is set.

    Returns:
        `list[int]`: Increasing, distinct indices in `[0, total_frames)`.
    """
    if total_frames < 1:
        return []
    if fps is None:
        if total_frames <= num_frames:
            return list(range(total_frames))
        # Frame i covers [i, i + 1) in frame periods, so the frame on screen at bin centre c is floor(c).
        return [math.floor((index + 0.5) * total_frames / num_frames) for index in range(num_frames)]
    duration = total_frames / frame_rate
    count = max(min(int(round(fps * duration)), num_frames), 1)
    first, last = 0, total_frames - 1
    if skip_secs > 0 and duration - 2 * skip_secs > num_frames * fps:
        first, last = int(skip_secs * frame_rate), int(total_frames - skip_secs * frame_rate)
    first, last = max(0, first), min(last, total_frames - 1)
    if first >= last:
        first, last = 0, total_frames - 1
    return sorted({int(index) for index in np.linspace(first, last, count, dtype=int)})


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


# ---- the one entry point ----------------------------------------------------------------------------------------------


def sample_video(
    video: str | os.PathLike | np.ndarray | Sequence[PIL.Image.Image],
    *,
    num_frames: int = 12,
    fps: float | None = None,
    skip_secs: float = 1.0,
    max_edge: int | None = 384,
    start: float | None = None,
    end: float | None = None,
    frame_rate: float | None = None,
    interleave: tuple[int, int] | None = None,
) -> SampledVideo:
    """Sample and resize frames from a video file, a `[T, H, W, 3]` uint8 array or a list of PIL images.

    Args:
        video: A file (any container/codec FFmpeg reads: MP4, WebM, MKV, ...), an RGB uint8 array, or PIL images of
            one size.
        num_frames (`int`, *optional*, defaults to 12): Most frames to keep (exactly this many when `fps` is `None`).
        fps (`float`, *optional*): Frames kept per second of video (SmolVLM2's rule); `None` keeps `num_frames`
            uniformly in time.
        skip_secs (`float`, *optional*, defaults to 1): With `fps`, seconds skipped at both ends of a long clip.
        max_edge (`int`, *optional*, defaults to 384): Resize so the longest edge is at most this many pixels.
        start / end (`float`, *optional*): A span of a file, in seconds from its first frame (`end` exclusive and
            clamped to the clip). Frames in memory are cut by the caller.
        frame_rate (`float`, *optional*): For frames in memory, their rate (frame `i` is on screen from
            `i / frame_rate` s); 1 when `None`. A file's rate comes from its timestamps.
        interleave (`tuple[int, int]`, *optional*): `(part, parts)`: pick `num_frames * parts` frames by the rule and
            keep only frames `part, part + parts, part + 2 * parts, ...` of them. The `parts` calls together read
            every picked frame, each covering the whole span at a lower rate and decoding only its own frames.

    Returns:
        [`SampledVideo`]: The frames, their timestamps (seconds from the span start), the span's duration and the path.

    Raises:
        `ValueError`: Invalid arguments or frames in memory of the wrong shape or type.
        [`VideoDecodeError`]: The file is missing, empty, a still image or not a video at all, truncated, has no
            video stream, or fewer than half of the frames on screen during the span decode. Fewer damaged frames are
            tolerated: each sampled frame that does not decode is replaced by the nearest one that does (see
            [`SampledVideo.damaged_frames`]).
    """
    check_sampling(num_frames, fps, skip_secs, max_edge)
    part, parts = check_interleave(interleave)
    rule = {"num_frames": num_frames * parts, "fps": fps, "skip_secs": skip_secs}
    if isinstance(video, (str, os.PathLike)):
        if frame_rate is not None:
            raise ValueError("frame_rate is for frames in memory; a file's rate comes from its timestamps")
        return _sample_file(os.fspath(video), rule, max_edge, start, end, part, parts)
    if start is not None or end is not None:
        raise ValueError("start/end cut a video file; slice frames in memory before passing them")
    return _sample_in_memory(video, rule, max_edge, frame_rate, part, parts)


def check_interleave(interleave: tuple[int, int] | None) -> tuple[int, int]:
    """`interleave` as `(part, parts)` (`None`: the whole, `(0, 1)`); `ValueError` when it is not one of the parts."""
    if interleave is None:
        return 0, 1
    if (not isinstance(interleave, (tuple, list)) or len(interleave) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in interleave)
            or not 0 <= interleave[0] < interleave[1]):
        raise ValueError(f"interleave must be (part, parts) with 0 <= part < parts, got {interleave!r}")
    return int(interleave[0]), int(interleave[1])


def _sample_in_memory(frames, rule: dict, max_edge: int | None, frame_rate: float | None, part: int = 0,
                      parts: int = 1) -> SampledVideo:
    frame_rate = 1.0 if frame_rate is None else float(frame_rate)
    if not math.isfinite(frame_rate) or frame_rate <= 0:
        raise ValueError(f"frame_rate must be a positive number, got {frame_rate}")
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

    indices = sample_indices(num_total, frame_rate, **rule)[part::parts]
    if not indices:
        raise ValueError(f"part {part} of {parts} interleaved parts is empty: the clip has only {num_total} frames")
    size = _fitted_size(width, height, max_edge)
    return SampledVideo(
        frames=np.stack([_to_array(image_at(index), size) for index in indices]),
        timestamps=[index / frame_rate for index in indices],
        duration=num_total / frame_rate,
        path=None,
    )


# ---- files ------------------------------------------------------------------------------------------------------------


def _import_av():
    try:
        import av
    except ImportError as error:  # transformers' own video loading needs it too
        raise ImportError("Reading a video file needs PyAV: `pip install av`.") from error
    return av


def _ffmpeg_reason(error) -> str:
    # `str(error)` repeats the filename and errno; the strerror alone reads better after "cannot read video '...'".
    return error.strerror or str(error)


def _open_container(path: str):
    av = _import_av()
    try:
        # Tags (title, encoder, ...) are never used here, and PyAV's strict decoding would turn one byte of damage in
        # them into a UnicodeDecodeError for a video whose frames are intact.
        return av.open(path, mode="r", metadata_errors="replace")
    except av.FFmpegError as error:
        raise VideoDecodeError(
            path,
            f"FFmpeg cannot open it as a video ({_ffmpeg_reason(error)}); it may be truncated or not a video at all",
        ) from error


def _probe(path: str, container, stream) -> tuple[float, float, int]:
    """Demux (without decoding) the video stream once: where its frames start and end, in seconds, and how many
    packets (frames) it holds.

    Container metadata cannot be trusted for this: Matroska/WebM often lack a per-stream duration and frame count,
    and the container duration includes audio. Demuxing reads the packets' own timestamps at a fraction of the cost
    of decoding, and keeps only a running min/max so memory stays flat.
    """
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
    start, end = float(first_pts * stream.time_base), float(end_pts * stream.time_base)
    if end <= start:
        # Packets without durations (a single frame, or some raw streams): the last frame lasts one frame period.
        rate = stream.average_rate or stream.guessed_rate or Fraction(1)
        end = start + float(1 / rate)
    return start, end, num_packets


def _sample_file(path: str, rule: dict, max_edge: int | None, start: float | None, end: float | None, part: int = 0,
                 parts: int = 1) -> SampledVideo:
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"the span must satisfy start < end, got start={start} and end={end}")
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file does not exist", "check the path")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "path is a directory, not a file", "point to the video file itself")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)", "re-download or re-encode the file")

    av = _import_av()
    with _open_container(path) as container:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "none"
            raise VideoDecodeError(
                path, f"the container has no video stream (streams: {kinds})", "pass a file that contains video"
            )
        stream = container.streams.video[0]
        try:
            clip_start, clip_end, num_packets = _probe(path, container, stream)
        except av.FFmpegError as error:
            raise VideoDecodeError(path, f"demuxing failed ({_ffmpeg_reason(error)})") from error
        image_format = _still_image_format(container, stream, num_packets)
        if image_format is not None:
            raise VideoDecodeError(
                path,
                f"it is a still image ({image_format}), not a video",
                "pass a video file, or pass the image's frames as an array to sample it as a one-frame video",
            )

    clip_duration = clip_end - clip_start
    span_start = 0.0 if start is None else float(start)
    span_end = clip_duration if end is None else min(float(end), clip_duration)
    if span_start >= clip_duration:
        raise ValueError(f"span start {span_start:.3f} s is at or past the end of '{path}' ({clip_duration:.3f} s long)")
    if rule["fps"] is None:
        # Bin centres over the span, in seconds: exact for variable frame rates too.
        width = (span_end - span_start) / rule["num_frames"]
        targets = [span_start + (index + 0.5) * width for index in range(rule["num_frames"])]
    else:
        # SmolVLM2's rule picks frame indices within the span; decoding keeps the frame on screen at each index's
        # centre, which is that frame itself at a constant rate.
        frame_rate = num_packets / clip_duration
        span_frames = max(1, round((span_end - span_start) * frame_rate))
        targets = [span_start + (index + 0.5) / frame_rate for index in sample_indices(span_frames, frame_rate, **rule)]
    # A span with at most this many frames is read whole (every frame once); a part keeps its share of them.
    keep_all_up_to = len(targets)
    targets = targets[part::parts]

    # Second pass, decoding. Reopening rather than seeking back keeps the decode strictly sequential.
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            decoded = _decode_at(container, stream, clip_start, span_start, span_end, targets, keep_all_up_to,
                                 max_edge, part, parts)
        except av.FFmpegError as error:
            # Undecodable packets are skipped one by one; what reaches here is the demuxer failing mid-stream.
            raise VideoDecodeError(path, f"decoding failed ({_ffmpeg_reason(error)})") from error

    where = "in the file" if start is None and end is None else f"in the span [{span_start}, {span_end})"
    failure = f" ({decoded.first_failure})" if decoded.first_failure else ""
    if decoded.span_decodable == 0:
        if decoded.num_failures:
            frames = "the only frame" if decoded.span_frames == 1 else f"none of the {decoded.span_frames} frames"
            raise VideoDecodeError(path, f"decoding failed: {frames} {where} could be decoded{failure}")
        raise VideoDecodeError(path, f"no frame could be decoded {where}")
    if 2 * decoded.span_decodable < decoded.span_frames:
        raise VideoDecodeError(
            path,
            f"decoding failed for {decoded.span_frames - decoded.span_decodable} of the {decoded.span_frames} frames "
            f"{where}{failure}; at least half of them must decode",
            "the file is damaged: re-download it, or re-encode what still decodes "
            "(`ffmpeg -err_detect ignore_err -i FILE -c:v libx264 out.mp4`)",
        )
    if not decoded.frames:
        raise ValueError(f"part {part} of {parts} interleaved parts of '{path}' is empty: too few frames {where}")
    # Frames shown before the span starts are on screen at its start; report them at the span start.
    timestamps = [max(time, span_start) - span_start for time in decoded.times]
    return SampledVideo(frames=np.stack(decoded.frames), timestamps=timestamps, duration=span_end - span_start,
                        path=path, damaged_frames=decoded.damaged)


# FFmpeg's demuxers for single pictures: `image2` (by file name), one `<format>_pipe` per image format (by content, so
# a PNG renamed `.mp4` still lands here), and `gif`/`apng`, which also read animations.
_IMAGE_DEMUXERS = ("image2", "gif", "apng")
_IMAGE_CODEC_NAMES = {"mjpeg": "jpeg"}


def _still_image_format(container, stream, num_packets: int) -> str | None:
    """The image format (`"png"`, `"jpeg"`, ...) when the file is one still picture, else `None`.

    Only a single frame from an image demuxer counts: an animated GIF or PNG, concatenated JPEGs (an MJPEG stream)
    and a one-frame MP4 are videos.
    """
    if num_packets != 1:
        return None
    names = container.format.name.split(",")
    for name in names:
        if name.endswith("_pipe"):
            return name.removesuffix("_pipe")
    if any(name in _IMAGE_DEMUXERS for name in names):
        codec_name = stream.codec_context.name
        return _IMAGE_CODEC_NAMES.get(codec_name, codec_name)
    return None


@dataclass
class _Failures:
    """Decoder errors met while decoding one stream: how many, and the first one's message."""

    count: int = 0
    first: str | None = None

    def add(self, message: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = message


def _decoded_slots(container, stream, failures: _Failures) -> Iterator[tuple[int, object | None]]:
    """Decode the stream packet by packet and yield `(pts, frame)` for each of its frames in presentation order, with
    `frame=None` for a frame that could not be decoded.

    A packet the decoder rejects is skipped instead of aborting the whole video, and recorded in `failures`. A frame
    is missing when a frame with a later timestamp comes out first (decoders emit frames in presentation order), or
    when the stream ends before it came out. Frames the decoder itself flags as corrupt (decoded with concealed
    errors) count as missing too.
    """
    av = _import_av()
    # Timestamps of the packets (frames) demuxed but not yet decoded. Packets arrive in decode order, which differs
    # from presentation order only within the codec's reorder window, so this stays a handful of integers.
    pending: list[int] = []
    last_pts: int | None = None

    def missing_before(pts: float) -> Iterator[tuple[int, None]]:
        nonlocal last_pts
        while pending and pending[0] < pts:
            missing = heapq.heappop(pending)
            if last_pts is None or missing > last_pts:  # a stray late packet would step back in time: dropped
                last_pts = missing
                yield missing, None

    for packet in container.demux(stream):
        if packet.pts is not None:
            heapq.heappush(pending, packet.pts)
        try:
            frames = packet.decode()  # the final empty packet flushes the decoder's delayed frames
        except av.FFmpegError as error:
            failures.add(_ffmpeg_reason(error))
            continue
        for frame in frames:
            if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                continue
            yield from missing_before(frame.pts)
            if pending and pending[0] == frame.pts:
                heapq.heappop(pending)
            last_pts = frame.pts
            yield frame.pts, None if getattr(frame, "is_corrupt", False) else frame
    yield from missing_before(math.inf)


@dataclass
class _Decoded:
    """What `_decode_at` kept, and how damaged the span was."""

    times: list[float]
    frames: list[np.ndarray]
    damaged: int  # kept frames taken from a neighbour because their own frame did not decode
    span_frames: int  # frames on screen during the span
    span_decodable: int  # of those, the ones that decoded
    num_failures: int
    first_failure: str | None


def _decode_at(container, stream, clip_start: float, span_start: float, span_end: float, targets: list[float],
               keep_all_up_to: int, max_edge: int | None, part: int = 0, parts: int = 1) -> _Decoded:
    """Decode sequentially, keeping the frame on screen at each target time, or every frame of a span that holds at
    most `keep_all_up_to` of them (with `parts`, only frames `part, part + parts, ...` of those).

    A frame is on screen from its own timestamp until the next frame's, so a frame's fate is decided when the next
    one arrives (or the stream ends). A frame to keep that did not decode is replaced by the nearest decodable frame
    in time (the earlier one on a tie), keeping its own timestamp, so damage never shifts the sampled times. Times are
    seconds from the clip start.
    """
    next_target = 0
    # Kept frames as `[time, array, damaged]`; a damaged entry's array is filled in once its replacement is known.
    sampled: list[list] = []
    # Every frame on screen during the span, while there are at most `keep_all_up_to` of them; then dropped (None),
    # so memory stays bounded. This guarantees "all frames, once each" for short spans even with variable frame
    # rates, where target times could skip a brief frame.
    in_span: list[list] | None = []
    in_span_count = 0  # frames on screen during the span so far, kept or not
    waiting: list[list] = []  # damaged entries waiting for the next decodable frame
    output_size: tuple[int, int] | None = None
    span_frames = span_decodable = 0

    # The last decodable frame: `[time, frame, array or None]`, the array converted once on first use.
    last_good: list | None = None
    failures = _Failures()

    def to_array(frame) -> np.ndarray:
        nonlocal output_size
        if output_size is None:
            # Fixed from the first kept frame so every frame has the same size even if the stream changes resolution.
            output_size = _fitted_size(frame.width, frame.height, max_edge)
        return _to_array(frame.to_image(), output_size)

    def good_array(good: list) -> np.ndarray:
        if good[2] is None:
            good[2] = to_array(good[1])
        return good[2]

    def close(time: float, good: list | None, next_time: float) -> None:
        """Decide the fate of the frame on screen during `[time, next_time)`; `good` is None if it did not decode."""
        nonlocal next_target, in_span, in_span_count, span_frames, span_decodable
        hits_target = False
        while next_target < len(targets) and targets[next_target] < next_time:
            hits_target = True
            next_target += 1
        on_screen_in_span = time < span_end and next_time > span_start
        if on_screen_in_span:
            span_frames += 1
            span_decodable += good is not None
        if not (hits_target or (on_screen_in_span and in_span is not None)):
            return
        if good is not None:
            entry = [time, good_array(good), False]
        else:
            entry = [time, None, True]
            waiting.append(entry)
        if hits_target:
            sampled.append(entry)
        if on_screen_in_span and in_span is not None:
            if in_span_count % parts == part:
                in_span.append(entry)
            in_span_count += 1
            if in_span_count > keep_all_up_to:
                in_span = None

    def replace_waiting(next_good: list | None) -> None:
        """Fill the damaged entries with the nearer of the last decodable frame and `next_good` (None: stream end)."""
        for entry in waiting:
            time = entry[0]
            use_next = next_good is not None and (last_good is None or next_good[0] - time < time - last_good[0])
            if use_next or last_good is not None:
                entry[1] = good_array(next_good if use_next else last_good)
        waiting.clear()

    previous: tuple[float, list | None] | None = None
    for pts, frame in _decoded_slots(container, stream, failures):
        time = float(pts * stream.time_base) - clip_start
        good = None if frame is None else [time, frame, None]
        if previous is not None:
            close(*previous, time)
        if good is not None:
            replace_waiting(good)
            last_good = good
        if time >= span_end:
            # Nothing from here on is on screen during the span: stop decoding early, once every damaged frame kept
            # has its replacement.
            previous = None
            if not waiting:
                break
            continue
        previous = (time, good)
    if previous is not None:
        # The last frame stays on screen until the clip ends.
        close(*previous, math.inf)
    replace_waiting(None)

    kept = sampled if in_span is None else in_span
    kept = [entry for entry in kept if entry[1] is not None]  # only without any decodable frame, refused by the caller
    return _Decoded(
        times=[entry[0] for entry in kept],
        frames=[entry[1] for entry in kept],
        damaged=sum(entry[2] for entry in kept),
        span_frames=span_frames,
        span_decodable=span_decodable,
        num_failures=failures.count,
        first_failure=failures.first,
    )


def video_duration(path: str | os.PathLike) -> float:
    """Seconds from a video file's first frame to the end of its last, read from packet timestamps without decoding
    (what `sample_video` calls the clip's duration; spans and segments are cut against it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "file does not exist" if not os.path.exists(path) else "path is not a file",
                               "check the path")
    av = _import_av()
    with _open_container(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "the container has no video stream", "pass a file that contains video")
        try:
            start, end, _ = _probe(path, container, container.streams.video[0])
        except av.FFmpegError as error:
            raise VideoDecodeError(path, f"demuxing failed ({_ffmpeg_reason(error)})") from error
    return end - start


# How a video's k segments divide its frames: k stretches one after the other, or k interleaved parts (frames
# i, i + k, ...) that each cover the whole video at 1/k of the rate.
SEGMENT_LAYOUTS = ("contiguous", "interleaved")


def segment_spans(start: float, end: float, *, segments: int | None = None,
                  segment_seconds: float | None = None) -> list[tuple[float, float]]:
    """
    `(start, end)` seconds of each non-overlapping segment of the span `[start, end)`: `segments` equal ones, or
    ones of `segment_seconds` (the last may be shorter). The one rule for cutting a long video, shared by
    `Video2LoRAModel.internalize` and the trainer's composed examples, so training composes what inference composes.
    """
    if (segments is None) == (segment_seconds is None):
        raise ValueError("Give segments or segment_seconds, exactly one.")
    if segments is not None and (isinstance(segments, bool) or not isinstance(segments, int) or segments < 1):
        raise ValueError(f"segments must be an integer >= 1, got {segments!r}.")
    if segment_seconds is not None and not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be a positive number, got {segment_seconds!r}.")
    if not end > start:
        raise ValueError(f"The span [{start}, {end}) s is empty.")
    # 1e-9: a span of exactly 2 x segment_seconds is two segments, not a third of zero length.
    count = segments or max(1, math.ceil((end - start) / segment_seconds - 1e-9))
    width = (end - start) / count if segments else segment_seconds
    bounds = [start + index * width for index in range(count)] + [end]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def place_segment(timestamps: Sequence[float], segment_start: float,
                  whole: tuple[float, float]) -> tuple[list[float], float]:
    """
    A segment's frame times and duration as the whole video's prompt would state them: `timestamps` (seconds from
    the segment's start, as [`sample_video`] returns them) shifted to seconds from the start of `whole`, and the
    duration of `whole`. Without this every segment reads as the opening of a short video, so its adapter cannot say
    where in the video it happened and a composed adapter cannot tell "at the start" from "at the end", or which
    segment's events came first. Shared by `Video2LoRAModel.internalize` and the trainer's composed examples.

    Args:
        timestamps: the segment's frame times, from its own start.
        segment_start: the second of the file at which the segment starts.
        whole: `(start, end)` seconds of what is being read in segments (the file, or a span of it).

    Returns:
        `(timestamps, duration)`: frame times from the start of `whole`, and its length.
    """
    offset = segment_start - whole[0]
    return [offset + time for time in timestamps], whole[1] - whole[0]


def open_with_previous(frames: np.ndarray, timestamps: Sequence[float], previous_frames: np.ndarray,
                       previous_timestamps: Sequence[float], overlap: int) -> tuple[np.ndarray, list[float]]:
    """
    A placed segment's frames `[T, H, W, 3]` and times opened with the last `overlap` frames of the segment before
    (its own frames, at their own times), so that a change between the two is seen by this one. Shared by
    `Video2LoRAModel.internalize(segment_overlap=...)` and the trainer's composed examples (`--segment_overlap`).

    Returns:
        `(frames, timestamps)`: `[overlap + T, H, W, 3]` and their times.
    """
    return (np.concatenate([previous_frames[-overlap:], frames]),
            [*previous_timestamps[-overlap:], *timestamps])


def segment_fraction(span: tuple[float, float], whole: tuple[float, float]) -> tuple[float, float]:
    """Where a segment `span` (seconds) lies in `whole`: the fractions of `whole` at which it starts and ends, what
    the perceiver is told with `use_segment_place` (a whole video is `(0, 1)`)."""
    length = whole[1] - whole[0]
    return (span[0] - whole[0]) / length, (span[1] - whole[0]) / length

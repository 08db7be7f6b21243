"""Tests for the one frame sampler (`sample_video`) and `write_video`: PyAV decoding, uniform sampling, resizing, writing and every unreadable-video case.

Every clip is written here with PyAV. Frames are never black (SmolVLM drops all-zero frames as padding), and each
frame carries its index in the blue channel so a test can tell *which* frame was sampled after lossy compression.
"""

from __future__ import annotations

import math
import os
import pickle
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import PIL.Image
import pytest

from video2lora.video import SampledVideo, VideoDecodeError, sample_video, write_video

FPS = 8.0


def make_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Non-black frames: red/green gradients, and a blue level that identifies the frame index (see `frame_index`)."""
    rows, cols = np.mgrid[0:height, 0:width]
    red = 40 + (cols * 160) // max(width - 1, 1)
    green = 40 + (rows * 160) // max(height - 1, 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        frames[index, ..., 0] = red
        frames[index, ..., 1] = green
        frames[index, ..., 2] = 30 + 9 * (index % 24)
    return frames


def frame_index(frame: np.ndarray) -> int:
    """The index (mod 24) encoded by `make_frames`, recovered from the mean blue level."""
    return round((float(frame[..., 2].mean()) - 30) / 9)


def expected_sample(num_total: int, num_frames: int) -> list[int]:
    """Indices the sampler must pick: the frame on screen at the centre of each of `num_frames` equal bins."""
    if num_total <= num_frames:
        return list(range(num_total))
    return [math.floor((k + 0.5) * num_total / num_frames) for k in range(num_frames)]


@pytest.fixture(scope="module")
def clip_20(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A 20-frame, 2.5 s clip at 8 fps, 48x64 (H x W)."""
    frames = make_frames(20, 48, 64)
    path = str(tmp_path_factory.mktemp("clips") / "clip_20.mp4")
    write_video(path, frames, fps=FPS)
    return path, frames


def assert_valid_timestamps(video: SampledVideo) -> None:
    assert len(video.timestamps) == len(video.frames)
    assert (np.diff(video.timestamps) > 0).all(), video.timestamps
    assert all(0.0 <= t < video.duration for t in video.timestamps), (video.timestamps, video.duration)


# ---------------------------------------------------------------------------------------------------------------------
# Round trips and sampling
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "codec_name"), [(".mp4", "h264"), (".webm", "vp9"), (".mkv", "h264")])
def test_round_trip_keeps_frames_times_and_content(tmp_path, suffix, codec_name):
    frames = make_frames(20, 48, 64)
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, fps=FPS)

    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == codec_name

    video = sample_video(path, num_frames=20, max_edge=None)
    assert video.path == str(path)
    assert video.frames.shape == (20, 48, 64, 3)
    assert video.frames.dtype == np.uint8
    assert video.timestamps == pytest.approx([i / FPS for i in range(20)])
    assert video.duration == pytest.approx(20 / FPS)
    assert [frame_index(frame) for frame in video.frames] == list(range(20))
    assert np.abs(video.frames.astype(int) - frames.astype(int)).mean() < 4
    assert_valid_timestamps(video)


def test_uniform_sampling_keeps_the_frame_at_each_bin_centre(clip_20):
    path, _ = clip_20
    video = sample_video(path, num_frames=4, max_edge=None)
    # Bins of 0.625 s; centres 0.3125, 0.9375, 1.5625, 2.1875 s fall in frames 2, 7, 12, 17.
    assert expected_sample(20, 4) == [2, 7, 12, 17]
    assert [frame_index(frame) for frame in video.frames] == [2, 7, 12, 17]
    assert video.timestamps == pytest.approx([0.25, 0.875, 1.5, 2.125])
    assert video.duration == pytest.approx(2.5)


def test_default_samples_twelve_frames(clip_20):
    path, _ = clip_20
    video = sample_video(path)
    assert [frame_index(frame) for frame in video.frames] == expected_sample(20, 12)
    assert_valid_timestamps(video)


def test_fewer_frames_than_requested_returns_each_once(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, make_frames(5, 32, 32), fps=FPS)
    video = sample_video(path, num_frames=12)
    assert [frame_index(frame) for frame in video.frames] == [0, 1, 2, 3, 4]
    assert video.timestamps == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert video.duration == pytest.approx(5 / FPS)


def test_single_frame_clip(tmp_path):
    path = tmp_path / "one.mp4"
    write_video(path, make_frames(1, 16, 16), fps=FPS)
    video = sample_video(path, num_frames=12)
    assert video.frames.shape == (1, 16, 16, 3)
    assert video.timestamps == [0.0]
    assert video.duration == pytest.approx(1 / FPS)
    assert video.frames.min() > 0  # not a black padding frame


def test_many_frames_with_flat_memory(tmp_path):
    num_total, fps = 2000, 25.0
    path = tmp_path / "long.mp4"
    write_video(path, make_frames(num_total, 16, 16), fps=fps)
    tracemalloc.start()
    try:
        video = sample_video(path, num_frames=12)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Keeping every decoded frame would hold 2000 * 16 * 16 * 3 bytes = 1.5 MB of arrays alone.
    assert peak_bytes < 500_000
    expected = expected_sample(num_total, 12)
    assert video.frames.shape == (12, 16, 16, 3)
    assert video.duration == pytest.approx(num_total / fps)
    assert video.timestamps == pytest.approx([index / fps for index in expected])
    assert [frame_index(frame) for frame in video.frames] == [index % 24 for index in expected]
    assert_valid_timestamps(video)


@pytest.mark.parametrize("fps", [None, 4.0])
def test_interleaved_parts_together_are_the_whole_sample(tmp_path, fps):
    num_total = 400
    path = tmp_path / "long.mp4"
    write_video(path, make_frames(num_total, 16, 16), fps=25.0)
    whole = sample_video(path, num_frames=12, fps=fps, skip_secs=0)
    parts = [sample_video(path, num_frames=3, fps=fps, skip_secs=0, interleave=(part, 4)) for part in range(4)]
    for part, video in enumerate(parts):  # each part spans the whole clip at a quarter of the rate
        assert video.timestamps == pytest.approx(whole.timestamps[part::4])
        np.testing.assert_array_equal(video.frames, whole.frames[part::4])
        assert video.duration == pytest.approx(whole.duration)
    # A span that holds fewer frames than asked for is read whole; each part keeps its share of its frames.
    short = sample_video(path, num_frames=12, start=0.0, end=0.25)
    shares = [sample_video(path, num_frames=3, start=0.0, end=0.25, interleave=(part, 4)) for part in range(4)]
    assert [t for video in shares for t in video.timestamps] == pytest.approx(
        [t for part in range(4) for t in short.timestamps[part::4]])
    frames = make_frames(40, 16, 16)
    in_memory = sample_video(frames, num_frames=8, frame_rate=FPS)
    np.testing.assert_array_equal(sample_video(frames, num_frames=4, frame_rate=FPS, interleave=(1, 2)).frames,
                                  in_memory.frames[1::2])
    for interleave in [(2, 2), (-1, 2), (0, 0), (1.0, 2), 3]:
        with pytest.raises(ValueError, match="interleave"):
            sample_video(frames, num_frames=4, interleave=interleave)
    with pytest.raises(ValueError, match="part 3 of 4 interleaved parts"):
        sample_video(frames[:3], num_frames=4, interleave=(3, 4))


def test_span_sampling_is_relative_to_the_span(clip_20):
    path, _ = clip_20
    video = sample_video(path, num_frames=4, start=1.0, end=2.0, max_edge=None)
    # Bins of 0.25 s from 1.0 s; centres 1.125, 1.375, 1.625, 1.875 s fall in frames 9, 11, 13, 15.
    assert [frame_index(frame) for frame in video.frames] == [9, 11, 13, 15]
    assert video.timestamps == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert video.duration == pytest.approx(1.0)
    assert_valid_timestamps(video)


def test_span_end_is_clamped_to_the_clip(clip_20):
    path, _ = clip_20
    video = sample_video(path, num_frames=12, start=2.0, end=60.0)
    assert [frame_index(frame) for frame in video.frames] == [16, 17, 18, 19]
    assert video.duration == pytest.approx(0.5)
    assert video.timestamps == pytest.approx([0.0, 0.125, 0.25, 0.375])


def test_span_inside_one_frame_returns_the_frame_on_screen(clip_20):
    path, _ = clip_20
    video = sample_video(path, num_frames=3, start=0.51, end=0.52)
    assert [frame_index(frame) for frame in video.frames] == [4]  # frame 4 is on screen from 0.5 s to 0.625 s
    assert video.timestamps == [0.0]


def test_span_starting_after_the_clip_is_a_value_error(clip_20):
    path, _ = clip_20
    with pytest.raises(ValueError, match="past the end"):
        sample_video(path, start=10.0)


@pytest.mark.parametrize(
    ("max_edge", "expected_hw"),
    [(32, (24, 32)), (64, (48, 64)), (1000, (48, 64)), (None, (48, 64)), (10, (8, 10))],
)
def test_max_edge_resizes_keeping_aspect_and_never_upscales(clip_20, max_edge, expected_hw):
    path, frames = clip_20
    video = sample_video(path, num_frames=3, max_edge=max_edge)
    assert video.frames.shape[1:3] == expected_hw
    # Resizing averages a gradient; the mean colour must survive it.
    assert abs(float(video.frames[..., 0].mean()) - float(frames[..., 0].mean())) < 6


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv"])
def test_odd_size_round_trip_keeps_the_visible_size(tmp_path, suffix):
    frames = make_frames(6, 17, 33)
    path = tmp_path / f"odd{suffix}"
    write_video(path, frames, fps=FPS)
    video = sample_video(path, num_frames=6, max_edge=None)
    assert video.frames.shape == (6, 17, 33, 3)
    assert [frame_index(frame) for frame in video.frames] == list(range(6))
    assert np.abs(video.frames.astype(int) - frames.astype(int)).mean() < 4


def test_extreme_aspect_ratio_is_resized_proportionally(tmp_path):
    path = tmp_path / "wide.mp4"
    write_video(path, make_frames(3, 20, 200), fps=FPS)
    video = sample_video(path, num_frames=3, max_edge=50)
    assert video.frames.shape == (3, 5, 50, 3)


def test_fractional_frame_rate_timestamps_come_from_pts(tmp_path):
    path = tmp_path / "ntsc.mkv"
    fps = 30000 / 1001
    write_video(path, make_frames(10, 16, 16), fps=fps)
    video = sample_video(path, num_frames=10)
    # Matroska stores milliseconds, so each timestamp is the frame time rounded to 1 ms.
    assert video.timestamps == pytest.approx([i / fps for i in range(10)], abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Unreadable videos and invalid arguments
# ---------------------------------------------------------------------------------------------------------------------


def write_audio_only(path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        tone = (0.3 * np.sin(np.arange(1024 * 8) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(
                tone[None, index * 1024 : (index + 1) * 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = 16000
            frame.pts = index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_with_undecodable_packets(source, path) -> None:
    """Copy `source`'s video packets with their payload zeroed: timestamps intact, nothing decodable."""
    with av.open(str(source)) as source_container, av.open(str(path), mode="w") as container:
        source_stream = source_container.streams.video[0]
        stream = container.add_stream_from_template(source_stream)
        for packet in source_container.demux(source_stream):
            if packet.pts is None:
                continue
            zeroed = av.Packet(bytes(packet.size))
            zeroed.pts, zeroed.dts, zeroed.time_base = packet.pts, packet.dts, packet.time_base
            zeroed.is_keyframe = packet.is_keyframe
            zeroed.stream = stream
            container.mux(zeroed)


def write_header_only(source, path) -> None:
    """A container declaring a video stream that holds no frame at all."""
    with av.open(str(source)) as source_container:
        container = av.open(str(path), mode="w")
        container.add_stream_from_template(source_container.streams.video[0])
        container.start_encoding()
        container.close()


def write_truncated_faststart_mp4(path) -> None:
    """The first half of an MP4 whose index is at the front: it opens, but half the indexed frames are missing."""
    full = path.with_name("full_" + path.name)
    with av.open(str(full), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        noise = np.random.default_rng(0).integers(1, 255, (40, 32, 32, 3), dtype=np.uint8)
        for array in noise:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_bad_video(kind: str, tmp_path, good_path) -> tuple[str, str]:
    """Write one kind of unreadable video; returns its path and a fragment its error reason must contain."""
    path = tmp_path / f"{kind}.mp4"
    if kind == "missing":
        return str(path), "does not exist"
    if kind == "directory":
        path.mkdir()
        return str(path), "directory"
    if kind == "empty":
        path.write_bytes(b"")
        return str(path), "empty"
    if kind == "text":
        path.write_text("this is a text file, not a video\n" * 20)
        return str(path), "cannot open it"
    if kind == "truncated":
        data = open(good_path, "rb").read()
        path.write_bytes(data[: len(data) // 2])
        return str(path), "truncated"
    if kind == "truncated_faststart":
        write_truncated_faststart_mp4(path)
        return str(path), "truncated"
    if kind == "audio_only":
        write_audio_only(path)
        return str(path), "no video stream"
    if kind in ("png", "jpeg", "png_named_mp4"):
        image = PIL.Image.fromarray(make_frames(1, 24, 32)[0])
        image_format = kind.removesuffix("_named_mp4")
        if kind != "png_named_mp4":
            path = path.with_suffix(f".{image_format}")
        image.save(path, format=image_format.upper())
        return str(path), f"still image ({image_format})"
    path = path.with_suffix(".mkv")
    if kind == "undecodable":
        write_with_undecodable_packets(good_path, path)
        return str(path), "decoding failed"
    if kind == "no_frames":
        write_header_only(good_path, path)
        return str(path), "cannot open it"
    raise AssertionError(kind)


BAD_KINDS = [
    "missing",
    "directory",
    "empty",
    "text",
    "truncated",
    "truncated_faststart",
    "audio_only",
    "png",
    "jpeg",
    "png_named_mp4",
    "undecodable",
    "no_frames",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_unreadable_video_raises_video_decode_error(tmp_path, clip_20, kind):
    path, reason_fragment = make_bad_video(kind, tmp_path, clip_20[0])
    with pytest.raises(VideoDecodeError) as caught:
        sample_video(path)
    error = caught.value
    assert error.path == path
    assert reason_fragment in error.reason
    message = str(error)
    assert message.startswith(f"cannot read video '{path}': {error.reason}")
    assert "\n" not in message
    assert isinstance(error, ValueError)


def test_still_image_hint_points_to_frames_in_memory(tmp_path, clip_20):
    path, _ = make_bad_video("png_named_mp4", tmp_path, clip_20[0])
    with pytest.raises(VideoDecodeError, match="pass the image's frames as an array"):
        sample_video(path)
    # The image's one frame in memory is a one-frame video, deliberately.
    frames = np.asarray(PIL.Image.open(path).convert("RGB"))[None]
    assert sample_video(frames).num_frames == 1


def test_animated_gif_is_a_video_not_a_still_image(tmp_path):
    path = tmp_path / "anim.gif"
    images = [PIL.Image.fromarray(frame) for frame in make_frames(6, 16, 16)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125)
    video = sample_video(path, num_frames=6)
    assert [frame_index(frame) for frame in video.frames] == list(range(6))


@pytest.mark.parametrize("suffix", [".webm", ".mp4"])
def test_a_damaged_tag_does_not_lose_the_video(tmp_path, suffix):
    """Found by tests/test_fuzz.py: a bad byte in a tag (the muxer's name here) made PyAV raise UnicodeDecodeError."""
    path = tmp_path / f"clip{suffix}"
    write_video(path, make_frames(4, 16, 16))
    data = path.read_bytes()
    assert b"Lavf" in data
    path.write_bytes(data.replace(b"Lavf", b"La\x87f"))
    video = sample_video(path, num_frames=4)
    assert [frame_index(frame) for frame in video.frames] == [0, 1, 2, 3]


def noisy_clip(path, num_frames: int = 48) -> np.ndarray:
    """A clip whose frames carry noise in red and green: every packet is a few KB, so a damaged 2 KB block in the
    file hits one or two frames instead of the index. Blue still identifies the frame (see `frame_index`)."""
    frames = make_frames(num_frames, 64, 64)
    frames[..., :2] = np.random.default_rng(1).integers(40, 200, frames[..., :2].shape, dtype=np.uint8)
    write_video(path, frames, fps=FPS)
    return frames


def overwrite(path, start: int, size: int, seed: int) -> None:
    data = bytearray(path.read_bytes())
    data[start : start + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def undecodable_timestamps(path) -> list[int]:
    """The presentation timestamps of the frames FFmpeg cannot decode (or flags as corrupt), found independently
    of the sampler by decoding every packet with the same threading."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        packets, decoded = set(), set()
        for packet in container.demux(stream):
            if packet.pts is not None:
                packets.add(packet.pts)
            try:
                decoded |= {frame.pts for frame in packet.decode() if not frame.is_corrupt}
            except av.FFmpegError:
                pass
    return sorted(packets - decoded)


def test_a_damaged_block_in_the_middle_costs_only_the_frames_it_hits(tmp_path):
    path = tmp_path / "damaged.mp4"
    noisy_clip(path)
    intact = sample_video(path, num_frames=48, max_edge=None)
    assert intact.damaged_frames == 0
    # From where frame 26's packet starts (mid-file, and one of the 12 frames sampled below): the damage hits its
    # NAL header, which no decoder can conceal.
    with av.open(str(path)) as container:
        middle = sorted((packet.pts, packet.pos) for packet in container.demux() if packet.pts is not None)[26][1]
    overwrite(path, middle, 2048, seed=0)
    missing = undecodable_timestamps(path)
    assert 1 <= len(missing) <= 3  # the block is local: a frame or two, never the whole clip

    video = sample_video(path, num_frames=48, max_edge=None)
    assert video.damaged_frames == len(missing)
    # Damage never moves the sampled times; a lost frame shows its nearest neighbour that decoded.
    assert video.timestamps == intact.timestamps
    with av.open(str(path)) as container:
        time_base = container.streams.video[0].time_base
    lost = {round(float(pts * time_base) * FPS) for pts in missing}
    for index in range(48):
        if index in lost:
            neighbours = [video.frames[i] for i in (index - 1, index + 1) if 0 <= i < 48 and i not in lost]
            assert any(np.array_equal(video.frames[index], neighbour) for neighbour in neighbours)
        elif index - 1 not in lost:  # the frame after a lost one may show the decoder's concealment
            assert frame_index(video.frames[index]) == frame_index(intact.frames[index])

    # Sampling fewer frames counts only the sampled ones that were replaced.
    sampled = sample_video(path, num_frames=12)
    hit = [index for index in expected_sample(48, 12) if index in lost]
    assert hit and sampled.damaged_frames == len(hit)
    assert sampled.timestamps == pytest.approx([index / FPS for index in expected_sample(48, 12)])


def test_a_mostly_damaged_video_is_refused(tmp_path):
    path = tmp_path / "ruined.mp4"
    noisy_clip(path)
    size = path.stat().st_size
    overwrite(path, size // 10, size * 6 // 10, seed=0)  # the index (moov) at the end stays intact
    with pytest.raises(VideoDecodeError, match="at least half of them must decode") as caught:
        sample_video(path)
    assert "decoding failed for" in caught.value.reason
    assert "\n" not in str(caught.value)


def test_video_decode_error_survives_pickling():
    error = VideoDecodeError("clip.mp4", "file does not exist", "check the path")
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.path, restored.reason, str(restored)) == (error.path, error.reason, str(error))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"start": 2.0, "end": 2.0}, "start < end"),
        ({"start": 2.0, "end": 1.0}, "start < end"),
        ({"end": 0.0}, "start < end"),
        ({"start": -1.0}, "start"),
        ({"max_edge": 0}, "max_edge"),
    ],
)
def test_invalid_arguments_raise_value_error(clip_20, kwargs, match):
    with pytest.raises(ValueError, match=match) as caught:
        sample_video(clip_20[0], **kwargs)
    assert not isinstance(caught.value, VideoDecodeError)


# ---------------------------------------------------------------------------------------------------------------------
# sample_frames
# ---------------------------------------------------------------------------------------------------------------------


def test_sample_frames_on_an_array_matches_file_sampling():
    frames = make_frames(20, 48, 64)
    video = sample_video(frames, num_frames=4, frame_rate=FPS, max_edge=None)
    assert video.path is None
    assert [frame_index(frame) for frame in video.frames] == [2, 7, 12, 17]
    np.testing.assert_array_equal(video.frames, frames[[2, 7, 12, 17]])
    assert video.timestamps == pytest.approx([0.25, 0.875, 1.5, 2.125])
    assert video.duration == pytest.approx(2.5)


def test_sample_frames_on_pil_images_resizes_and_defaults_to_one_fps():
    frames = make_frames(3, 40, 100)
    images = [PIL.Image.fromarray(frame) for frame in frames]
    video = sample_video(images, num_frames=12, max_edge=50)
    assert video.frames.shape == (3, 20, 50, 3)
    assert video.timestamps == [0.0, 1.0, 2.0]
    assert video.duration == 3.0
    assert [frame_index(frame) for frame in video.frames] == [0, 1, 2]


def test_sample_frames_converts_non_rgb_images():
    images = [PIL.Image.new("L", (8, 6), color=100 + index) for index in range(2)]
    video = sample_video(images, num_frames=2)
    assert video.frames.shape == (2, 6, 8, 3)
    assert video.frames[1, 0, 0].tolist() == [101, 101, 101]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.ones((4, 8, 8), dtype=np.uint8), "shape"),
        (np.ones((4, 8, 8, 4), dtype=np.uint8), "shape"),
        (np.ones((4, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.ones((0, 8, 8, 3), dtype=np.uint8), "at least one"),
        ([], "empty"),
        ([np.ones((8, 8, 3), dtype=np.uint8)], "item 0"),
        ([PIL.Image.new("RGB", (8, 8), "red"), PIL.Image.new("RGB", (9, 8), "red")], "same size"),
    ],
)
def test_sample_frames_rejects_bad_input(frames, match):
    with pytest.raises(ValueError, match=match):
        sample_video(frames, num_frames=4)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_frames": 0}, "num_frames"), ({"num_frames": 2, "fps": 0}, "fps")]
)
def test_sample_frames_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_video(make_frames(4, 8, 8), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# write_video
# ---------------------------------------------------------------------------------------------------------------------


def test_write_video_sets_the_frame_rate_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "clip.webm"
    write_video(path, make_frames(4, 16, 16), fps=12.0)
    assert os.listdir(tmp_path) == ["clip.webm"]
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(12)


def test_write_video_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, make_frames(3, 16, 16))
    write_video(path, make_frames(7, 16, 16))
    assert sample_video(path).frames.shape[0] == 7
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "clip.webm"
    write_video(path, make_frames(3, 16, 16))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_video(path, make_frames(5, 16, 16), codec="libx264")  # WebM cannot hold H.264
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["clip.webm"]


@pytest.mark.parametrize(
    ("name", "frames", "kwargs", "match"),
    [
        ("clip.gif", make_frames(2, 8, 8), {}, "suffix"),
        ("clip.mp4", make_frames(2, 8, 8)[0], {}, "T, H, W, 3"),
        ("clip.mp4", make_frames(2, 8, 8).astype(np.float32), {}, "uint8"),
        ("clip.mp4", make_frames(2, 8, 8), {"fps": 0.0}, "fps"),
        ("clip.mp4", make_frames(2, 9, 9), {"codec": "mpeg4"}, "cannot encode 9x9"),
    ],
)
def test_write_video_rejects_bad_input(tmp_path, name, frames, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / name, frames, **kwargs)
    assert os.listdir(tmp_path) == []

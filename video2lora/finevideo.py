"""Manifests from a corpus in FineVideo's schema: scene-level spans, captions and summaries (docs/training.md).

[FineVideo](https://huggingface.co/datasets/HuggingFaceFV/finevideo) holds one example per video: the MP4 file as
bytes (`mp4`) and its annotations (`json`), among them the video's scenes with their boundaries:

    example["mp4"]                                                        bytes of the MP4 file
    example["json"]["content_metadata"]["scenes"][i]["sceneId"]           int
    example["json"]["content_metadata"]["scenes"][i]["timestamps"]        {"start_timestamp": "00:00:12.480",
                                                                           "end_timestamp": "00:00:31.000"}
    example["json"]["content_metadata"]["scenes"][i]["title"]             str (optional here)
    example["json"]["content_fine_category"]                              str (optional here)
    example["json"]["original_video_filename"]                            str (optional here: names the video)
    example["json"]["duration_seconds"]                                   number (optional here)

[`build_finevideo_manifests`] streams such a dataset, cuts every usable video into spans of three kinds, in a mix
that defaults to the published 60/30/10:

- `scene`: one scene, from its start to its end timestamp;
- `adjacent`: two consecutive scenes, from the first one's start to the second one's end;
- `whole`: the whole video, `[0, duration]`.

Scene spans get a `caption` prompt, adjacent and whole spans a `summary` prompt (several scenes make a sequence of
events to summarize; one scene makes one shot or action to caption). Each row's `target_text` is empty: the teacher
(`python -m video2lora.teacher`) answers the prompt with the span in context. Layout of the output folder:

    out_dir/
        train.jsonl                # rows of the videos hashed to train
        validation.jsonl           # rows of the videos hashed to validation (with val_fraction > 0)
        finevideo_report.json      # counts, the mix reached, disk use, skipped examples
        videos/<video id>.mp4      # each video's bytes, once, however many spans it has

Disk use: a video's MP4 is stored once, exactly as in the source; a span is one manifest row (about half a kilobyte)
that points into it with `span`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .data import write_text_atomically

if TYPE_CHECKING:
    import datasets

__all__ = [
    "CAPTION_PROMPTS",
    "DEFAULT_MIX",
    "SPAN_KINDS",
    "SUMMARY_PROMPTS",
    "TASK_OF_KIND",
    "FineVideoError",
    "FineVideoReport",
    "Scene",
    "Span",
    "SpanMixer",
    "VideoExample",
    "build_finevideo_manifests",
    "load_source",
    "parse_example",
    "parse_mix",
    "parse_timestamp",
]

logger = logging.getLogger(__name__)

SPAN_KINDS = ("scene", "adjacent", "whole")
# The published mix: 60% single-scene, 30% adjacent-scene and 10% whole-video spans.
DEFAULT_MIX = {"scene": 0.6, "adjacent": 0.3, "whole": 0.1}
TASK_OF_KIND = {"scene": "caption", "adjacent": "summary", "whole": "summary"}
# The student never sees the span: the prompt speaks of "the video", which is what the span is to the hypernetwork.
CAPTION_PROMPTS = (
    "Describe the video.",
    "What happens in this video?",
    "Write a one-sentence caption for this video.",
    "Describe what you see in this clip.",
)
SUMMARY_PROMPTS = (
    "Summarize the video.",
    "Summarize what happens in this video, in order.",
    "Give a short summary of this video.",
    "What is this video about? Summarize the main events.",
)
PROMPTS_OF_TASK = {"caption": CAPTION_PROMPTS, "summary": SUMMARY_PROMPTS}
DATASET_NAME = "finevideo"
REPORT_NAME = "finevideo_report.json"
MANIFEST_NAMES = {"train": "train.jsonl", "validation": "validation.jsonl"}
# How many skipped examples a log message lists before summarizing the rest as a count.
_MAX_LOGGED_BAD_EXAMPLES = 10
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


class FineVideoError(ValueError):
    """An example that cannot be used, naming its position in the source and the reason, on one line.

    The message is `example <index> (<video id>): <reason>`, or `example <index>: <reason>` before the id is known.

    Args:
        index (`int`): 0-based position of the example in the source.
        reason (`str`): What is wrong.
        video_id (`str`, *optional*): The video's id, once known.
    """

    def __init__(self, index: int, reason: str, video_id: str | None = None):
        self.index = index
        self.reason = reason.replace("\r", "\\r").replace("\n", "\\n")
        self.video_id = video_id
        where = f"example {index}" if video_id is None else f"example {index} ({video_id})"
        super().__init__(f"{where}: {self.reason}")

    def __reduce__(self):
        return type(self), (self.index, self.reason, self.video_id)


@dataclass(frozen=True)
class Scene:
    """One annotated scene of a video.

    Args:
        position (`int`): 0-based position in the video, in order of start time.
        scene_id (`int` or `str`): The source's `sceneId` (its 1-based position when the source has none).
        start (`float`): Start, in seconds from the first frame.
        end (`float`): End, in seconds (clamped to the video's duration).
        title (`str`, *optional*): The scene's title in the source.
    """

    position: int
    scene_id: int | str
    start: float
    end: float
    title: str | None = None


@dataclass(frozen=True)
class Span:
    """A part of a video to internalize: one scene, two adjacent scenes or the whole video.

    Args:
        kind (`str`): One of [`SPAN_KINDS`].
        start (`float`): Start, in seconds.
        end (`float`): End, in seconds.
        scenes (`tuple[int, ...]`): Positions of the scenes it covers (all of them for `whole`).
    """

    kind: str
    start: float
    end: float
    scenes: tuple[int, ...]

    @property
    def name(self) -> str:
        """A short name, unique within its video: `scene3`, `scenes3-4` or `whole`."""
        if self.kind == "scene":
            return f"scene{self.scenes[0]}"
        if self.kind == "adjacent":
            return f"scenes{self.scenes[0]}-{self.scenes[1]}"
        return "whole"


@dataclass(frozen=True)
class VideoExample:
    """A validated example: the video's bytes, duration and scenes.

    Args:
        index (`int`): 0-based position in the source.
        video_id (`str`): File-name-safe id; the video is stored as `videos/<video_id>.mp4`.
        source_id (`str`): What the id was derived from (the source's file name, or `sha256:<hex>` of the bytes).
        mp4 (`bytes`): The video file.
        duration (`float`): Length in seconds.
        scenes (`tuple[Scene, ...]`): In order of start time.
        category (`str`, *optional*): The source's `content_fine_category`.
    """

    index: int
    video_id: str
    source_id: str
    mp4: bytes
    duration: float
    scenes: tuple[Scene, ...]
    category: str | None = None


def parse_timestamp(value: Any) -> float:
    """Seconds from a FineVideo timestamp.

    Accepts `"HH:MM:SS.mmm"` (what FineVideo's alignment writes), `"HH:MM:SS"`, `"MM:SS(.f)"`, `"SS(.f)"` and plain
    non-negative numbers. Minutes and seconds below an hour or minute field must be under 60.

    Args:
        value (`str`, `int` or `float`): The timestamp.

    Returns:
        `float`: Seconds, finite and non-negative.

    Raises:
        `ValueError`: The value is none of the accepted forms.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"timestamp {value!r} is not a non-negative number of seconds")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string such as '00:01:02.500', got {type(value).__name__}")
    parts = value.strip().split(":")
    if len(parts) > 3 or not re.fullmatch(r"\d+(\.\d*)?", parts[-1]) or not all(p.isdigit() for p in parts[:-1]):
        raise ValueError(f"cannot parse timestamp {value!r}; use HH:MM:SS.mmm, MM:SS or seconds")
    seconds = float(parts[-1])
    fields = [int(part) for part in parts[:-1]]  # [minutes] or [hours, minutes]
    if fields and seconds >= 60 or len(fields) == 2 and fields[1] >= 60:
        raise ValueError(f"timestamp {value!r} has minutes or seconds of 60 or more")
    hours = fields[0] if len(fields) == 2 else 0
    minutes = fields[-1] if fields else 0
    return hours * 3600.0 + minutes * 60.0 + seconds


def _get(mapping: Any, path: str, *, index: int, video_id: str | None = None) -> Any:
    """The value at the dotted `path` inside nested mappings; raises [`FineVideoError`] naming the path if absent."""
    value = mapping
    walked = []
    for key in path.split("."):
        walked.append(key)
        if not isinstance(value, Mapping) or value.get(key) is None:
            if isinstance(value, Mapping):
                reason = f"missing field '{'.'.join(walked)}'"
            else:
                reason = f"field '{'.'.join(walked[:-1])}' must be an object, got {type(value).__name__}"
            raise FineVideoError(index, reason, video_id)
        value = value[key]
    return value


def _video_bytes(value: Any, index: int) -> bytes:
    """The MP4 bytes of an example's `mp4` value: bytes, or a `{"bytes": ...}` dict as `datasets` may give."""
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if data:
            return data
        raise FineVideoError(index, "field 'mp4' is empty")
    if value is None:
        raise FineVideoError(index, "missing field 'mp4' (the video's bytes)")
    raise FineVideoError(index, f"field 'mp4' must hold the video's bytes, got {type(value).__name__}")


def _probe_duration(data: bytes) -> float | None:
    """The container's duration in seconds (header only, nothing is decoded); `None` if it states none.

    Raises:
        `ValueError`: The bytes are not a video container with a video stream.
    """
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("the mp4 has no video stream")
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return None
    except av.FFmpegError as error:
        raise ValueError(f"the mp4 bytes are not a readable video ({error.__class__.__name__})") from error


def _safe_id(raw: str) -> str:
    """`raw` as a file-name-safe id; a hash suffix keeps ids distinct when characters had to be replaced."""
    stem = _SAFE_ID.sub("_", raw).strip("._-")[:100]
    if stem == raw and stem:
        return stem
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}" if stem else digest


def parse_example(
    example: Mapping[str, Any],
    index: int,
    *,
    id_field: str | None = None,
    duration_tolerance: float = 0.5,
    probe_duration: bool = True,
) -> VideoExample:
    """Validate one example in FineVideo's schema.

    Args:
        example (`Mapping`): With `mp4` (bytes) and `json` (a mapping, or its JSON text).
        index (`int`): 0-based position in the source, for messages.
        id_field (`str`, *optional*): Dotted path of the field naming the video (e.g. `json.youtube_id`). By default
            the stem of `json.original_video_filename` when present, else the SHA-256 of the bytes.
        duration_tolerance (`float`, *optional*, defaults to 0.5): Seconds a scene may end past the video's end
            (rounding in the annotations); such ends are clamped to the duration. Further out is an error.
        probe_duration (`bool`, *optional*, defaults to `True`): Read the duration from the MP4 container's header
            (which also checks that the bytes are a video). When `False`, or when the container states no duration,
            `json.duration_seconds` is used.

    Returns:
        [`VideoExample`]

    Raises:
        [`FineVideoError`]: A missing field, an unparsable timestamp, a scene ending before it starts or outside the
            video, or bytes that are not a video.
    """
    if not isinstance(example, Mapping):
        raise FineVideoError(index, f"expected a mapping with 'mp4' and 'json', got {type(example).__name__}")
    data = _video_bytes(example.get("mp4"), index)
    metadata = example.get("json")
    if isinstance(metadata, (str, bytes)):
        try:
            metadata = json.loads(metadata)
        except ValueError as error:
            raise FineVideoError(index, f"field 'json' is not valid JSON ({error})") from error
    if not isinstance(metadata, Mapping):
        kind = "missing" if metadata is None else f"a {type(metadata).__name__}, not an object"
        raise FineVideoError(index, f"field 'json' (the video's annotations) is {kind}")
    record = {"json": metadata, **{key: value for key, value in example.items() if key not in ("json", "mp4")}}

    if id_field is not None:
        raw_id = _get(record, id_field, index=index)
        source_id = str(raw_id)
        raw_id = PurePosixPath(source_id).stem if source_id.lower().endswith(".mp4") else source_id
    elif isinstance(metadata.get("original_video_filename"), str) and metadata["original_video_filename"].strip():
        source_id = metadata["original_video_filename"].strip()
        raw_id = PurePosixPath(source_id.replace("\\", "/")).stem
    else:
        source_id = "sha256:" + hashlib.sha256(data).hexdigest()
        raw_id = source_id[len("sha256:") :][:16]
    video_id = _safe_id(raw_id)

    duration = None
    if probe_duration:
        try:
            duration = _probe_duration(data)
        except ValueError as error:
            raise FineVideoError(index, str(error), video_id) from error
    if duration is None:
        stated = metadata.get("duration_seconds")
        if isinstance(stated, (int, float)) and not isinstance(stated, bool) and math.isfinite(stated):
            duration = float(stated)
    if duration is None:
        raise FineVideoError(index, "cannot tell the video's duration: the mp4 states none and "
                             "json.duration_seconds is missing", video_id)
    if duration <= 0:
        raise FineVideoError(index, f"the video's duration is {duration} s; it must be positive", video_id)

    raw_scenes = _get(record, "json.content_metadata.scenes", index=index, video_id=video_id)
    if isinstance(raw_scenes, Mapping) and all(isinstance(column, list) for column in raw_scenes.values()):
        # A `datasets.Sequence` of structs reads as one dict of lists: back to one dict per scene.
        columns = list(raw_scenes.values())
        if len({len(column) for column in columns}) == 1:
            raw_scenes = [dict(zip(raw_scenes, values, strict=True)) for values in zip(*columns, strict=True)]
    raw_scenes = list(raw_scenes) if isinstance(raw_scenes, tuple) else raw_scenes
    if not isinstance(raw_scenes, list) or not raw_scenes:
        raise FineVideoError(index, "field 'json.content_metadata.scenes' must be a non-empty list", video_id)
    parsed = []
    for number, scene in enumerate(raw_scenes):
        where = f"json.content_metadata.scenes[{number}]"
        if not isinstance(scene, Mapping):
            raise FineVideoError(index, f"{where} must be an object, got {type(scene).__name__}", video_id)
        bounds = []
        for name in ("start_timestamp", "end_timestamp"):
            timestamps = scene.get("timestamps")
            if not isinstance(timestamps, Mapping) or timestamps.get(name) is None:
                raise FineVideoError(index, f"missing field '{where}.timestamps.{name}'", video_id)
            try:
                bounds.append(parse_timestamp(timestamps[name]))
            except ValueError as error:
                raise FineVideoError(index, f"{where}.timestamps.{name}: {error}", video_id) from error
        start, end = bounds
        if end <= start:
            raise FineVideoError(index, f"{where} ends ({end:.3f} s) at or before its start ({start:.3f} s)",
                                 video_id)
        if start >= duration or end > duration + duration_tolerance:
            raise FineVideoError(
                index, f"{where} [{start:.3f}, {end:.3f}] s lies outside the video (0 to {duration:.3f} s)", video_id
            )
        scene_id = scene.get("sceneId")
        if not isinstance(scene_id, (int, str)) or isinstance(scene_id, bool):
            scene_id = number + 1
        title = scene.get("title") if isinstance(scene.get("title"), str) else None
        parsed.append((start, min(end, duration), scene_id, title))
    parsed.sort(key=lambda item: (item[0], item[1]))
    scenes = tuple(
        Scene(position=position, scene_id=scene_id, start=start, end=end, title=title)
        for position, (start, end, scene_id, title) in enumerate(parsed)
    )
    category = metadata.get("content_fine_category")
    return VideoExample(
        index=index,
        video_id=video_id,
        source_id=source_id,
        mp4=data,
        duration=duration,
        scenes=scenes,
        category=category if isinstance(category, str) else None,
    )


def parse_mix(text: str | Mapping[str, float]) -> dict[str, float]:
    """A span mix from `"scene=0.6,adjacent=0.3,whole=0.1"` (or a mapping), normalized to sum to 1.

    Kinds left out get 0. Weights need not sum to 1 (`scene=6,adjacent=3,whole=1` is the same mix).

    Args:
        text (`str` or `Mapping[str, float]`): Weights per kind of [`SPAN_KINDS`].

    Returns:
        `dict[str, float]`: A weight for every kind, in [`SPAN_KINDS`] order.

    Raises:
        `ValueError`: An unknown kind, a weight that is negative or not a number, or all weights zero.
    """
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in filter(None, (piece.strip() for piece in text.split(","))):
            name, separator, weight = part.partition("=")
            if not separator:
                raise ValueError(f"cannot parse mix entry {part!r}; write kind=weight, e.g. scene=0.6,adjacent=0.3")
            items.append((name.strip(), weight.strip()))
    weights = dict.fromkeys(SPAN_KINDS, 0.0)
    for name, weight in items:
        if name not in weights:
            raise ValueError(f"unknown span kind {name!r} in the mix; use {', '.join(SPAN_KINDS)}")
        try:
            weights[name] = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"mix weight of {name!r} must be a number, got {weight!r}") from None
        if not math.isfinite(weights[name]) or weights[name] < 0:
            raise ValueError(f"mix weight of {name!r} must be a finite number >= 0, got {weight!r}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the mix gives every span kind weight 0; give at least one a positive weight")
    return {name: weight / total for name, weight in weights.items()}


def candidate_spans(scenes: Sequence[Scene], duration: float, *, min_span_seconds: float = 1.0) -> dict[str, list]:
    """Every span of each kind a video offers, without repeats and none shorter than `min_span_seconds`.

    Args:
        scenes (`Sequence[Scene]`): In order of start time.
        duration (`float`): The video's length in seconds.
        min_span_seconds (`float`, *optional*, defaults to 1.0): Shorter spans are left out.

    Returns:
        `dict[str, list[Span]]`: Per kind of [`SPAN_KINDS`]. An interval offered by two kinds (the scene of a
        one-scene video that covers all of it) is kept once, under the first kind.
    """
    offered = {
        "scene": [Span("scene", scene.start, scene.end, (scene.position,)) for scene in scenes],
        "adjacent": [
            Span("adjacent", first.start, second.end, (first.position, second.position))
            for first, second in zip(scenes, scenes[1:], strict=False)
        ],
        "whole": [Span("whole", 0.0, duration, tuple(scene.position for scene in scenes))],
    }
    seen: set[tuple[float, float]] = set()
    candidates: dict[str, list[Span]] = {kind: [] for kind in SPAN_KINDS}
    for kind in SPAN_KINDS:
        for span in offered[kind]:
            interval = (round(span.start, 3), round(span.end, 3))
            if span.end - span.start >= min_span_seconds and interval not in seen:
                seen.add(interval)
                candidates[kind].append(span)
    return candidates


class SpanMixer:
    """Chooses each video's spans so that the kinds over the whole run follow a mix, deterministically.

    Each span goes to the kind furthest below its share of all the spans chosen so far (`mix[kind] * (n + 1) -
    count[kind]`), among the kinds the video still offers; which span of that kind is drawn by a generator seeded
    with the seed and the video's id. Without constraints every kind's count stays within one span of its share;
    a kind a video cannot offer (an adjacent span of a one-scene video, a second whole span) is made up for by the
    next videos that can. The choice for a video depends only on the videos before it, so a longer run over the
    same source extends a shorter one.

    Args:
        mix (`Mapping[str, float]` or `str`, *optional*): Weights per kind (see [`parse_mix`]); defaults to
            [`DEFAULT_MIX`].
        spans_per_video (`int`, *optional*, defaults to 4): At most this many spans per video.
        seed (`int`, *optional*, defaults to 0): Seeds the choice of spans within a kind and of prompts.
        min_span_seconds (`float`, *optional*, defaults to 1.0): Shorter spans are never chosen.
    """

    def __init__(
        self,
        mix: Mapping[str, float] | str | None = None,
        *,
        spans_per_video: int = 4,
        seed: int = 0,
        min_span_seconds: float = 1.0,
    ):
        if spans_per_video < 1:
            raise ValueError(f"spans_per_video must be at least 1, got {spans_per_video}")
        if not math.isfinite(min_span_seconds) or min_span_seconds < 0:
            raise ValueError(f"min_span_seconds must be a number >= 0, got {min_span_seconds}")
        self.mix = parse_mix(DEFAULT_MIX if mix is None else mix)
        self.spans_per_video = spans_per_video
        self.seed = seed
        self.min_span_seconds = min_span_seconds
        self.counts: Counter[str] = Counter()

    def rng(self, video_id: str) -> random.Random:
        """The generator for one video: the same for the same seed and id, whatever came before."""
        # A string seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
        return random.Random(f"{self.seed}/{video_id}")

    def choose(self, video_id: str, scenes: Sequence[Scene], duration: float) -> list[Span]:
        """The spans for one video, in the order they were chosen; updates the run's counts.

        Args:
            video_id (`str`): Seeds the draw.
            scenes (`Sequence[Scene]`): The video's scenes in order of start time.
            duration (`float`): The video's length in seconds.

        Returns:
            `list[Span]`: At most `spans_per_video` distinct spans; empty when no span is long enough.
        """
        rng = self.rng(video_id)
        candidates = candidate_spans(scenes, duration, min_span_seconds=self.min_span_seconds)
        chosen: list[Span] = []
        while len(chosen) < self.spans_per_video:
            available = [kind for kind in SPAN_KINDS if candidates[kind] and self.mix[kind] > 0]
            if not available:
                break
            total = sum(self.counts.values()) + 1
            # Exact float ties (the very first span, say) are broken by the generator, not by list order.
            kind = max(available, key=lambda name: (round(self.mix[name] * total - self.counts[name], 9),
                                                    rng.random()))
            span = candidates[kind].pop(rng.randrange(len(candidates[kind])))
            chosen.append(span)
            self.counts[kind] += 1
        return chosen


def load_source(
    source: str | os.PathLike | datasets.Dataset | datasets.IterableDataset,
    *,
    split: str = "train",
    streaming: bool = True,
    **load_kwargs: Any,
) -> Iterable[Mapping[str, Any]]:
    """Open a dataset in FineVideo's schema for reading example by example, without loading it into memory.

    Args:
        source: One of
            - a `datasets.Dataset` / `IterableDataset` (or a `DatasetDict`, of which `split` is taken);
            - a folder written by `Dataset.save_to_disk` (memory-mapped: read row by row, never loaded whole);
            - a parquet, arrow or JSON Lines file;
            - anything `datasets.load_dataset` takes: a Hub id (`HuggingFaceFV/finevideo`, gated: log in first) or
              a local folder of parquet or arrow files.
        split (`str`, *optional*, defaults to `"train"`): The split to read.
        streaming (`bool`, *optional*, defaults to `True`): Stream (`load_dataset(..., streaming=True)`), so that
            examples are read as they are used. Without it a Hub dataset is downloaded and prepared first.
        load_kwargs: Forwarded to `datasets.load_dataset` (`revision`, `data_files`, `token`, ...).

    Returns:
        An iterable of examples (dicts with `mp4` and `json`).
    """
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in source:
            raise ValueError(f"the dataset has no split {split!r}; it has {', '.join(source)}")
        source = source[split]
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return source
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        return load_source(loaded, split=split, streaming=streaming)
    if path.is_file():
        builders = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
        builder = builders.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"cannot read {path}: use a parquet, arrow or JSON Lines file, or a dataset folder")
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming, **load_kwargs)
    return datasets.load_dataset(os.fspath(source), split=split, streaming=streaming, **load_kwargs)


def _source_length(source: Iterable) -> int | None:
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset has no length
        return None


def _publish(temporary: str, path: Path) -> None:
    """Give the temporary file the mode of the file it replaces (or 0644) and move it into place."""
    os.chmod(temporary, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
    os.replace(temporary, path)


def _write_video_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, then one `os.replace`."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _ManifestWriters:
    """One JSONL manifest per split, written row by row to temporary files and published together at the end, so
    that a failed run leaves the previous manifests in place (as `video2lora.data.write_manifest` does)."""

    def __init__(self, paths: Mapping[str, Path]):
        self.paths = dict(paths)
        self.handles: dict[str, Any] = {}
        self.temporary: dict[str, str] = {}
        self.bytes: Counter[str] = Counter()

    def __enter__(self) -> _ManifestWriters:
        for split, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            self.temporary[split] = name
            self.handles[split] = os.fdopen(descriptor, "w", encoding="utf-8", newline="\n")
        return self

    def write(self, split: str, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
        self.handles[split].write(line)
        self.bytes[split] += len(line.encode("utf-8"))

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            for handle in self.handles.values():
                if error_type is None:
                    handle.flush()
                    os.fsync(handle.fileno())
                handle.close()
            if error_type is None:
                for split, path in self.paths.items():
                    _publish(self.temporary[split], path)
        finally:
            for name in self.temporary.values():
                Path(name).unlink(missing_ok=True)


@dataclass
class FineVideoReport:
    """What [`build_finevideo_manifests`] read and wrote.

    Args:
        out_dir (`Path`): The output folder.
        manifests (`dict[str, Path]`): The manifest of each split.
        examples_read (`int`): Examples read from the source (including skipped ones).
        videos (`int`): Videos with at least one span in the manifests.
        videos_written (`int`): MP4 files written by this run.
        videos_existing (`int`): MP4 files already there with the right size, left as they were (a rerun).
        spans (`Counter`): Spans per kind.
        rows (`Counter`): Manifest rows per split.
        videos_per_split (`Counter`): Videos per split.
        video_bytes (`int`): Size of the MP4 files the manifests point to, each counted once.
        manifest_bytes (`int`): Size of the manifests.
        bad_examples (`list[tuple[int, str]]`): `(index, one-line message)` of each skipped example; the message is
            that of its [`FineVideoError`].
        no_span_videos (`int`): Valid videos with no span of at least `min_span_seconds`, left out.
    """

    out_dir: Path
    manifests: dict[str, Path] = field(default_factory=dict)
    examples_read: int = 0
    videos: int = 0
    videos_written: int = 0
    videos_existing: int = 0
    spans: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    videos_per_split: Counter = field(default_factory=Counter)
    video_bytes: int = 0
    manifest_bytes: int = 0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)
    no_span_videos: int = 0

    @property
    def num_spans(self) -> int:
        return sum(self.spans.values())

    def mix(self) -> dict[str, float]:
        """The share of each span kind among the spans written."""
        total = self.num_spans
        return {kind: (self.spans[kind] / total if total else 0.0) for kind in SPAN_KINDS}

    def disk_use(self) -> dict[str, float]:
        """Bytes on disk: in all, per video and per span (a span's share of its video's file, plus its row)."""
        spans = max(self.num_spans, 1)
        return {
            "video_bytes": self.video_bytes,
            "manifest_bytes": self.manifest_bytes,
            "bytes_per_video": self.video_bytes / max(self.videos, 1),
            "video_bytes_per_span": self.video_bytes / spans,
            "manifest_bytes_per_span": self.manifest_bytes / spans,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "manifests": {split: str(path) for split, path in self.manifests.items()},
            "examples_read": self.examples_read,
            "videos": self.videos,
            "videos_written": self.videos_written,
            "videos_existing": self.videos_existing,
            "videos_per_split": dict(self.videos_per_split),
            "spans": {kind: self.spans[kind] for kind in SPAN_KINDS},
            "mix": self.mix(),
            "rows": dict(self.rows),
            "disk_use": self.disk_use(),
            "no_span_videos": self.no_span_videos,
            "bad_examples": len(self.bad_examples),
            "bad_example_reasons": [message for _, message in self.bad_examples[:100]],
        }

    def summary(self) -> str:
        """A few lines for the command line."""
        use = self.disk_use()
        mix = ", ".join(f"{kind} {self.spans[kind]} ({share:.1%})" for kind, share in self.mix().items())
        rows = ", ".join(f"{split} {count}" for split, count in sorted(self.rows.items()))
        return "\n".join([
            f"videos: {self.videos} ({self.videos_written} written, {self.videos_existing} already there); "
            f"skipped examples: {len(self.bad_examples)}; videos without a usable span: {self.no_span_videos}",
            f"spans: {self.num_spans} = {mix}",
            f"rows: {rows}",
            f"disk: videos {_human(use['video_bytes'])} ({_human(use['bytes_per_video'])} per video, "
            f"{_human(use['video_bytes_per_span'])} per span), manifests {_human(use['manifest_bytes'])} "
            f"({_human(use['manifest_bytes_per_span'])} per span)",
            *(f"manifest: {path}" for path in self.manifests.values()),
        ])


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def _split_of(video_id: str, seed: int, val_fraction: float) -> str:
    """`validation` for about `val_fraction` of the videos, by a hash of the seed and id: stable under streaming,
    reordering and `max_videos`."""
    digest = hashlib.sha256(f"{seed}/{video_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def _span_rows(
    example: VideoExample,
    spans: Sequence[Span],
    *,
    split: str,
    rng: random.Random,
    prompts_per_span: int,
    dataset_name: str,
    video_path: str,
) -> Iterator[dict[str, Any]]:
    """The manifest rows of one video, in time order: `prompts_per_span` rows per span, each with a distinct prompt
    template."""
    for span in sorted(spans, key=lambda span: (span.start, span.end)):
        task_type = TASK_OF_KIND[span.kind]
        templates = PROMPTS_OF_TASK[task_type]
        for template in sorted(rng.sample(range(len(templates)), min(prompts_per_span, len(templates)))):
            covered = [example.scenes[position] for position in span.scenes]
            yield {
                "id": f"{example.video_id}-{span.name}-{task_type}{template}",
                "video_path": video_path,
                "task_type": task_type,
                "prompt": templates[template],
                "target_text": "",
                "dataset": dataset_name,
                "split": split,
                "metadata": {
                    "source_id": example.source_id,
                    "video_id": example.video_id,
                    "span_kind": span.kind,
                    "scene_ids": [scene.scene_id for scene in covered],
                    "scene_titles": [scene.title for scene in covered],
                    "video_duration": round(example.duration, 6),
                    "prompt_template": template,
                    "category": example.category,
                },
                "span": [round(span.start, 6), round(span.end, 6)],
            }


def build_finevideo_manifests(
    source: str | os.PathLike | datasets.Dataset | datasets.IterableDataset,
    out_dir: str | os.PathLike,
    *,
    source_split: str = "train",
    streaming: bool = True,
    mix: Mapping[str, float] | str | None = None,
    spans_per_video: int = 4,
    prompts_per_span: int = 1,
    max_videos: int | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    min_span_seconds: float = 1.0,
    duration_tolerance: float = 0.5,
    id_field: str | None = None,
    probe_duration: bool = True,
    dataset_name: str = DATASET_NAME,
    strict: bool = False,
    progress: bool = True,
    load_kwargs: Mapping[str, Any] | None = None,
) -> FineVideoReport:
    """Stream a dataset in FineVideo's schema into MP4 files and the project's manifests, one span per row.

    Each usable video's bytes are written once to `out_dir/videos/<video id>.mp4` (atomically; a file already there
    with the same size is kept, so a rerun resumes and rewrites nothing). Its spans (see [`SpanMixer`]) become rows of
    `out_dir/train.jsonl` or `out_dir/validation.jsonl` (the split is chosen per video), with `target_text` empty
    for the teacher, `span` set and `metadata` holding `source_id`, `video_id`, `span_kind`, `scene_ids`,
    `scene_titles`, `video_duration`, `prompt_template` and `category`. Examples that fail validation are skipped
    and counted, never fatal (unless `strict`). The same source and arguments give byte-identical manifests.

    Args:
        source: The dataset; see [`load_source`].
        out_dir (`str` or `os.PathLike`): The data root to write; created if missing.
        source_split (`str`, *optional*, defaults to `"train"`): The split of `source` to read.
        streaming (`bool`, *optional*, defaults to `True`): Stream the source (see [`load_source`]).
        mix (`Mapping[str, float]` or `str`, *optional*): Span kind weights (see [`parse_mix`]); defaults to
            [`DEFAULT_MIX`] (60/30/10).
        spans_per_video (`int`, *optional*, defaults to 4): At most this many spans per video.
        prompts_per_span (`int`, *optional*, defaults to 1): Rows per span, each with a different prompt template
            (at most the 4 templates of its task).
        max_videos (`int`, *optional*): Stop after this many usable videos.
        val_fraction (`float`, *optional*, defaults to 0.05): Share of the videos (by a hash of `seed` and the video
            id) whose rows go to `validation.jsonl`. With 0 only `train.jsonl` is written.
        seed (`int`, *optional*, defaults to 0): Seeds the spans, the prompts and the split.
        min_span_seconds (`float`, *optional*, defaults to 1.0): Spans shorter than this are not used.
        duration_tolerance (`float`, *optional*, defaults to 0.5): See [`parse_example`].
        id_field (`str`, *optional*): See [`parse_example`].
        probe_duration (`bool`, *optional*, defaults to `True`): See [`parse_example`].
        dataset_name (`str`, *optional*, defaults to `"finevideo"`): The rows' `dataset`.
        strict (`bool`, *optional*, defaults to `False`): Raise [`FineVideoError`] on the first bad example.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar.
        load_kwargs (`Mapping`, *optional*): Forwarded to `datasets.load_dataset`.

    Returns:
        [`FineVideoReport`]: Counts, the mix reached and the disk use; also saved as `out_dir/finevideo_report.json`.

    Raises:
        `ValueError`: A bad argument; [`FineVideoError`] for a bad example with `strict`.
    """
    mixer = SpanMixer(mix, spans_per_video=spans_per_video, seed=seed, min_span_seconds=min_span_seconds)
    if prompts_per_span < 1:
        raise ValueError(f"prompts_per_span must be at least 1, got {prompts_per_span}")
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if max_videos is not None and max_videos < 1:
        raise ValueError(f"max_videos must be at least 1, got {max_videos}")
    if not math.isfinite(duration_tolerance) or duration_tolerance < 0:
        raise ValueError(f"duration_tolerance must be a number >= 0, got {duration_tolerance}")

    out_dir = Path(out_dir)
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    splits = ["train", "validation"] if val_fraction > 0 else ["train"]
    report = FineVideoReport(out_dir=out_dir, manifests={split: out_dir / MANIFEST_NAMES[split] for split in splits})
    examples = load_source(source, split=source_split, streaming=streaming, **dict(load_kwargs or {}))
    total = max_videos if max_videos is not None else _source_length(examples)
    first_index_of: dict[str, int] = {}

    with _ManifestWriters(report.manifests) as writers, tqdm(
        total=total, desc="finevideo", unit="video", disable=not progress
    ) as bar:
        for index, raw in enumerate(examples):
            report.examples_read += 1
            try:
                example = parse_example(raw, index, id_field=id_field, duration_tolerance=duration_tolerance,
                                        probe_duration=probe_duration)
                if example.video_id in first_index_of:
                    raise FineVideoError(index, f"duplicate video id (first used by example "
                                         f"{first_index_of[example.video_id]}); pass id_field to name videos",
                                         example.video_id)
            except FineVideoError as error:
                if strict:
                    raise
                report.bad_examples.append((index, str(error)))
                bar.set_postfix(skipped=len(report.bad_examples))
                continue
            first_index_of[example.video_id] = index
            spans = mixer.choose(example.video_id, example.scenes, example.duration)
            if not spans:
                report.no_span_videos += 1
                continue
            relative = f"videos/{example.video_id}.mp4"
            path = out_dir / relative
            if path.is_file() and path.stat().st_size == len(example.mp4):
                report.videos_existing += 1
            else:
                _write_video_file(path, example.mp4)
                report.videos_written += 1
            split = _split_of(example.video_id, seed, val_fraction) if val_fraction > 0 else "train"
            for row in _span_rows(example, spans, split=split, rng=mixer.rng(example.video_id + "/prompts"),
                                  prompts_per_span=prompts_per_span, dataset_name=dataset_name, video_path=relative):
                writers.write(split, row)
                report.rows[split] += 1
            report.spans.update(span.kind for span in spans)
            report.videos += 1
            report.videos_per_split[split] += 1
            report.video_bytes += len(example.mp4)
            bar.update()
            if max_videos is not None and report.videos >= max_videos:
                break  # before the next example is read: a stream fetches nothing more
        report.manifest_bytes = sum(writers.bytes.values())

    if report.bad_examples:
        described = "; ".join(message for _, message in report.bad_examples[:_MAX_LOGGED_BAD_EXAMPLES])
        if len(report.bad_examples) > _MAX_LOGGED_BAD_EXAMPLES:
            described += f"; and {len(report.bad_examples) - _MAX_LOGGED_BAD_EXAMPLES} more"
        logger.warning("Skipped %d bad example(s) of %d: %s", len(report.bad_examples), report.examples_read,
                       described)
    if val_fraction > 0 and report.videos and not report.videos_per_split["validation"]:
        logger.warning("No video was hashed to validation (val_fraction=%s, %d videos); validation.jsonl is empty",
                       val_fraction, report.videos)
    write_text_atomically(out_dir / REPORT_NAME, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m video2lora.finevideo",
        description="Write the MP4 files and span manifests (train.jsonl, validation.jsonl) of a FineVideo-style "
        "dataset: single-scene, adjacent-scene and whole-video spans with caption and summary prompts, for the "
        "teacher to answer.",
    )
    parser.add_argument("--source", required=True,
                        help="Hub id (HuggingFaceFV/finevideo), local folder of parquet/arrow files, a folder from "
                        "Dataset.save_to_disk, or one parquet/arrow/JSONL file")
    parser.add_argument("--out", required=True, help="data root to write: OUT/videos/, OUT/train.jsonl, ...")
    parser.add_argument("--source_split", default="train", help="split of the source to read (default: train)")
    parser.add_argument("--no_streaming", action="store_true", help="download and prepare the source first")
    parser.add_argument("--revision", default=None, help="revision of a Hub dataset")
    parser.add_argument("--mix", default="scene=0.6,adjacent=0.3,whole=0.1",
                        help="span kind weights (default: the published scene=0.6,adjacent=0.3,whole=0.1)")
    parser.add_argument("--spans_per_video", type=int, default=4, help="most spans per video (default 4)")
    parser.add_argument("--prompts_per_span", type=int, default=1,
                        help="rows per span, each with another prompt template (default 1, at most 4)")
    parser.add_argument("--max_videos", type=int, default=None, help="stop after this many usable videos")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="share of the videos whose rows go to validation.jsonl (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the spans, prompts and split (default 0)")
    parser.add_argument("--min_span_seconds", type=float, default=1.0, help="shortest span used (default 1.0)")
    parser.add_argument("--duration_tolerance", type=float, default=0.5,
                        help="seconds a scene may end past the video's end, clamped (default 0.5)")
    parser.add_argument("--id_field", default=None,
                        help="dotted field naming each video, e.g. json.youtube_id (default: the stem of "
                        "json.original_video_filename, else the SHA-256 of the bytes)")
    parser.add_argument("--no_probe", action="store_true",
                        help="take the duration from json.duration_seconds instead of the MP4 header")
    parser.add_argument("--dataset_name", default=DATASET_NAME, help="the rows' dataset field (default finevideo)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad example instead of skipping")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = build_finevideo_manifests(
            args.source,
            args.out,
            source_split=args.source_split,
            streaming=not args.no_streaming,
            mix=parse_mix(args.mix),
            spans_per_video=args.spans_per_video,
            prompts_per_span=args.prompts_per_span,
            max_videos=args.max_videos,
            val_fraction=args.val_fraction,
            seed=args.seed,
            min_span_seconds=args.min_span_seconds,
            duration_tolerance=args.duration_tolerance,
            id_field=args.id_field,
            probe_duration=not args.no_probe,
            dataset_name=args.dataset_name,
            strict=args.strict,
            progress=not args.no_progress,
            load_kwargs={"revision": args.revision} if args.revision else None,
        )
    except (ValueError, FileNotFoundError) as error:  # bad arguments, a bad example with --strict: one line, exit 2
        parser.error(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (the videos written so far are kept)", file=sys.stderr)
        raise SystemExit(130) from None
    print(report.summary())


if __name__ == "__main__":
    main()

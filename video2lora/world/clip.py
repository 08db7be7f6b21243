"""Clips of the generated video world: a seed in, frames, ground truth and language out.

[`generate_clip`] is pure and in-memory (about 1.5 ms for a default 64 px clip on one CPU core), so a training loop can draw fresh
clips without touching disk. Everything is a function of the seed: scene sampling and question wording draw from
separate numpy generators seeded with `[seed, stream]`, so changing one never shifts the other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .language import QAItem, ask, ask_two_segment, describe
from .scene import COLOURS, SHAPES, Event, Scene, WorldConfig, WorldObject, render_scene, sample_scene

__all__ = ["Clip", "Segment", "generate_clip", "generate_two_segment_clip"]

# Generator streams, mixed with the seed. Two-segment clips use their own streams so that they never repeat the
# single clip of the same seed.
_SCENE_STREAM, _LANGUAGE_STREAM, _HALF_SCENE_STREAM, _HALF_LANGUAGE_STREAM = 0, 1, 2, 3
# Objects per half of a two-segment clip: two halves of at most two objects use at most all four shapes.
_MAX_OBJECTS_PER_HALF = 2
# Probability of a one-object half when both one and two are allowed. A third makes the whole clip's count answers
# ("one" or "two" at the start and at the end) even: an appear or disappear event turns a quarter of the
# two-object halves into one object at the start or end, and 1/3 + 2/3 * 1/4 = 1/2.
_ONE_OBJECT_HALF_PROBABILITY = 1 / 3


@dataclass(frozen=True)
class Segment:
    """One half of a two-segment clip, with its own language.

    Args:
        name (`str`): "first" or "second".
        steps (`tuple[int, int]`): Steps `[start, end)` of the whole clip covered by this half.
        span (`tuple[float, float]`): The same range in seconds.
        caption (`str`): Caption of this half alone.
        qa (`tuple[QAItem, ...]`): Questions about this half alone; object indices refer to the whole clip.
    """

    name: str
    steps: tuple[int, int]
    span: tuple[float, float]
    caption: str
    qa: tuple[QAItem, ...]


@dataclass(frozen=True, eq=False)
class Clip:
    """A rendered clip with its ground truth and language.

    Args:
        seed (`int`): The seed it was generated from.
        config (`WorldConfig`): The knobs it was generated with (`num_steps` counts both halves of a two-segment
            clip).
        frames (`np.ndarray`): RGB video `[T, H, W, 3]` uint8, `T = num_steps * frames_per_step`.
        object_maps (`np.ndarray`): `[T, H, W]` int16, the index into `objects` of the object covering each pixel,
            or -1 for background.
        objects (`tuple[WorldObject, ...]`): Per-object ground truth: shape id, colour id per step, direction id,
            visibility per step, trajectory.
        events (`tuple[Event, ...]`): Appear / disappear / colour-change events in temporal order.
        caption (`str`): The caption, one sentence per object and event.
        qa (`tuple[QAItem, ...]`): Questions with answers, types and the objects they concern.
        segments (`tuple[Segment, ...]`): The two halves of a two-segment clip; empty otherwise.
    """

    seed: int
    config: WorldConfig
    frames: np.ndarray
    object_maps: np.ndarray
    objects: tuple[WorldObject, ...]
    events: tuple[Event, ...]
    caption: str
    qa: tuple[QAItem, ...]
    segments: tuple[Segment, ...] = ()

    @property
    def questions(self) -> list[tuple[str, str, str]]:
        """`(question, answer, question_type)` for every question."""
        return [item.as_tuple() for item in self.qa]

    @property
    def num_steps(self) -> int:
        """Key steps in the clip (both halves of a two-segment clip)."""
        return self.config.num_steps

    @property
    def frames_per_step(self) -> int:
        """Video frames rendered per step."""
        return self.config.frames_per_step

    @property
    def fps(self) -> float:
        """Frame rate of the video."""
        return self.config.fps

    @property
    def duration(self) -> float:
        """Length of the video in seconds."""
        return self.config.num_frames / self.config.fps

    @property
    def frame_steps(self) -> np.ndarray:
        """Step of every frame, `[T]`."""
        return np.arange(self.config.num_frames) // self.config.frames_per_step

    @property
    def step_centre_frames(self) -> np.ndarray:
        """Index of one frame at the centre of every step, `[num_steps]`: a sampling that shows every event."""
        return np.arange(self.config.num_steps) * self.config.frames_per_step + self.config.frames_per_step // 2

    @property
    def visibility(self) -> np.ndarray:
        """Whether each object is on screen at each step, `[num_objects, num_steps]` bool."""
        return np.array([obj.visible for obj in self.objects], dtype=bool).reshape(len(self.objects), -1)

    def attribute_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel colour ids and shape ids, `[T, H, W]` int8 each, -1 for background.

        These are the targets of the per-token colour and shape auxiliary losses (docs/design.md §8); colours follow
        colour changes frame by frame.
        """
        colour_per_frame = np.array([obj.colours for obj in self.objects], dtype=np.int8)[:, self.frame_steps].T
        shape_ids = np.array([obj.shape for obj in self.objects], dtype=np.int8)
        background = self.object_maps < 0
        index = np.where(background, 0, self.object_maps).astype(np.int64)
        colour_map = np.take_along_axis(colour_per_frame, index.reshape(len(index), -1), axis=1).reshape(index.shape)
        shape_map = shape_ids[index]
        colour_map[background] = -1
        shape_map[background] = -1
        return colour_map, shape_map


def _rng(seed: int, *stream: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), *stream])


def generate_clip(
    seed: int,
    *,
    num_steps: int = 4,
    frames_per_step: int = 2,
    size: int = 64,
    fps: float = 4.0,
    radius: float | None = None,
    min_objects: int = 1,
    max_objects: int = 3,
    max_events: int = 1,
    event_probability: float = 0.75,
    speed_range: tuple[float, float] = (0.1, 0.13),
) -> Clip:
    """Generate one clip, deterministically from its seed.

    Args:
        seed (`int`): Non-negative seed; see [`~video2lora.world.splits.SPLIT_SEED_RANGES`] for which seeds
            belong to which split.
        num_steps, frames_per_step, size, fps, radius, min_objects, max_objects, max_events, event_probability,
        speed_range: See [`WorldConfig`].

    Returns:
        [`Clip`]: Frames, ground truth, caption and questions.
    """
    config = WorldConfig(
        num_steps=num_steps,
        frames_per_step=frames_per_step,
        size=size,
        fps=fps,
        radius=radius,
        min_objects=min_objects,
        max_objects=max_objects,
        max_events=max_events,
        event_probability=event_probability,
        speed_range=tuple(speed_range),
    )
    scene = sample_scene(_rng(seed, _SCENE_STREAM), config)
    frames, object_maps = render_scene(scene, config)
    return Clip(
        seed=int(seed),
        config=config,
        frames=frames,
        object_maps=object_maps,
        objects=scene.objects,
        events=scene.events,
        caption=describe(scene),
        qa=tuple(ask(scene, _rng(seed, _LANGUAGE_STREAM))),
    )


def _merge_halves(first: Scene, second: Scene) -> Scene:
    """The whole clip's scene: the first half's objects vanish at the cut and the second half's come in."""
    half = first.num_steps
    objects = [
        replace(obj, visible=obj.visible + (False,) * half, colours=obj.colours + (obj.colours[-1],) * half)
        for obj in first.objects
    ]
    objects += [
        replace(
            obj,
            visible=(False,) * half + obj.visible,
            colours=(obj.colours[0],) * half + obj.colours,
            # Shift the trajectory so that whole-clip step time `half + s` is the half's step time `s`.
            start=(obj.start[0] - half * obj.velocity[0], obj.start[1] - half * obj.velocity[1]),
        )
        for obj in second.objects
    ]
    offset = len(first.objects)
    events = first.events + tuple(
        replace(event, step=event.step + half, object_index=event.object_index + offset) for event in second.events
    )
    return Scene(objects=tuple(objects), events=events, num_steps=2 * half)


def _half_object_count(rng: np.random.Generator, config: WorldConfig) -> WorldConfig:
    """Fix a half's object count, weighting one and two objects so that count answers are balanced."""
    if config.min_objects == config.max_objects:
        return config
    num_objects = 1 if rng.random() < _ONE_OBJECT_HALF_PROBABILITY else 2
    return replace(config, min_objects=num_objects, max_objects=num_objects)


def generate_two_segment_clip(
    seed: int,
    *,
    num_steps: int = 4,
    frames_per_step: int = 2,
    size: int = 64,
    fps: float = 4.0,
    radius: float | None = None,
    min_objects: int = 1,
    max_objects: int = 2,
    max_events: int = 1,
    event_probability: float = 0.75,
    speed_range: tuple[float, float] = (0.1, 0.13),
) -> Clip:
    """Generate a clip made of two halves with different objects and events, for adapter composition.

    Each half is a scene of `num_steps` steps with one object (probability 1/3) or two (`max_objects` is capped at
    2; the weights balance the count answers). The second half uses only shapes and colours absent from the first,
    so every object is named unambiguously in the whole clip and each question's answer depends on one half. The
    returned clip has `2 * num_steps` steps; its caption is the first half's caption followed by the second's, and
    `segments` holds each half's own caption, questions and time span. The cut between the halves is not an
    [`Event`]: the first half's objects simply vanish and the second half's come in, as `visibility` shows.

    Args:
        seed (`int`): Non-negative seed. The same seed gives unrelated content in [`generate_clip`].
        num_steps (`int`): Steps per half.
        frames_per_step, size, fps, radius, min_objects, max_objects, max_events, event_probability, speed_range:
            See [`WorldConfig`].

    Returns:
        [`Clip`]: The whole clip, with `segments` = (first half, second half).
    """
    half_config = WorldConfig(
        num_steps=num_steps,
        frames_per_step=frames_per_step,
        size=size,
        fps=fps,
        radius=radius,
        min_objects=min(min_objects, _MAX_OBJECTS_PER_HALF),
        max_objects=min(max_objects, _MAX_OBJECTS_PER_HALF),
        max_events=max_events,
        event_probability=event_probability,
        speed_range=tuple(speed_range),
    )
    first_rng, second_rng = _rng(seed, _HALF_SCENE_STREAM, 0), _rng(seed, _HALF_SCENE_STREAM, 1)
    first = sample_scene(first_rng, _half_object_count(first_rng, half_config))
    used_colours = {colour for obj in first.objects for colour in obj.colours}
    used_shapes = {obj.shape for obj in first.objects}
    second = sample_scene(
        second_rng,
        _half_object_count(second_rng, half_config),
        colours=tuple(c for c in range(len(COLOURS)) if c not in used_colours),
        shapes=tuple(s for s in range(len(SHAPES)) if s not in used_shapes),
    )
    first_frames, first_maps = render_scene(first, half_config)
    second_frames, second_maps = render_scene(second, half_config)
    offset = len(first.objects)
    second_maps = np.where(second_maps >= 0, second_maps + offset, second_maps).astype(np.int16)

    first_qa = ask(first, _rng(seed, _HALF_LANGUAGE_STREAM, 0))
    second_qa = ask(second, _rng(seed, _HALF_LANGUAGE_STREAM, 1))
    first_caption, second_caption = describe(first), describe(second)
    half_duration = half_config.num_frames / fps
    segments = (
        Segment("first", (0, num_steps), (0.0, half_duration), first_caption, tuple(first_qa)),
        Segment(
            "second",
            (num_steps, 2 * num_steps),
            (half_duration, 2 * half_duration),
            second_caption,
            tuple(replace(item, objects=tuple(i + offset for i in item.objects)) for item in second_qa),
        ),
    )
    whole = _merge_halves(first, second)
    return Clip(
        seed=int(seed),
        config=replace(half_config, num_steps=2 * num_steps),
        frames=np.concatenate([first_frames, second_frames]),
        object_maps=np.concatenate([first_maps, second_maps]),
        objects=whole.objects,
        events=whole.events,
        caption=f"{first_caption} {second_caption}",
        qa=tuple(ask_two_segment(first, first_qa, second, second_qa)),
        segments=segments,
    )

"""Tests for the generated video world (video2lora/world)."""

import inspect
import json
import re
import time
from collections import Counter, defaultdict
from itertools import combinations

import av
import numpy as np
import pytest

from video2lora.data import REQUIRED_FIELDS, read_manifest
from video2lora.video import sample_video
from video2lora.world import (
    BACKGROUND_RGB,
    CAPTION_PROMPT,
    COLOURS,
    COUNT_WORDS,
    DIRECTIONS,
    EVENT_KINDS,
    PALETTE,
    QUESTION_TYPES,
    SHAPES,
    SPLIT_SEED_RANGES,
    Event,
    Scene,
    WorldConfig,
    WorldObject,
    clip_rows,
    generate_clip,
    generate_two_segment_clip,
    split_of_seed,
    split_seeds,
    write_world,
)
from video2lora.world.__main__ import main as world_main
from video2lora.world.language import ask, describe


@pytest.fixture(scope="module")
def clips():
    """300 default clips, shared by the statistical tests (about half a second to generate)."""
    return [generate_clip(seed) for seed in range(300)]


def centroid(object_map: np.ndarray, index: int) -> np.ndarray:
    rows, cols = np.nonzero(object_map == index)
    return np.array([cols.mean(), rows.mean()])


def test_same_seed_gives_the_same_clip():
    first, second = generate_clip(1234), generate_clip(1234)
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.object_maps, second.object_maps)
    assert first.objects == second.objects
    assert first.events == second.events
    assert first.caption == second.caption
    assert first.questions == second.questions


def test_different_seeds_give_different_clips(clips):
    frame_bytes = {clip.frames.tobytes() for clip in clips[:50]}
    assert len(frame_bytes) == 50
    assert len({clip.caption for clip in clips[:50]}) >= 45


def test_rejects_bad_seeds_and_configs():
    with pytest.raises(ValueError, match="non-negative"):
        generate_clip(-1)
    with pytest.raises(ValueError, match="num_steps"):
        generate_clip(0, num_steps=1)
    with pytest.raises(ValueError, match="too small"):
        generate_clip(0, size=16, radius=8)


def test_generate_clip_defaults_match_world_config():
    defaults = WorldConfig()
    for name, parameter in inspect.signature(generate_clip).parameters.items():
        if name != "seed":
            assert parameter.default == getattr(defaults, name), name


def test_clip_shapes_dtypes_and_timing():
    clip = generate_clip(5)
    assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.object_maps.shape == (8, 64, 64) and clip.object_maps.dtype == np.int16
    assert clip.duration == 2.0
    np.testing.assert_array_equal(clip.frame_steps, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(clip.step_centre_frames, [1, 3, 5, 7])
    assert all(isinstance(item, tuple) and len(item) == 3 for item in clip.questions)


def test_vocabularies_are_all_used(clips):
    colours_seen = {colour for clip in clips[:200] for obj in clip.objects for colour in obj.colours}
    shapes_seen = {obj.shape for clip in clips[:200] for obj in clip.objects}
    directions_seen = {obj.direction for clip in clips[:200] for obj in clip.objects}
    kinds_seen = {event.kind for clip in clips[:200] for event in clip.events}
    assert len(COLOURS) >= 5 and colours_seen == set(range(len(COLOURS)))
    assert len(SHAPES) >= 4 and shapes_seen == set(range(len(SHAPES)))
    assert directions_seen == set(range(len(DIRECTIONS)))
    assert kinds_seen == set(EVENT_KINDS)
    assert Counter(len(clip.objects) for clip in clips[:200]).keys() == {1, 2, 3}


def test_palette_is_distinct_and_background_is_not_black(clips):
    distances = [np.linalg.norm(a.astype(float) - b.astype(float)) for a, b in combinations(PALETTE, 2)]
    assert min(distances) > 170
    assert min(np.linalg.norm(np.array(BACKGROUND_RGB) - colour) for colour in PALETTE.astype(float)) > 140
    assert BACKGROUND_RGB != (0, 0, 0)
    # No frame (and no pixel) is all zero: the model drops all-zero frames as padding.
    assert min(int(clip.frames.max(axis=-1).min()) for clip in clips[:50]) == min(BACKGROUND_RGB)


def test_pixels_agree_with_object_maps_and_attribute_maps(clips):
    for clip in clips[:30]:
        colour_map, shape_map = clip.attribute_maps()
        background = clip.object_maps < 0
        assert (clip.frames[background] == BACKGROUND_RGB).all()
        np.testing.assert_array_equal(clip.frames[~background], PALETTE[colour_map[~background]])
        assert (colour_map[background] == -1).all() and (shape_map[background] == -1).all()
        shape_ids = np.array([obj.shape for obj in clip.objects])
        np.testing.assert_array_equal(shape_map[~background], shape_ids[clip.object_maps[~background]])


def test_objects_stay_inside_the_frame_and_apart(clips):
    for clip in clips[:200]:
        maps = clip.object_maps
        # A 1-pixel border (margin at 64 px) is never painted.
        for border in (maps[:, 0, :], maps[:, -1, :], maps[:, :, 0], maps[:, :, -1]):
            assert (border == -1).all(), clip.seed
        times = (np.arange(len(maps)) + 0.5) / clip.frames_per_step
        for frame, step in enumerate(clip.frame_steps):
            shown = [i for i, obj in enumerate(clip.objects) if obj.visible[step]]
            for i in range(len(clip.objects)):
                area = int((maps[frame] == i).sum())
                if i in shown:
                    # Every visible object is drawn whole (the smallest shape, the triangle, covers ~1.6 r^2).
                    assert area >= 1.4 * 8**2, (clip.seed, frame, i, area)
                else:
                    assert area == 0
            for i, j in combinations(shown, 2):
                gap = np.linalg.norm(clip.objects[i].position(times[frame]) - clip.objects[j].position(times[frame]))
                assert gap >= 2 * 8, (clip.seed, frame, i, j, gap)


def test_each_step_shows_an_object_and_events_follow_the_rules(clips):
    for clip in clips:
        visibility = clip.visibility
        assert visibility.any(axis=0).all(), clip.seed
        assert 1 <= len(clip.objects) <= 3 and len(clip.events) <= 1
        for obj in clip.objects:
            # Appearing or disappearing objects stay long enough (two steps) to show their motion.
            assert sum(obj.visible) >= 2
        colours = [colour for obj in clip.objects for colour in set(obj.colours)]
        assert len(colours) == len(set(colours)), "colours must be unique in a clip"
        assert len({obj.shape for obj in clip.objects}) == len(clip.objects), "shapes must be unique in a clip"


def test_events_are_visible_in_step_centre_frames(clips):
    checked = Counter()
    for clip in clips:
        centre_maps = clip.object_maps[clip.step_centre_frames]
        present = np.array([[(step_map == i).any() for step_map in centre_maps] for i in range(len(clip.objects))])
        np.testing.assert_array_equal(present, clip.visibility)
        for event in clip.events:
            before, after = centre_maps[event.step - 1], centre_maps[event.step]
            index = event.object_index
            if event.kind == "appear":
                assert not (before == index).any() and (after == index).any()
            elif event.kind == "disappear":
                assert (before == index).any() and not (after == index).any()
            checked[event.kind] += 1
    assert checked["appear"] > 20 and checked["disappear"] > 20


def test_colour_change_is_visible_in_pixels(clips):
    changes = 0
    for clip in clips:
        for event in clip.events:
            if event.kind != "colour_change":
                continue
            old = clip.objects[event.object_index].colours[event.step - 1]
            assert old != event.colour
            before, after = clip.step_centre_frames[event.step - 1], clip.step_centre_frames[event.step]
            before_pixels = clip.frames[before][clip.object_maps[before] == event.object_index]
            after_pixels = clip.frames[after][clip.object_maps[after] == event.object_index]
            assert len(before_pixels) and (before_pixels == PALETTE[old]).all()
            assert len(after_pixels) and (after_pixels == PALETTE[event.colour]).all()
            changes += 1
    assert changes > 50


def test_directions_match_centroid_motion(clips):
    expected_sign = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
    for clip in clips:
        centre_frames = clip.step_centre_frames
        for index, obj in enumerate(clip.objects):
            steps = np.flatnonzero(obj.visible)
            first, last = steps[0], steps[-1]
            motion = centroid(clip.object_maps[centre_frames[last]], index) - centroid(
                clip.object_maps[centre_frames[first]], index
            )
            per_step = motion / (last - first)
            sign_x, sign_y = expected_sign[DIRECTIONS[obj.direction]]
            for sign, component in ((sign_x, per_step[0]), (sign_y, per_step[1])):
                if sign == 0:
                    assert abs(component) < 0.5, (clip.seed, index, per_step)
                else:
                    # Clearly visible: at least 6 px per step at 64 px.
                    assert sign * component >= 6.0, (clip.seed, index, per_step)


def test_step_centre_frames_are_what_uniform_sampling_picks():
    clip = generate_clip(11, num_steps=6, frames_per_step=3, size=96, fps=6.0)
    assert clip.frames.shape == (18, 96, 96, 3) and clip.duration == 3.0
    sampled = sample_video(clip.frames, num_frames=clip.num_steps, frame_rate=clip.fps, max_edge=None)
    np.testing.assert_array_equal(sampled.frames, clip.frames[clip.step_centre_frames])


def test_radius_scales_with_size():
    areas = {}
    for size in (64, 96):
        clip = next(
            clip
            for clip in (generate_clip(seed, size=size) for seed in range(100))
            if any(SHAPES[obj.shape] == "circle" and all(obj.visible) for obj in clip.objects)
        )
        index = next(i for i, obj in enumerate(clip.objects) if SHAPES[obj.shape] == "circle" and all(obj.visible))
        areas[size] = (clip.object_maps == index).sum(axis=(1, 2))
    # Radius size / 8: 8 px and 12 px, so a circle covers about pi r^2 pixels in every frame.
    assert np.all(np.abs(areas[64] - np.pi * 8**2) < 15)
    assert np.all(np.abs(areas[96] - np.pi * 12**2) < 25)


def test_hand_built_scene_language():
    circle = WorldObject(
        shape=SHAPES.index("circle"),
        colours=(0, 0, 0, 0),
        direction=DIRECTIONS.index("left"),
        visible=(True, True, True, True),
        start=(50.0, 20.0),
        velocity=(-7.0, 0.0),
    )
    square = WorldObject(
        shape=SHAPES.index("square"),
        colours=(2, 2, 2, 2),
        direction=DIRECTIONS.index("still"),
        visible=(False, False, True, True),
        start=(20.0, 45.0),
        velocity=(0.0, 0.0),
    )
    scene = Scene(objects=(circle, square), events=(Event("appear", 2, 1),), num_steps=4)
    assert describe(scene) == "a red circle moves left. a blue square appears and stays still."
    items = ask(scene, np.random.default_rng(0))
    by_question = {item.question: item.answer for item in items}
    assert by_question["what colour is the circle?"] == "red"
    assert by_question["what colour is the square?"] == "blue"
    assert by_question["what shape is the red object?"] == "circle"
    assert by_question["what shape is the blue object?"] == "square"
    assert by_question["how many objects are there at the start?"] == "one"
    assert by_question["how many objects are there at the end?"] == "two"
    directions = sorted(item.answer for item in items if item.question_type == "direction")
    assert directions == ["left", "still"]
    (order,) = [item for item in items if item.question_type == "order"]
    assert order.question in {
        "what appears first, the circle or the square?",
        "what appears first, the square or the circle?",
    }
    assert order.answer == "circle"

    turned = WorldObject(
        shape=SHAPES.index("cross"),
        colours=(3, 3, 1, 1),
        direction=DIRECTIONS.index("up"),
        visible=(True,) * 4,
        start=(30.0, 50.0),
        velocity=(0.0, -7.0),
    )
    scene = Scene(objects=(turned,), events=(Event("colour_change", 2, 0, colour=1),), num_steps=4)
    assert describe(scene) == "a yellow cross moves up. the yellow cross turns green."
    items = {item.question: (item.answer, item.question_type) for item in ask(scene, np.random.default_rng(0))}
    assert items == {
        "what colour is the cross at first?": ("yellow", "colour"),
        "how many objects are there?": ("one", "count"),
        "which way does the cross move?": ("up", "direction"),
        "what colour does the cross turn?": ("green", "colour_change"),
        "which object changes colour?": ("cross", "colour_change"),
    }


def test_caption_states_objects_then_events_in_order(clips):
    verbs = {"appear": "appears", "disappear": "disappears", "colour_change": "turns"}
    for clip in clips[:100]:
        assert clip.caption == clip.caption.lower() and clip.caption.endswith(".")
        sentences = clip.caption[:-1].split(". ")
        num_initial = sum(obj.visible[0] for obj in clip.objects)
        assert len(sentences) == num_initial + len(clip.events)
        # Objects on screen at the start are listed left to right.
        initial = sorted((obj for obj in clip.objects if obj.visible[0]), key=lambda obj: obj.start[0])
        for obj, sentence in zip(initial, sentences, strict=False):
            assert sentence.startswith(f"a {COLOURS[obj.colours[0]]} {SHAPES[obj.shape]} ")
        for event, sentence in zip(clip.events, sentences[num_initial:], strict=True):
            assert SHAPES[clip.objects[event.object_index].shape] in sentence and verbs[event.kind] in sentence


def test_answers_are_correct_and_never_in_the_question(clips):
    vocabulary = {
        "colour": set(COLOURS),
        "shape": set(SHAPES),
        "count": set(COUNT_WORDS),
        "direction": set(DIRECTIONS),
        "order": set(SHAPES),
        "colour_change": set(COLOURS) | set(SHAPES),
    }
    for clip in clips:
        for item in clip.qa:
            assert item.question_type in QUESTION_TYPES
            assert item.answer in vocabulary[item.question_type], item
            words = re.findall(r"[a-z]+", item.question)
            if item.question_type == "order":
                # A two-way choice names both options; the answer is one of them.
                assert words.count(item.answer) == 1
            else:
                assert item.answer not in words, item
            if item.question_type == "colour":
                assert item.answer == COLOURS[clip.objects[item.objects[0]].colour]
            elif item.question_type == "shape":
                assert item.answer == SHAPES[clip.objects[item.objects[0]].shape]
            elif item.question_type == "direction":
                assert item.answer == DIRECTIONS[clip.objects[item.objects[0]].direction]
            elif item.question_type == "count" and item.question.endswith("start?"):
                assert item.answer == COUNT_WORDS[int(clip.visibility[:, 0].sum())]
            elif item.question_type == "count" and item.question.endswith("end?"):
                assert item.answer == COUNT_WORDS[int(clip.visibility[:, -1].sum())]
            elif item.question_type == "count":
                assert item.answer == COUNT_WORDS[len(clip.objects)]


def test_every_applicable_question_type_is_asked(clips):
    for clip in clips:
        types = Counter(item.question_type for item in clip.qa)
        assert types["colour"] == types["direction"] == len(clip.objects)
        assert types["shape"] == sum(not obj.changes_colour for obj in clip.objects)
        assert types["count"] == (1 if clip.visibility.all() else 2)
        kinds = {event.kind for event in clip.events}
        assert types["order"] == len(kinds & {"appear", "disappear"})
        assert types["colour_change"] == (2 if "colour_change" in kinds else 0)


def test_answers_are_balanced_within_each_type(clips):
    answers = defaultdict(Counter)
    order_answer_first = Counter()
    for clip in clips:
        for item in clip.qa:
            answers[item.question_type][item.answer] += 1
            if item.question_type == "order":
                order_answer_first[item.question.split(", the ")[1].startswith(item.answer)] += 1
    assert set(answers) == set(QUESTION_TYPES)
    for question_type, counts in answers.items():
        top_answer, top_count = counts.most_common(1)[0]
        # No exception was needed: every type has at least two answers that the sampling keeps near-uniform.
        assert top_count / sum(counts.values()) < 0.6, (question_type, counts)
        assert len(counts) >= 3, (question_type, counts)
    # Two-way order questions list the right option first about half of the time.
    assert 0.35 < order_answer_first[True] / sum(order_answer_first.values()) < 0.65


def test_split_seed_ranges_are_disjoint():
    ranges = list(SPLIT_SEED_RANGES.values())
    assert set(SPLIT_SEED_RANGES) == {"train", "validation", "test"}
    for first, second in combinations(ranges, 2):
        assert first.stop <= second.start or second.stop <= first.start
    assert split_seeds("validation", 3) == range(1_000_000, 1_000_003)
    assert split_seeds("test", 2, offset=10) == range(2_000_010, 2_000_012)
    assert split_of_seed(999_999) == "train" and split_of_seed(1_000_000) == "validation"
    with pytest.raises(ValueError, match="holds"):
        split_seeds("train", 2, offset=999_999)
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("dev", 1)


def test_generation_is_fast():
    generate_clip(0)
    start = time.perf_counter()
    for seed in range(100):
        generate_clip(seed)
    per_clip = (time.perf_counter() - start) / 100
    # About 1.5 ms here; the bound leaves room for a loaded CI machine.
    assert per_clip < 0.010, per_clip


def decode(path) -> np.ndarray:
    """Every frame of a video file, decoded with PyAV."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_write_world_writes_decodable_videos_and_a_valid_manifest(tmp_path):
    manifest = write_world(tmp_path, split="validation", num_clips=3, progress=False)
    assert manifest == tmp_path / "validation.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    report = read_manifest(manifest, check_files=True)
    assert len(report.rows) == len(rows) and not report.bad_rows
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert set(REQUIRED_FIELDS) <= set(row) and "span" not in row
        assert row["dataset"] == "world" and row["split"] == "validation"
        assert row["metadata"]["seed"] in SPLIT_SEED_RANGES["validation"]
        assert row["metadata"]["question_type"] in QUESTION_TYPES + ("caption",)
        assert row["target_text"]
        if row["task_type"] == "caption":
            assert row["prompt"] == CAPTION_PROMPT
        else:
            assert row["task_type"] == "qa" and " " not in row["target_text"]

    video_paths = sorted({row["video_path"] for row in rows})
    assert video_paths == [f"videos/validation/validation-{seed:07d}.mp4" for seed in range(1_000_000, 1_000_003)]
    clip = generate_clip(1_000_000)
    decoded = decode(tmp_path / video_paths[0])
    assert decoded.shape == clip.frames.shape
    # Lossy coding (4:2:0 chroma) blurs edges; away from them the colours survive closely.
    maps = clip.object_maps
    interior = np.zeros(maps.shape, dtype=bool)
    interior[:, 1:-1, 1:-1] = (maps[:, 1:-1, 1:-1] >= 0) & np.logical_and.reduce(
        [
            maps[:, 1:-1, 1:-1] == shifted
            for shifted in (maps[:, :-2, 1:-1], maps[:, 2:, 1:-1], maps[:, 1:-1, :-2], maps[:, 1:-1, 2:])
        ]
    )
    assert interior.sum() > 500
    error = np.abs(decoded.astype(int) - clip.frames.astype(int))
    assert error[interior].mean() < 12 and error[maps < 0].mean() < 6
    with av.open(str(tmp_path / video_paths[0])) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(4.0)


def test_write_world_can_keep_only_clips_with_a_question_type(tmp_path, capsys):
    # Seeds are scanned in order: every clip kept has an order question, every seed skipped in between has none.
    world_main(["--out", str(tmp_path), "--split", "train", "--num-clips", "3", "--seed-offset", "10",
                "--require-question-type", "order", "--manifest-name", "order.jsonl", "--no-progress"])
    report = read_manifest(tmp_path / "order.jsonl", check_files=True)
    assert not report.bad_rows
    kept = sorted({row["metadata"]["seed"] for row in report.rows})
    assert len(kept) == 3 and kept[0] >= 10
    has_order = {seed: "order" in {item.question_type for item in generate_clip(seed).qa} for seed in range(10, kept[-1] + 1)}
    assert kept == [seed for seed, asked in has_order.items() if asked]
    assert len(has_order) > len(kept)  # the filter really skipped seeds (a third of clips have order questions)
    assert sorted(path.name for path in (tmp_path / "videos/train").iterdir()) == [f"train-{seed:07d}.mp4" for seed in kept]
    # Every row of a kept clip is written, not only its order questions.
    assert {row["metadata"]["question_type"] for row in report.rows} > {"order", "caption"}

    with pytest.raises(ValueError, match="unknown question type 'when'"):
        write_world(tmp_path, split="train", num_clips=1, require_question_type="when", progress=False)
    # The last four train seeds hold two clips with order questions (999,998 and 999,999), not three: one line, exit 2.
    with pytest.raises(SystemExit) as exit_info:
        world_main(["--out", str(tmp_path / "end"), "--split", "train", "--num-clips", "3", "--seed-offset", "999996",
                    "--require-question-type", "order", "--no-progress"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "only 2 clips of split 'train' from offset 999996 on have a question of type 'order'" in error
    assert "Traceback" not in error
    assert len(read_manifest(tmp_path / "end" / "train.jsonl", check_files=True).rows) > 2  # the two found are kept


def test_two_segment_clip_halves_and_rows(tmp_path):
    clip = generate_two_segment_clip(7)
    assert clip.num_steps == 8 and clip.frames.shape == (16, 64, 64, 3)
    first, second = clip.segments
    assert (first.name, first.span, first.steps) == ("first", (0.0, 2.0), (0, 4))
    assert (second.name, second.span, second.steps) == ("second", (2.0, 4.0), (4, 8))
    assert clip.caption == f"{first.caption} {second.caption}"

    visibility = clip.visibility
    first_objects = np.flatnonzero(visibility[:, :4].any(axis=1))
    second_objects = np.flatnonzero(visibility[:, 4:].any(axis=1))
    assert set(first_objects).isdisjoint(second_objects)
    assert set(first_objects) | set(second_objects) == set(range(len(clip.objects)))
    assert not visibility[first_objects, 4:].any() and not visibility[second_objects, :4].any()
    # Halves share no shape and no colour, so every object is named unambiguously in the whole clip.
    assert len({obj.shape for obj in clip.objects}) == len(clip.objects)
    all_colours = [colour for obj in clip.objects for colour in set(obj.colours)]
    assert len(all_colours) == len(set(all_colours))
    # Each half's questions concern only that half's objects.
    assert all(set(item.objects) <= set(first_objects) for item in first.qa)
    assert all(set(item.objects) <= set(second_objects) for item in second.qa)
    for item in clip.qa:
        if item.question_type != "count":
            assert set(item.objects) <= set(first_objects) or set(item.objects) <= set(second_objects)

    rows = clip_rows(clip, "videos/test/two.mp4", "test")
    by_segment = defaultdict(list)
    for row in rows:
        by_segment[row["metadata"]["segment"]].append(row)
    assert set(by_segment) == {"whole", "first", "second"}
    assert {tuple(row["span"]) for row in by_segment["whole"]} == {(0.0, 4.0)}
    assert {tuple(row["span"]) for row in by_segment["first"]} == {(0.0, 2.0)}
    assert {tuple(row["span"]) for row in by_segment["second"]} == {(2.0, 4.0)}
    assert len(by_segment["first"]) == 1 + len(first.qa) and len(by_segment["second"]) == 1 + len(second.qa)
    assert by_segment["second"][0]["target_text"] == second.caption
    assert (
        by_segment["first"][0]["metadata"]["num_steps"] == 4 and by_segment["whole"][0]["metadata"]["num_steps"] == 8
    )

    world_main(["--out", str(tmp_path), "--split", "test", "--num-clips", "2", "--two-segment", "--no-progress"])
    manifest = tmp_path / "test_two_segment.jsonl"
    report = read_manifest(manifest, check_files=True)
    assert {row["metadata"]["segment"] for row in report.rows} == {"whole", "first", "second"}
    assert decode(tmp_path / "videos/test/test-two-segment-2000000.mp4").shape == (16, 64, 64, 3)


def test_two_segment_count_answers_are_balanced():
    counts = Counter(
        item.answer
        for seed in range(200)
        for item in generate_two_segment_clip(seed).qa
        if item.question_type == "count"
    )
    assert set(counts) == {"one", "two"}
    assert max(counts.values()) / sum(counts.values()) < 0.6

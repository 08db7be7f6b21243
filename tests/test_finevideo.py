"""Tests for the FineVideo-style manifest builder (video2lora/finevideo.py) on a small fake corpus in that schema."""

import json
import random
from collections import Counter

import datasets
import pytest

from tests.conftest import make_frames
from video2lora.data import read_manifest
from video2lora.finevideo import (
    CAPTION_PROMPTS,
    DEFAULT_MIX,
    SPAN_KINDS,
    SUMMARY_PROMPTS,
    FineVideoError,
    Scene,
    SpanMixer,
    build_finevideo_manifests,
    candidate_spans,
    main,
    parse_example,
    parse_mix,
    parse_timestamp,
)
from video2lora.video import sample_video, write_video

FPS = 4.0
# (seconds of video, scene boundaries in seconds); each distinct clip is reused under several file names.
CLIPS = [(6.0, [0.0, 2.5, 6.0]), (8.0, [0.0, 2.0, 4.5, 8.0]), (5.0, [0.0, 5.0]), (7.0, [0.0, 1.5, 3.0, 5.0, 7.0])]
NUM_GOOD = 40


def timestamp(seconds: float) -> str:
    """FineVideo's HH:MM:SS.mmm."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes // 60):02d}:{int(minutes % 60):02d}:{rest:06.3f}"


def annotations(name: str, bounds: list[float], duration: float, **overrides) -> dict:
    scenes = [
        {"sceneId": i + 1, "title": f"scene {i + 1} of {name}", "description": "things happen",
         "timestamps": {"start_timestamp": timestamp(start), "end_timestamp": timestamp(end)}}
        for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    record = {
        "original_video_filename": f"{name}.mp4",
        "duration_seconds": duration,
        "content_fine_category": "Testing",
        "content_metadata": {"description": f"the video {name}", "scenes": scenes},
    }
    record.update(overrides)
    return record


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A fake corpus: NUM_GOOD good videos, then bad ones, as a save_to_disk folder and as a parquet folder."""
    root = tmp_path_factory.mktemp("finevideo-src")
    clip_bytes = []
    for index, (seconds, _) in enumerate(CLIPS):
        path = root / f"clip{index}.mp4"
        write_video(path, make_frames(int(seconds * FPS), seed=index, size=32), fps=FPS)
        clip_bytes.append(path.read_bytes())
    examples = []
    for video in range(NUM_GOOD):
        clip = video % len(CLIPS)
        seconds, bounds = CLIPS[clip]
        examples.append({"mp4": clip_bytes[clip], "json": annotations(f"video{video:03d}", bounds, seconds)})
    good = examples[0]["json"]
    bad = [
        # Missing scenes.
        {"mp4": clip_bytes[0], "json": {**good, "original_video_filename": "bad-noscenes.mp4",
                                        "content_metadata": {"description": "no scenes", "scenes": None}}},
        # An unparsable timestamp.
        {"mp4": clip_bytes[0], "json": annotations("bad-timestamp", [0.0, 2.5, 6.0], 6.0)},
        # A scene past the end of the video.
        {"mp4": clip_bytes[0], "json": annotations("bad-outside", [0.0, 2.5, 30.0], 6.0)},
        # Bytes that are not a video.
        {"mp4": b"definitely not an mp4 file", "json": annotations("bad-bytes", [0.0, 2.5, 6.0], 6.0)},
        # The same video name twice.
        {"mp4": clip_bytes[1], "json": annotations("video000", [0.0, 2.0, 4.5, 8.0], 8.0)},
    ]
    bad[1]["json"]["content_metadata"]["scenes"][1]["timestamps"]["end_timestamp"] = "about a minute"
    examples += bad
    dataset = datasets.Dataset.from_list(examples)
    disk = root / "disk"
    dataset.save_to_disk(str(disk))
    parquet = root / "parquet"
    parquet.mkdir()
    dataset.select(range(0, 20)).to_parquet(str(parquet / "train-00000-of-00002.parquet"))
    dataset.select(range(20, len(dataset))).to_parquet(str(parquet / "train-00001-of-00002.parquet"))
    return {"disk": disk, "parquet": parquet, "examples": examples, "num_bad": len(bad)}


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("finevideo-out")
    report = build_finevideo_manifests(corpus["disk"], out, val_fraction=0.2, seed=3, progress=False)
    return out, report


def rows_of(out):
    rows = []
    for name in ("train.jsonl", "validation.jsonl"):
        rows += read_manifest(out / name, require_target=False, check_files=True).rows
    return rows


def test_parse_timestamp_forms():
    assert parse_timestamp("00:00:12.480") == pytest.approx(12.48)
    assert parse_timestamp("01:02:03.5") == pytest.approx(3723.5)
    assert parse_timestamp("1:05") == 65.0
    assert parse_timestamp("7") == 7.0
    assert parse_timestamp(2.5) == 2.5
    for bad in ("about a minute", "1:60", "00:61:00", "1:2:3:4", "-1", "", True, None, float("nan")):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_parse_mix():
    assert parse_mix("scene=6,adjacent=3,whole=1") == pytest.approx(DEFAULT_MIX)
    assert parse_mix("whole=1") == {"scene": 0.0, "adjacent": 0.0, "whole": 1.0}
    for bad in ("shot=1", "scene", "scene=-1", "scene=0,whole=0", "scene=x"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def random_videos(count: int, seed: int = 0):
    rng = random.Random(seed)
    for video in range(count):
        num_scenes = rng.randint(1, 8)
        duration = rng.uniform(20, 300)
        edges = [0.0, *sorted(rng.uniform(2, duration - 2) for _ in range(num_scenes - 1)), duration]
        yield f"v{video}", [Scene(i, i + 1, edges[i], edges[i + 1]) for i in range(num_scenes)], duration


def test_mix_proportions_over_many_spans():
    mixer = SpanMixer(spans_per_video=4, seed=0, min_span_seconds=0.0)
    chosen = [mixer.choose(*video) for video in random_videos(500)]
    counts = Counter(span.kind for spans in chosen for span in spans)
    total = sum(counts.values())
    assert total > 1500 and all(len(spans) <= 4 for spans in chosen)
    for kind in SPAN_KINDS:
        assert counts[kind] / total == pytest.approx(DEFAULT_MIX[kind], abs=0.01), counts
    # Another mix, and a seed that changes which spans but not the shares.
    other = SpanMixer("scene=0.5,adjacent=0.5", spans_per_video=2, seed=1, min_span_seconds=0.0)
    counts = Counter(span.kind for video in random_videos(300) for span in other.choose(*video))
    assert counts["whole"] == 0 and abs(counts["scene"] - counts["adjacent"]) <= 0.05 * sum(counts.values())


def test_mixer_is_deterministic_and_spans_follow_scenes():
    first = [SpanMixer(seed=5).choose(*video) for video in random_videos(50)]
    second = [SpanMixer(seed=5).choose(*video) for video in random_videos(50)]
    assert first == second
    assert first != [SpanMixer(seed=6).choose(*video) for video in random_videos(50)]
    for (_, scenes, duration), spans in zip(random_videos(50), first, strict=True):
        assert len({(span.start, span.end) for span in spans}) == len(spans)  # no span twice
        for span in spans:
            covered = [scenes[position] for position in span.scenes]
            assert 0 <= span.start < span.end <= duration
            if span.kind == "scene":
                assert (span.start, span.end) == (covered[0].start, covered[0].end)
            elif span.kind == "adjacent":
                assert covered[1].position == covered[0].position + 1
                assert (span.start, span.end) == (covered[0].start, covered[1].end)
            else:
                assert (span.start, span.end) == (0.0, duration) and len(covered) == len(scenes)


def test_candidate_spans_of_a_one_scene_video():
    # The single scene covers the whole video: one span, not two, and no adjacent span.
    candidates = candidate_spans([Scene(0, 1, 0.0, 5.0)], 5.0)
    assert [len(candidates[kind]) for kind in SPAN_KINDS] == [1, 0, 0]
    # A scene shorter than min_span_seconds is left out; the whole video repeats the adjacent span, so it is too.
    candidates = candidate_spans([Scene(0, 1, 0.0, 0.5), Scene(1, 2, 0.5, 5.0)], 5.0, min_span_seconds=1.0)
    assert [[span.scenes for span in candidates[kind]] for kind in SPAN_KINDS] == [[(1,)], [(0, 1)], []]


def test_parse_example_errors_are_one_line(corpus):
    examples = corpus["examples"]
    parsed = parse_example(examples[0], 0)
    assert parsed.video_id == "video000" and [s.scene_id for s in parsed.scenes] == [1, 2]
    assert parsed.duration == pytest.approx(6.0, abs=0.3)
    cases = {
        NUM_GOOD: "missing field 'json.content_metadata.scenes'",
        NUM_GOOD + 1: "cannot parse timestamp 'about a minute'",
        NUM_GOOD + 2: "lies outside the video",
        NUM_GOOD + 3: "not a readable video",
    }
    for index, expected in cases.items():
        with pytest.raises(FineVideoError, match=expected) as caught:
            parse_example(examples[index], index)
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"example {index}")
    with pytest.raises(FineVideoError, match="missing field 'mp4'"):
        parse_example({"json": examples[0]["json"]}, 7)
    # A stated duration is used when the container is not probed; the scene ends are checked against it.
    with pytest.raises(FineVideoError, match="outside the video"):
        parse_example({"mp4": b"x", "json": annotations("short", [0.0, 2.0, 9.0], 4.0)}, 0, probe_duration=False)


def test_build_writes_videos_once_and_valid_manifests(corpus, built):
    out, report = built
    assert report.videos == NUM_GOOD and report.videos_written == NUM_GOOD and report.videos_existing == 0
    assert len(report.bad_examples) == corpus["num_bad"] == report.examples_read - NUM_GOOD
    assert any("duplicate video id" in message for _, message in report.bad_examples)
    rows = rows_of(out)
    assert len(rows) == report.num_spans == sum(report.rows.values())
    assert len({row["id"] for row in rows}) == len(rows)
    # Each video is one file, holding the source's bytes, however many spans point into it.
    files = sorted((out / "videos").glob("*.mp4"))
    assert len(files) == NUM_GOOD == len({row["video_path"] for row in rows})
    assert not list((out / "videos").glob(".*"))  # no temporary files left
    by_name = {example["json"]["original_video_filename"]: example["mp4"] for example in corpus["examples"][:NUM_GOOD]}
    assert all(path.read_bytes() == by_name[path.name] for path in files)
    assert report.video_bytes == sum(path.stat().st_size for path in files)
    # Splits are by video: no video in both; and about val_fraction of them in validation.
    splits = {}
    for row in rows:
        assert splits.setdefault(row["video_path"], row["split"]) == row["split"]
    assert 0 < Counter(splits.values())["validation"] < NUM_GOOD / 2


def test_spans_lie_in_scenes_and_in_the_video(corpus, built):
    out, report = built
    annotations_of = {example["json"]["original_video_filename"][:-4]: example["json"]
                      for example in corpus["examples"][:NUM_GOOD]}
    for row in rows_of(out):
        meta = row["metadata"]
        start, end = row["span"]
        scenes = annotations_of[meta["video_id"]]["content_metadata"]["scenes"]
        bounds = {scene["sceneId"]: (parse_timestamp(scene["timestamps"]["start_timestamp"]),
                                     parse_timestamp(scene["timestamps"]["end_timestamp"])) for scene in scenes}
        assert row["target_text"] == "" and row["dataset"] == "finevideo"
        assert 0 <= start < end <= meta["video_duration"]
        assert meta["source_id"] == f"{meta['video_id']}.mp4" and meta["category"] == "Testing"
        if meta["span_kind"] == "scene":
            assert row["task_type"] == "caption" and row["prompt"] in CAPTION_PROMPTS
            (scene_id,) = meta["scene_ids"]
            assert (start, end) == pytest.approx(bounds[scene_id], abs=1e-6)
        elif meta["span_kind"] == "adjacent":
            assert row["task_type"] == "summary" and row["prompt"] in SUMMARY_PROMPTS
            first, second = meta["scene_ids"]
            assert second == first + 1
            assert (start, end) == pytest.approx((bounds[first][0], bounds[second][1]), abs=1e-6)
        else:
            assert row["task_type"] == "summary" and start == 0.0 and end == meta["video_duration"]
            assert meta["scene_ids"] == sorted(bounds)
    # Over 40 videos of 4 spans at most, the published mix within a few spans.
    assert report.num_spans > 100
    for kind in SPAN_KINDS:
        assert report.mix()[kind] == pytest.approx(DEFAULT_MIX[kind], abs=0.03)
    # A span decodes with the project's one sampler.
    row = next(row for row in rows_of(out) if row["metadata"]["span_kind"] == "scene")
    video = sample_video(row["video_path"], start=row["span"][0], end=row["span"][1], fps=None, num_frames=4)
    assert len(video.frames) == 4


def test_rerun_is_idempotent_and_streaming_parquet_gives_the_same(corpus, built, tmp_path):
    out, report = built
    manifests = {name: (out / name).read_bytes() for name in ("train.jsonl", "validation.jsonl")}
    mtimes = {path.name: path.stat().st_mtime_ns for path in (out / "videos").glob("*.mp4")}
    again = build_finevideo_manifests(corpus["disk"], out, val_fraction=0.2, seed=3, progress=False)
    assert again.videos_written == 0 and again.videos_existing == NUM_GOOD
    assert {name: (out / name).read_bytes() for name in manifests} == manifests
    assert {path.name: path.stat().st_mtime_ns for path in (out / "videos").glob("*.mp4")} == mtimes
    saved = json.loads((out / "finevideo_report.json").read_text())
    assert saved["videos"] == NUM_GOOD and saved["bad_examples"] == corpus["num_bad"]
    assert saved["disk_use"]["video_bytes_per_span"] == pytest.approx(again.video_bytes / again.num_spans)
    # Streaming a folder of parquet files (load_dataset(..., streaming=True)) gives the same manifests.
    streamed = build_finevideo_manifests(corpus["parquet"], tmp_path, val_fraction=0.2, seed=3, progress=False)
    assert isinstance(streamed.examples_read, int) and streamed.videos == NUM_GOOD
    assert {name: (tmp_path / name).read_bytes() for name in manifests} == manifests


def test_bounds_strict_and_command_line(corpus, tmp_path, capsys):
    report = build_finevideo_manifests(corpus["disk"], tmp_path / "small", max_videos=5, spans_per_video=2,
                                       prompts_per_span=2, val_fraction=0, progress=False)
    assert report.videos == 5 and report.examples_read == 5 and not (tmp_path / "small" / "validation.jsonl").exists()
    rows = read_manifest(tmp_path / "small" / "train.jsonl", require_target=False).rows
    assert len(rows) == 2 * report.num_spans and report.num_spans <= 10
    per_span = Counter((row["video_path"], tuple(row["span"])) for row in rows)
    assert set(per_span.values()) == {2} and len({row["prompt"] for row in rows}) > 2
    # A longer run extends a shorter one: a video's spans depend only on the videos before it.
    longer = build_finevideo_manifests(corpus["disk"], tmp_path / "longer", max_videos=8, spans_per_video=2,
                                       prompts_per_span=2, val_fraction=0, progress=False)
    assert longer.videos == 8
    shorter_text = (tmp_path / "small" / "train.jsonl").read_text()
    assert (tmp_path / "longer" / "train.jsonl").read_text().startswith(shorter_text)
    expected = r"^example 40 \(bad-noscenes\): missing field 'json.content_metadata.scenes'"
    with pytest.raises(FineVideoError, match=expected):
        build_finevideo_manifests(corpus["disk"], tmp_path / "strict", strict=True, progress=False)

    main(["--source", str(corpus["disk"]), "--out", str(tmp_path / "cli"), "--max_videos", "3", "--no_progress"])
    printed = capsys.readouterr().out
    assert "videos: 3 (3 written" in printed and "per span" in printed
    assert len(read_manifest(tmp_path / "cli" / "train.jsonl", require_target=False).rows) > 0
    with pytest.raises(SystemExit) as exited:
        main(["--source", str(corpus["disk"]), "--out", str(tmp_path / "cli"), "--mix", "shots=1"])
    assert exited.value.code == 2
    assert "unknown span kind 'shots'" in capsys.readouterr().err

"""A long video end to end on the embedded default: a 1,024-frame world clip, internalized segment by segment, answers
about both its first and its last segment with one composed adapter."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from modeling_video2lora import Video2LoRAModel
from video2lora.world import write_world

CHECKPOINT = Path(__file__).resolve().parent.parent / "video2lora" / "checkpoints" / "video2lora-world"
NUM_CLIPS = 8


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """Held-out two-part clips of 2 x 4 steps x 128 frames: 1,024 frames (16 s at 64 fps) each, with each half's
    questions (objects of one half only: the halves use disjoint shapes and colours) asked about the whole clip."""
    root = tmp_path_factory.mktemp("long_video")
    manifest = write_world(root, split="test", num_clips=NUM_CLIPS, two_segment=True, frames_per_step=128, fps=64.0,
                           seed_offset=1000, progress=False)
    clips = {}
    for row in map(json.loads, manifest.read_text().splitlines()):
        clips.setdefault(row["video_path"], []).append(row)
    return root, clips


def test_a_1024_frame_video_answers_about_its_first_and_last_segment(long_clips):
    import av

    root, clips = long_clips
    model = Video2LoRAModel.from_pretrained(CHECKPOINT)
    frames_per_call = []
    model.vlm.model.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: frames_per_call.append((args or [kwargs["pixel_values"]])[0].shape[0]),
        with_kwargs=True)

    correct = {"first": [], "last": [], "last, first segment's adapter only": []}
    for video, rows in clips.items():
        path = root / video
        with av.open(str(path)) as container:
            assert container.streams.video[0].frames == 1024
        frames_per_call.clear()
        adapter = model.internalize(path, segments=2)
        # Memory-flat: the vision tower saw one segment's frames at a time, never the video.
        assert len(frames_per_call) == 2 and max(frames_per_call) <= model.processor.video_sampling["max_frames"]
        spans = adapter.metadata["segments"]
        assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(16.0, abs=0.1)
        first_only = model.internalize(path, start=spans[0][0], end=spans[0][1], keep_place=True)
        halves = {half: {row["prompt"] for row in rows if row["metadata"]["segment"] == half}
                  for half in ("first", "second")}
        for row in rows:
            if row["metadata"]["segment"] != "whole" or row["task_type"] != "qa" or row["metadata"]["question_type"] \
                    == "count":  # counts at the start / the end are whole-clip questions, scored by the sweep
                continue
            half = "first" if row["prompt"] in halves["first"] else "last"
            with torch.inference_mode():
                correct[half].append(model.answer(adapter, row["prompt"]).strip() == row["target_text"])
                if half == "last":
                    correct["last, first segment's adapter only"].append(
                        model.answer(first_only, row["prompt"]).strip() == row["target_text"])

    accuracy = {key: sum(values) / len(values) for key, values in correct.items()}
    print({key: f"{accuracy[key]:.2f} of {len(values)}" for key, values in correct.items()})  # README's figures, `-s`
    assert min(len(values) for values in correct.values()) >= 15, correct
    # One adapter knows both ends of the video ...
    assert accuracy["first"] >= 0.75 and accuracy["last"] >= 0.75, accuracy
    # ... and the last segment's answers come from the last segment's adapter, not from guessing.
    assert accuracy["last, first segment's adapter only"] <= accuracy["last"] - 0.3, accuracy


def _sweep_module():
    path = Path(__file__).resolve().parent.parent / "scripts" / "long_video_sweep.py"
    spec = importlib.util.spec_from_file_location("long_video_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_table_states_each_types_equivalence_and_clip_count():
    sweep = _sweep_module()
    score = {"n": 300, "blind": 0.2, "base": 0.98, "v2l": 0.97, "delta": -0.01, "ci": [-0.02, 0.0], "equivalent": True}
    short = {**score, "n": 62, "v2l": 0.77, "delta": -0.07, "ci": [-0.2, 0.05], "equivalent": False}
    result = {"name": "8 steps", "clips": 200, "steps": 8, "segments": 2, "scores": {"all QA": score, "order": short}}
    text = sweep.table([result])
    assert "| 8 steps | 200 | 8 | 8 | 2 | 300 |" in text
    assert "0.98 / 0.77 (62, no)" in text  # a short type says so, with its count of questions
    assert "| – |" in text  # types without questions are left blank, not scored
    # The harder scenes are the kinds that take --harder-clips.
    assert {v["name"] for v in sweep.variants()} - {f"{n}x" for n in sweep.LENGTHS} == set(sweep.HARDER)

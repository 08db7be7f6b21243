"""A long video end to end on the embedded default: a 1,024-frame world clip, internalized segment by segment, answers
about both its first and its last segment with one composed adapter; and the sweep's tables."""

import json
from pathlib import Path

import pytest
import torch

from modeling_video2lora import Video2LoRAModel
from tests.conftest import load_script
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
    return load_script("long_video_sweep")


def _stub_runs(sweep, monkeypatch, groups=("qa",), records=None) -> list[list[str]]:
    """Stands in for rendering and `video2lora eval`: keeps each command; an evaluation writes a summary of `groups`
    (each scored 0.9 by both systems) and, when given, `records(output_dir)`. Returns the commands kept."""
    commands = []

    def run(command, threads=None):
        commands.append(command)
        if "eval" in command:
            output = Path(command[command.index("--output_dir") + 1])
            output.mkdir(parents=True)
            metric = {"exact_match": {"means": {"blind": 0.2, "base": 0.9, "v2l": 0.9}, "delta": 0.0,
                                      "ci_low": -0.1, "ci_high": 0.1, "equivalent": False}}
            summary = {"groups": {group: {"num_items": 10, "metrics": metric} for group in groups}}
            (output / "summary.json").write_text(json.dumps(summary))
            if records is not None:
                records(output)

    monkeypatch.setattr(sweep, "run", run)
    return commands


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


def test_a_sweep_for_one_question_type_renders_clips_that_ask_it_and_scores_it_alone(tmp_path, monkeypatch):
    sweep = _sweep_module()
    commands = _stub_runs(sweep, monkeypatch, groups=("qa", "qa/order"))
    assert sweep.main(["--kinds", "8 steps", "--question-type", "order", "--harder-clips", "300", "--out",
                       str(tmp_path / "out"), "--results", str(tmp_path / "order"), "--compose", "latents"]) == 0
    render, evaluate = commands
    assert render[render.index("--require-question-type") + 1] == "order"
    assert "question_type=order" in evaluate[evaluate.index("--where"):]
    # Apart from the sweep's own 8-step clips, which ask every type.
    assert "8_steps-300-order" in render[render.index("--out") + 1]
    record = json.loads((tmp_path / "order.json").read_text())
    assert record["question_type"] == "order" and set(record["results"][0]["scores"]) == {"all QA", "order"}


def test_a_one_segment_sweep_reads_every_clip_as_one_training_length_segment_for_both_systems(tmp_path, monkeypatch):
    sweep = _sweep_module()
    commands = _stub_runs(sweep, monkeypatch)
    assert sweep.main(["--kinds", "8x", "--one-segment", "--out", str(tmp_path / "out"),
                       "--results", str(tmp_path / "one")]) == 0
    evaluate = commands[-1]
    # One segment of a training clip's frames; Base is given those frames (segments x num_frames), nothing composed.
    assert evaluate[evaluate.index("--segments") + 1] == "1"
    assert evaluate[evaluate.index("--num_frames") + 1] == str(sweep.STEPS_PER_TRAINING_CLIP)
    assert "--compose" not in evaluate and "--segment_layout" not in evaluate
    assert f"| 8x | 40 | 32 | {sweep.STEPS_PER_TRAINING_CLIP} | 1 |" in (tmp_path / "one.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--one-segment", "--segment-layout", "interleaved", "--out", str(tmp_path / "refused")])
    assert exit_info.value.code == 2 and not (tmp_path / "refused").exists()


def test_against_pairs_this_sweeps_v2l_with_another_sweeps_base_question_by_question(tmp_path, monkeypatch):
    sweep = _sweep_module()

    def records(folder, answers):  # one record per question: system -> exact match
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"id": f"q{i}", "task_type": "qa", "question_type": kind,
                             "scores": {system: {"exact_match": value} for system, value in scores.items()}})
                 for i, (kind, scores) in enumerate(answers)]
        lines.append(json.dumps({"id": "c", "task_type": "caption", "question_type": None, "scores": {}}))
        (folder / "records.jsonl").write_text("\n".join(lines) + "\n")

    # Their Base is right on every count question and wrong on every order one; our V2L the other way round.
    theirs = [("count", {"base": 1.0, "v2l": 0.0})] * 30 + [("order", {"base": 0.0, "v2l": 1.0})] * 10
    ours = [("count", {"base": 0.0, "v2l": 0.0})] * 30 + [("order", {"base": 0.0, "v2l": 1.0})] * 10
    records(tmp_path / "theirs", theirs)
    other = {"results": [{"name": "8x", "length": 8, "output_dir": str(tmp_path / "theirs"),
                          "scores": {"all QA": {"base": 0.75}}}]}
    (tmp_path / "other.json").write_text(json.dumps(other))

    _stub_runs(sweep, monkeypatch, records=lambda output: records(output, ours))
    assert sweep.main(["--kinds", "8x", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "sweep"),
                       "--compose", "latents", "--against", f"4 frames={tmp_path / 'other.json'}"]) == 0
    scores = json.loads((tmp_path / "sweep.json").read_text())["against"]["results"][0]["scores"]
    assert scores["count"]["base"] == 1.0 and scores["count"]["v2l"] == 0.0 and scores["count"]["delta"] == -1.0
    assert scores["order"]["base"] == 0.0 and scores["order"]["v2l"] == 1.0 and scores["order"]["n"] == 10
    assert scores["all QA"]["n"] == 40 and not scores["all QA"]["equivalent"]
    assert "V2L against Base (4 frames)" in (tmp_path / "sweep.md").read_text()


def test_the_sweep_refuses_an_unknown_kind_or_comparison_before_any_clip_is_rendered(tmp_path, capsys):
    sweep = _sweep_module()
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--kinds", "8x", "3x", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "invalid choice: '3x'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--compare", f"contiguous={tmp_path / 'missing.json'}", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--compare takes LABEL=JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--against", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--against takes LABEL=JSON" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_boundary_events_tells_a_change_between_segments_from_one_inside(tmp_path):
    """scripts/boundary_events.py on a hand-made sweep of two 8-step clips read as 2 segments: one colour change on
    step 4 (the second segment's first: no segment sees it), one on another step."""
    import subprocess
    import sys

    from video2lora.world.clip import generate_clip

    found = {}
    for seed in range(2_000_000, 2_000_400):  # test-split seeds with one colour change each, at and off step 4
        changes = [e for e in generate_clip(seed, num_steps=8).events if e.kind == "colour_change"]
        if len(changes) == 1:
            found.setdefault("boundary" if changes[0].step == 4 else "inside", (seed, changes[0].object_index))
        if len(found) == 2:
            break
    stem, rows, records = "8_steps-2", [], []
    for where, (seed, changed) in found.items():
        rows.append({"id": f"{seed}-qa", "metadata": {"seed": seed, "objects": [changed]}})
        right = where == "inside"  # V2L right inside a segment only; Base right on both
        records.append({"id": f"{seed}-qa", "question_type": "colour_change", "scores": {
            "base": {"exact_match": 1.0}, "v2l": {"exact_match": float(right)}}})
    (tmp_path / "clips" / stem).mkdir(parents=True)
    (tmp_path / "clips" / stem / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"results": [{"name": "8 steps", "steps": 8, "world": [], "segments": 2,
                            "output_dir": str(tmp_path / "eval" / stem)},
                           {"name": "1x", "steps": 4, "world": ["--max-events", "1"], "segments": 1,
                            "output_dir": str(tmp_path / "none")}]}
    (tmp_path / "eval" / stem).mkdir(parents=True)
    (tmp_path / "eval" / stem / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "results.json").write_text(json.dumps(results))
    script = Path(__file__).resolve().parent.parent / "scripts" / "boundary_events.py"
    table = subprocess.run([sys.executable, str(script), "--results", str(tmp_path / "results.json"), "--out",
                            str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "| 8 steps | 2 | 1, 1.00, 1.00 | 1, 1.00, 0.00 |" in table
    assert "| 1x |" not in table  # one segment has no boundary


def test_adapter_ceiling_fits_one_clips_adapter_to_any_answer_it_is_given(tmp_path, capsys):
    """scripts/adapter_ceiling.py: optimizing a clip's adapter directly makes it give the answer it was fitted to, a
    wrong colour included, and leaves the hypernetwork's adapter as it was; the command tables both and refuses a
    missing file with exit 2."""
    from train_hf import Video2LoRACollator
    from video2lora.world import COLOURS

    ceiling = load_script("adapter_ceiling")
    manifest = write_world(tmp_path, split="test", num_clips=1, seed_offset=77, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    row = next(r for r in rows if r["metadata"]["question_type"] == "colour")
    wrong = next(colour for colour in COLOURS if colour != row["target_text"])
    model = Video2LoRAModel.from_pretrained(CHECKPOINT).eval().requires_grad_(False)
    video = model.processor.sample_video(str(tmp_path / row["video_path"]), num_frames=4)
    adapter = model.internalize(video)
    assert model.answer(adapter, row["prompt"]) == row["target_text"]
    batch = Video2LoRACollator(model.processor, model.config.instruction)([
        {"frames": video.frames, "timestamps": video.timestamps, "duration": video.duration,
         "questions": [{"prompt": row["prompt"], "target": wrong, "teacher": None}]}])
    fitted = ceiling.optimized(model, adapter, batch, steps=30, learning_rate=1e-2)
    assert model.answer(fitted, row["prompt"]) == wrong
    assert model.answer(adapter, row["prompt"]) == row["target_text"]

    output = tmp_path / "ceiling.json"
    assert ceiling.main(["--model", str(CHECKPOINT), "--teacher", str(manifest), "--data-root", str(tmp_path),
                         "--videos", "1", "--steps", "2", "--output", str(output)]) == 0
    summary = json.loads(output.read_text())["summary"]
    questions = sum(r["task_type"] == "qa" for r in rows)
    assert {system: s["all QA"]["questions"] for system, s in summary.items()} == dict.fromkeys(
        ("hypernetwork", "optimized", "teacher"), questions)
    assert summary["teacher"]["all QA"]["accuracy"] == 1.0  # a world manifest's targets are its labels
    assert "| all QA |" in capsys.readouterr().out
    assert ceiling.main(["--model", str(CHECKPOINT), "--teacher", str(tmp_path / "missing.jsonl")]) == 2

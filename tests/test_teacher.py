"""Teacher targets on a tiny random SmolVLM over real world clips: format, resume, sharding and bad rows."""

import json

import pytest
import torch

from video2lora.data import ManifestError, read_manifest, write_manifest
from video2lora.teacher import (
    _answer_rows,
    _answer_video,
    _load_video,
    _part_paths,
    _shared_prefix_length,
    _video_key,
    _video_prompt_ids,
    generate_teacher_targets,
    load_teacher,
    main,
    weights_fingerprint,
)
from video2lora.world import write_world

GENERATION = dict(num_frames=4, batch_size=2, max_new_tokens=4, top_k_logprobs=3, progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, saved_base):
    """A saved tiny base and a manifest of 6 good rows (2 clips) plus 3 bad ones at known lines."""
    root = tmp_path_factory.mktemp("teacher")
    world = write_world(root, split="train", num_clips=2, progress=False)
    rows = [json.loads(line) for line in world.read_text().splitlines()]
    first, second = [r for r in rows if "0000000" in r["id"]][:3], [r for r in rows if "0000001" in r["id"]][:3]
    missing = {**first[0], "id": "missing-video", "video_path": "videos/train/nope.mp4"}
    unknown_task = {**first[1], "id": "bad-task", "task_type": "poem"}
    lines = [json.dumps(r) for r in first[:2]] + ["{not json"] + [json.dumps(r) for r in (first[2], missing)]
    lines += [json.dumps(r) for r in second] + [json.dumps(unknown_task)]
    manifest = root / "in.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    vlm, teacher_processor = load_teacher(saved_base)
    good_ids = [r["id"] for r in first + second]
    # 1-based lines: bad JSON on 3, missing video on 5, unknown task type on 9.
    return {"root": root, "base": saved_base, "manifest": manifest, "vlm": vlm, "processor": teacher_processor,
            "good_ids": good_ids,
            "bad_lines": [3, 5, 9], "references": {r["id"]: r["target_text"] for r in first + second}}


@pytest.fixture(scope="module")
def reference_output(setup):
    """One uninterrupted run, through the command line."""
    output = setup["root"] / "reference.jsonl"
    report = main(["--model", str(setup["base"]), "--manifest", str(setup["manifest"]),
                   "--output", str(output), "--num_frames", "4", "--batch_size", "2",
                   "--max_new_tokens", "4", "--top_k_logprobs", "3", "--no_progress"])
    return output, report


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_teacher_writes_a_well_formed_manifest(setup, reference_output):
    output, report = reference_output
    rows = _rows(output)
    assert [r["id"] for r in rows] == setup["good_ids"]  # manifest order, bad rows left out
    assert sorted(line for line, _ in report.bad_rows) == setup["bad_lines"]
    assert any("nope.mp4" in reason for _, reason in report.bad_rows)
    assert not _part_paths(output)  # finalized: no part files left behind
    # The output is itself a valid manifest with targets, its videos resolving against the same root.
    assert len(read_manifest(output, data_root=setup["root"], check_files=True).rows) == len(rows)
    for row in rows:
        assert row["target_text"].strip() and row["reference_text"] == setup["references"][row["id"]]
        assert row["metadata"]["teacher"]["weights"] == weights_fingerprint(setup["vlm"])
        logprobs = row["teacher_logprobs"]
        steps = len(logprobs["token_ids"])
        assert 1 <= steps <= 4 and len(logprobs["top_ids"]) == len(logprobs["top_logprobs"]) == steps
        for step, token in enumerate(logprobs["token_ids"]):
            # Greedy: every generated token is the teacher's top-1, and the top-k are sorted log-probs.
            assert logprobs["top_ids"][step][0] == token
            values = logprobs["top_logprobs"][step]
            assert len(values) == 3 and values == sorted(values, reverse=True) and values[0] <= 0
        decoded = setup["processor"].tokenizer.decode(logprobs["token_ids"], skip_special_tokens=True).strip()
        assert decoded == row["target_text"]


def _same_manifest(a, b):
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["target_text"] == y["target_text"]
        assert x["teacher_logprobs"]["token_ids"] == y["teacher_logprobs"]["token_ids"]
        assert torch.allclose(torch.tensor(x["teacher_logprobs"]["top_logprobs"]),
                              torch.tensor(y["teacher_logprobs"]["top_logprobs"]), atol=2e-4)


def test_interrupted_run_resumes_to_the_same_manifest(setup, reference_output):
    output = setup["root"] / "resumed.jsonl"

    def interrupt(done):
        raise KeyboardInterrupt  # as if the job were killed right after the first batch reached disk

    with pytest.raises(KeyboardInterrupt):
        generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output,
                                 on_batch_end=interrupt, **GENERATION)
    assert not output.exists()  # never a half-written output manifest
    (part,) = _part_paths(output)
    assert len(_rows(part)) == 2
    with part.open("a") as handle:
        handle.write('{"id": "torn')  # a row cut off mid-write by the kill
    report = generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output, **GENERATION)
    assert report.num_resumed == 2 and report.num_generated == 4
    _same_manifest(_rows(output), _rows(reference_output[0]))
    # A rerun over a finished output answers nothing new and leaves it as it is.
    again = generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output, **GENERATION)
    assert again.num_generated == 0 and again.num_resumed == 6
    _same_manifest(_rows(output), _rows(reference_output[0]))


def test_resume_refuses_another_teachers_answers(setup, reference_output):
    import copy
    import shutil

    output = setup["root"] / "retrained.jsonl"
    shutil.copy(reference_output[0], output)
    retrained = copy.deepcopy(setup["vlm"])
    with torch.no_grad():
        retrained.lm_head.weight.mul_(1.5)  # the same path, other weights: a teacher retrained in place
    with pytest.raises(ValueError, match="already holds answers from another teacher") as error:
        generate_teacher_targets(retrained, setup["processor"], setup["manifest"], output, **GENERATION)
    assert "delete it or choose another --output" in str(error.value) and "\n" not in str(error.value)
    _same_manifest(_rows(output), _rows(reference_output[0]))  # nothing was touched


def test_sharded_run_merges_in_manifest_order(setup, reference_output):
    output = setup["root"] / "sharded.jsonl"
    second = generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output,
                                      process_index=1, num_processes=2, **GENERATION)
    assert second.output is None and not output.exists()  # only the main process merges
    first = generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output,
                                     process_index=0, num_processes=2, **GENERATION)
    assert first.num_generated + second.num_generated == 6
    _same_manifest(_rows(output), _rows(reference_output[0]))


def test_bad_input_fails_with_one_line_errors(setup, tmp_path, capsys):
    with pytest.raises(ManifestError, match="does not exist"):
        generate_teacher_targets(setup["vlm"], setup["processor"], tmp_path / "nope.jsonl", tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="must differ"):
        generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], setup["manifest"])
    with pytest.raises(ValueError, match="batch_size"):
        generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], tmp_path / "o.jsonl",
                                 batch_size=0)
    not_a_vlm = tmp_path / "bert"
    not_a_vlm.mkdir()
    (not_a_vlm / "config.json").write_text(json.dumps({"model_type": "bert"}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as error:
        main(["--model", str(not_a_vlm), "--manifest", str(setup["manifest"]), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert error.value.code == 2 and "'bert' model" in err and err.count("\n") == 1
    # A manifest whose every row is bad still yields a (empty) well-formed output.
    bad = tmp_path / "bad.jsonl"
    write_manifest(bad, [{"id": "x"}])
    report = generate_teacher_targets(setup["vlm"], setup["processor"], bad, tmp_path / "empty.jsonl", **GENERATION)
    assert report.bad_rows and (tmp_path / "empty.jsonl").read_text() == ""


def _teacher_order(rows):
    """The order today's path answered rows in: QA before captions, batches mixing videos."""
    return sorted(rows, key=lambda row: row["task_type"] != "qa")


def test_one_prefix_per_video_answers_as_each_row_encoded_with_its_video(setup, tmp_path):
    """The cached path (each video's shared prompt prefix, frames included, prefilled once; every batch feeds only
    its questions' remaining tokens) gives today's answers: each row encoded whole with its video, batches mixing
    videos. Same tokens and top-k ids, log-probs to float rounding, for several videos of several questions each."""
    vlm, processor = setup["vlm"], setup["processor"]
    rows = read_manifest(write_world(tmp_path, split="validation", num_clips=3, progress=False)).rows
    videos = {}
    for row in rows:
        if _video_key(row) not in videos:
            videos[_video_key(row)] = _load_video(row, {}, processor, num_frames=4)
    options = dict(max_new_tokens=8, top_k=5)
    order = _teacher_order(rows)
    expected = {}
    for start in range(0, len(order), 4):
        batch = order[start:start + 4]
        answers = _answer_rows(vlm, processor, [videos[_video_key(row)] for row in batch],
                               [row["prompt"] for row in batch], **options)
        expected.update(zip([row["id"] for row in batch], answers, strict=True))

    mixed_lengths = 0
    for key, video in videos.items():
        group = _teacher_order([row for row in rows if _video_key(row) == key])
        prompts = [row["prompt"] for row in group]
        assert len(group) >= 8
        prompt_ids = _video_prompt_ids(processor, video, prompts)
        length = _shared_prefix_length(prompt_ids, processor.image_token_id)
        assert length is not None and processor.image_token_id in prompt_ids[0][:length]
        mixed_lengths += sum(len({len(ids) for ids in prompt_ids[i:i + 4]}) > 1 for i in range(0, len(group), 4))
        batches = list(_answer_video(vlm, processor, video, prompts, batch_size=4, **options))
        assert [len(batch) for batch in batches] == [len(prompts[i:i + 4]) for i in range(0, len(prompts), 4)]
        for row, (text, logprobs) in zip(group, [answer for batch in batches for answer in batch], strict=True):
            want_text, want = expected[row["id"]]
            assert text == want_text and logprobs["token_ids"] == want["token_ids"], row["id"]
            assert logprobs["top_ids"] == want["top_ids"], row["id"]
            assert torch.allclose(torch.tensor(logprobs["top_logprobs"]), torch.tensor(want["top_logprobs"]),
                                  rtol=0, atol=1e-5), row["id"]
    assert mixed_lengths >= 3  # batches whose questions have different lengths (padding between prefix and tail)


def test_whole_run_matches_the_per_row_encoding(setup, reference_output, monkeypatch):
    """End to end, the manifest written from cached prefixes is the one the per-row encoding writes."""
    from video2lora import teacher

    monkeypatch.setattr(teacher, "_shared_prefix_length", lambda prompt_ids, image_token_id: None)
    output = setup["root"] / "per_row.jsonl"
    generate_teacher_targets(setup["vlm"], setup["processor"], setup["manifest"], output, **GENERATION)
    _same_manifest(_rows(output), _rows(reference_output[0]))


def test_question_before_the_video_falls_back_to_per_row_encoding(setup, tmp_path, monkeypatch):
    """A chat template that writes the question before the video leaves no shared prefix holding the frames: each row
    is then encoded with its video, and the answers are those of the per-row path."""
    import copy

    from video2lora import teacher

    processor = copy.deepcopy(setup["processor"])
    processor.chat_template = (
        "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}: "
        "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}{% endif %}{% endfor %}"
        "{% for line in message['content'] %}{% if line['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
    rows = [row for row in read_manifest(setup["manifest"], data_root=setup["root"], strict=False).rows
            if "0000000" in row["id"]]
    video = _load_video(rows[0], {}, processor, num_frames=4)
    prompts = [row["prompt"] for row in rows]
    assert _shared_prefix_length(_video_prompt_ids(processor, video, prompts), processor.image_token_id) is None

    def no_prefix(*args, **kwargs):
        raise AssertionError("no prefix holds the frames")

    monkeypatch.setattr(teacher, "_prefill_prefix", no_prefix)
    options = dict(max_new_tokens=4, top_k=3)
    answers = [answer for batch in _answer_video(setup["vlm"], processor, video, prompts, batch_size=2, **options)
               for answer in batch]
    expected = [answer for start in range(0, len(prompts), 2)
                for answer in _answer_rows(setup["vlm"], processor, [video] * len(prompts[start:start + 2]),
                                           prompts[start:start + 2], **options)]
    assert answers == expected

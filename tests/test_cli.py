"""The `video2lora` command line, run in-process against a tiny random Video2LoRA model and generated world clips."""

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from configuration_video2lora import Video2LoRAConfig
from modeling_video2lora import AdapterMismatchError, Video2LoRAAdapter, Video2LoRAModel
from tests.conftest import TINY_HYPERNETWORK, perturb_
from video2lora import runner
from video2lora.cli import main
from video2lora.data import read_manifest
from video2lora.tiny import build_processor, tiny_smolvlm_config, tokens_per_frame
from video2lora.video import write_video
from video2lora.world import generate_clip, split_seeds, write_world

MAX_NEW_TOKENS = "3"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`main(argv)` in-process: (exit status, stdout, stderr). argparse errors exit through SystemExit."""
    capsys.readouterr()  # drop anything printed before
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    # Library progress bars may share stderr (model loading); the error itself is exactly one line, the last.
    errors = [line for line in err.splitlines() if line.startswith("video2lora: error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two held-out world clips as MP4 files plus their manifest (one caption row and several questions each)."""
    root = tmp_path_factory.mktemp("world")
    manifest = write_world(root, split="test", num_clips=2, progress=False)
    return manifest, sorted((root / "videos" / "test").glob("*.mp4"))


@pytest.fixture
def model(make_model):
    model = make_model()
    perturb_(model)  # an untrained hypernetwork emits a no-op adapter: V2L would equal Blind
    return model


@pytest.fixture
def model_dir(model, tmp_path):
    path = tmp_path / "model"
    model.save_pretrained(path)
    return path


def v2l_answer(model, video_path, question):
    """The answer the CLI must print: the adapter of the same frames, the same greedy decoding."""
    adapter = model.internalize(video_path)  # the Python door: the CLI must give the very same adapter
    return model.answer(adapter, question, max_new_tokens=int(MAX_NEW_TOKENS))


def test_internalize_writes_peft_folder_and_provenance(capsys, model, model_dir, world, tmp_path):
    video_path = world[1][0]
    out = tmp_path / "adapter"
    code, stdout, _ = run_cli(capsys, "internalize", video_path, "-o", out, "--model", model_dir)
    assert code == 0 and "internalized 4 frames" in stdout
    assert {"adapter_config.json", "adapter_model.safetensors", "video2lora.json"} <= {p.name for p in out.iterdir()}

    record = json.loads((out / "video2lora.json").read_text())
    assert record["video"]["sha256"] == hashlib.sha256(video_path.read_bytes()).hexdigest()
    assert record["frames"]["count"] == model.processor.video_sampling["max_frames"] == len(record["frames"]["timestamps"])
    assert record["model"]["name_or_path"] == str(model_dir)
    assert record["base"]["fingerprint"] == model.fingerprint
    assert record["created_at"].endswith("+00:00")

    # The folder holds exactly the adapter of those frames, and is a valid PEFT LoRA.
    adapter = Video2LoRAAdapter.from_pretrained(out)
    assert record["frames"]["timestamps"] == model.processor.sample_video(video_path).timestamps
    expected = model.internalize(video_path)  # the Python door, bit for bit
    for name in expected.lora_A:
        assert torch.equal(adapter.lora_A[name], expected.lora_A[name])
        assert torch.equal(adapter.scaled_B()[name], expected.scaled_B()[name])
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    try:
        import video2lora.cards  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "README.md").read_text().startswith("---")


def test_internalize_span_and_num_frames(capsys, model_dir, world, tmp_path):
    out = tmp_path / "adapter"
    code, _, _ = run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir, "--num_frames", "2",
                         "--start", "0.5", "--end", "1.5")
    assert code == 0
    frames = json.loads((out / "video2lora.json").read_text())["frames"]
    assert frames["count"] == 2 and frames["span"] == [0.5, 1.5]
    assert frames["duration"] == pytest.approx(1.0)
    assert all(0 <= t < 1.0 for t in frames["timestamps"])


def test_internalize_segments_is_the_python_adapter_and_records_each_span(capsys, model, model_dir, world, tmp_path):
    video_path, out = world[1][0], tmp_path / "adapter"
    code, _, _ = run_cli(capsys, "internalize", video_path, "-o", out, "--model", model_dir, "--segments", "3",
                         "--num_frames", "2", "--segment_batch_size", "2", "--segment_overlap", "1")
    assert code == 0
    expected = model.internalize(video_path, segments=3, num_frames=2, segment_overlap=1)  # one at a time
    record = json.loads((out / "video2lora.json").read_text())["frames"]
    assert record["segments"] == expected.metadata["segments"] and len(record["segments"]) == 3
    adapter = Video2LoRAAdapter.from_pretrained(out)
    assert adapter.rank == expected.rank
    for name, b in expected.scaled_B().items():  # stored in the base's dtype (fp32 here); batched reads round apart
        torch.testing.assert_close(adapter.scaled_B()[name], b, rtol=1e-4, atol=1e-5)


def test_internalize_interleaved_segments_is_the_python_adapter(capsys, model, model_dir, world, tmp_path):
    video_path, out = world[1][0], tmp_path / "adapter"
    code, _, _ = run_cli(capsys, "internalize", video_path, "-o", out, "--model", model_dir, "--segments", "2",
                         "--num_frames", "2", "--segment_layout", "interleaved")
    assert code == 0
    expected = model.internalize(video_path, segments=2, num_frames=2, segment_layout="interleaved")
    adapter = Video2LoRAAdapter.from_pretrained(out)
    for name, b in expected.scaled_B().items():
        torch.testing.assert_close(adapter.scaled_B()[name], b, rtol=1e-4, atol=1e-5)
    contiguous = model.internalize(video_path, segments=2, num_frames=2)
    assert not torch.allclose(adapter.scaled_B()["mlp.down_proj"], contiguous.scaled_B()["mlp.down_proj"])


def test_ask_with_video_and_with_adapter_dir(capsys, model, model_dir, world, tmp_path):
    video_path, question = world[1][0], "what colour is the square?"
    expected = v2l_answer(model, video_path, question)

    code, from_video, _ = run_cli(capsys, "ask", video_path, question, "which way?", "--model", model_dir,
                                  "--max_new_tokens", MAX_NEW_TOKENS)
    assert code == 0
    assert from_video.count("Q: ") == 2 and "Base" not in from_video
    answers = re.findall(r"V2L .*?s\): (.*)", from_video)
    assert answers[0] == expected

    assert run_cli(capsys, "internalize", video_path, "-o", tmp_path / "adapter", "--model", model_dir)[0] == 0
    code, from_adapter, _ = run_cli(capsys, "ask", tmp_path / "adapter", question, "--model", model_dir,
                                    "--max_new_tokens", MAX_NEW_TOKENS)
    assert code == 0
    assert re.findall(r"V2L .*?s\): (.*)", from_adapter) == [expected]


def test_ask_compare_reports_visual_tokens_and_timings(capsys, model, model_dir, base_config, world):
    code, out, _ = run_cli(capsys, "ask", world[1][1], "how many objects are there?", "--compare", "--model",
                           model_dir, "--max_new_tokens", MAX_NEW_TOKENS)
    assert code == 0
    v2l = re.search(r"V2L +\( *(\d+) visual tokens, +([\d.]+) s\)", out)
    base = re.search(r"Base +\( *(\d+) visual tokens, +([\d.]+) s\)", out)
    assert v2l and base, out
    assert int(v2l[1]) == 0
    assert int(base[1]) == model.processor.video_sampling["max_frames"] * tokens_per_frame(base_config) > 0
    assert float(base[2]) > 0 and float(v2l[2]) > 0


def test_demo_prints_table_and_summary(capsys, model_dir):
    code, out, _ = run_cli(capsys, "demo", "--model", model_dir, "--seed", "3", "--compare",
                           "--max_new_tokens", MAX_NEW_TOKENS)
    assert code == 0
    clip = generate_clip(split_seeds("test", 1, offset=3)[0])
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert "V2L (0 visual tokens)" in table[0] and "Base (64 visual tokens)" in table[0]
    assert len(table) == 1 + 1 + len(clip.qa)  # header, caption row, one row per question
    for item, line in zip(clip.qa, table[2:], strict=True):
        assert item.question in line and f"| {item.answer} " in line
    assert re.search(rf"exact match on {len(clip.qa)} questions: V2L \d+, Base \d+", out)


def test_eval_writes_summary_records_and_report(capsys, model, model_dir, world, tmp_path, monkeypatch):
    manifest, videos = world
    calls = []
    original = Video2LoRAModel.internalize
    monkeypatch.setattr(Video2LoRAModel, "internalize", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(capsys, "eval", "--manifest", manifest, "--model", model_dir, "--output_dir", out,
                              "--max_new_tokens", MAX_NEW_TOKENS, "--num_resamples", "200", "--margins",
                              "token_f1=0.1")
    assert code == 0
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(calls) == len(videos) == 2  # one adapter per video, reused for all of its questions

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    for record in records:
        assert set(record["scores"]) == set(record["answers"]) == {"base", "v2l", "blind"}
        assert record["visual_tokens"]["v2l"] == 0 < record["visual_tokens"]["base"]
    qa = next(r for r in records if r["task_type"] == "qa")
    assert not os.path.isabs(qa["video_path"])  # relative to the data root: reports carry no machine paths
    assert qa["answers"]["v2l"] == v2l_answer(model, manifest.parent / qa["video_path"], qa["prompt"])
    assert qa["answers"]["blind"] == model.answer(None, qa["prompt"], max_new_tokens=int(MAX_NEW_TOKENS))

    summary = json.loads((out / "summary.json").read_text())
    question_types = {row["metadata"]["question_type"] for row in rows if row["task_type"] == "qa"}
    assert {"overall", "caption", "qa", *(f"qa/{t}" for t in question_types)} == set(summary["groups"])
    assert summary["margins"]["token_f1"] == 0.1
    assert set(summary["groups"]["qa"]["metrics"]["exact_match"]["means"]) == {"blind", "base", "v2l"}
    report = (out / "report.md").read_text()
    assert report.strip() in stdout and "### token_f1" in report and "| qa/count |" in report


def test_eval_max_rows_and_judge(capsys, model_dir, world, tokenizer, tmp_path):
    judge = tmp_path / "judge"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(judge)
    tokenizer.save_pretrained(judge)
    code, _, _ = run_cli(capsys, "eval", "--manifest", world[0], "--model", model_dir, "--max_rows", "3",
                         "--judge", judge, "--output_dir", tmp_path / "eval", "--max_new_tokens", MAX_NEW_TOKENS,
                         "--num_resamples", "100")
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all("judge" in record["scores"][system] for record in records for system in ("base", "v2l", "blind"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["judge"]["answers"] == 9


def test_eval_composes_segment_adapters(capsys, model, model_dir, world, tmp_path):
    manifest, videos = world
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    qa = next(row for row in rows if row["task_type"] == "qa" and row["video_path"].endswith(videos[1].name))
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(capsys, "eval", "--manifest", manifest, "--model", model_dir, "--output_dir", out,
                              "--where", f"id={qa['id']}", "--segments", "2", "--compose", "average",
                              "--num_frames", "2", "--max_new_tokens", MAX_NEW_TOKENS, "--num_resamples", "50")
    assert code == 0 and "2 segment adapters per video, composed by average" in stdout
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert record["id"] == qa["id"]
    assert json.loads((out / "summary.json").read_text())["composition"] == {"segments": 2, "mode": "average",
                                                                          "layout": "contiguous"}

    # V2L answered with the average of the two halves' adapters (2 frames each); Base saw 4 frames of the whole.
    whole = model.processor.sample_video(videos[1], num_frames=4)
    halves = [model.internalize(videos[1], num_frames=2, start=start, end=end)
              for start, end in ((0.0, whole.duration / 2), (whole.duration / 2, whole.duration))]
    composed = Video2LoRAAdapter.compose(halves, mode="average")
    assert record["answers"]["v2l"] == model.answer(composed, qa["prompt"], max_new_tokens=int(MAX_NEW_TOKENS))
    assert record["visual_tokens"]["base"] == runner.visual_tokens_per_query(model, whole)

    code, _, err = run_cli(capsys, "eval", "--manifest", manifest, "--model", model_dir, "--where", "segment=none")
    assert_one_line_error(code, err, "no rows matching --where segment=none")
    code, _, err = run_cli(capsys, "eval", "--manifest", manifest, "--model", model_dir, "--where", "segment")
    assert code == 2 and "argument --where: expected FIELD=VALUE, got 'segment'" in err


def test_rows_group_by_video_and_span(world, model):
    manifest, videos = world
    rows = read_manifest(manifest).rows
    first, second = str(videos[0]), str(videos[1])
    on_first = sum(row["video_path"] == first for row in rows)
    halves = [{**rows[0], "id": "a", "span": [0.0, 1.0]}, {**rows[1], "id": "b", "span": [0, 1]},
              {**rows[0], "id": "c", "span": [1.0, 2.0]}]
    groups = runner.group_by_video(rows + halves)
    assert [key for key, _ in groups] == [(first, None), (second, None), (first, (0.0, 1.0)), (first, (1.0, 2.0))]
    assert [len(group) for _, group in groups] == [on_first, len(rows) - on_first, 2, 1]
    video = runner.read_row_video(model, halves[2], num_frames=2)
    assert video.duration == pytest.approx(1.0) and video.num_frames == 2


# ---- user errors: one line on stderr, exit status 2, no traceback ---------------------------------------------------


def test_corrupt_and_missing_videos(capsys, model_dir, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    code, _, err = run_cli(capsys, "internalize", corrupt, "-o", tmp_path / "a", "--model", model_dir)
    assert_one_line_error(code, err, "cannot read video", "corrupt.mp4")
    assert not (tmp_path / "a").exists()

    code, _, err = run_cli(capsys, "ask", tmp_path / "missing.mp4", "what?", "--model", model_dir)
    assert_one_line_error(code, err, "missing.mp4", "does not exist")

    (tmp_path / "file").write_text("")
    code, _, err = run_cli(capsys, "internalize", corrupt, "-o", tmp_path / "file", "--model", model_dir)
    assert_one_line_error(code, err, "is a file")


def test_span_past_the_end_is_a_user_error(capsys, model_dir, world, tmp_path):
    code, _, err = run_cli(capsys, "internalize", world[1][0], "-o", tmp_path / "a", "--model", model_dir,
                           "--start", "50")
    assert_one_line_error(code, err, "span start")


def test_adapter_for_another_base(capsys, tokenizer, model_dir, world, tmp_path):
    # A different text decoder (hidden 32, not 64): its adapters must be refused, not silently misapplied.
    other_base = tiny_smolvlm_config(tokenizer, text_hidden=32)
    other = Video2LoRAModel(Video2LoRAConfig(base_config=other_base, **TINY_HYPERNETWORK),
                            processor=build_processor(tokenizer, other_base)).eval()
    other.save_pretrained(tmp_path / "other")
    assert run_cli(capsys, "internalize", world[1][0], "-o", tmp_path / "adapter", "--model", tmp_path / "other")[0] == 0
    code, _, err = run_cli(capsys, "ask", tmp_path / "adapter", "what?", "--model", model_dir)
    assert_one_line_error(code, err, "Internalize the video again")


def test_not_an_adapter_folder_and_compare_without_video(capsys, model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "ask", tmp_path / "empty", "what?", "--model", model_dir)
    assert_one_line_error(code, err, "is not an adapter folder")
    code, _, err = run_cli(capsys, "ask", tmp_path / "empty", "what?", "--compare", "--model", model_dir)
    assert_one_line_error(code, err, "--compare needs the video")


def test_bad_manifest_row(capsys, model_dir, world, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    good = world[0].read_text().splitlines()[0]
    manifest.write_text(good + "\n" + '{"id": "x", "video_path": "v.mp4", "task_type": "poem"}\n')
    code, _, err = run_cli(capsys, "eval", "--manifest", manifest, "--model", model_dir, "--output_dir", tmp_path)
    assert_one_line_error(code, err, f"{manifest}:2:")
    assert not (tmp_path / "summary.json").exists()

    code, _, err = run_cli(capsys, "eval", "--manifest", tmp_path / "nope.jsonl", "--model", model_dir)
    assert_one_line_error(code, err, "manifest file does not exist")


def test_eval_checks_videos_and_judge_before_loading_the_model(capsys, world, tmp_path):
    row = json.loads(world[0].read_text().splitlines()[0])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({**row, "video_path": "gone.mp4"}) + "\n")
    code, _, err = run_cli(capsys, "eval", "--manifest", manifest, "--model", tmp_path / "no-model")
    assert_one_line_error(code, err, "gone.mp4")
    code, _, err = run_cli(capsys, "eval", "--manifest", world[0], "--model", tmp_path / "no-model", "--judge",
                           tmp_path / "no-judge")
    assert_one_line_error(code, err, "--judge", "no-judge")


def test_missing_models(capsys, world, tmp_path, monkeypatch):
    video = world[1][0]
    code, _, err = run_cli(capsys, "ask", video, "what?", "--model", tmp_path / "no-model")
    assert_one_line_error(code, err, "cannot load model", "no-model")
    # The embedded default is resolved from the package, whatever the working directory.
    assert runner.DEFAULT_MODEL_PATH.is_absolute() and runner.DEFAULT_MODEL_PATH.name == "video2lora-world"
    monkeypatch.setattr(runner, "DEFAULT_MODEL_PATH", tmp_path / "checkpoints" / "video2lora-world")
    code, _, err = run_cli(capsys, "ask", video, "what?")
    assert_one_line_error(code, err, "embedded default model is not installed", "--model")


def test_bad_arguments_exit_2(capsys):
    code, _, err = run_cli(capsys, "eval", "--manifest", "m.jsonl", "--margins", "token_f1")
    assert code == 2 and "METRIC=VALUE" in err
    code, _, _ = run_cli(capsys, "demo", "--seed", "-1", "--model", "x")
    assert code == 2


def test_parsing_does_not_import_transformers():
    # HF_HUB_OFFLINE is set after parsing and must be seen by huggingface_hub, so parsing may not import it.
    script = ("import sys; from video2lora.cli import build_parser; "
              "build_parser().parse_args(['ask', 'v.mp4', 'q']); "
              "print(sorted(m for m in ('transformers', 'huggingface_hub', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_printed_answers_never_carry_control_characters(capsys, model_dir, world, monkeypatch):
    monkeypatch.setattr(runner, "answer_with_adapter", lambda *a, **k: ["red\x1b[2J\x07"])
    code, out, _ = run_cli(capsys, "ask", world[1][0], "what?", "--model", model_dir)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "red" in out


def test_write_video_round_trip_feeds_internalize(capsys, model_dir, tmp_path):
    # A user's own video (not from the world): odd size, another container.
    frames = np.random.default_rng(0).integers(1, 256, (6, 33, 47, 3), dtype=np.uint8)
    write_video(tmp_path / "mine.mkv", frames, fps=3.0)
    code, out, _ = run_cli(capsys, "internalize", tmp_path / "mine.mkv", "-o", tmp_path / "a", "--model", model_dir)
    assert code == 0 and "internalized 4 frames" in out


def test_readme_main_command_runs_on_the_embedded_default(capsys):
    """`video2lora demo --compare` with no --model: the shipped checkpoints, offline, on a clip they never saw."""
    code, out, _ = run_cli(capsys, "demo", "--compare", "--seed", "1")
    assert code == 0
    clip = generate_clip(split_seeds("test", 1, offset=1)[0])
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert "V2L (0 visual tokens)" in table[0] and len(table) == 2 + len(clip.qa)
    match = re.search(rf"exact match on {len(clip.qa)} questions: V2L (\d+), Base (\d+)", out)
    assert match and int(match.group(2)) >= 1  # the trained teacher reads this clip


def test_adapter_folder_is_a_clean_shareable_artifact(capsys, saved_base, world, tmp_path):
    """World-readable files, a base any process can resolve, the base's dtype by default, PEFT's exact key form."""
    from peft import PeftConfig

    from tests.conftest import TINY_HYPERNETWORK

    model = Video2LoRAModel.from_base(str(saved_base), **TINY_HYPERNETWORK)
    perturb_(model)
    model.config.base_model_name_or_path = "../base"  # shipped beside the checkpoint, like the embedded default
    model_dir = saved_base.parent / f"hypernetwork-{tmp_path.name}"
    model.save_pretrained(model_dir)
    out = tmp_path / "adapter"
    code, _, _ = run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir)
    assert code == 0
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith(".")} == set()  # no staging folder left
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in out.iterdir())
    config = PeftConfig.from_pretrained(out)
    assert config.base_model_name_or_path == str(saved_base.absolute())  # not "../base", meaningless beside it
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        keys = sorted(handle.keys())
        dtypes = {handle.get_tensor(key).dtype for key in keys}
    layers = model.config.num_target_layers
    assert keys == sorted(f"base_model.model.model.text_model.layers.{i}.mlp.down_proj.lora_{ab}.weight"
                          for i in range(layers) for ab in "AB")
    assert dtypes == {model.vlm.dtype}
    assert "/" not in json.loads((out / "video2lora.json").read_text())["video"]["name"]

    code, _, _ = run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir, "--dtype", "bfloat16",
                         "--overwrite")
    assert code == 0
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.bfloat16}


# ---- bad input is checked before anything expensive, and nothing is lost ---------------------------------------------


def test_arguments_and_paths_are_checked_before_the_model_loads(capsys, world, tmp_path):
    """Each of these fails with one line, although --model names no model at all: nothing was loaded."""
    video, no_model = world[1][0], tmp_path / "no-model"
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    cases = [
        (["internalize", video, "-o", tmp_path / "a", "--num_frames", "0"], "--num_frames", "integer >= 1"),
        (["ask", video, "what?", "--max_new_tokens", "-3"], "--max_new_tokens", "integer >= 1"),
        (["eval", "--manifest", world[0], "--segments", "0"], "--segments", "integer >= 1"),
        (["internalize", video, "-o", tmp_path / "a", "--segment_overlap", "-1"], "--segment_overlap", "integer >= 0"),
        (["internalize", video, "-o", tmp_path / "a", "--segment_layout", "shuffled"], "--segment_layout",
         "invalid choice"),
        (["eval", "--manifest", world[0], "--segments", "2", "--segment_layout", "interleaved", "--segment_overlap", "1"],
         "--segment_overlap", "interleaved segments each cover the whole video"),
        (["ask", video, "  "], "question 1 is empty"),
        (["ask", video, "what?", ""], "question 2 is empty"),
        (["internalize", video, "-o", tmp_path / "file" / "sub"], "is a file"),
        (["internalize", video, "-o", tmp_path / "foreign"], "not empty", "--overwrite"),
        (["internalize", tmp_path / "gone.mp4", "-o", tmp_path / "b"], "gone.mp4", "does not exist"),
        (["internalize", tmp_path, "-o", tmp_path / "b"], "is a directory"),
        (["eval", "--manifest", world[0], "--output_dir", tmp_path / "file"], "--output_dir", "is a file"),
    ]
    for argv, *fragments in cases:
        code, _, err = run_cli(capsys, *argv, "--model", no_model)
        assert_one_line_error(code, err, *fragments)
        assert "cannot load model" not in err
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes through any permission bits")
def test_unreadable_video_and_read_only_output(capsys, world, tmp_path):
    video = tmp_path / "locked.mp4"
    video.write_bytes(world[1][0].read_bytes())
    video.chmod(0)
    code, _, err = run_cli(capsys, "internalize", video, "-o", tmp_path / "a", "--model", tmp_path / "no-model")
    assert_one_line_error(code, err, "permission denied")
    (tmp_path / "ro").mkdir(mode=0o555)
    code, _, err = run_cli(capsys, "internalize", world[1][0], "-o", tmp_path / "ro" / "a", "--model", tmp_path)
    assert_one_line_error(code, err, "permission denied")


def test_overwrite_replaces_the_whole_folder(capsys, model_dir, world, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    assert run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir, "--overwrite")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_a_question_longer_than_the_context_is_refused(capsys, model_dir, world):
    code, _, err = run_cli(capsys, "ask", world[1][0], "red " * 5000, "--model", model_dir)
    assert_one_line_error(code, err, "question 1 is", "positions", "shorten it")


def test_adapter_naming_another_base_is_refused(capsys, model_dir, world, tmp_path):
    out = tmp_path / "adapter"
    assert run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir)[0] == 0
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(
        {**config, "base_model_name_or_path": "HuggingFaceTB/SmolVLM2-2.2B-Instruct"}))
    model = Video2LoRAModel.from_pretrained(model_dir)
    model.base_model_reference = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"  # as if loaded by Hub id
    with pytest.raises(AdapterMismatchError, match="SmolVLM2-2.2B-Instruct"):
        model.check_adapter(Video2LoRAAdapter.from_pretrained(out))


def test_ctrl_c_is_one_line_and_exit_130(capsys, model_dir, world, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Video2LoRAModel, "internalize", interrupted)
    code, _, err = run_cli(capsys, "internalize", world[1][0], "-o", tmp_path / "a", "--model", model_dir)
    assert code == 130 and err.strip().splitlines()[-1] == "video2lora: interrupted" and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_eval_resumes_to_the_same_summary(capsys, model_dir, world, tmp_path, monkeypatch):
    manifest = world[0]
    common = ["--manifest", manifest, "--model", model_dir, "--max_new_tokens", MAX_NEW_TOKENS,
              "--num_resamples", "100"]
    assert run_cli(capsys, "eval", *common, "--output_dir", tmp_path / "whole")[0] == 0

    calls = []
    original = runner.answer_with_video

    def stop_on_second_video(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "answer_with_video", stop_on_second_video)
    code, _, err = run_cli(capsys, "eval", *common, "--output_dir", tmp_path / "parts")
    assert code == 130 and "--resume" in err.strip().splitlines()[-1]
    kept = (tmp_path / "parts" / "records.jsonl").read_text().splitlines()
    assert 0 < len(kept) < len(manifest.read_text().splitlines())  # the first video's rows survived
    code, _, err = run_cli(capsys, "eval", *common, "--output_dir", tmp_path / "parts")
    assert_one_line_error(code, err, "holds an earlier evaluation", "--resume")

    monkeypatch.setattr(runner, "answer_with_video", original)
    assert run_cli(capsys, "eval", *common, "--output_dir", tmp_path / "parts", "--resume")[0] == 0
    for name in ("summary.json", "records.jsonl", "report.md"):
        assert (tmp_path / "parts" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    code, _, err = run_cli(capsys, "eval", *common[:-2], "--num_resamples", "100", "--max_new_tokens", "2",
                           "--output_dir", tmp_path / "parts", "--resume")
    assert_one_line_error(code, err, "other settings", "max_new_tokens")


def test_the_embedded_default_says_once_what_it_knows(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, "internalize", world[1][0], "-o", tmp_path / "a")
    assert code == 0 and err.count("only knows the generated shape world") == 1
    assert "Loading weights" not in err


@pytest.mark.parametrize("damage", ["empty", "truncated", "pickle"])
def test_ask_on_a_corrupt_adapter_is_one_line(capsys, model_dir, world, tmp_path, damage):
    out = tmp_path / "adapter"
    assert run_cli(capsys, "internalize", world[1][0], "-o", out, "--model", model_dir)[0] == 0
    weights = out / "adapter_model.safetensors"
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        torch.save({"lora": torch.zeros(2)}, weights)
    code, _, err = run_cli(capsys, "ask", out, "what?", "--model", model_dir)
    assert_one_line_error(code, err, "adapter_model.safetensors", "internalize the video again")


def test_sigint_during_eval_keeps_the_scored_rows_and_resume_finishes(world, tmp_path):
    """A real Ctrl-C (SIGINT) to a running `video2lora eval`: one line, exit 130, rows kept, --resume completes."""
    import signal
    import time

    rows = [json.loads(line) for line in world[0].read_text().splitlines()]
    manifest = tmp_path / "many.jsonl"  # the same two clips many times over, so the run lasts long enough to stop
    manifest.write_text("".join(json.dumps({**row, "id": f"{row['id']}-{copy}", "span": [0.0, 1.0 + copy * 1e-3],
                                            "video_path": str(world[0].parent / row["video_path"])}) + "\n"
                                for copy in range(8) for row in rows))
    command = [sys.executable, "-m", "video2lora.cli", "eval", "--manifest", str(manifest), "--output_dir",
               str(tmp_path / "eval"), "--max_new_tokens", "2", "--num_resamples", "50"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = tmp_path / "eval" / "records.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not records.exists() or not records.read_text().strip()):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("video2lora: interrupted")
    kept = len(records.read_text().splitlines())
    assert 0 < kept < len(rows) * 8
    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(records.read_text().splitlines()) == len(rows) * 8

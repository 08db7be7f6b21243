"""Tests for `video2lora.data`: manifest validation, bad-row reporting, data-root resolution and atomic writing."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest

from video2lora.data import (
    DATA_ROOT_ENV_VAR,
    ManifestError,
    load_manifest_dataset,
    read_manifest,
    resolve_data_root,
    write_manifest,
)


def make_row(index: int, **overrides) -> dict:
    row = {
        "id": f"clip-{index}",
        "video_path": f"videos/clip_{index}.mp4",
        "task_type": "caption",
        "prompt": "Describe the video.",
        "target_text": f"A red square moves right ({index}).",
        "dataset": "world",
        "split": "train",
        "metadata": {"scene": index},
    }
    row.update(overrides)
    return row


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def no_data_root_env(monkeypatch):
    # A developer's own VIDEO2LORA_DATA_ROOT must not change what these tests resolve.
    monkeypatch.delenv(DATA_ROOT_ENV_VAR, raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# Valid manifests
# ---------------------------------------------------------------------------------------------------------------------


def test_valid_manifest_becomes_a_dataset(tmp_path):
    rows = [
        make_row(0, span=[1.5, 4.0], teacher_target="A square."),
        make_row(1, task_type="qa", metadata={"question_kind": "count", "answer": 3}),
        make_row(2, task_type="summary"),
    ]
    del rows[2]["metadata"]  # optional: defaults to {}
    manifest = write_lines(tmp_path / "train.jsonl", [json.dumps(row) for row in rows])

    dataset = load_manifest_dataset(manifest)

    assert len(dataset) == 3
    assert dataset.column_names[:9] == [
        "id",
        "video_path",
        "task_type",
        "prompt",
        "target_text",
        "dataset",
        "split",
        "metadata",
        "span",
    ]
    assert dataset["id"] == ["clip-0", "clip-1", "clip-2"]
    assert dataset["task_type"] == ["caption", "qa", "summary"]
    assert dataset["video_path"] == [str(tmp_path / "videos" / f"clip_{index}.mp4") for index in range(3)]
    assert [json.loads(metadata) for metadata in dataset["metadata"]] == [
        {"scene": 0},
        {"question_kind": "count", "answer": 3},
        {},
    ]
    assert dataset["span"] == [[1.5, 4.0], None, None]
    # Pass-through fields survive, with null where a row lacks them.
    assert dataset["teacher_target"] == ["A square.", None, None]


def test_read_manifest_skips_blank_lines_and_keeps_unknown_fields(tmp_path):
    manifest = write_lines(
        tmp_path / "m.jsonl",
        ["", json.dumps(make_row(0, teacher_logprobs=[[-0.1, -2.3]])), "   ", json.dumps(make_row(1))],
    )
    report = read_manifest(manifest)
    assert report.bad_rows == []
    assert [row["id"] for row in report.rows] == ["clip-0", "clip-1"]
    assert report.rows[0]["teacher_logprobs"] == [[-0.1, -2.3]]


def test_empty_manifest_gives_an_empty_dataset_with_the_schema(tmp_path):
    manifest = write_lines(tmp_path / "empty.jsonl", [])
    dataset = load_manifest_dataset(manifest)
    assert len(dataset) == 0
    assert "target_text" in dataset.column_names and "metadata" in dataset.column_names


def test_missing_targets_are_allowed_only_when_asked(tmp_path):
    without_target = make_row(1)
    del without_target["target_text"]
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0, target_text="")), json.dumps(without_target)])

    report = read_manifest(manifest, require_target=False)
    assert [row["target_text"] for row in report.rows] == ["", ""]

    with pytest.raises(ManifestError, match="target_text is empty") as caught:
        read_manifest(manifest)
    assert caught.value.line == 1
    lenient = read_manifest(manifest, strict=False)
    assert [line for line, _ in lenient.bad_rows] == [1, 2]
    assert "target_text" in lenient.bad_rows[1][1]


# ---------------------------------------------------------------------------------------------------------------------
# Bad rows
# ---------------------------------------------------------------------------------------------------------------------

BAD_LINES = {
    "invalid_json": ('{"id": "x", ', "invalid JSON"),
    "not_an_object": ("[1, 2, 3]", "expected a JSON object"),
    "missing_field": (
        json.dumps({k: v for k, v in make_row(9).items() if k != "prompt"}),
        "missing required field(s) prompt",
    ),
    "ill_typed_field": (json.dumps(make_row(9, split=3)), "field 'split' must be a string"),
    "empty_id": (json.dumps(make_row(9, id="")), "field 'id' must not be empty"),
    "unknown_task_type": (json.dumps(make_row(9, task_type="translate")), "unknown task_type 'translate'"),
    "duplicate_id": (json.dumps(make_row(0)), "duplicate id 'clip-0' (first used on line 1)"),
    "bad_metadata": (json.dumps(make_row(9, metadata=[1])), "field 'metadata' must be a JSON object"),
    "bad_span": (json.dumps(make_row(9, span=[5, 2])), "field 'span'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_row_is_reported_with_its_line_number(tmp_path, kind):
    bad_line, reason_fragment = BAD_LINES[kind]
    # Line 1 valid, line 2 blank (still counted), line 3 bad, line 4 valid.
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0)), "", bad_line, json.dumps(make_row(1))])

    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    error = caught.value
    assert (error.path, error.line) == (manifest, 3)
    assert reason_fragment in error.reason
    assert str(error).startswith(f"{manifest}:3: ")
    assert "\n" not in str(error)

    report = read_manifest(manifest, strict=False)
    assert [row["id"] for row in report.rows] == ["clip-0", "clip-1"]
    assert len(report.bad_rows) == 1
    line, reason = report.bad_rows[0]
    assert line == 3
    assert reason_fragment in reason


def test_non_strict_collects_every_bad_row(tmp_path):
    manifest = write_lines(
        tmp_path / "m.jsonl",
        [
            "not json",
            json.dumps(make_row(0)),
            json.dumps(make_row(0)),
            json.dumps(make_row(1, task_type="Caption")),
            json.dumps(make_row(2)),
        ],
    )
    report = read_manifest(manifest, strict=False)
    assert [row["id"] for row in report.rows] == ["clip-0", "clip-2"]
    assert [line for line, _ in report.bad_rows] == [1, 3, 4]


def test_invalid_utf8_line_is_a_bad_row(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(json.dumps(make_row(0)).encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    report = read_manifest(path, strict=False)
    assert [row["id"] for row in report.rows] == ["clip-0"]
    assert report.bad_rows[0][0] == 2
    assert "UTF-8" in report.bad_rows[0][1]


def test_load_manifest_dataset_logs_skipped_rows(tmp_path, caplog):
    manifest = write_lines(
        tmp_path / "m.jsonl", [json.dumps(make_row(0)), "{oops", json.dumps(make_row(1, task_type="poem"))]
    )
    with caplog.at_level(logging.WARNING, logger="video2lora.data"):
        dataset = load_manifest_dataset(manifest)
    assert dataset["id"] == ["clip-0"]
    message = caplog.text
    assert "Skipped 2 bad row(s) of 3" in message
    assert "line 2: invalid JSON" in message
    assert "line 3: unknown task_type 'poem'" in message

    with pytest.raises(ManifestError, match=":2: invalid JSON"):
        load_manifest_dataset(manifest, strict=True)


def test_check_files_reports_missing_videos(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip_0.mp4").write_bytes(b"present")
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0)), json.dumps(make_row(1))])

    assert len(read_manifest(manifest).rows) == 2  # existence is not checked by default
    report = read_manifest(manifest, strict=False, check_files=True)
    assert [row["id"] for row in report.rows] == ["clip-0"]
    assert report.bad_rows[0][0] == 2
    assert "video file not found" in report.bad_rows[0][1]
    assert str(tmp_path / "videos" / "clip_1.mp4") in report.bad_rows[0][1]
    with pytest.raises(ManifestError, match="video file not found") as caught:
        read_manifest(manifest, check_files=True)
    assert caught.value.line == 2


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="does not exist") as caught:
        read_manifest(tmp_path / "nope.jsonl")
    assert caught.value.line is None


def test_manifest_error_survives_pickling():
    error = ManifestError("m.jsonl", 7, "invalid JSON")
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.path, restored.line, restored.reason, str(restored)) == ("m.jsonl", 7, "invalid JSON", str(error))


# ---------------------------------------------------------------------------------------------------------------------
# Data root
# ---------------------------------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_directory_by_default(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = write_lines(tmp_path / "sub" / "m.jsonl", [json.dumps(make_row(0))])
    assert read_manifest(manifest).rows[0]["video_path"] == str(tmp_path / "sub" / "videos" / "clip_0.mp4")


def test_relative_paths_resolve_against_the_data_root_argument(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV_VAR, str(tmp_path / "from_env"))
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0))])
    report = read_manifest(manifest, data_root=tmp_path / "from_flag")
    # The argument wins over the environment variable.
    assert report.rows[0]["video_path"] == str(tmp_path / "from_flag" / "videos" / "clip_0.mp4")


def test_relative_paths_resolve_against_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV_VAR, str(tmp_path / "from_env"))
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0))])
    assert read_manifest(manifest).rows[0]["video_path"] == str(tmp_path / "from_env" / "videos" / "clip_0.mp4")


def test_absolute_video_paths_are_kept(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "clip.mp4")
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(make_row(0, video_path=absolute))])
    assert read_manifest(manifest, data_root="/data").rows[0]["video_path"] == absolute


def test_resolve_data_root_precedence_and_absoluteness(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(None, "manifests/m.jsonl") == tmp_path / "manifests"
    monkeypatch.setenv(DATA_ROOT_ENV_VAR, "env_root")
    assert resolve_data_root(None, "manifests/m.jsonl") == tmp_path / "env_root"
    assert resolve_data_root("flag_root", "manifests/m.jsonl") == tmp_path / "flag_root"
    monkeypatch.setenv(DATA_ROOT_ENV_VAR, "")  # an empty variable counts as unset
    assert resolve_data_root(None, "manifests/m.jsonl") == tmp_path / "manifests"


# ---------------------------------------------------------------------------------------------------------------------
# write_manifest
# ---------------------------------------------------------------------------------------------------------------------


def test_write_manifest_round_trips(tmp_path):
    rows = [make_row(0, prompt="Décris la vidéo ✓"), make_row(1, span=[0.0, 2.5])]
    path = tmp_path / "out" / "m.jsonl"
    write_manifest(path, rows)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert "Décris la vidéo ✓" in lines[0]  # written as UTF-8, not \u escapes
    assert os.listdir(path.parent) == ["m.jsonl"]


def test_write_manifest_replaces_an_existing_file_whole(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [make_row(index) for index in range(5)])
    os.chmod(path, 0o640)
    write_manifest(path, [make_row(7)])
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["clip-7"]
    assert os.listdir(tmp_path) == ["m.jsonl"]
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_failed_write_manifest_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [make_row(0)])
    before = path.read_bytes()

    def rows_then_failure():
        yield make_row(1)
        yield make_row(2, metadata={"not_json": object()})

    with pytest.raises(TypeError):
        write_manifest(path, rows_then_failure())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.jsonl"]

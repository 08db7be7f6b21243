"""Seeded, bounded fuzzing of the three readers of user files: videos (`sample_video`), manifests (`read_manifest`)
and adapter folders (`Video2LoRAAdapter.from_pretrained`), plus the damaged adapter files the fuzzer grew out of.

Each mutated input must either be read, giving a well-formed result, or be refused with the project's own one-line
error for bad content: `VideoDecodeError`, `ManifestError`, `AdapterReadError` or `AdapterMismatchError`. Anything
else (a bare `ValueError`, a `KeyError`, a `RuntimeError` from a library, a traceback over several lines) is a bug.
Mutations come from `random.Random` with a fixed seed per test, so a failure names the iteration and mutation that
reproduce it. Iteration counts keep the whole file to a few seconds on a small CPU.
"""

from __future__ import annotations

import io
import json
import random
import struct

import numpy as np
import pytest
import torch

from modeling_video2lora import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    AdapterMismatchError,
    AdapterReadError,
    Video2LoRAAdapter,
)
from tests.conftest import make_frames, perturb_
from video2lora.data import ManifestError, ManifestReport, read_manifest, write_manifest
from video2lora.video import SampledVideo, VideoDecodeError, sample_video, write_video

# ---- mutations ------------------------------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random, *, hot: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """One random damage to `data`; returns the damaged bytes and a description for failure messages.

    Args:
        hot: A `(start, end)` byte range where container structures live; half of the edits land there.
    """
    data = bytearray(data)

    def position() -> int:
        if hot is not None and rng.random() < 0.5:
            return rng.randrange(max(hot[0], 0), max(min(hot[1], len(data)), hot[0] + 1))
        return rng.randrange(len(data) + 1)

    kind = rng.choice(["truncate", "flip", "insert", "delete", "overwrite", "zero", "duplicate"])
    where = min(position(), len(data))
    if kind == "truncate":
        del data[where:]
    elif kind == "flip" and data:
        for _ in range(rng.randint(1, 16)):
            index = min(position(), len(data) - 1)
            data[index] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        data[where:where] = rng.randbytes(rng.randint(1, 64))
    elif kind == "delete":
        del data[where : where + rng.randint(1, 64)]
    elif kind == "overwrite":
        size = rng.randint(1, 512)
        data[where : where + size] = rng.randbytes(size)
    elif kind == "zero":
        size = rng.randint(1, 512)
        data[where : where + size] = bytes(len(data[where : where + size]))
    else:
        size = rng.randint(1, 256)
        data[where:where] = data[max(0, where - size) : where]
    return bytes(data), f"{kind} at {where}"


def assert_one_line(error: BaseException) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)


# ---- (a) the video reader -------------------------------------------------------------------------------------------


def assert_well_formed(video: SampledVideo, num_frames: int) -> None:
    assert isinstance(video, SampledVideo)
    assert video.frames.dtype == np.uint8 and video.frames.ndim == 4 and video.frames.shape[-1] == 3
    assert 1 <= len(video.frames) <= num_frames and len(video.timestamps) == len(video.frames)
    assert all(0.0 <= time < video.duration for time in video.timestamps), (video.timestamps, video.duration)
    assert list(video.timestamps) == sorted(video.timestamps)
    assert isinstance(video.damaged_frames, int) and 0 <= video.damaged_frames <= len(video.frames)


@pytest.mark.parametrize(("suffix", "iterations"), [(".mp4", 500), (".webm", 400)])
def test_fuzzed_video_files_are_read_or_refused_in_one_line(tmp_path, suffix, iterations):
    rng = random.Random(f"video{suffix}")
    source = tmp_path / f"clip{suffix}"
    frames = np.random.default_rng(0).integers(1, 256, (10, 32, 32, 3), dtype=np.uint8)
    write_video(source, frames, fps=8.0)
    good = source.read_bytes()
    # MP4 (written without faststart) keeps its index at the end; WebM its headers at the start.
    hot = (len(good) - 1024, len(good)) if suffix == ".mp4" else (0, 512)
    outcomes = {"read": 0, "refused": 0}
    for iteration in range(iterations):
        data, description = good, []
        for _ in range(rng.choice([1, 1, 2, 3])):
            data, what = mutate_bytes(data, rng, hot=hot)
            description.append(what)
        path = tmp_path / f"fuzzed-{iteration}{suffix}"
        path.write_bytes(data)
        kwargs = rng.choice([{"num_frames": 4}, {"num_frames": 12, "fps": 2.0}, {"num_frames": 3, "start": 0.3}])
        context = f"iteration {iteration}: {description}, {kwargs}"
        try:
            video = sample_video(path, max_edge=16, **kwargs)
        except VideoDecodeError as error:
            assert_one_line(error)
            assert error.path == str(path), context
            outcomes["refused"] += 1
        except ValueError as error:
            # Only an argument check may raise a plain ValueError: here, a span that starts past a shortened clip.
            assert "past the end" in str(error) and "start" in kwargs, f"{context}: {error!r}"
        except Exception as error:
            pytest.fail(f"{context}: {type(error).__name__}: {error}")
        else:
            assert_well_formed(video, kwargs["num_frames"])
            outcomes["read"] += 1
        path.unlink()
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes  # the fuzzer reached both outcomes


def test_a_container_swap_is_read_or_refused(tmp_path):
    """WebM bytes under an .mp4 name and the two spliced together: FFmpeg probes content, not names."""
    frames = np.random.default_rng(0).integers(1, 256, (6, 16, 16, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames)
    write_video(tmp_path / "b.webm", frames)
    mp4, webm = (tmp_path / "a.mp4").read_bytes(), (tmp_path / "b.webm").read_bytes()
    for name, data in [("webm.mp4", webm), ("spliced.mp4", mp4[: len(mp4) // 2] + webm[len(webm) // 2 :]),
                       ("spliced.webm", webm[: len(webm) // 2] + mp4[len(mp4) // 2 :])]:
        (tmp_path / name).write_bytes(data)
        try:
            assert_well_formed(sample_video(tmp_path / name, num_frames=4), 4)
        except VideoDecodeError as error:
            assert_one_line(error)


# ---- (b) the manifest reader ----------------------------------------------------------------------------------------


def manifest_rows() -> list[dict]:
    return [
        {"id": f"clip-{index}", "video_path": f"videos/clip_{index}.mp4", "task_type": task, "prompt": "Describe.",
         "target_text": f"A red square moves ({index}).", "dataset": "world", "split": "train",
         "metadata": {"scene": index, "question_type": "order"}, "span": [0.0, 2.5] if index % 2 else None}
        for index, task in enumerate(["caption", "qa", "summary", "qa"])
    ]


# Values of the wrong type (or absurd ones of the right type) for a field, JSON text as it would appear on disk.
STRANGE_VALUES = [
    "null", "true", "0", "-1", "1e999", "-1e999", "NaN", "Infinity", "1" * 5000, "[]", "{}", "[1, 2, 3]",
    '[2.0, 1.0]', '[0, "1"]', '""', '"   "', '"\\u0000"', '"\\ud800"', '"~nosuchuser123/clip.mp4"', '"a\\nb"',
    '"caption\\r\\n"', "[" * 3000 + "]" * 3000, '{"a": ' * 600 + "1" + "}" * 600, '"' + "x" * 10_000 + '"',
]


def mutate_manifest_line(line: str, rng: random.Random) -> tuple[bytes, str]:
    row = json.loads(line)
    kind = rng.choice(["wrong_type", "wrong_type", "drop_field", "truncate", "bad_utf8", "bytes", "not_object"])
    if kind == "wrong_type":
        name = rng.choice([*row, "extra"])
        value = rng.choice(STRANGE_VALUES)
        # Assembled as text: most strange values (NaN, 1e999, deep nesting) cannot come out of json.dumps.
        pieces = {key: json.dumps(row[key]) for key in row} | {name: value}
        text = "{" + ", ".join(f"{json.dumps(key)}: {piece}" for key, piece in pieces.items()) + "}"
        return text.encode(), f"{name} = {value[:40]}"
    if kind == "drop_field":
        name = rng.choice(list(row))
        del row[name]
        return json.dumps(row).encode(), f"drop {name}"
    if kind == "truncate":
        cut = rng.randrange(len(line))
        return line[:cut].encode(), f"truncate at {cut}"
    if kind == "bad_utf8":
        data = bytearray(line.encode())
        where = rng.randrange(len(data))
        data[where:where] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00"])
        return bytes(data), f"bad utf-8 at {where}"
    if kind == "bytes":
        data, what = mutate_bytes(line.encode(), rng)
        return data.replace(b"\n", b" "), what
    return rng.choice([b"[1, 2]", b'"row"', b"42", b"null", b"true"]), "not an object"


def assert_rows_survive_a_round_trip(report: ManifestReport, tmp_path, require_target: bool) -> None:
    """Rows that were accepted must be writable again (the teacher reads a manifest and writes it back)."""
    write_manifest(tmp_path / "rewritten.jsonl", report.rows)
    assert read_manifest(tmp_path / "rewritten.jsonl", require_target=require_target).rows == report.rows


def test_fuzzed_manifests_are_read_or_refused_in_one_line(tmp_path):
    rng = random.Random("manifest")
    lines = [json.dumps(row) for row in manifest_rows()]
    path = tmp_path / "manifest.jsonl"
    for iteration in range(2000):
        mutated = [line.encode() for line in lines]
        description = []
        for _ in range(rng.choice([1, 1, 2])):
            index = rng.randrange(len(mutated))
            mutated[index], what = mutate_manifest_line(lines[index], rng)
            description.append(f"line {index + 1}: {what}")
        if rng.random() < 0.1:
            mutated.append(mutated[0])  # a duplicate id
        path.write_bytes(b"\n".join(mutated) + rng.choice([b"\n", b""]))
        strict, require_target = rng.random() < 0.5, rng.random() < 0.8
        context = f"iteration {iteration}: {description}, strict={strict}"
        try:
            report = read_manifest(path, strict=strict, require_target=require_target, check_files=rng.random() < 0.3)
        except ManifestError as error:
            assert strict, context
            assert_one_line(error)
            assert error.line is not None and 1 <= error.line <= len(mutated), context
            continue
        except Exception as error:
            pytest.fail(f"{context}: {type(error).__name__}: {str(error)[:200]}")
        for line_number, reason in report.bad_rows:
            assert 1 <= line_number <= len(mutated) and reason and "\n" not in reason, (context, reason)
        assert len(report.rows) + len(report.bad_rows) <= len(mutated)
        for row in report.rows:
            assert all(isinstance(row[name], str) for name in ("id", "video_path", "task_type", "prompt")), context
            assert isinstance(row["metadata"], dict), context
        try:
            assert_rows_survive_a_round_trip(report, tmp_path, require_target)
        except Exception as error:
            pytest.fail(f"{context}: accepted rows do not round-trip: {type(error).__name__}: {str(error)[:200]}")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("prompt", "[" * 3000 + "]" * 3000, "nested too deeply"),  # was a RecursionError
        ("prompt", "1" * 5000, "thousands of digits"),  # was a bare ValueError
        ("metadata", '{"score": NaN}', "invalid number NaN"),  # was accepted, then write_manifest failed
        ("span", "[0, 1e999]", "invalid number 1e999"),
        ("prompt", '"\\ud800"', "unpaired UTF-16 surrogate"),  # was accepted, then writing it failed
        ("video_path", '"~nosuchuser123/clip.mp4"', "cannot expand the home directory"),  # was a RuntimeError
        ("video_path", '"clip\\u0000.mp4"', "NUL character"),
        ("video_path", '"' + "x" * 5000 + '"', "video file not found"),  # with check_files: was an OSError
        ("video_path", '"a\\nb.mp4"', "video file not found"),  # its line break is escaped in the message
    ],
)
def test_manifest_rows_the_fuzzer_broke_are_bad_rows(tmp_path, field, value, match):
    row = manifest_rows()[0]
    pieces = {key: json.dumps(row[key]) for key in row} | {field: value}
    path = tmp_path / "manifest.jsonl"
    path.write_text("{" + ", ".join(f"{json.dumps(key)}: {piece}" for key, piece in pieces.items()) + "}\n")
    with pytest.raises(ManifestError, match=match) as caught:
        read_manifest(path, check_files=True)
    assert_one_line(caught.value)
    assert caught.value.line == 1


# ---- (c) the adapter reader -----------------------------------------------------------------------------------------


@pytest.fixture
def adapter_folder(make_model, tmp_path):
    """A small, valid adapter folder, and the model it fits."""
    model = make_model()
    perturb_(model)
    model.internalize(make_frames(3)).save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def read_or_refuse(model, folder, context: str) -> Video2LoRAAdapter | None:
    try:
        adapter = Video2LoRAAdapter.from_pretrained(folder)
    except (AdapterReadError, AdapterMismatchError) as error:
        assert_one_line(error)
        return None
    except Exception as error:
        pytest.fail(f"{context}: {type(error).__name__}: {str(error)[:300]}")
    # Whatever is read must be usable, or refused by the model's own check, never fail later in a forward.
    try:
        model.check_adapter(adapter)
    except AdapterMismatchError as error:
        assert_one_line(error)
        return None
    # Damaged weights that are still finite numbers cannot be told from trained ones (safetensors has no checksum);
    # they may give garbage logits, but never an exception.
    with torch.no_grad(), model.apply_adapter(adapter):
        model.vlm(input_ids=torch.tensor([[1, 2, 3]]))
    return adapter


def safetensors_header(data: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def with_header(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def mutate_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A structurally valid safetensors file whose header lies: the damage a flipped digit in it would do."""
    header, body = safetensors_header(data)
    key = rng.choice([key for key in header if key != "__metadata__"])
    kind = rng.choice(["dtype", "shape", "offsets", "metadata", "rename", "drop"])
    if kind == "dtype":
        header[key]["dtype"] = rng.choice(["F16", "BF16", "F64", "I32", "I8", "BOOL", "U8", "F8_E4M3", "XX"])
    elif kind == "shape":
        header[key]["shape"] = rng.choice([[], [0], [1, 1, 1], list(reversed(header[key]["shape"])), [10**12, 1]])
    elif kind == "offsets":
        start, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = rng.choice([[end, start], [start, end + 4], [start + 4, end], [0, end - start]])
    elif kind == "metadata":
        metadata = header.setdefault("__metadata__", {})
        name = rng.choice(["video2lora_metadata", "video2lora_fingerprint", "video2lora_shared_rank", "format"])
        metadata[name] = rng.choice(["", "{", "[1]", "null", '{"a": ' * 300 + "1" + "}" * 300, "not json", "0", "2",
                                     "99999", "-1", "\u00b2"])
    elif kind == "rename":
        header[key.replace("lora_A", "lora_C").replace("layers.1.", "layers.7.")] = header.pop(key)
    else:
        del header[key]
    return with_header(header, body), f"header {kind} of {key}"


CONFIG_MUTATIONS = [
    b"", b"{", b"[]", b'"LORA"', b"null", b"\xff\xfe{}", b'{"r": 4, "lora_alpha": 4, "peft_type": "LORA"}\xff',
]


def mutate_config(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    config = json.loads(data)
    kind = rng.choice(["field", "field", "raw", "bytes"])
    if kind == "field":
        name = rng.choice(["r", "lora_alpha", "peft_type", "base_model_name_or_path", "revision", "target_modules"])
        config[name] = rng.choice([None, True, 0, -4, 3, 1e308, "4", [], {}, "PREFIX_TUNING", [[[[]]]]])
        return json.dumps(config).encode(), f"config {name} = {config[name]!r}"
    if kind == "raw":
        return rng.choice(CONFIG_MUTATIONS), "config raw"
    return mutate_bytes(data, rng)


def test_fuzzed_adapter_folders_are_read_or_refused_in_one_line(adapter_folder, tmp_path):
    model, folder = adapter_folder
    weights, config = (folder / ADAPTER_WEIGHTS_NAME).read_bytes(), (folder / ADAPTER_CONFIG_NAME).read_bytes()
    header_size = 8 + struct.unpack("<Q", weights[:8])[0]
    rng = random.Random("adapter")
    fuzzed = tmp_path / "fuzzed"
    fuzzed.mkdir()
    outcomes = {"read": 0, "refused": 0}
    for iteration in range(1000):
        new_weights, new_config, what = weights, config, ""
        kind = rng.choice(["bytes", "bytes", "header", "config"])
        if kind == "bytes":
            new_weights, what = mutate_bytes(weights, rng, hot=(0, header_size))
        elif kind == "header":
            new_weights, what = mutate_header(weights, rng)
        else:
            new_config, what = mutate_config(config, rng)
        (fuzzed / ADAPTER_WEIGHTS_NAME).write_bytes(new_weights)
        (fuzzed / ADAPTER_CONFIG_NAME).write_bytes(new_config)
        adapter = read_or_refuse(model, fuzzed, f"iteration {iteration}: {what}")
        outcomes["read" if adapter is not None else "refused"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


# ---- damaged adapter files, one by one ------------------------------------------------------------------------------


def pickled(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("empty", "empty \\(0 bytes\\)"),
        ("truncated", "truncated: its tensors need"),
        ("header_cut", "truncated: its header alone needs"),
        ("torch_save", "not a safetensors file but a pickle"),
        ("random_bytes", "not a safetensors file"),
        ("nan", "NaN or infinite"),
        ("no_tensors", "holds no LoRA weights"),
        ("shared_rank", "video2lora_shared_rank .* is not a rank"),  # "²" passes str.isdigit, not int()
    ],
)
def test_damaged_adapter_weights_raise_one_line_adapter_read_error(adapter_folder, damage, match):
    model, folder = adapter_folder
    path = folder / ADAPTER_WEIGHTS_NAME
    data = path.read_bytes()
    from safetensors.torch import load, save

    if damage == "empty":
        data = b""
    elif damage == "truncated":
        data = data[: len(data) - 100]
    elif damage == "header_cut":
        data = data[:40]
    elif damage == "torch_save":
        data = pickled(load(data))
    elif damage == "random_bytes":
        data = random.Random(0).randbytes(4096)
    elif damage == "nan":
        tensors = load(data)
        next(iter(tensors.values()))[0, 0] = float("nan")
        data = save(tensors, metadata=safetensors_header(data)[0]["__metadata__"])
    elif damage == "no_tensors":
        data = save({}, metadata=safetensors_header(data)[0]["__metadata__"])
    else:
        header, body = safetensors_header(data)
        data = with_header(header | {"__metadata__": header["__metadata__"] | {"video2lora_shared_rank": "\u00b2"}},
                           body)
    path.write_bytes(data)
    with pytest.raises(AdapterReadError, match=match) as caught:
        Video2LoRAAdapter.from_pretrained(folder)
    assert_one_line(caught.value)
    assert str(path) in str(caught.value) and "internalize the video again" in str(caught.value)


def test_a_pickle_is_never_unpickled(adapter_folder, monkeypatch):
    _, folder = adapter_folder
    (folder / ADAPTER_WEIGHTS_NAME).write_bytes(pickled({"a": torch.ones(2)}))

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained unpickled the weights file")

    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(AdapterReadError, match="pickle"):
        Video2LoRAAdapter.from_pretrained(folder)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b'{"r": "4"}', "'r' must be a positive integer"),
        (b'{"r": 4, "lora_alpha": NaN}', "'lora_alpha' must be a finite number"),
        (b'{"r": 4, "lora_alpha": 4, "base_model_name_or_path": 7}', "'base_model_name_or_path' must be a string"),
        (b'{"r": 3, "lora_alpha": 4}', "'r' is 3 but the weights have rank [0-9]+"),
        (b'{"r": 4, "lora_alpha": 4, "peft_type": "LORA"}\xff', "not valid JSON"),
    ],
)
def test_malformed_adapter_config_raises_adapter_read_error(adapter_folder, content, match):
    _, folder = adapter_folder
    (folder / ADAPTER_CONFIG_NAME).write_bytes(content)
    with pytest.raises(AdapterReadError, match=match) as caught:
        Video2LoRAAdapter.from_pretrained(folder)
    assert_one_line(caught.value)
    assert ADAPTER_CONFIG_NAME in str(caught.value)


@pytest.mark.parametrize("name", [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME])
def test_an_unreadable_adapter_file_says_permission_denied(adapter_folder, monkeypatch, name):
    _, folder = adapter_folder
    # Tests may run as root, for whom chmod 000 changes nothing: deny the open itself.
    original_open = type(folder).open

    def denied(self, *args, **kwargs):
        if self.name == name:
            raise PermissionError(13, "Permission denied", str(self))
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(type(folder), "open", denied)
    with pytest.raises(AdapterReadError, match="permission denied") as caught:
        Video2LoRAAdapter.from_pretrained(folder)
    assert "corrupt" not in str(caught.value) and name in str(caught.value)

"""The adapter store: a video is internalized once per model and settings; the store is a plain folder of PEFT
adapters, safe with several writers, bounded in size with least-recently-used eviction."""

import multiprocessing
import os

import pytest
import torch

from modeling_video2lora import Video2LoRAAdapter, Video2LoRAModel
from tests.conftest import make_frames, perturb_
from tests.test_cli import MAX_NEW_TOKENS, run_cli
from video2lora.store import AdapterStore
from video2lora.video import write_video


@pytest.fixture
def model(make_model):
    model = make_model()
    perturb_(model)
    return model


@pytest.fixture
def clips(tmp_path):
    paths = []
    for seed in range(3):
        path = tmp_path / f"clip{seed}.mp4"
        write_video(path, make_frames(8, seed=seed), fps=4.0)
        paths.append(path)
    return paths


def test_second_call_reads_the_store_and_gives_the_same_adapter(model, clips, tmp_path, monkeypatch):
    store = AdapterStore(tmp_path / "store")
    first, stored = store.internalize(model, clips[0])
    assert not stored
    calls = []
    monkeypatch.setattr(Video2LoRAModel, "internalize", lambda *a, **k: calls.append(1))
    again, stored = store.internalize(model, clips[0])
    assert stored and not calls
    for name in first.lora_A:
        assert torch.equal(again.lora_A[name], first.lora_A[name].to(again.lora_A[name].dtype))
    # A plain PEFT folder named by its key, which a server can load as it is.
    (entry,) = store.entries()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in entry.path.iterdir()}


def test_the_key_follows_content_model_and_settings(model, make_model, clips, tmp_path):
    store = AdapterStore(tmp_path / "store")
    identity = store.model_identity(model, "m")
    sampling = model.processor.sampling_kwargs()
    base = store.key("a" * 64, identity, sampling)
    assert store.key("a" * 64, identity, sampling) == base
    assert store.key("b" * 64, identity, sampling) != base  # another video
    assert store.key("a" * 64, identity, model.processor.sampling_kwargs(2)) != base  # other frames
    assert store.key("a" * 64, identity, sampling, start=1.0) != base  # a span
    assert store.key("a" * 64, identity, sampling, segments=2) != base
    # An overlap makes another adapter; none keeps the key that adapters stored before the option had.
    assert store.key("a" * 64, identity, sampling, segments=2, segment_overlap=1) != store.key(
        "a" * 64, identity, sampling, segments=2) == store.key("a" * 64, identity, sampling, segments=2,
                                                               segment_overlap=0)
    # So does the interleaved layout; the contiguous default keeps the old key, and without segments it is moot.
    assert store.key("a" * 64, identity, sampling, segments=2, segment_layout="interleaved") != store.key(
        "a" * 64, identity, sampling, segments=2) == store.key("a" * 64, identity, sampling, segments=2,
                                                               segment_layout="contiguous")
    assert store.key("a" * 64, identity, sampling, segment_layout="interleaved") == base
    composing_latents = make_model(segment_composition="latents")  # the same weights, composed another way
    assert store.key("a" * 64, store.model_identity(composing_latents, "m"), sampling, segments=2) != store.key(
        "a" * 64, store.model_identity(make_model(), "m"), sampling, segments=2)
    retrained = make_model(seed=5)
    perturb_(retrained, seed=7)
    assert store.key("a" * 64, store.model_identity(retrained, "m"), sampling) != base  # retrained in place
    # The same bytes under another name are the same video.
    renamed = tmp_path / "renamed.mp4"
    renamed.write_bytes(clips[0].read_bytes())
    store.internalize(model, clips[0])
    assert store.internalize(model, renamed)[1]


def test_least_recently_used_adapters_are_evicted_first(model, clips, tmp_path):
    store = AdapterStore(tmp_path / "store")
    for clip in clips[:2]:
        store.internalize(model, clip)
    size = store.entries()[0].size_bytes
    older, newer = [entry.key for entry in store.entries()]
    os.utime(store.path(older), (1, 1))
    os.utime(store.path(newer), (2, 2))
    store.get(older)  # a read is a use: now the newer one is the least recently used
    bounded = AdapterStore(store.root, max_bytes=int(size * 2.5))
    bounded.internalize(model, clips[2])
    assert {entry.key for entry in bounded.entries()} == {older, bounded.entries()[-1].key}
    assert newer not in {entry.key for entry in bounded.entries()}
    assert bounded.clear() == 2 and bounded.entries() == []


def test_a_damaged_entry_is_made_again(model, clips, tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.internalize(model, clips[0])
    (entry,) = store.entries()
    (entry.path / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert not store.internalize(model, clips[0])[1]
    assert Video2LoRAAdapter.from_pretrained(entry.path) is not None


def _fill(model, clip, root, rounds):
    store = AdapterStore(root)
    for _ in range(rounds):
        key = store.key("shared", store.model_identity(model), model.processor.sampling_kwargs())
        store.put(key, model.internalize(clip))


def test_concurrent_writers_share_one_store(model, clips, tmp_path):
    root = tmp_path / "store"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_fill, args=(model, clip, root, 5)) for clip in clips[:2]]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    (entry,) = AdapterStore(root).entries()  # one key, one complete adapter, no staging folders left
    Video2LoRAAdapter.from_pretrained(entry.path)
    assert [path.name for path in root.iterdir()] == [entry.key]


def test_ask_video_internalizes_once_and_store_lists_and_clears(capsys, model, clips, tmp_path, adapter_store):
    model.save_pretrained(tmp_path / "model")
    argv = ["ask", clips[0], "what colour is the square?", "--model", tmp_path / "model", "--max_new_tokens",
            MAX_NEW_TOKENS]
    code, first, _ = run_cli(capsys, *argv)
    assert code == 0 and "stored in" in first
    code, second, _ = run_cli(capsys, *argv)
    assert code == 0 and "adapter from the store" in second
    assert first.split("s): ")[-1] == second.split("s): ")[-1]  # the same answer
    code, listed, _ = run_cli(capsys, "store", "list")
    assert code == 0 and "1 adapters in" in listed and "clip0.mp4" in listed
    assert run_cli(capsys, "ask", *argv[1:], "--no_store")[0] == 0
    code, cleared, _ = run_cli(capsys, "store", "clear", "--store", adapter_store)
    assert code == 0 and "removed 1 adapters" in cleared

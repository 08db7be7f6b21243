"""Smoke tests of the efficiency benchmarks: each script's `--quick` run on the tests' tiny random model writes JSON
with the expected keys and values that must hold exactly (token counts, byte formulas), whatever the timings."""

import json

import pytest
import torch

from benchmarks import (
    adapter_overhead,
    batched_serving,
    hypernetwork_cost,
    long_video,
    query_time,
    segment_layout,
    teacher_cost,
)
from benchmarks.common import StaticPrefix, load_model, query_inputs


@pytest.fixture
def run_quick(tmp_path):
    """Run a benchmark's `main` with `--quick` into `tmp_path`; restore torch's thread count afterwards."""
    threads = torch.get_num_threads()

    def run(module, name: str) -> dict:
        module.main(["--quick", "--output-dir", str(tmp_path)])
        return json.loads((tmp_path / f"{name}_quick.json").read_text())

    yield run
    torch.set_num_threads(threads)


def test_query_time(run_quick, tmp_path):
    result = run_quick(query_time, "query_time")
    model = result["model"]
    assert result["machine"]["torch_threads"] == 1 and "random weights" in model["weights"]
    expected_adapter = model["lora_rank_effective"] * (model["intermediate_size"] + model["hidden_size"]) * (
        model["text_layers"] * 2)
    assert {(p["image_size"], p["frames"]) for p in result["points"]} == {(64, 2), (64, 4), (32, 2)}
    for point in result["points"]:
        frames, per_frame = point["frames"], point["tokens_per_frame"]
        assert per_frame == (16 if point["image_size"] == 64 else 4)
        visual = point["visual_tokens"]
        assert visual["base"] == visual["kv_reuse_attended"] == frames * per_frame
        assert visual["v2l"] == visual["kv_reuse"] == visual["v2l_header_cached"] == 0
        assert point["prompt_tokens"]["base"] == point["prompt_tokens"]["kv_prefix"] + point["prompt_tokens"]["kv_reuse"]
        adapter = point["bytes_per_video"]["adapter_bf16"]
        assert adapter["weight_bytes"] == adapter["expected_weight_bytes"] == expected_adapter  # no fp32, no copies
        assert adapter["total_bytes"] == adapter["weight_bytes"] + adapter["metadata_bytes"]
        kv = point["bytes_per_video"]["kv_prefix_bf16"]
        assert kv["tokens"] == point["prompt_tokens"]["kv_prefix"]
        assert kv["formula_bytes"] == kv["counted_bytes"] == (
            2 * model["text_layers"] * model["kv_heads"] * model["head_dim"] * kv["tokens"] * 2)
        assert point["kv_reuse_max_abs_logit_error"] < 1e-3  # KV reuse answers exactly like Base
        assert point["v2l_header_cached_max_abs_logit_error"] < 1e-4
        assert all(t > 0 for t in point["ttft_s"].values()) and set(point["ttft_s"]) == {
            "base", "kv_reuse", "v2l", "v2l_header_cached"}
        assert len(point["ttft_fine_samples_s"]["v2l"]) == 3 and point["speedup"]["base_over_v2l"] > 0
        assert set(point["break_even_questions"]) == {"v2l_vs_base", "v2l_vs_kv_reuse", "kv_reuse_vs_base"}
    assert set(result["summary"]["targets"]) >= {"v2l_at_least_20x_faster_than_base_everywhere",
                                                 "v2l_faster_than_kv_reuse_everywhere"}
    assert (tmp_path / "query_time_quick.png").stat().st_size > 0


@torch.inference_mode()
def test_static_prefix_reuse_matches_the_full_prompt():
    """The KV-reuse contender's cache, reused in place, gives the full prompt's logits at every question position, for
    successive different questions: a longer one after a shorter (it overwrites the slots) and a shorter one after a
    longer (the stale slots beyond it must be masked), then the first again."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench = load_model("quick")
        vlm = bench.vlm
        asks = [query_inputs(bench, 2, question=q) for q in ("Is there a red square?", "Why?", "What colour is it?")]
        assert all(torch.equal(ask.prefix_ids, asks[0].prefix_ids) for ask in asks)  # one video, one prefix
        assert len({ask.question_ids.shape[1] for ask in asks}) == 3
        pixels = {"pixel_values": asks[0].pixel_values, "pixel_attention_mask": asks[0].pixel_attention_mask}
        prefix = StaticPrefix(vlm.model, vlm.config, asks[0].prefix_ids,
                              max(ask.question_ids.shape[1] for ask in asks), **pixels)
        errors = []
        for ask in (*asks, asks[0]):
            full = vlm(input_ids=ask.base_ids, **pixels).logits[:, -ask.question_ids.shape[1]:]
            reused = prefix.query(vlm, ask.question_ids).logits
            assert reused.shape == full.shape
            errors.append((reused - full).abs().max().item())
        assert max(errors) < 1e-5, errors
        with pytest.raises(ValueError, match="do not fit"):
            prefix.query(vlm, torch.cat([asks[0].question_ids] * 3, dim=1))
    finally:
        torch.set_num_threads(threads)


def test_adapter_overhead(run_quick):
    result = run_quick(adapter_overhead, "adapter_overhead")
    assert [row["prompt"] for row in result["rows"]] == ["short", "medium", "long"]
    assert result["rows"][0]["tokens"] < result["rows"][1]["tokens"] < result["rows"][2]["tokens"]
    for row in result["rows"]:
        assert row["bare_s"] > 0 and row["v2l_s"] > 0
        assert row["overhead_of_medians"] == pytest.approx(row["v2l_s"] / row["bare_s"])
        assert row["overhead"] > 0 and row["mlp_overhead"] > 0
    assert 0 < result["lora_flop_fraction"] < 0.1
    assert result["summary"]["target"] == 1.05


def test_batched_serving(run_quick):
    result = run_quick(batched_serving, "batched_serving")
    assert result["videos"] == 2 and result["target"]["throughput_ratio_at_least"] == pytest.approx(1.6)
    for phase in ("prefill", "answer"):
        medians = result["phases"][phase]["median_s"]
        assert set(medians) == {"v2l_batched", "v2l_sequential", "bare_batched", "bare_sequential"}
        assert result["phases"][phase]["throughput_ratio_v2l_of_medians"] == pytest.approx(
            medians["v2l_sequential"] / medians["v2l_batched"])
        assert result["phases"][phase]["throughput_ratio_v2l"] > 0


def test_hypernetwork_cost(run_quick):
    result = run_quick(hypernetwork_cost, "hypernetwork_cost")
    assert [row["frames"] for row in result["timing"]] == [2, 4]
    for row in result["timing"]:
        assert row["adapter_generation_s"] == pytest.approx(row["median_s"]["encode_context"]
                                                            + row["median_s"]["decode"])
        assert 0 < row["vlm_share_of_generation"] <= 1.5  # a ratio of medians; noise may push it slightly over 1
    assert {(row["frames"], row["mode"]) for row in result["memory"]} == {
        (2, "adapter"), (2, "hidden_states")}
    assert all(row["peak_above_baseline_bytes"] >= 0 for row in result["memory"])
    assert set(result["macs_per_token_per_layer"]) == {"decoder_layer", "perceiver_input_projection",
                                                       "perceiver_context_kv"}
    lengths = [row["context_tokens"] for row in result["attention_paths"]]
    assert lengths == [lengths[0], 4 * lengths[0], 16 * lengths[0]]
    assert all(row["speedup"] > 0 and row["through_projections_s"] > 0 for row in result["attention_paths"])


def test_teacher_cost(run_quick):
    result = run_quick(teacher_cost, "teacher_cost")
    assert result["videos"] == 2 and result["questions_per_video"] == 4 and result["frames_per_video"] == 2
    same = result["same_answers"]
    assert same["tokens"] and same["top_ids"] and same["max_abs_logprob_difference"] < 1e-5
    work = result["work_per_video"]
    # Exact counts: the per-row path reads the frames once per question, the cached prefix once per video.
    assert work["per_row"]["vision_frames"] == 4 * work["cached_prefix"]["vision_frames"] == 4 * 2
    assert all(0 < tokens for tokens in result["shared_prefix_tokens"])
    assert work["cached_prefix"]["prefill_tokens"] == work["per_row"]["prefill_tokens"] - 3 * sum(
        result["shared_prefix_tokens"]) / result["videos"]
    assert all(seconds > 0 for seconds in result["seconds_per_video"].values())
    assert result["speedup"]["per_row_over_cached_prefix"] > 0 and result["rounds"] == 2


def test_long_video(run_quick, tmp_path):
    result = run_quick(long_video, "long_video")
    modes = {(row["mode"], row["frames"]) for row in result["rows"]}
    assert modes == {(mode, frames) for mode in long_video.MODES for frames in long_video.SETTINGS["quick"]["frames"]}
    assert all(row["peak_above_baseline_bytes"] > 0 and row["seconds"] > 0 for row in result["rows"])
    assert set(result["ratios"]) == set(long_video.MODES)
    assert (tmp_path / "long_video_quick.png").stat().st_size > 0


def test_segment_layout(run_quick):
    """Both layouts read the same file at every segment count; the ratio is theirs, measured side by side."""
    result = run_quick(segment_layout, "segment_layout")
    assert [(row["video_px"], row["segments"]) for row in result["rows"]] == [(32, 2), (32, 4)]
    for row in result["rows"]:
        seconds = row["seconds"]
        assert set(seconds) == {"contiguous", "interleaved"} and min(seconds.values()) > 0
        assert row["interleaved_over_contiguous"] == seconds["interleaved"] / seconds["contiguous"]

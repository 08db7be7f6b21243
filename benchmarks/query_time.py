"""Query-time sweep (docs/design.md §7): what one more question about an already-seen video costs.

Three contenders answer the same question about the same video:

- **Base** re-encodes the video: vision tower + the full prompt (frames and question) through the decoder.
- **KV-prefix reuse** prefilled the video part of the prompt once into a `transformers.StaticCache` sized to prefix +
  question (`benchmarks.common.StaticPrefix`); a query writes only the question tokens into the slots after the
  prefix, in place, overwriting the previous query's: no copy and no concatenation of the prefix per query, the
  fastest correct form a user would write. Its logits are checked against Base's after all the timed queries.
- **V2L** generated an adapter once; a query is the text-only prompt through the base with the adapter's hooks.
- **V2L + cached header** (a fourth, informative contender): V2L with the chat header before the question cached under
  the adapter once per video (the same `StaticPrefix`), so it prefills exactly the question tokens KV reuse prefills.

Query TTFT is the time of the prefill that yields the first answer token's logits (`logits_to_keep=1`). The one-time
cost compares adapter generation (VLM encode + hypernetwork) with building the KV prefix (allocating the static cache
and prefilling the prefix into it), and the break-even counts say after how many questions V2L's total cost drops
below the other approach's. Bytes kept per video compare the adapter saved in bf16 (weights + metadata, checked
against `r x (in + out) x L x 2` exactly) with the KV prefix in bf16 (`2 x layers x kv_heads x head_dim x tokens x
2`). Inputs are tokenized and pre-processed outside the timers for all three, and frame decoding is not included
anywhere.

Run: `python -m benchmarks.query_time --model tiny 500m` (one torch thread by default; about 10 minutes on one core of
this 2-core machine, e.g. pinned with `taskset -c 1`).
"""

from __future__ import annotations

import copy
import json
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BenchModel,
    Case,
    StaticPrefix,
    base_parser,
    break_even,
    format_bytes,
    format_table,
    load_model,
    machine_info,
    paired_ratio,
    query_inputs,
    ratio,
    setup_run,
    time_interleaved,
    visual_tokens,
    warm_up,
    write_json,
)
from modeling_video2lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, Video2LoRAAdapter

# (image size, frame counts) per model. The 500M architecture is cut to what this CPU runs in minutes: its vision
# tower alone costs ~10 s per 8 frames at 512 px, and Base pays it on every query.
SWEEPS: dict[str, list[tuple[int, list[int]]]] = {
    "tiny": [(64, [8, 16, 32, 64, 128, 256, 512, 1024]), (32, [8, 16, 32, 64, 128, 256, 512, 1024])],
    "500m": [(256, [8, 16]), (512, [8])],
    "quick": [(64, [2, 4]), (32, [2])],
}
# Rounds per point: up to `repeats` (at least `min_repeats`, then until `budget_s` of timed work is spent), so the
# slowest points (a 1,024-frame Base query takes ~40 s here) cost a few rounds, not minutes. A 500M Base query takes
# 15-50 s on this CPU, so its one-time costs get a single round. `fine` is a second block with only the three cheap
# contenders (KV reuse, V2L, V2L + cached header): they differ by percents, less than the machine's load drift, so
# their ratios are paired per round over many rounds instead of read off three Base-paced rounds.
ROUNDS = {
    "tiny": dict(query=dict(repeats=5, min_repeats=3, budget_s=20.0),
                 one_time=dict(repeats=3, min_repeats=1, budget_s=20.0), fine=dict(repeats=25, min_repeats=25)),
    "500m": dict(query=dict(repeats=3, min_repeats=2, budget_s=60.0), one_time=dict(repeats=1, min_repeats=1),
                 fine=dict(repeats=12, min_repeats=12)),
    "quick": dict(query=dict(repeats=2, min_repeats=2), one_time=dict(repeats=1, min_repeats=1),
                  fine=dict(repeats=3, min_repeats=3)),
}
CUT_NOTE = {
    "500m": "frame range cut for the CPU: 8 and 16 frames at 256 px and 8 frames at 512 px (the published sweep runs "
            "8-1024 frames x 224-1024 px on a GPU)",
    "tiny": "full frame range 8-1024; the trained checkpoint runs at its native 64 px, the 32 px rows use the same "
            "architecture with random weights",
}


def adapter_storage(adapter: Video2LoRAAdapter) -> dict[str, int]:
    """
    Bytes of the adapter saved as a PEFT folder in bf16, split into weights and metadata, and the exact expectation
    `sum over modules of r_eff x (in + out) x L x 2`: a larger file would mean an fp32 or a duplicated copy.
    """
    with tempfile.TemporaryDirectory() as directory:
        adapter.save_pretrained(directory, dtype=torch.bfloat16)
        weights = Path(directory) / ADAPTER_WEIGHTS_NAME
        with open(weights, "rb") as handle:
            header_length = struct.unpack("<Q", handle.read(8))[0]
        file_bytes = weights.stat().st_size
        config_bytes = (Path(directory) / ADAPTER_CONFIG_NAME).stat().st_size
    tensor_bytes = file_bytes - 8 - header_length  # safetensors: 8-byte length, JSON header, then raw tensor data
    expected = sum(a.shape[2] * (a.shape[3] + adapter.lora_B[name].shape[2]) * a.shape[1] * 2
                   for name, a in adapter.lora_A.items())
    return {"weight_bytes": tensor_bytes, "expected_weight_bytes": expected,
            "metadata_bytes": 8 + header_length + config_bytes, "total_bytes": file_bytes + config_bytes}


def kv_storage(bench: BenchModel, prefix: StaticPrefix) -> dict[str, int]:
    """
    KV-prefix bytes in bf16 from the formula, and counted from the cache's prefix slots (they must agree: layers, heads
    and head size as the tensors hold them). The static cache also allocates `allocated_tokens` slots, the prefix plus
    room for one question, which a server reuses for every question.
    """
    text = bench.vlm.config.text_config
    described = bench.describe()
    tokens = prefix.length
    formula = 2 * text.num_hidden_layers * text.num_key_value_heads * described["head_dim"] * tokens * 2
    counted = sum(layer.keys[:, :, :tokens].numel() + layer.values[:, :, :tokens].numel()
                  for layer in prefix.cache.layers) * 2
    return {"formula_bytes": formula, "counted_bytes": counted, "tokens": tokens,
            "allocated_tokens": prefix.capacity}


def measure_point(bench: BenchModel, num_frames: int, rounds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """
    All the numbers for one (model, frame size, frame count) point.

    The one-time costs are measured first, without a warm-up round (their median over rounds absorbs a cold first
    call, and at 1,024 frames a warm-up would cost a minute); they leave the vision tower and decoder warm at this
    point's shapes, so the Base query skips its warm-up too, while the cheap KV-reuse and V2L queries get one.
    """
    inputs = query_inputs(bench, num_frames)
    vlm, model = bench.vlm, bench.model
    pixels = {"pixel_values": inputs.pixel_values, "pixel_attention_mask": inputs.pixel_attention_mask}
    base_ids = inputs.base_ids

    def build_prefix(_=None):
        return StaticPrefix(vlm.model, vlm.config, inputs.prefix_ids, inputs.question_ids.shape[1], **pixels)

    def generate(_=None):
        return model.generate_adapter(**inputs.context)

    one_time = time_interleaved({"adapter_generation": Case(generate), "kv_prefix_build": Case(build_prefix)},
                                warmup=0, **rounds["one_time"])
    prefix, adapter = one_time["kv_prefix_build"].last, one_time["adapter_generation"].last

    def base(_):
        return vlm(input_ids=base_ids, **pixels, use_cache=True, logits_to_keep=1).logits

    def kv_reuse(_):
        return prefix.query(vlm, inputs.question_ids, logits_to_keep=1).logits

    def v2l(_):
        with model.apply_adapter(adapter):
            return vlm(input_ids=inputs.text_ids, use_cache=True, logits_to_keep=1).logits

    # The chat header before the question ("<|im_start|>User: ") is the same for every question, so a V2L server can
    # cache its keys and values under the adapter once per video, as KV reuse caches it with the frames. Then both
    # prefill exactly the same question tokens, and the comparison isolates cached frames against LoRA hooks.
    header_ids = inputs.text_ids[:, : inputs.text_ids.shape[1] - inputs.question_ids.shape[1]]
    if not torch.equal(inputs.text_ids[:, header_ids.shape[1]:], inputs.question_ids):
        raise AssertionError("The text-only prompt must end with the same question tokens as the video prompt.")
    with torch.inference_mode(), model.apply_adapter(adapter):
        header = StaticPrefix(vlm.model, vlm.config, header_ids, inputs.question_ids.shape[1])

    def v2l_header_cached(_):
        with model.apply_adapter(adapter):
            return header.query(vlm, inputs.question_ids, logits_to_keep=1).logits

    # Both caches are reused in place by every query of both blocks, as a server reuses them.
    queries = time_interleaved({"base": Case(base, warmup=False), "kv_reuse": Case(kv_reuse), "v2l": Case(v2l),
                                "v2l_header_cached": Case(v2l_header_cached)}, warmup=1, **rounds["query"])
    fine = time_interleaved({"kv_reuse": Case(kv_reuse), "v2l": Case(v2l), "v2l_header_cached": Case(v2l_header_cached)},
                            warmup=0, **rounds["fine"])
    with torch.inference_mode():
        # Caching the header must not change the answer: same logits as the plain V2L query.
        header_error = (v2l(None) - v2l_header_cached(None)).abs().max().item()
    with torch.inference_mode():
        # KV reuse must answer exactly as Base does (same tokens, cached), here after dozens of queries on the same
        # cache: a check of the prefix split and of the in-place reuse together.
        kv_error = (base(None) - kv_reuse(None)).abs().max().item()

    t_base, t_kv, t_v2l, t_v2l_header = (queries[name].median for name in ("base", "kv_reuse", "v2l",
                                                                          "v2l_header_cached"))
    t_kv, t_v2l, t_v2l_header = (fine[name].median for name in ("kv_reuse", "v2l", "v2l_header_cached"))
    t_gen, t_prefix = one_time["adapter_generation"].median, one_time["kv_prefix_build"].median
    return {
        "frames": num_frames, "image_size": bench.image_size, "tokens_per_frame": bench.tokens_per_frame,
        "visual_tokens": {"base": visual_tokens(bench, base_ids), "kv_reuse": visual_tokens(bench, inputs.question_ids),
                          "kv_reuse_attended": visual_tokens(bench, inputs.prefix_ids),
                          "v2l": visual_tokens(bench, inputs.text_ids),
                          "v2l_header_cached": visual_tokens(bench, inputs.question_ids)},
        "prompt_tokens": {"base": base_ids.shape[1], "kv_reuse": inputs.question_ids.shape[1],
                          "kv_prefix": inputs.prefix_ids.shape[1], "v2l": inputs.text_ids.shape[1],
                          "v2l_header_cached": inputs.question_ids.shape[1],
                          "adapter_context": inputs.context["input_ids"].shape[1]},
        # Base from the interleaved block with all four; the cheap three from the longer `fine` block.
        "ttft_s": {"base": t_base, "kv_reuse": t_kv, "v2l": t_v2l, "v2l_header_cached": t_v2l_header},
        "ttft_samples_s": {name: timing.to_dict()["samples_s"] for name, timing in queries.items()},
        "ttft_fine_samples_s": {name: timing.to_dict()["samples_s"] for name, timing in fine.items()},
        "one_time_samples_s": {name: timing.to_dict()["samples_s"] for name, timing in one_time.items()},
        "one_time_s": {name: timing.median for name, timing in one_time.items()},
        "speedup": {"base_over_v2l": paired_ratio(queries["base"], queries["v2l"]),
                    "kv_reuse_over_v2l": paired_ratio(fine["kv_reuse"], fine["v2l"]),
                    "base_over_kv_reuse": paired_ratio(queries["base"], queries["kv_reuse"]),
                    "base_over_v2l_header_cached": paired_ratio(queries["base"], queries["v2l_header_cached"]),
                    "kv_reuse_over_v2l_header_cached": paired_ratio(fine["kv_reuse"], fine["v2l_header_cached"]),
                    "adapter_generation_over_kv_prefix_build": ratio(t_gen, t_prefix)},
        "break_even_questions": {"v2l_vs_base": break_even(t_gen, t_v2l, 0.0, t_base),
                                 "v2l_vs_kv_reuse": break_even(t_gen, t_v2l, t_prefix, t_kv),
                                 "kv_reuse_vs_base": break_even(t_prefix, t_kv, 0.0, t_base)},
        "bytes_per_video": {"adapter_bf16": adapter_storage(adapter),
                            "kv_prefix_bf16": kv_storage(bench, prefix)},
        "kv_reuse_max_abs_logit_error": kv_error,
        "v2l_header_cached_max_abs_logit_error": header_error,
    }


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Geometric-mean and extreme ratios over the sweep, and the §7 targets checked at every point."""
    base_over = [p["speedup"]["base_over_v2l"] for p in points]
    kv_over = [p["speedup"]["kv_reuse_over_v2l"] for p in points]
    kv_over_cached = [p["speedup"]["kv_reuse_over_v2l_header_cached"] for p in points]
    gen_over = [p["speedup"]["adapter_generation_over_kv_prefix_build"] for p in points]
    return {
        "v2l_speedup_over_base": {"geomean": math.exp(sum(map(math.log, base_over)) / len(base_over)),
                                  "min": min(base_over), "max": max(base_over)},
        "v2l_speedup_over_kv_reuse": {"geomean": math.exp(sum(map(math.log, kv_over)) / len(kv_over)),
                                      "min": min(kv_over), "max": max(kv_over)},
        "v2l_header_cached_speedup_over_kv_reuse": {"min": min(kv_over_cached), "max": max(kv_over_cached)},
        "adapter_generation_over_kv_prefix_build": {"min": min(gen_over), "max": max(gen_over)},
        "max_visual_token_reduction": max(p["visual_tokens"]["base"] for p in points),  # V2L prefills 0
        "targets": {
            "v2l_at_least_20x_faster_than_base_everywhere": min(base_over) >= 20.0,
            "v2l_faster_than_kv_reuse_everywhere": min(kv_over) > 1.0,
            "v2l_header_cached_faster_than_kv_reuse_everywhere": min(kv_over_cached) > 1.0,
            "adapter_generation_at_most_1.2x_kv_prefix_build_everywhere": max(gen_over) <= 1.2,
        },
    }


def print_table(model_info: dict[str, Any], points: list[dict[str, Any]]) -> None:
    headers = ["px", "frames", "vis tok Base", "Base ms", "KV ms", "V2L ms", "V2L+hdr ms", "Base/V2L", "KV/V2L",
               "KV/V2L+hdr", "gen ms",
               "KV build ms", "gen/KV", "adapter", "KV prefix", "BE vs Base", "BE vs KV"]
    rows = []
    for p in points:
        rows.append([p["image_size"], p["frames"], p["visual_tokens"]["base"], 1e3 * p["ttft_s"]["base"],
                     1e3 * p["ttft_s"]["kv_reuse"], 1e3 * p["ttft_s"]["v2l"], 1e3 * p["ttft_s"]["v2l_header_cached"],
                     p["speedup"]["base_over_v2l"], p["speedup"]["kv_reuse_over_v2l"],
                     p["speedup"]["kv_reuse_over_v2l_header_cached"], 1e3 * p["one_time_s"]["adapter_generation"],
                     1e3 * p["one_time_s"]["kv_prefix_build"],
                     p["speedup"]["adapter_generation_over_kv_prefix_build"],
                     format_bytes(p["bytes_per_video"]["adapter_bf16"]["total_bytes"]),
                     format_bytes(p["bytes_per_video"]["kv_prefix_bf16"]["formula_bytes"]),
                     p["break_even_questions"]["v2l_vs_base"], p["break_even_questions"]["v2l_vs_kv_reuse"]])
    print(f"\nQuery TTFT, {model_info['name']} ({model_info['weights']}); V2L prefills 0 visual tokens; V2L+hdr "
          "is V2L with the chat header cached under the adapter (BE = break-even questions)")
    print(format_table(headers, rows))


def plot(path: Path, model_info: dict[str, Any], points: list[dict[str, Any]]) -> None:
    """TTFT against frames, log-log: one colour per contender, one line style per frame size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = {"base": "tab:red", "kv_reuse": "tab:blue", "v2l": "tab:green"}
    labels = {"base": "Base (re-encode video)", "kv_reuse": "KV-prefix reuse (StaticCache)", "v2l": "V2L (adapter)"}
    for style, size in zip(("-", "--", ":"), sorted({p["image_size"] for p in points}, reverse=True), strict=False):
        rows = [p for p in points if p["image_size"] == size]
        frames = [p["frames"] for p in rows]
        for name, colour in colours.items():
            axes.plot(frames, [1e3 * p["ttft_s"][name] for p in rows], style, color=colour, marker="o", markersize=3,
                      label=f"{labels[name]}, {size} px ({rows[0]['tokens_per_frame']} tok/frame)")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("frames in the video")
    axes.set_ylabel("query TTFT (ms, median)")
    axes.set_title(f"Query TTFT: {model_info['name']} on CPU ({model_info['weights'].split(':')[0]})", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def run_model(name: str, args) -> dict[str, Any]:
    rounds = copy.deepcopy(ROUNDS[name])
    if args.repeats:
        rounds["query"].update(repeats=args.repeats, min_repeats=args.repeats)
    points, infos = [], []
    for image_size, frame_counts in SWEEPS[name]:
        bench = load_model(name, image_size=image_size)
        warm_up(bench)
        infos.append(bench.describe())
        for num_frames in args.frames or frame_counts:
            point = measure_point(bench, num_frames, rounds)
            points.append(point)
            print(f"  {name} {image_size}px {num_frames:>5} frames: Base {point['ttft_s']['base'] * 1e3:9.1f} ms, "
                  f"KV {point['ttft_s']['kv_reuse'] * 1e3:8.1f} ms, V2L {point['ttft_s']['v2l'] * 1e3:7.1f} ms "
                  f"(Base/V2L {point['speedup']['base_over_v2l']:.1f}x, KV/V2L "
                  f"{point['speedup']['kv_reuse_over_v2l']:.2f}x, KV/V2L+hdr "
                  f"{point['speedup']['kv_reuse_over_v2l_header_cached']:.2f}x)", flush=True)
        del bench
    result = {"benchmark": "query_time", "model": infos[0], "models_per_image_size": infos,
              "frame_range_note": CUT_NOTE.get(name, ""), "rounds": rounds,
              "machine": machine_info(), "points": points, "summary": summarize(points)}
    print_table(infos[0], points)
    summary = result["summary"]
    print(f"V2L over Base: geomean {summary['v2l_speedup_over_base']['geomean']:.1f}x, "
          f"min {summary['v2l_speedup_over_base']['min']:.1f}x; V2L over KV reuse: min "
          f"{summary['v2l_speedup_over_kv_reuse']['min']:.2f}x; targets {json.dumps(summary['targets'])}")
    if result["frame_range_note"]:
        print(f"note: {result['frame_range_note']}")
    write_json(args.output_dir / f"query_time_{name}.json", result)
    plot(args.output_dir / f"query_time_{name}.png", infos[0], points)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], default_models=("tiny", "500m"))
    parser.add_argument("--frames", type=int, nargs="+", help="override the frame counts of every sweep")
    args = parser.parse_args(argv)
    for name in setup_run(args):
        run_model(name, args)


if __name__ == "__main__":
    main()

"""Where adapter generation spends its time and memory: the frozen VLM's encode against the hypernetwork.

Time (interleaved, per frame count):

- `vision_tower`: the vision encoder + connector alone (`get_image_features`);
- `vlm_forward`: `model.vlm.model` forward alone over the adapter context (frames + instruction), all layers;
- `vlm_until_last_layer`: the same forward stopped where `encode_context` stops (at the last decoder layer's input),
  so `encode_context - vlm_until_last_layer` is exactly the perceiver encoder's time;
- `encode_context`: the VLM forward plus the perceiver encoder fed layer by layer from hooks;
- `decode`: `hypernetwork.decode(latents)` (decoder block + LoRA heads), independent of the frame count;
- `kv_prefix_build`: the KV-prefix build of the same video, the one-time cost adapter generation competes with
  (the `StaticPrefix` of `benchmarks/query_time.py`'s KV-reuse contender: static cache allocated, prefix prefilled).

Attention paths (interleaved, 20 rounds): one encoder block's cross-attention at the measured context length, 4x
and 16x it, computed through the key and value projections (what the model runs with few queries) against projecting
every context token first; the speedup is the median of the per-round ratios.

Memory (one fresh subprocess per frame count and mode, peak RSS above the RSS after loading and a 1-frame warm-up,
Linux `VmHWM` reset via `clear_refs`; the peak includes the video's pixel tensor, the same in both modes): `adapter` is `generate_adapter` (streaming: each layer's states go to the perceiver and are dropped)
and `hidden_states` is what the published code holds, the stacked `[L, T, h]` states from `output_hidden_states`.

Run: `python -m benchmarks.hypernetwork_cost --model tiny 500m` (about 8 minutes).
"""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
from typing import Any

import torch

from benchmarks.common import (
    REPO_ROOT,
    BenchModel,
    Case,
    StaticPrefix,
    base_parser,
    current_rss_bytes,
    format_bytes,
    format_table,
    load_model,
    machine_info,
    make_frames,
    paired_ratio,
    peak_rss_bytes,
    query_inputs,
    ratio,
    reset_peak_rss,
    setup_run,
    time_interleaved,
    warm_up,
    write_json,
)
from configuration_video2lora import Video2LoRAConfig
from modeling_video2lora import Video2LoRAModel
from perceiver_video2lora import attends_through_projections

# Frame counts for timing and for memory, cut for this CPU: a 1,024-frame round of the six timed cases takes ~2 minutes
# on the tiny model, and a 16-frame round ~3 minutes on the 500M architecture. Memory runs once per point, so it goes
# further.
SETTINGS = {
    "tiny": dict(time_frames=[8, 32, 128, 512], memory_frames=[8, 32, 128, 512, 1024], repeats=3, warmup=1),
    "500m": dict(time_frames=[8], memory_frames=[8, 16], repeats=2, warmup=0, image_size=256),
    "quick": dict(time_frames=[2, 4], memory_frames=[2], repeats=2, warmup=1),
}
MEMORY_MODES = ("adapter", "hidden_states")
TARGET_GENERATION_OVER_KV = 1.2


class _Stop(Exception):
    pass


def vlm_until_last_layer(bench: BenchModel, context: dict[str, torch.Tensor]) -> None:
    """The VLM work `encode_context` does, without the perceiver: stop at the last decoder layer's input."""
    def stop(module, args, kwargs):
        raise _Stop

    handle = bench.vlm.model.text_model.layers[-1].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        bench.vlm.model(**context, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()


def per_token_macs(bench: BenchModel, config: Video2LoRAConfig | None = None) -> dict[str, int]:
    """Multiply-accumulates per context token and layer: the perceiver encoder against one decoder layer."""
    config = config or bench.model.config
    info = bench.describe()
    h, inter, kv = info["hidden_size"], info["intermediate_size"], info["kv_heads"] * info["head_dim"]
    projection = config.input_projection_size or inter
    d, queries = config.latent_size, config.num_attention_heads * config.num_latents
    if config.share_context_kv:  # the first block projects the context once; every block attends to it
        context_kv = d * 2 * d
    elif attends_through_projections(heads=config.num_attention_heads, num_queries=config.num_latents, dim=d):
        context_kv = config.num_blocks * 2 * queries * d
    else:  # each block projects the whole context to keys and values
        context_kv = config.num_blocks * d * 2 * d
    return {
        "decoder_layer": 2 * h * h + 2 * h * kv + 3 * h * inter,
        "perceiver_input_projection": h * 2 * projection + projection * d,
        "perceiver_context_kv": context_kv,
    }


def lighter_hypernetwork(bench: BenchModel, **overrides) -> Video2LoRAModel:
    """A hypernetwork variant on the same frozen base (shared, not copied): for what-if timings only."""
    values = {**bench.model.config.to_dict(), **overrides}
    for key in ("base_config", "auto_map", "architectures", "transformers_version", "model_type"):
        values.pop(key, None)
    # A copy: building a model resets the attention implementation of the config objects it is given, and the
    # shared base must keep running SDPA.
    config = Video2LoRAConfig(base_config=copy.deepcopy(bench.vlm.config), **values)
    with torch.no_grad():
        return Video2LoRAModel(config, vlm=bench.vlm).eval()


def time_split(bench: BenchModel, num_frames: int, repeats: int, warmup: int, variants: dict) -> dict[str, Any]:
    inputs = query_inputs(bench, num_frames)
    context = inputs.context
    pixels = {"pixel_values": context["pixel_values"], "pixel_attention_mask": context["pixel_attention_mask"]}
    model = bench.model
    with torch.inference_mode():
        latents = model.encode_context(**context)
    cases = {
        "vision_tower": Case(lambda _: bench.vlm.model.get_image_features(**pixels)),
        "vlm_forward": Case(lambda _: bench.vlm.model(**context, use_cache=False)),
        "vlm_until_last_layer": Case(lambda _: vlm_until_last_layer(bench, context)),
        "encode_context": Case(lambda _: model.encode_context(**context)),
        "decode": Case(lambda _: model.hypernetwork.decode(latents)),
        # The same build as query_time's KV-reuse contender: a static cache with room for the question, prefilled.
        "kv_prefix_build": Case(lambda _: StaticPrefix(bench.vlm.model, bench.vlm.config, inputs.prefix_ids,
                                                       inputs.question_ids.shape[1], **pixels)),
    }
    for label, variant in variants.items():
        cases[f"encode_context[{label}]"] = Case(lambda _, v=variant: v.encode_context(**context))
    timings = time_interleaved(cases, repeats=repeats, warmup=warmup)
    t = {name: timing.median for name, timing in timings.items()}
    generation = t["encode_context"] + t["decode"]
    perceiver = t["encode_context"] - t["vlm_until_last_layer"] + t["decode"]
    return {
        "frames": num_frames, "context_tokens": context["input_ids"].shape[1], "median_s": t,
        "samples_s": {name: timing.to_dict()["samples_s"] for name, timing in timings.items()},
        "adapter_generation_s": generation,
        "vlm_share_of_generation": ratio(t["vlm_until_last_layer"], generation),
        "hypernetwork_share_of_generation": ratio(perceiver, generation),
        "generation_over_vlm_forward": ratio(generation, t["vlm_forward"]),
        "generation_over_kv_prefix_build": ratio(generation, t["kv_prefix_build"]),
        "variants_generation_over_kv_prefix_build": {
            label: ratio(t[f"encode_context[{label}]"] + t["decode"], t["kv_prefix_build"]) for label in variants},
    }


# ---- memory ---------------------------------------------------------------------------------------------------------


def memory_worker(name: str, num_frames: int, mode: str, image_size: int | None, threads: int) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS of one adapter generation (or one full-states capture) above the baseline."""
    torch.set_num_threads(threads)
    bench = load_model(name, image_size=image_size)

    def encode(frames: int) -> None:
        context = bench.processor.encode_videos([make_frames(frames, bench.image_size)],
                                                bench.model.config.instruction)
        with torch.inference_mode():
            if mode == "adapter":
                bench.model.generate_adapter(**context)
            else:
                # What the published code keeps: every layer's input, stacked [B, L, T, h] before the hypernetwork.
                states = bench.vlm.model(**context, use_cache=False, output_hidden_states=True).hidden_states
                torch.stack(states[:-1], dim=1)

    encode(1)  # one-off lazy initialization (kernels, thread pools, allocator arenas) stays out of the measurement
    gc.collect()
    baseline = current_rss_bytes()
    resettable = reset_peak_rss()
    encode(num_frames)
    return {"frames": num_frames, "mode": mode,
            "baseline_rss_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
            "peak_above_baseline_bytes": peak_rss_bytes() - baseline, "peak_reset": resettable}


def measure_memory(name: str, frame_counts: list[int], image_size: int | None, threads: int) -> list[dict[str, Any]]:
    """One fresh worker process per (frame count, mode); the modes of one frame count run side by side (peak RSS is
    per process, so they do not disturb each other's measurement, and the import time is paid once per pair)."""
    rows = []
    for num_frames in frame_counts:
        workers = {}
        for mode in MEMORY_MODES:
            command = [sys.executable, "-m", "benchmarks.hypernetwork_cost", "--memory-worker", mode, "--model", name,
                       "--frames", str(num_frames), "--threads", str(threads)]
            if image_size:
                command += ["--image-size", str(image_size)]
            workers[mode] = (command, subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True))
        for mode, (command, worker) in workers.items():
            stdout, stderr = worker.communicate(timeout=1200)
            if worker.returncode != 0:
                raise RuntimeError(f"memory worker failed ({' '.join(command)}):\n{stderr[-3000:]}")
            rows.append(json.loads(stdout.strip().splitlines()[-1]))
            print(f"  {name} memory {mode:>13} {num_frames:>5} frames: peak +"
                  f"{format_bytes(rows[-1]['peak_above_baseline_bytes'])}", flush=True)
    return rows


# ---- driver ---------------------------------------------------------------------------------------------------------


def time_attention_paths(bench: BenchModel, lengths: list[int], repeats: int) -> list[dict[str, Any]]:
    """
    One encoder block's cross-attention of the latents to `t` context tokens, both ways: through the key and value
    projections (what the model runs when heads x latents < d) against projecting every context token first.
    """
    attention = bench.model.hypernetwork.encoder[0].attention
    config = bench.model.config
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(1, config.num_latents, config.latent_size, generator=generator)
    rows = []
    for length in lengths:
        context = torch.randn(1, length, config.latent_size, generator=generator)
        cases = {"through_projections": Case(run=lambda _, c=context: attention(queries, c)),
                 "projected_context": Case(run=lambda _, c=context: attention(
                     queries, None, keys_values=attention.project_context(c)))}
        timings = time_interleaved(cases, repeats=repeats, warmup=1)
        rows.append({"context_tokens": length, **{f"{k}_s": v.median for k, v in timings.items()},
                     "speedup": paired_ratio(timings["projected_context"], timings["through_projections"])})
    return rows


def run_model(name: str, args) -> dict[str, Any]:
    settings = SETTINGS[name]
    image_size = settings.get("image_size")
    bench = load_model(name, image_size=image_size)
    warm_up(bench)
    # What-ifs: the input projection narrowed to the latent width (the published one is as wide as the base's MLP),
    # then also one key/value projection per layer shared by all encoder blocks (the published blocks have their own).
    narrow = {"input_projection_size": bench.model.config.latent_size}
    variants = {"input_projection_size=latent_size": lighter_hypernetwork(bench, **narrow),
                "input_projection_size=latent_size+share_context_kv": lighter_hypernetwork(
                    bench, **narrow, share_context_kv=True)} if name != "quick" else {}
    repeats = args.repeats or settings["repeats"]
    timing_rows = []
    for num_frames in args.frames or settings["time_frames"]:
        row = time_split(bench, num_frames, repeats, settings["warmup"], variants)
        timing_rows.append(row)
        print(f"  {name} {num_frames:>5} frames: generation {row['adapter_generation_s'] * 1e3:9.1f} ms, VLM share "
              f"{row['vlm_share_of_generation']:.2f}, hypernetwork share {row['hypernetwork_share_of_generation']:.2f}"
              f", generation / KV build {row['generation_over_kv_prefix_build']:.2f}x", flush=True)
    base_tokens = timing_rows[0]["context_tokens"]
    attention_rows = time_attention_paths(bench, [base_tokens, 4 * base_tokens, 16 * base_tokens], repeats=20)
    for row in attention_rows:
        print(f"  {name} one block's cross-attention, {row['context_tokens']:>6} context tokens: through the "
              f"projections {row['speedup']:.2f}x faster than projecting the context", flush=True)
    description, macs = bench.describe(), per_token_macs(bench)
    variant_macs = {label: per_token_macs(bench, variant.config) for label, variant in variants.items()}
    variant_parameters = {label: sum(p.numel() for p in variant.hypernetwork.parameters())
                          for label, variant in {"default": bench.model, **variants}.items()}
    del bench, variants  # free the model before the memory workers load their own
    memory_rows = measure_memory(name, args.frames or settings["memory_frames"], image_size, args.threads)
    worst = max(row["generation_over_kv_prefix_build"] for row in timing_rows)
    result = {
        "benchmark": "hypernetwork_cost", "model": description, "machine": machine_info(), "repeats": repeats,
        "image_size": image_size, "timing": timing_rows, "attention_paths": attention_rows, "memory": memory_rows,
        "macs_per_token_per_layer": macs,
        "variants_macs_per_token_per_layer": variant_macs, "variants_hypernetwork_parameters": variant_parameters,
        "summary": {"max_generation_over_kv_prefix_build": worst, "target": TARGET_GENERATION_OVER_KV,
                    "target_holds": worst <= TARGET_GENERATION_OVER_KV},
    }
    print(f"\nAdapter generation split, {name} ({result['model']['weights']})")
    print(format_table(
        ["frames", "ctx tokens", "vision ms", "VLM fwd ms", "VLM part ms", "perceiver enc ms", "decode ms",
         "gen ms", "KV build ms", "gen/KV", "HN share"],
        [[r["frames"], r["context_tokens"], 1e3 * r["median_s"]["vision_tower"], 1e3 * r["median_s"]["vlm_forward"],
          1e3 * r["median_s"]["vlm_until_last_layer"],
          1e3 * (r["median_s"]["encode_context"] - r["median_s"]["vlm_until_last_layer"]),
          1e3 * r["median_s"]["decode"], 1e3 * r["adapter_generation_s"], 1e3 * r["median_s"]["kv_prefix_build"],
          r["generation_over_kv_prefix_build"], r["hypernetwork_share_of_generation"]] for r in timing_rows]))
    print(f"MACs per context token per layer: {macs}")
    by_frames: dict[int, dict[str, int]] = {}
    for row in memory_rows:
        by_frames.setdefault(row["frames"], {})[row["mode"]] = row["peak_above_baseline_bytes"]
    print(format_table(["frames", "adapter generation peak", "published [L, T, h] capture peak"],
                       [[f, format_bytes(m["adapter"]), format_bytes(m["hidden_states"])]
                        for f, m in sorted(by_frames.items())]))
    write_json(args.output_dir / f"hypernetwork_cost_{name}.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], default_models=("tiny", "500m"))
    parser.add_argument("--frames", type=int, nargs="+", help="override the frame counts (timing and memory)")
    parser.add_argument("--memory-worker", choices=MEMORY_MODES, help=argparse_hidden())
    parser.add_argument("--image-size", type=int, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.model[0], args.frames[0], args.memory_worker, args.image_size,
                                       args.threads)))
        return
    for name in setup_run(args):
        run_model(name, args)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()

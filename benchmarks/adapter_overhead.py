"""Adapter overhead (docs/design.md §7, physical limit): a V2L query against the bare base on the same text.

A V2L query is a text-only query plus the LoRA matmuls, about `2 r (I + h)` FLOPs per token per layer against the
layer's `~2 x (attention + 3 h I)`: around 1% at SmolVLM2 sizes. So the query TTFT with the adapter's hooks should sit
within a few percent of the bare base's on the very same tokens (target <= 1.05x). Both contenders run interleaved on
the same prompt, several prompt lengths, `logits_to_keep=1`. The overhead is the median of the per-round ratios (the
two calls of a round run back to back, so load drift cancels); one decoder MLP with and without the hook, over many
cheap rounds, isolates the hook's own cost.

Run: `python -m benchmarks.adapter_overhead --model tiny 500m` (about 2 minutes).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import (
    BenchModel,
    Case,
    base_parser,
    format_table,
    load_model,
    machine_info,
    make_frames,
    paired_ratio,
    ratio,
    setup_run,
    time_interleaved,
    warm_up,
    write_json,
)

# Questions of growing length: a short question, a detailed one, and a long multi-part request.
PROMPTS = {
    "short": "What colour is the circle?",
    "medium": "Describe what happens in the video, in order: which shapes appear, how they move, and which shape "
              "changes colour first.",
    "long": " ".join(["Describe what happens in the video, in order: which shapes appear, how they move up, down, "
                      "left or right, and which shape changes colour first."] * 6),
}
REPEATS = {"tiny": 30, "500m": 9, "quick": 3}
MLP_REPEATS = 40
TARGET = 1.05


def lora_flop_fraction(bench: BenchModel) -> float:
    """LoRA FLOPs over the decoder layer's dense FLOPs, per token (the physical overhead, ignoring attention scores)."""
    info = bench.describe()
    h, inter, kv = info["hidden_size"], info["intermediate_size"], info["kv_heads"] * info["head_dim"]
    layer = 2 * (h * h * 2 + 2 * h * kv + 3 * h * inter)  # q, o, k, v projections and the gated MLP
    dims = bench.model.config.target_module_dims()
    lora = sum(2 * info["lora_rank_effective"] * (i + o) for i, o in dims.values())
    return lora / layer


def mlp_overhead(bench: BenchModel, lora, tokens: int, repeats: int) -> float:
    """
    The hook's cost isolated: one decoder layer's MLP (the LoRA sits on its `down_proj`) with the adapter's hook
    against the same MLP with `down_proj.forward` called directly, which skips hooks. The hooks are registered once,
    outside the timer, interleaved over many cheap rounds. Attention and the other layers only add un-hooked work, so
    the whole model's overhead is below this ratio: it tells the hook's own cost from machine noise.
    """
    mlp = bench.vlm.model.text_model.layers[0].mlp
    hidden = torch.randn(1, tokens, bench.vlm.config.text_config.hidden_size)

    def bare(_):
        return mlp.down_proj.forward(mlp.act_fn(mlp.gate_proj(hidden)) * mlp.up_proj(hidden))

    def hooked(_):
        return mlp.down_proj(mlp.act_fn(mlp.gate_proj(hidden)) * mlp.up_proj(hidden))

    with bench.model.apply_adapter(lora):
        timings = time_interleaved({"bare": Case(bare), "v2l": Case(hooked)}, repeats=repeats, warmup=3)
    return paired_ratio(timings["v2l"], timings["bare"])


def adapter(bench: BenchModel):
    """A real generated adapter (two frames suffice: its shape does not depend on the video's length)."""
    inputs = bench.processor.encode_videos([make_frames(2, bench.image_size)], bench.model.config.instruction)
    with torch.inference_mode():
        return bench.model.generate_adapter(**inputs)


def run_model(name: str, args) -> dict[str, Any]:
    bench = load_model(name)
    warm_up(bench)
    lora = adapter(bench)
    repeats = args.repeats or REPEATS[name]
    rows = []
    for label, prompt in PROMPTS.items():
        ids = bench.processor.encode_text(prompt)["input_ids"]

        def bare(_, ids=ids):
            return bench.vlm(input_ids=ids, use_cache=True, logits_to_keep=1).logits

        def v2l(_, ids=ids):
            with bench.model.apply_adapter(lora):
                return bench.vlm(input_ids=ids, use_cache=True, logits_to_keep=1).logits

        timings = time_interleaved({"bare": Case(bare), "v2l": Case(v2l)}, repeats=repeats, warmup=2)
        mlp = mlp_overhead(bench, lora, ids.shape[1], repeats=MLP_REPEATS)
        rows.append({"prompt": label, "tokens": ids.shape[1], "bare_s": timings["bare"].median,
                     "v2l_s": timings["v2l"].median, "overhead": paired_ratio(timings["v2l"], timings["bare"]),
                     "overhead_of_medians": ratio(timings["v2l"].median, timings["bare"].median),
                     "mlp_overhead": mlp, "samples_s": {k: t.to_dict()["samples_s"] for k, t in timings.items()}})
        print(f"  {name} {label:>6} ({ids.shape[1]:>3} tokens): bare {rows[-1]['bare_s'] * 1e3:8.2f} ms, V2L "
              f"{rows[-1]['v2l_s'] * 1e3:8.2f} ms -> {rows[-1]['overhead']:.3f}x (one MLP: {mlp:.3f}x)", flush=True)
    worst = max(row["overhead"] for row in rows)
    result = {"benchmark": "adapter_overhead", "model": bench.describe(), "machine": machine_info(),
              "repeats": repeats, "rows": rows, "lora_flop_fraction": lora_flop_fraction(bench),
              "summary": {"max_overhead": worst, "target": TARGET, "target_holds": worst <= TARGET}}
    print(f"\nAdapter overhead, {name} ({bench.weights}); LoRA FLOPs = "
          f"{100 * result['lora_flop_fraction']:.2f}% of a decoder layer")
    print(format_table(["prompt", "tokens", "bare ms", "V2L ms", "V2L / bare (paired)", "ratio of medians",
                        "one MLP + hook / MLP"],
                       [[r["prompt"], r["tokens"], 1e3 * r["bare_s"], 1e3 * r["v2l_s"], r["overhead"],
                         r["overhead_of_medians"], r["mlp_overhead"]] for r in rows]))
    write_json(args.output_dir / f"adapter_overhead_{name}.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    args = base_parser(__doc__.split("\n\n")[0], default_models=("tiny", "500m")).parse_args(argv)
    for name in setup_run(args):
        run_model(name, args)


if __name__ == "__main__":
    main()

"""Batched serving: questions about V different videos in one batch, a different adapter per row.

The published code answers at batch size 1. Our adapter hooks apply adapter `i` to row `i` of the batch, so V users
asking about V different videos share one forward pass. The throughput ratio is

    (V questions / time of one batched pass) / (1 question / mean time of one question alone)
    = total time of the V questions one at a time / time of the batched pass,

and the target is >= 0.8 x V (batching V rows should cost little more than one row). The same ratio for the bare
base without adapters is measured side by side: it is what the hardware allows, so the adapter's own cost in batching
is the gap between the two. Two phases are measured: the prefill (TTFT, `logits_to_keep=1`) and whole short answers
(prefill + `--new-tokens` greedy decode steps, forced to that length).

Run: `python -m benchmarks.batched_serving --model tiny 500m` (about 3 minutes).
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

QUESTIONS = [
    "What colour is the circle?", "How many shapes appear in the video?", "Which shape moves left?",
    "Describe what happens in the video, in order.", "Which shape changes colour first?",
    "What colour is the square at the end?", "Does the triangle move up or down?", "How many circles are red?",
]
SETTINGS = {"tiny": dict(videos=8, repeats=10), "500m": dict(videos=4, repeats=5), "quick": dict(videos=2, repeats=2)}
TARGET_FRACTION = 0.8


def adapters_for(bench: BenchModel, count: int):
    """One adapter per video, generated in one batch (two frames each: the adapter's shape does not depend on it)."""
    videos = [make_frames(2, bench.image_size, seed=i) for i in range(count)]
    inputs = bench.processor.encode_videos(videos, bench.model.config.instruction)
    with torch.inference_mode():
        return bench.model.generate_adapter(**inputs)


def run_model(name: str, args) -> dict[str, Any]:
    bench = load_model(name)
    warm_up(bench)
    settings = SETTINGS[name]
    videos, repeats = args.videos or settings["videos"], args.repeats or settings["repeats"]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(videos)]
    adapters = adapters_for(bench, videos)
    vlm, model, tokenizer = bench.vlm, bench.model, bench.processor.tokenizer
    batch = bench.processor.encode_text(questions, padding_side="left")  # left: every row's last token is its own
    singles = [bench.processor.encode_text(question) for question in questions]
    generate_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)

    def step(inputs, phase: str):
        if phase == "prefill":
            return vlm(**inputs, use_cache=True, logits_to_keep=1).logits
        return vlm.generate(**inputs, **generate_kwargs)

    def batched(phase: str, with_adapter: bool):
        def run(_):
            if not with_adapter:
                return step(batch, phase)
            with model.apply_adapter(adapters):
                return step(batch, phase)
        return run

    def one_at_a_time(phase: str, with_adapter: bool):
        def run(_):
            for index, inputs in enumerate(singles):
                if not with_adapter:
                    step(inputs, phase)
                    continue
                with model.apply_adapter(adapters[index]):
                    step(inputs, phase)
        return run

    phases = {}
    for phase in ("prefill", "answer"):
        cases = {f"{kind}_{mode}": Case((batched if mode == "batched" else one_at_a_time)(phase, kind == "v2l"))
                 for kind in ("v2l", "bare") for mode in ("batched", "sequential")}
        timings = time_interleaved(cases, repeats=repeats, warmup=1)
        medians = {key: timing.median for key, timing in timings.items()}
        phases[phase] = {
            "median_s": medians, "samples_s": {key: t.to_dict()["samples_s"] for key, t in timings.items()},
            # Paired per round (the calls of a round run back to back), so load drift cancels.
            "throughput_ratio_v2l": paired_ratio(timings["v2l_sequential"], timings["v2l_batched"]),
            "throughput_ratio_bare": paired_ratio(timings["bare_sequential"], timings["bare_batched"]),
            "throughput_ratio_v2l_of_medians": ratio(medians["v2l_sequential"], medians["v2l_batched"]),
        }
        phases[phase]["target_holds"] = phases[phase]["throughput_ratio_v2l"] >= TARGET_FRACTION * videos
        print(f"  {name} {phase}: V2L batched/sequential throughput {phases[phase]['throughput_ratio_v2l']:.2f}x "
              f"(bare base {phases[phase]['throughput_ratio_bare']:.2f}x) for V = {videos}", flush=True)

    result = {"benchmark": "batched_serving", "model": bench.describe(), "machine": machine_info(),
              "videos": videos, "new_tokens": args.new_tokens, "repeats": repeats, "phases": phases,
              "target": {"throughput_ratio_at_least": TARGET_FRACTION * videos}}
    print(f"\nBatched serving, {name} ({bench.weights}); V = {videos} videos, one adapter per row")
    rows = [[phase, 1e3 * p["median_s"]["v2l_batched"], 1e3 * p["median_s"]["v2l_sequential"],
             p["throughput_ratio_v2l"], p["throughput_ratio_bare"], TARGET_FRACTION * videos,
             "yes" if p["target_holds"] else "no"] for phase, p in phases.items()]
    print(format_table(["phase", "V2L batched ms", f"V2L {videos} x single ms", "V2L ratio", "bare ratio",
                        "target", "holds"], rows))
    write_json(args.output_dir / f"batched_serving_{name}.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], default_models=("tiny", "500m"))
    parser.add_argument("--videos", type=int, default=None, help="V: videos (rows) per batch")
    parser.add_argument("--new-tokens", type=int, default=8, help="answer length of the 'answer' phase")
    args = parser.parse_args(argv)
    for name in setup_run(args):
        run_model(name, args)


if __name__ == "__main__":
    main()

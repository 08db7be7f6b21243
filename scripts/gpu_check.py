"""Check the core path on a CUDA GPU against the CPU, with the embedded default model.

    python scripts/gpu_check.py [--model video2lora/checkpoints/video2lora-world] [--clips 6] [--output gpu_check.json]

On a machine without PyAV (which `video2lora.world` needs to import), render the clips elsewhere with
`--save_clips clips.npz` (no GPU needed) and check them with `--load_clips clips.npz`.

For each held-out world clip it internalizes the video on both devices (the adapters must agree to 1e-3) and answers
its questions on both (the answers must be the same); it checks that one batch of videos gives the same answers as
one video at a time, and that a training step under bf16 autocast gives finite gradients to the hypernetwork and none
to the frozen base. Exit status 0 when every check passes. The tests cover all of this on the CPU; this script is for
a machine with a GPU, which the project never needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from modeling_video2lora import Video2LoRAModel  # noqa: E402


def render_clips(count: int) -> list[dict]:
    """The first `count` held-out test clips: seed, frames `[T, H, W, 3]` uint8, and (question, answer) pairs."""
    from video2lora.world import generate_clip, split_seeds

    clips = [generate_clip(seed) for seed in split_seeds("test", count)]
    return [{"seed": clip.seed, "frames": clip.frames, "qa": [(item.question, item.answer) for item in clip.qa]}
            for clip in clips]


def save_clips(clips: list[dict], path: str) -> None:
    qa = json.dumps({str(clip["seed"]): clip["qa"] for clip in clips})
    np.savez(path, qa=np.array(qa), **{f"frames_{clip['seed']}": clip["frames"] for clip in clips})


def load_clips(path: str) -> list[dict]:
    with np.load(path) as stored:
        qa = json.loads(str(stored["qa"]))
        return [{"seed": int(seed), "frames": stored[f"frames_{seed}"], "qa": [tuple(pair) for pair in pairs]}
                for seed, pairs in qa.items()]


def max_difference(first, second) -> float:
    """Largest elementwise gap between two adapters' scaled B matrices (A is compared through the answers)."""
    return max(float((first.scaled_B()[name].cpu() - second.scaled_B()[name].cpu()).abs().max())
               for name in first.lora_B)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "video2lora" / "checkpoints" / "video2lora-world"))
    parser.add_argument("--device", default="cuda", help="the accelerator to check against the CPU")
    parser.add_argument("--clips", type=int, default=6, help="held-out test clips to check")
    parser.add_argument("--output", default=None, help="also write the report here (JSON)")
    parser.add_argument("--save_clips", default=None, help="render the clips to this .npz and stop")
    parser.add_argument("--load_clips", default=None, help="check these clips (from --save_clips) instead")
    args = parser.parse_args()
    if args.save_clips:
        save_clips(render_clips(args.clips), args.save_clips)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check.", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    cpu = Video2LoRAModel.from_pretrained(args.model).eval()
    gpu = Video2LoRAModel.from_pretrained(args.model).eval().to(device)
    clips = load_clips(args.load_clips) if args.load_clips else render_clips(args.clips)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    report = {"device": name, "torch": torch.__version__, "clips": []}

    for clip in clips:
        on_cpu, on_gpu = cpu.internalize(clip["frames"]), gpu.internalize(clip["frames"])
        questions = [question for question, _ in clip["qa"]]
        answers_cpu, answers_gpu = cpu.answer(on_cpu, questions), gpu.answer(on_gpu, questions)
        report["clips"].append({
            "seed": clip["seed"], "adapter_max_difference": max_difference(on_cpu, on_gpu),
            "same_answers": answers_cpu == answers_gpu,
            "correct": sum(given == truth for given, (_, truth) in zip(answers_gpu, clip["qa"], strict=True)),
            "questions": len(questions)})

    # One batch of videos: row i answers with adapter i, exactly as one video at a time.
    processor = gpu.processor
    sampled = [processor.sample_video(clip["frames"]) for clip in clips]  # the one sampler, as internalize() uses
    context = processor.encode_videos([video.frames for video in sampled], gpu.config.instruction,
                                      timestamps=[video.timestamps for video in sampled],
                                      durations=[video.duration for video in sampled]).to(device)
    adapters = gpu.generate_adapter(**context).detach()
    first_questions = [clip["qa"][0][0] for clip in clips]
    batched = gpu.answer(adapters, first_questions)
    one_by_one = [gpu.answer(adapters[i : i + 1], [question])[0] for i, question in enumerate(first_questions)]
    report["batched_equals_one_by_one"] = batched == one_by_one

    # A backward pass under bf16 autocast, with the LM loss over each whole chat turn (a check of devices, dtypes and
    # gradient flow, not the training objective: train_hf.py scores answer tokens only).
    gpu.train()
    student = processor.encode_text(first_questions, answers=[clip["qa"][0][1] for clip in clips]).to(device)
    labels = student["input_ids"].masked_fill(student["attention_mask"] == 0, -100)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = gpu(input_ids=student["input_ids"], attention_mask=student["attention_mask"], labels=labels,
                   context_input_ids=context["input_ids"], context_attention_mask=context["attention_mask"],
                   pixel_values=context["pixel_values"],
                   pixel_attention_mask=context.get("pixel_attention_mask")).loss
    loss.backward()
    report["bf16_training_loss"] = float(loss.detach())
    report["hypernetwork_gradients_finite"] = all(
        parameter.grad is not None and bool(torch.isfinite(parameter.grad).all())
        for parameter in gpu.hypernetwork.parameters())
    report["base_without_gradients"] = all(parameter.grad is None for parameter in gpu.vlm.parameters())

    passed = (all(c["adapter_max_difference"] < 1e-3 and c["same_answers"] for c in report["clips"])
              and report["batched_equals_one_by_one"] and report["hypernetwork_gradients_finite"]
              and report["base_without_gradients"] and torch.isfinite(loss).item())
    report["passed"] = passed
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

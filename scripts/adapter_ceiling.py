"""How well can an adapter of the hypernetwork's shape answer for one video at all? (README, "Long videos")

For each clip of a teacher manifest (the teacher's answers with their top-k log-probs, as training reads them), the
hypernetwork's adapter is made as usual, then optimized directly for that one clip: its A and B (every rank slot,
the bias block included) take `--steps` Adam steps on the training loss (cross-entropy on the teacher's answer plus
its top-k KL) over exactly the clip's own rows. Both adapters then answer the same rows, scored by exact match against
the world's labels (`reference_text`), per question type, next to the teacher's own answers (`target_text`). Rows
without the teacher's log-probs are fitted on their `target_text` alone.

If the optimized adapters reach the teacher where the hypernetwork's do not, the shape of the adapter (rank, target
modules, the frozen base it steers) can hold what the teacher knows, and the gap is the hypernetwork's; if they stop
where the hypernetwork stops, no hypernetwork emitting that shape can close it.

    python scripts/adapter_ceiling.py --model video2lora/checkpoints/video2lora-world \
        --teacher data/world/train_harder_teacher.jsonl --clips data/world/train_events2.jsonl --videos 40
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from modeling_video2lora import Video2LoRAAdapter, Video2LoRAModel
from train_hf import Video2LoRACollator
from video2lora.checks import positive_int
from video2lora.data import ManifestError, question_type, read_manifest, write_text_atomically
from video2lora.evaluation import exact_match
from video2lora.runner import group_by_video, read_row_video


def optimized(model: Video2LoRAModel, adapter: Video2LoRAAdapter, batch: dict[str, torch.Tensor], *, steps: int,
              learning_rate: float) -> Video2LoRAAdapter:
    """`adapter` after `steps` Adam steps on the student loss of `batch` (one video's rows)."""
    # The optimizer updates these leaf tensors in place, so one adapter object serves every step.
    trial = replace(adapter, lora_A={name: a.detach().clone().requires_grad_() for name, a in adapter.lora_A.items()},
                    lora_B={name: b.detach().clone().requires_grad_() for name, b in adapter.lora_B.items()})
    optimizer = torch.optim.Adam([*trial.lora_A.values(), *trial.lora_B.values()], lr=learning_rate)
    student = {key: batch[key] for key in ("input_ids", "attention_mask", "labels", "teacher_top_ids",
                                           "teacher_top_logprobs", "teacher_mask") if key in batch}
    one_video = torch.zeros(len(batch["input_ids"]), dtype=torch.long)  # every row reads the one adapter
    for _ in range(steps):
        loss = model(**student, adapter=trial, adapter_index=one_video).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return trial.detach()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Video2LoRA checkpoint folder")
    parser.add_argument("--teacher", required=True, help="teacher manifest (rows with teacher_logprobs)")
    parser.add_argument("--clips", help="only the videos of this manifest (e.g. one kind of scene)")
    parser.add_argument("--data-root", help="folder the rows' video paths are relative to (default: each manifest's)")
    parser.add_argument("--videos", type=positive_int, default=40, help="clips to fit, drawn at random (seed 0)")
    parser.add_argument("--steps", type=positive_int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-frames", type=positive_int, default=4)
    parser.add_argument("--fit-on", choices=["all", "caption"], default="all",
                        help="optimize on all of the clip's rows, or on its caption row only (the teacher's "
                             "description: what a user could ask the base for once, without knowing the questions)")
    parser.add_argument("--output", help="write the summary here as JSON")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        print(f"adapter_ceiling: {args.model} does not exist", file=sys.stderr)
        return 2
    try:  # rows with absolute video paths, checked before any model is loaded
        rows = read_manifest(args.teacher, data_root=args.data_root, check_files=True).rows
        if args.clips:
            wanted = {row["video_path"] for row in read_manifest(args.clips, data_root=args.data_root).rows}
            rows = [row for row in rows if row["video_path"] in wanted]
    except ManifestError as error:
        print(f"adapter_ceiling: {error}", file=sys.stderr)
        return 2
    groups = group_by_video(rows)
    if not groups:
        print(f"adapter_ceiling: no rows in {args.teacher} for those clips", file=sys.stderr)
        return 2
    groups = random.Random(0).sample(groups, min(args.videos, len(groups)))

    torch.manual_seed(0)
    model = Video2LoRAModel.from_pretrained(args.model).eval()
    model.requires_grad_(False)
    model.config.kl_weight = 1.0  # what every training stage used (--kl_weight 1.0)
    collator = Video2LoRACollator(model.processor, model.config.instruction, with_teacher=True)
    correct: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, group in tqdm(groups, desc="clips", unit="clip"):
        video = read_row_video(model, group[0], num_frames=args.num_frames)
        with torch.no_grad():
            adapter = model.internalize(video)
        feature = {"frames": video.frames, "timestamps": video.timestamps, "duration": video.duration,
                   "questions": [{"prompt": row["prompt"], "target": row["target_text"],
                                  "teacher": row.get("teacher_logprobs")}
                                 for row in group if args.fit_on == "all" or row["task_type"] == "caption"]}
        batch = collator([feature])
        fitted = optimized(model, adapter, batch, steps=args.steps, learning_rate=args.learning_rate)
        qa = [row for row in group if row["task_type"] == "qa"]
        prompts = [row["prompt"] for row in qa]
        answers = {"hypernetwork": model.answer(adapter, prompts), "optimized": model.answer(fitted, prompts),
                   "teacher": [row["target_text"] for row in qa]}
        for system, replies in answers.items():
            for row, reply in zip(qa, replies, strict=True):
                score = exact_match(reply, row.get("reference_text", row["target_text"]))
                correct[system][question_type(row) or "qa"].append(score)
                correct[system]["all QA"].append(score)
    summary = {system: {kind: {"accuracy": sum(s) / len(s), "questions": len(s)} for kind, s in sorted(kinds.items())}
               for system, kinds in correct.items()}
    kinds = sorted(summary["teacher"])
    print(f"{len(groups)} clips, {args.steps} steps at lr {args.learning_rate}")
    print("| type | questions | " + " | ".join(summary) + " |")
    print("|---|---:|" + "---:|" * len(summary))
    for kind in kinds:
        cells = " | ".join(f"{summary[system][kind]['accuracy']:.3f}" for system in summary)
        print(f"| {kind} | {summary['teacher'][kind]['questions']} | {cells} |")
    if args.output:
        write_text_atomically(args.output, json.dumps({"args": vars(args), "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

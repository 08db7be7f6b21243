"""Which segment knows the count: "how many objects are there at the start / at the end?" on held-out two-segment
clips, answered from the first half's adapter alone, the second half's alone, and the composed adapter
(`internalize(segments=2)`). Each half is read in its place, as the composition reads it (README, "Long videos").

    python scripts/count_by_segment.py --model video2lora/checkpoints/video2lora-world --clips 100
"""

import argparse
import collections
import json
from pathlib import Path

import torch

from modeling_video2lora import Video2LoRAModel
from video2lora.video import video_duration

QUESTIONS = {"start": "how many objects are there at the start?", "end": "how many objects are there at the end?"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="video2lora/checkpoints/video2lora-world")
parser.add_argument("--manifest", type=Path, default=Path("data/world/test_two_segment.jsonl"))
parser.add_argument("--clips", type=int, default=100)
args = parser.parse_args()

model = Video2LoRAModel.from_pretrained(args.model)
answers = collections.defaultdict(dict)  # video -> {"start": answer, "end": answer}
for row in map(json.loads, args.manifest.read_text().splitlines()):
    if row["metadata"]["segment"] == "whole" and row["prompt"] in QUESTIONS.values():
        answers[row["video_path"]][row["prompt"].split()[-1].rstrip("?")] = row["target_text"]

correct = collections.Counter()
videos = list(answers)[:args.clips]
with torch.inference_mode():
    for video in videos:
        path = str(args.manifest.parent / video)
        half = video_duration(path) / 2
        adapters = {"first half alone": model.internalize(path, end=half, keep_place=True),
                    "second half alone": model.internalize(path, start=half, keep_place=True)}
        adapters["composed"] = model.internalize(path, segments=2)
        for name, adapter in adapters.items():
            replies = model.answer(adapter, list(QUESTIONS.values()))
            for (end, _), reply in zip(QUESTIONS.items(), replies, strict=True):
                correct[name, end] += reply.strip() == answers[video][end]
for name in ("first half alone", "second half alone", "composed"):
    print(f"{name:>18}: at the start {correct[name, 'start']} of {len(videos)}, "
          f"at the end {correct[name, 'end']} of {len(videos)}")

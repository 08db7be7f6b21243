"""Teacher cost: the frozen base answering a video's questions, one video prefill per question against one per video.

`python -m video2lora.teacher` answers every manifest row with the video in context. Two ways, timed side by side on
the same rows, videos and weights:

- **Per row** (the teacher before one encode per video, still its fallback): each row's prompt is encoded whole with
  its video, so a video asked 8 questions goes through the vision tower and the decoder's prefill 8 times. Rows are
  batched as that teacher batched them: QA rows before captions, batches mixing videos.
- **Cached prefix** (the teacher now): the prompts of one video share everything up to the end of its frames; that
  prefix is prefilled once, frames included, and each batch of the video's questions continues a copy of its
  key/value cache with only its own remaining tokens. Batches hold one video's rows, QA first.

Each contender answers all the videos per call (greedy, `--top-k` log-probs per answer token, as training asks); the
result is seconds per video and the paired ratio. Both must give the same answers: the run checks the answer tokens
and top-k ids are identical and reports the largest log-prob difference. Frames are decoded once, outside the timers
(the teacher decodes each video once either way). Besides time, the work each does per video is counted exactly:
frames through the vision tower and tokens through the decoder's prefill.

Models: `tiny` is the embedded default base (`video2lora/checkpoints/smolvlm-world`, trained; 4 frames of 64 px, 16
tokens per frame), `500m` SmolVLM2-500M's architecture with random weights at 256 px (16 tokens per frame, 8 frames;
its answers never stop early, so they are cut at `max_new_tokens` 8, the length of a short QA answer), `quick` the
tests' tiny random model.

Run: `python -m benchmarks.teacher_cost --model tiny 500m` (20 s for tiny, about 7 minutes for 500m on 2 shared CPU
cores).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from transformers import SmolVLMForConditionalGeneration

from benchmarks.architectures import benchmark_tokenizer, real_smolvlm_config
from benchmarks.common import (
    RANDOM_WEIGHTS_NOTE,
    REPO_ROOT,
    Case,
    base_parser,
    format_table,
    machine_info,
    paired_ratio,
    ratio,
    setup_run,
    time_interleaved,
    write_json,
)
from video2lora.data import read_manifest
from video2lora.teacher import (
    _answer_rows,
    _answer_video,
    _load_video,
    _shared_prefix_length,
    _video_key,
    _video_prompt_ids,
    load_teacher,
)
from video2lora.tiny import build_processor, tiny_smolvlm_config, tokens_per_frame
from video2lora.world import write_world

TEACHER_CHECKPOINT = REPO_ROOT / "video2lora" / "checkpoints" / "smolvlm-world"
# Per model: world clips, questions per clip, frames per clip, answer length limit, timed rounds.
SETTINGS = {
    "tiny": dict(clips=4, questions=8, frames=4, max_new_tokens=64, repeats=9),
    "500m": dict(clips=2, questions=8, frames=8, max_new_tokens=8, repeats=2, image_size=256),
    "quick": dict(clips=2, questions=4, frames=2, max_new_tokens=4, repeats=2),
}


@dataclass
class Teacher:
    """A frozen base and its processor, and what they are."""

    name: str
    vlm: Any
    processor: Any
    weights: str

    def describe(self) -> dict[str, Any]:
        config = self.vlm.config
        return {"name": self.name, "weights": self.weights, "image_size": config.vision_config.image_size,
                "tokens_per_frame": tokens_per_frame(config), "text_layers": config.text_config.num_hidden_layers,
                "hidden_size": config.text_config.hidden_size, "vision_layers": config.vision_config.num_hidden_layers,
                "parameters": sum(p.numel() for p in self.vlm.parameters()),
                "dtype": str(self.vlm.dtype).replace("torch.", "")}


def load(name: str, settings: dict[str, Any]) -> Teacher:
    """The teacher `name` in float32 (see the module docstring)."""
    if name == "tiny":
        vlm, processor = load_teacher(TEACHER_CHECKPOINT, dtype=torch.float32)
        return Teacher(name, vlm, processor, f"trained checkpoint {TEACHER_CHECKPOINT.name}")
    tokenizer = benchmark_tokenizer()
    torch.manual_seed(0)
    if name == "500m":
        config = real_smolvlm_config("500m", tokenizer, image_size=settings["image_size"])
        weights = f"{RANDOM_WEIGHTS_NOTE} (SmolVLM2-500M architecture at {settings['image_size']} px)"
    elif name == "quick":
        config = tiny_smolvlm_config(tokenizer)
        weights = f"{RANDOM_WEIGHTS_NOTE} (test-size model)"
    else:
        raise ValueError(f"Unknown model {name!r}; choose from {sorted(SETTINGS)}.")
    processor = build_processor(tokenizer, config, video_sampling={"fps": None, "max_frames": settings["frames"]})
    with torch.no_grad():
        vlm = SmolVLMForConditionalGeneration(config).eval()
    return Teacher(name, vlm, processor, weights)


def world_rows(directory: str, clips: int, questions: int) -> list[dict]:
    """The first `questions` rows (a caption, then QA) of the first `clips` world test clips asked that many."""
    rows = read_manifest(write_world(directory, split="test", num_clips=4 * clips, progress=False)).rows
    by_clip: dict[tuple, list[dict]] = {}
    for row in rows:
        by_clip.setdefault(_video_key(row), []).append(row)
    kept = [group[:questions] for group in by_clip.values() if len(group) >= questions][:clips]
    if len(kept) < clips:
        raise RuntimeError(f"Only {len(kept)} of {4 * clips} world clips have {questions} questions.")
    return [row for group in kept for row in group]


def qa_first(rows: list[dict]) -> list[dict]:
    """The teacher's order: short QA answers batched apart from long captions (stable)."""
    return sorted(rows, key=lambda row: row["task_type"] != "qa")


def run_model(name: str, args) -> dict[str, Any]:
    settings = dict(SETTINGS[name])
    teacher = load(name, settings)
    vlm, processor = teacher.vlm, teacher.processor
    with tempfile.TemporaryDirectory() as directory:
        rows = world_rows(directory, settings["clips"], settings["questions"])
        videos = {}
        for row in rows:
            if _video_key(row) not in videos:
                videos[_video_key(row)] = _load_video(row, {}, processor, num_frames=settings["frames"])
    by_video = {key: qa_first([row for row in rows if _video_key(row) == key]) for key in videos}
    options = dict(max_new_tokens=settings["max_new_tokens"], top_k=args.top_k)
    batch_size = args.batch_size

    @torch.inference_mode()
    def per_row(_=None) -> dict[str, tuple]:
        order, answers = qa_first(rows), {}
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            results = _answer_rows(vlm, processor, [videos[_video_key(row)] for row in batch],
                                   [row["prompt"] for row in batch], **options)
            answers.update(zip([row["id"] for row in batch], results, strict=True))
        return answers

    @torch.inference_mode()
    def cached_prefix(_=None) -> dict[str, tuple]:
        answers = {}
        for key, group in by_video.items():
            batches = _answer_video(vlm, processor, videos[key], [row["prompt"] for row in group],
                                    batch_size=batch_size, **options)
            answers.update(zip([row["id"] for row in group], [a for batch in batches for a in batch], strict=True))
        return answers

    # One question of one video each, untimed: the first forward pays one-off costs (thread pools, allocator).
    first_key = next(iter(by_video))
    _answer_rows(vlm, processor, [videos[first_key]], [by_video[first_key][0]["prompt"]], max_new_tokens=1, top_k=0)
    next(_answer_video(vlm, processor, videos[first_key], [by_video[first_key][0]["prompt"]], batch_size=1,
                       max_new_tokens=1, top_k=0))
    repeats = args.repeats or settings["repeats"]
    timings = time_interleaved({"per_row": Case(per_row), "cached_prefix": Case(cached_prefix)}, repeats=repeats,
                               warmup=0)
    old, new = timings["per_row"].last, timings["cached_prefix"].last
    same_tokens = all(old[i][1]["token_ids"] == new[i][1]["token_ids"] and old[i][0] == new[i][0] for i in old)
    same_top_ids = all(old[i][1]["top_ids"] == new[i][1]["top_ids"] for i in old)
    logprob_error = max((torch.tensor(old[i][1]["top_logprobs"]) - torch.tensor(new[i][1]["top_logprobs"]))
                        .abs().max().item() for i in old)

    # The work each path does per video, counted exactly: frames through the vision tower, tokens prefilled.
    work = {"per_row": {"vision_frames": 0, "prefill_tokens": 0}, "cached_prefix": {"vision_frames": 0,
                                                                                    "prefill_tokens": 0}}
    prefix_tokens = []
    for key, group in by_video.items():
        video, prompts = videos[key], [row["prompt"] for row in group]
        prompt_ids = _video_prompt_ids(processor, video, prompts)
        length = _shared_prefix_length(prompt_ids, processor.image_token_id)
        prefix_tokens.append(length)
        work["per_row"]["vision_frames"] += len(prompts) * len(video.frames)
        work["per_row"]["prefill_tokens"] += sum(len(ids) for ids in prompt_ids)
        work["cached_prefix"]["vision_frames"] += len(video.frames)
        work["cached_prefix"]["prefill_tokens"] += length + sum(len(ids) - length for ids in prompt_ids)
    num_videos = len(videos)
    per_video = {path: {key: value / num_videos for key, value in counts.items()} for path, counts in work.items()}
    seconds = {path: timings[path].median / num_videos for path in timings}
    answer_tokens = [len(answer[1]["token_ids"]) for answer in new.values()]
    result = {
        "benchmark": "teacher_cost", "model": teacher.describe(), "machine": machine_info(),
        "videos": num_videos, "questions_per_video": len(rows) / num_videos, "frames_per_video": settings["frames"],
        "batch_size": batch_size, "max_new_tokens": settings["max_new_tokens"], "top_k_logprobs": args.top_k,
        "rounds": repeats,
        "answer_tokens": {"mean": sum(answer_tokens) / len(answer_tokens), "max": max(answer_tokens)},
        "shared_prefix_tokens": prefix_tokens, "work_per_video": per_video,
        "seconds_per_video": seconds,
        "samples_s": {path: timing.to_dict()["samples_s"] for path, timing in timings.items()},
        "speedup": {"per_row_over_cached_prefix": paired_ratio(timings["per_row"], timings["cached_prefix"]),
                    "of_medians": ratio(seconds["per_row"], seconds["cached_prefix"])},
        "same_answers": {"tokens": same_tokens, "top_ids": same_top_ids, "max_abs_logprob_difference": logprob_error},
    }
    print(f"\nTeacher cost, {name} ({teacher.weights}): {num_videos} videos x {result['questions_per_video']:g} "
          f"questions, {settings['frames']} frames, batch {batch_size}, top-{args.top_k} log-probs")
    print(format_table(["path", "s / video", "vision frames / video", "prefill tokens / video"],
                       [[path, seconds[path], per_video[path]["vision_frames"], per_video[path]["prefill_tokens"]]
                        for path in ("per_row", "cached_prefix")]))
    print(f"per row / cached prefix: {result['speedup']['per_row_over_cached_prefix']:.2f}x (paired); same answers "
          f"{json.dumps(result['same_answers'])}")
    write_json(args.output_dir / f"teacher_cost_{name}.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], default_models=("tiny", "500m"))
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate call (the teacher's default)")
    parser.add_argument("--top-k", type=int, default=8, help="log-probs kept per answer token (the recipe's 8)")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be >= 1")
    for name in setup_run(args):
        run_model(name, args)


if __name__ == "__main__":
    main()

"""Train the Video2LoRA hypernetwork with the 🤗 Trainer (docs/design.md §5).

```
python train_hf.py --base_model_name_or_path HuggingFaceTB/SmolVLM2-500M-Video-Instruct \
    --train_manifest data/train_teacher.jsonl --output_dir runs/v2l
accelerate launch train_hf.py ...                                           # one process, or per accelerate config
accelerate launch --config_file configs/accelerate_multi_gpu.yaml train_hf.py ...    # DDP
accelerate launch --config_file configs/accelerate_fsdp.yaml train_hf.py ...         # FSDP: the hypernetwork sharded
python train_hf.py configs/recipes/smolvlm2_500m.yaml --train_manifest ... --output_dir ...   # a recipe, plus flags
python train_hf.py configs/recipes/smolvlm2_2.2b.yaml --dry_run                # sizes and memory, one CPU step
```

The frozen SmolVLM2 reads each video (frames + the config's instruction); the perceiver hypernetwork turns its
hidden states into a LoRA; the same frozen SmolVLM2 plus that LoRA, with no video, is trained to reproduce the
manifest's `target_text` (the teacher's answers, see `python -m video2lora.teacher`). Only the hypernetwork trains.

Data flow: every distinct (video, span) of a manifest is decoded **once**, before training, into a frame table
(`datasets.map`, cached as Arrow under `--frame_cache_dir`, so a rerun or another process reuses it). A training
example is one video with up to `--questions_per_video` of its rows: the collator encodes each video once and
answers all its questions through `adapter_index`, so `--per_device_train_batch_size` counts videos.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from configuration_video2lora import Video2LoRAConfig
from modeling_video2lora import Video2LoRAModel
from processing_video2lora import Video2LoRAProcessor
from video2lora.cards import evaluation_fields, find_eval_summaries, render_card, training_data_statistics
from video2lora.checks import UsageError, check_writable_folder
from video2lora.data import ManifestError, question_type, read_manifest, write_text_atomically
from video2lora.video import (
    VideoDecodeError,
    open_with_previous,
    place_segment,
    sample_video,
    segment_fraction,
    segment_spans,
    video_duration,
)

logger = hf_logging.get_logger(__name__)

# docs/design.md §5: AdamW, lr 1e-4, weight decay 0.01, cosine with 3% warm-up (a float `warmup_steps` < 1 is a ratio in
# transformers v5), clipping at 1.0. Applied as parser defaults, so any flag still overrides them.
TRAINING_DEFAULTS = {
    "learning_rate": 1e-4, "weight_decay": 0.01, "lr_scheduler_type": "cosine", "warmup_steps": 0.03,
    "max_grad_norm": 1.0, "do_train": True, "logging_steps": 10, "save_strategy": "steps", "save_steps": 500,
    "remove_unused_columns": False, "prediction_loss_only": True,
    # Every hypernetwork weight is used in every step and the frozen base has no trainable weights, so DDP can skip
    # its extra search for unused parameters.
    "ddp_find_unused_parameters": False,
    # Pinned memory only helps host-to-GPU copies; on CPU-only machines it just warns.
    "dataloader_pin_memory": torch.cuda.is_available(),
}
# Hypernetwork settings `ModelArguments` can override on a fresh hypernetwork.
HYPERNETWORK_FIELDS = ("lora_r", "lora_scale", "target_modules", "use_bias_block", "latent_size", "num_latents",
                       "num_blocks", "num_attention_heads", "mlp_ratio", "input_projection_size",
                       "share_context_kv", "head_type", "use_layer_embedding", "use_context_positions",
                       "use_segment_place", "segment_composition", "instruction")
# Settings that `--init_from` may change: they add no weights or only ones that start as a no-op, so the checkpoint's
# function on single clips is kept.
GROWABLE_FIELDS = ("use_context_positions", "use_segment_place", "segment_composition")


class TrainingSetupError(ValueError):
    """Bad arguments or data, reported on the command line as one line (no traceback)."""
_FRAME_CACHE_VERSION = 1  # bump when the cached frame format changes
# What one context of the frame table is: a video file, its span (seconds; `None`: all of it) and the interleaved part
# (`(part, parts)` of `sample_video(interleave=...)`; `None`: every sampled frame of the span).
FrameKey = tuple[str, tuple[float, float] | None, tuple[int, int] | None]


@dataclass
class ModelArguments:
    """Which base and hypernetwork to train."""

    base_model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub id or folder of the frozen SmolVLM2 base; starts a fresh hypernetwork."})
    init_from: str | None = field(default=None, metadata={
        "help": "A Video2LoRA checkpoint to continue from (its base is loaded by its own reference)."})
    base_model_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base."})
    base_dtype: str = field(default="auto", metadata={
        "help": "dtype of the frozen base weights: auto, float32, bfloat16 or float16. The hypernetwork stays float32.",
        "choices": ["auto", "float32", "bfloat16", "float16"]})
    base_model_reference: str | None = field(default=None, metadata={
        "help": "How the final checkpoint and the Hub upload name the base: a Hub id, or a path starting with ./ or ../ "
                "relative to output_dir. Defaults to the path the base was loaded from."})
    lora_r: int | None = field(default=None, metadata={"help": "Rank of the video-dependent LoRA (default 16)."})
    lora_scale: float | None = field(default=None, metadata={"help": "LoRA multiplier (default 2 * r ** 1.5)."})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "Decoder-layer modules that get a LoRA (default mlp.down_proj)."})
    use_bias_block: bool | None = field(default=None, metadata={"help": "Video-independent rank-r block."})
    latent_size: int | None = field(default=None, metadata={"help": "Perceiver width d (default 512)."})
    num_latents: int | None = field(default=None, metadata={"help": "Perceiver latent queries (default 8)."})
    num_blocks: int | None = field(default=None, metadata={"help": "Perceiver encoder blocks (default 9)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Perceiver attention heads (default 8)."})
    mlp_ratio: int | None = field(default=None, metadata={"help": "Perceiver MLP width / d (default 4)."})
    input_projection_size: int | None = field(default=None, metadata={"help": "Input MLP width (default: base's I)."})
    share_context_kv: bool | None = field(default=None, metadata={
        "help": "One context key/value projection per layer, shared by all encoder blocks (cheaper generation)."})
    head_type: str | None = field(default=None, metadata={"help": "per_layer (published) or shared."})
    use_layer_embedding: bool | None = field(default=None, metadata={"help": "Learned per-layer latent embedding."})
    use_context_positions: bool | None = field(default=None, metadata={
        "help": "Sinusoidal context positions through a zero-initialized projection; may be added with --init_from."})
    use_segment_place: bool | None = field(default=None, metadata={
        "help": "Tell the perceiver where each segment lies in its video, through a zero-initialized projection; may "
                "be added with --init_from."})
    segment_composition: str | None = field(default=None, metadata={
        "help": "How a video's segments become one adapter: concat (rank space) or latents (one decode over every "
                "segment's latents); may be changed with --init_from."})
    instruction: str | None = field(default=None, metadata={"help": "Text after the frames when reading a video."})
    dry_run: bool = field(default=False, metadata={
        "help": "Build the full-size base and hypernetwork on the meta device, print their parameters, the optimizer "
                "state and an estimate of peak GPU memory per device (DDP and FSDP over --dry_run_num_devices, with "
                "and without --gradient_checkpointing) for this batch and frame count, run one real training step of "
                "the same architecture at reduced size on CPU with random weights, and exit. Needs no data and "
                "downloads nothing: the base's config comes from its folder, the Hub cache, or the SmolVLM2 "
                "architectures this repository knows."})
    dry_run_num_devices: int = field(default=8, metadata={"help": "Devices the --dry_run estimate divides over."})
    dry_run_text_tokens: int = field(default=96, metadata={
        "help": "--dry_run: tokens per question row of the student pass (prompt + answer, padded)."})
    dry_run_answer_tokens: int = field(default=64, metadata={
        "help": "--dry_run: answer tokens per row (the loss's tokens; the teacher answers in at most 64)."})

    def __post_init__(self):
        if self.dry_run and self.dry_run_answer_tokens > self.dry_run_text_tokens:
            raise TrainingSetupError("--dry_run_answer_tokens cannot exceed --dry_run_text_tokens.")
        if self.dry_run and min(self.dry_run_num_devices, self.dry_run_answer_tokens) < 1:
            raise TrainingSetupError("--dry_run_num_devices and --dry_run_answer_tokens must be >= 1.")
        if (self.base_model_name_or_path is None) == (self.init_from is None):
            raise TrainingSetupError("Give exactly one of --base_model_name_or_path (fresh hypernetwork) and --init_from "
                             "(continue a Video2LoRA checkpoint).")

    def hypernetwork_overrides(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HYPERNETWORK_FIELDS if getattr(self, name) is not None}


@dataclass
class DataArguments:
    """Manifests and how videos and questions are batched."""

    train_manifest: str | None = field(default=None, metadata={
        "help": "JSONL manifest with teacher targets (python -m video2lora.teacher); required to train."})
    eval_manifest: str | None = field(default=None, metadata={"help": "Optional JSONL manifest for eval_loss."})
    data_root: str | None = field(default=None, metadata={
        "help": "Root of relative video paths (default: each manifest's folder, or $VIDEO2LORA_DATA_ROOT)."})
    num_frames: int | None = field(default=None, metadata={
        "help": "Most frames sampled per video (the processor's video_sampling max_frames; default: the base's or "
                "the checkpoint's); saved with the checkpoint's processor. Resolution is always the base's."})
    questions_per_video: int = field(default=8, metadata={
        "help": "Rows answered per video in one example; each video is encoded once for all of them."})
    kl_weight: float = field(default=0.0, metadata={
        "help": "Weight of the KL to the teacher's cached top-k log-probs (`teacher_logprobs`); 0 disables it. "
                "Stored as the config's `kl_weight`, which the model's loss reads."})
    question_type_weights: str | None = field(default=None, metadata={
        "help": "Loss weight per question type, e.g. `order=4,direction=2`: each answer token of such a row counts "
                "that many times (matched against `metadata.question_type`, else `task_type`); other rows weigh 1. "
                "Rare, hard types (order questions are 3.6%% of a plain world sample's rows) otherwise get little of the "
                "gradient."})
    segment_overlap: int = field(default=0, metadata={
        "help": "Each segment after the first of a `segments: k` row also reads the previous segment's last N sampled "
                "frames, as `internalize(segment_overlap=N)` does; 0 reads the segments apart."})
    decode_in_workers: bool = field(default=False, metadata={
        "help": "Decode each example's video when the DataLoader asks for it (in --dataloader_num_workers processes on "
                "every rank) instead of once into a cached table: no disk for frames, no process waiting on another, "
                "for corpora too large to cache. Videos are checked (demuxed, not decoded) up front."})
    frame_cache_dir: str | None = field(default=None, metadata={
        "help": "Where decoded frames are cached (default: the datasets cache). Shared by reruns and processes."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes decoding videos."})
    max_train_videos: int | None = field(default=None, metadata={"help": "Use only the first N videos (debugging)."})
    max_eval_videos: int | None = field(default=None, metadata={"help": "Use only the first N eval videos."})

    def __post_init__(self):
        if self.questions_per_video < 1:
            raise TrainingSetupError(f"--questions_per_video must be >= 1, got {self.questions_per_video}.")
        if self.kl_weight < 0:
            raise TrainingSetupError(f"--kl_weight must be >= 0, got {self.kl_weight}.")
        if self.segment_overlap < 0:
            raise TrainingSetupError(f"--segment_overlap must be >= 0, got {self.segment_overlap}.")
        self.type_weights = parse_question_type_weights(self.question_type_weights)


def parse_question_type_weights(text: str | None) -> dict[str, float]:
    """`"order=4,direction=2"` -> `{"order": 4.0, "direction": 2.0}`; `None` or `""` -> `{}`."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not name.strip() or not math.isfinite(weight) or weight <= 0:
            raise TrainingSetupError(f"--question_type_weights: {item!r} is not TYPE=WEIGHT with a positive WEIGHT "
                                     "(e.g. order=4,direction=2).")
        weights[name.strip()] = weight
    return weights


# ---- data ------------------------------------------------------------------------------------------------------------


def _video_key(row: dict) -> tuple[str, tuple[float, float] | None]:
    span = row.get("span")
    return row["video_path"], (float(span[0]), float(span[1])) if span else None


def _context_keys(row: dict, duration_of: Callable[[str], float]) -> tuple[FrameKey, ...]:
    """
    The frame-table keys the student reads for `row`: its video (or span) once, or, for a row with `segments: k`,
    the k segments `Video2LoRAModel.internalize(segments=k, segment_layout=...)` would read (the same
    `segment_spans` over the same duration, or the same interleaved parts of the whole), whose adapters the model
    composes. A video whose duration cannot be read keeps its one key, so decoding reports it and its rows are
    skipped like any unreadable video's.
    """
    path, span = _video_key(row)
    key = (path, span, None)
    segments = row.get("segments", 1)
    if segments == 1:
        return (key,)
    try:
        total = duration_of(path)
    except (VideoDecodeError, OSError):
        return (key,)
    begin, finish = (span[0], min(span[1], total)) if span else (0.0, total)
    if not finish > begin:
        return (key,)
    if row.get("segment_layout", "contiguous") == "interleaved":
        return tuple((path, (begin, finish), (part, segments)) for part in range(segments))
    return tuple((path, part, None) for part in segment_spans(begin, finish, segments=segments))


def _frame_cache_file(keys: list, sampling: dict, cache_dir: str | None) -> str:
    """A cache file named by everything the decoded frames depend on, files' sizes and times included."""
    stats = []
    for path, span, interleave in keys:
        stat = os.stat(path) if os.path.exists(path) else None
        # An interleaved part joins only when set, so the cache files of tables made before it still match.
        stats.append([path, span, stat.st_size if stat else None, stat.st_mtime_ns if stat else None]
                     + ([list(interleave)] if interleave else []))
    digest = hashlib.sha256(json.dumps([_FRAME_CACHE_VERSION, sampling, stats], sort_keys=True).encode()).hexdigest()
    directory = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "video2lora_frames"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"frames-{digest[:20]}.arrow")


def decode_videos(keys: list[FrameKey], *, sampling: dict[str, Any],
                  cache_dir: str | None = None, num_proc: int | None = None, desc: str = "decoding videos"
                  ) -> datasets.Dataset:
    """
    Decode and sample every video once, into an Arrow table (memory-mapped, cached on disk).

    Args:
        keys: `(absolute video path, span or None, interleaved part or None)` per video ([`FrameKey`]).
        sampling: keyword arguments of `sample_video`, the one sampler (`Video2LoRAProcessor.sampling_kwargs()`).
        cache_dir: folder of the cache file; defaults to the datasets cache.
        num_proc: decoding processes.

    Returns:
        `datasets.Dataset` with, per video, `frames` (raw uint8 bytes), `shape` (`[N, H, W, 3]`), `timestamps`,
        `duration` and `error` (`None`, or why the video could not be read).
    """
    table = datasets.Dataset.from_dict({
        "video_path": [path for path, _, _ in keys],
        "span": [list(span) if span else None for _, span, _ in keys],
        "interleave": [list(interleave) if interleave else None for _, _, interleave in keys],
    })

    def decode(example: dict) -> dict:
        span, interleave = example["span"], example["interleave"]
        try:
            video = sample_video(example["video_path"], start=span[0] if span else None,
                                 end=span[1] if span else None, interleave=tuple(interleave) if interleave else None,
                                 **sampling)
        except (VideoDecodeError, OSError, ValueError) as error:
            return {"frames": b"", "shape": [], "timestamps": [], "duration": 0.0, "error": str(error)}
        return {"frames": video.frames.tobytes(), "shape": list(video.frames.shape),
                "timestamps": [float(t) for t in video.timestamps], "duration": float(video.duration), "error": None}

    list_feature = getattr(datasets, "List", None) or datasets.Sequence  # `List` replaced `Sequence` in datasets 4
    features = datasets.Features({
        "video_path": datasets.Value("string"), "span": list_feature(datasets.Value("float64")),
        "interleave": list_feature(datasets.Value("int64")),
        "frames": datasets.Value("binary"), "shape": list_feature(datasets.Value("int32")),
        "timestamps": list_feature(datasets.Value("float64")), "duration": datasets.Value("float64"),
        "error": datasets.Value("string"),
    })
    return table.map(decode, features=features, num_proc=num_proc, desc=desc, writer_batch_size=64,
                     cache_file_name=_frame_cache_file(keys, sampling, cache_dir))


class LiveFrames:
    """
    The frame table's interface (`frames[i]` is a record like `decode_videos`'s rows), decoding video `i` when it is
    asked for: the DataLoader's workers decode while the model trains, on every rank, with nothing cached.

    Args:
        keys: `(absolute video path, span or None, interleaved part or None)` per video ([`FrameKey`]).
        sampling: keyword arguments of `sample_video`.
    """

    def __init__(self, keys: list[FrameKey], sampling: dict[str, Any]):
        self.keys, self.sampling = keys, sampling

    def check(self) -> list[str | None]:
        """Per video, why it cannot be read (from its container, without decoding), or `None`."""
        problems = []
        for path, _, _ in tqdm(self.keys, desc="checking videos", unit="video", disable=len(self.keys) < 100):
            try:
                video_duration(path)
            except (VideoDecodeError, OSError) as error:
                problems.append(str(error))
            else:
                problems.append(None)
        return problems

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, span, interleave = self.keys[index]
        video = sample_video(path, start=span[0] if span else None, end=span[1] if span else None,
                             interleave=interleave, **self.sampling)
        return {"frames": video.frames.tobytes(), "shape": list(video.frames.shape),
                "timestamps": [float(t) for t in video.timestamps], "duration": float(video.duration)}


class VideoQuestionDataset(torch.utils.data.Dataset):
    """
    One example per (video, group of up to `questions_per_video` of its rows); frames come from the decoded table.
    Rows with `segments: k` read their video as k segments (`segments` in the example, composed by the model;
    interleaved parts with `segment_layout: interleaved`) and group apart from the same video's other rows.

    Args:
        rows: valid manifest rows (absolute `video_path`).
        frames: the table from [`decode_videos`] over `keys`.
        keys: `(video path, span)` per table row.
        row_keys: per row, the keys of what the student reads ([`_context_keys`]).
        questions_per_video: rows per example.
        seed: fixes which rows of a video share an example.
        type_weights: loss weight per question type (`metadata.question_type`, else `task_type`); default 1.
        segment_overlap: frames each segment after the first takes over from the one before.
    """

    def __init__(self, rows: list[dict], frames: datasets.Dataset, keys: list, row_keys: list[tuple],
                 questions_per_video: int, seed: int, type_weights: dict[str, float] | None = None,
                 segment_overlap: int = 0):
        self.frames, self.keys, self.segment_overlap = frames, keys, segment_overlap
        self.type_weights = type_weights or {}
        index_of_key = {key: i for i, key in enumerate(keys)}
        by_video: dict[tuple[int, ...], list[dict]] = {}
        for row, contexts in zip(rows, row_keys, strict=True):
            by_video.setdefault(tuple(index_of_key[key] for key in contexts), []).append(row)
        rng = random.Random(seed)
        self.examples: list[tuple[tuple[int, ...], list[dict]]] = []
        for video_indices, video_rows in by_video.items():
            video_rows = video_rows[:]
            rng.shuffle(video_rows)  # mixes captions and questions within an example
            for start in range(0, len(video_rows), questions_per_video):
                self.examples.append((video_indices, video_rows[start:start + questions_per_video]))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_indices, rows = self.examples[index]
        contexts = [self._context(i) for i in video_indices]
        if len(contexts) > 1:  # segments keep their place in the video, as `internalize(segments=k)` gives them
            spans = [self.keys[i][1] for i in video_indices]
            whole = (spans[0][0], spans[-1][1])
            for context, span in zip(contexts, spans, strict=True):
                context["timestamps"], context["duration"] = place_segment(context["timestamps"], span[0], whole)
                context["place"] = segment_fraction(span, whole)
            interleaved = self.keys[video_indices[0]][2] is not None  # each part covers the whole: none to carry
            if self.segment_overlap and not interleaved:  # each opens with the previous segment's last frames
                own = [(c["frames"], c["timestamps"]) for c in contexts]
                for context, (frames, timestamps) in zip(contexts[1:], own, strict=False):
                    context["frames"], context["timestamps"] = open_with_previous(
                        context["frames"], context["timestamps"], frames, timestamps, self.segment_overlap)
        example = contexts[0] if len(contexts) == 1 else {"segments": contexts}
        return {**example, "questions": [{"prompt": row["prompt"], "target": row["target_text"],
                                          "teacher": row.get("teacher_logprobs"), "weight": self._weight(row)}
                                         for row in rows]}

    def _context(self, video_index: int) -> dict[str, Any]:
        record = self.frames[video_index]
        frames = np.frombuffer(record["frames"], dtype=np.uint8).reshape(record["shape"])
        return {"frames": frames, "timestamps": record["timestamps"], "duration": record["duration"]}

    def _weight(self, row: dict) -> float:
        return self.type_weights.get(question_type(row), self.type_weights.get(row["task_type"], 1.0))


def build_dataset(manifest: str, data_args: DataArguments, *, sampling: dict[str, Any], seed: int,
                  max_videos: int | None, training_args: TrainingArguments) -> VideoQuestionDataset:
    """Read a manifest (bad rows are logged and skipped), decode its videos once, group its rows by video."""
    report = read_manifest(manifest, data_root=data_args.data_root, strict=False, require_target=True)
    for line, reason in report.bad_rows:
        logger.warning(f"{manifest}:{line}: skipped: {reason}")
    if not report.rows:
        raise TrainingSetupError(f"{manifest}: no usable rows ({len(report.bad_rows)} bad); see the warnings above.")
    videos = list(dict.fromkeys(_video_key(row) for row in report.rows))
    if max_videos is not None:
        videos = set(videos[:max_videos])
        report.rows[:] = [row for row in report.rows if _video_key(row) in videos]
    duration_of = functools.cache(video_duration)  # one probe per file, however many rows and segments it has
    row_keys = [_context_keys(row, duration_of) for row in report.rows]
    keys = list(dict.fromkeys(key for contexts in row_keys for key in contexts))
    if data_args.decode_in_workers:
        frames = LiveFrames(keys, sampling)
        problems = frames.check()
    else:
        # The main process decodes and writes the cache; the others then read the same cache file.
        with training_args.main_process_first(desc=f"decoding the videos of {manifest}"):
            frames = decode_videos(keys, sampling=sampling, cache_dir=data_args.frame_cache_dir,
                                   num_proc=data_args.preprocessing_num_workers, desc=f"decoding {Path(manifest).name}")
        problems = frames["error"]
    errors = [(key, error) for key, error in zip(keys, problems, strict=True) if error]
    for (path, _, _), error in errors:
        logger.warning(f"{manifest}: skipping every row of video {path}: {error}")
    good = {key for key, error in zip(keys, problems, strict=True) if not error}
    kept = [(row, contexts) for row, contexts in zip(report.rows, row_keys, strict=True) if good.issuperset(contexts)]
    rows = [row for row, _ in kept]
    if not rows:
        raise TrainingSetupError(f"{manifest}: none of its {len(keys)} videos could be decoded; see the warnings above.")
    dataset = VideoQuestionDataset(rows, frames, keys, [contexts for _, contexts in kept],
                                   data_args.questions_per_video, seed, type_weights=data_args.type_weights,
                                   segment_overlap=data_args.segment_overlap)
    logger.info(f"{manifest}: {len(rows)} rows over {len({row['video_path'] for row in rows})} videos -> "
                f"{len(dataset)} examples "
                f"({len(report.bad_rows)} bad rows, {len(errors)} unreadable videos).")
    return dataset


@dataclass
class Video2LoRACollator:
    """
    Builds the context batch (each video once, with the instruction) and the student batch (prompt + answer, no
    video, one row per question) with `adapter_index` mapping rows to videos.

    Labels are -100 on the prompt and padding. A row whose `teacher_logprobs["token_ids"]` decode to its target is
    trained on exactly those tokens (ending with the teacher's end-of-answer token when it stopped by itself); any
    other target is tokenized and followed by the end-of-utterance token, so the student learns where to stop. With
    `with_teacher`, the former rows also get the teacher's top-k distribution at each answer position (`teacher_mask`
    marks them). Questions that carry a `weight` (see `--question_type_weights`) add `answer_weights`, one per row.
    A video given as `segments` (rows with `segments: k`) is k contexts, and `context_video_index` tells the model
    which to compose into that video's adapter.

    Position 0 is always prompt, so never labelled: Trainer counts `labels != -100` unshifted for this model (it has
    no causal-LM `loss_type`), and that count then equals the number of tokens the loss predicts (`labels[:, 1:]`),
    so `num_items_in_batch` is exact.

    Args:
        processor: the base's `Video2LoRAProcessor`.
        instruction: the config's instruction, placed after the frames.
        with_teacher: also build the KL tensors.
    """

    processor: Video2LoRAProcessor
    instruction: str
    with_teacher: bool = False

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        end = getattr(self.processor, "end_of_utterance_token", None)
        self.eos_token_id = tokenizer.convert_tokens_to_ids(end) if end else tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id

    def _student_row(self, prompt: str, answer: str, teacher: dict | None) -> tuple[list[int], int, bool]:
        """`(token ids, prompt length, whether the answer tokens are the teacher's own)` for one question."""
        tokenizer = self.processor.tokenizer
        prompt_ids = tokenizer(self.processor.chat_prompt(prompt, with_video=False))["input_ids"]
        token_ids = (teacher or {}).get("token_ids")
        if token_ids and tokenizer.decode(token_ids, skip_special_tokens=True).strip() == answer.strip():
            # The teacher's exact tokens (with its end-of-answer token when it stopped by itself): re-tokenizing the
            # decoded text can split differently, and the student should continue "Assistant:" as the teacher did.
            return prompt_ids + list(token_ids), len(prompt_ids), True
        # A plain text target: tokenized after the space `chat_prompt(answer=...)` puts there, then end-of-answer.
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        return prompt_ids + answer_ids + [self.eos_token_id], len(prompt_ids), False

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        # A feature is one video: its frames, or `segments`, one frame record per segment, composed by the model.
        contexts = [segment for f in features for segment in f.get("segments", [f])]
        context = self.processor.encode_videos(
            [c["frames"] for c in contexts], self.instruction, timestamps=[c["timestamps"] for c in contexts],
            durations=[c["duration"] for c in contexts],
        )
        rows, prompt_lengths, index, teachers, weights = [], [], [], [], []
        for video, feature in enumerate(features):
            for question in feature["questions"]:
                weights.append(question.get("weight"))
                teacher = question.get("teacher")
                ids, prompt_length, teacher_tokens = self._student_row(question["prompt"], question["target"],
                                                                       teacher)
                rows.append(ids)
                prompt_lengths.append(prompt_length)
                index.append(video)
                # The teacher's distributions only apply where the student's answer tokens are the teacher's.
                teachers.append(teacher if teacher_tokens else None)
        length = max(map(len, rows))
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (ids, prompt_length) in enumerate(zip(rows, prompt_lengths, strict=True)):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention_mask[i, :len(ids)] = 1
            # prompt_length >= 1 (the chat header), so labels[:, 0] stays -100; see the class docstring.
            labels[i, prompt_length:len(ids)] = torch.tensor(ids[prompt_length:])
        batch = {
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "context_input_ids": context["input_ids"], "context_attention_mask": context["attention_mask"],
            "pixel_values": context["pixel_values"], "pixel_attention_mask": context["pixel_attention_mask"],
            "adapter_index": torch.tensor(index, dtype=torch.long),
        }
        if len(contexts) > len(features):
            batch["context_video_index"] = torch.tensor(
                [video for video, f in enumerate(features) for _ in f.get("segments", [f])], dtype=torch.long)
            batch["context_segment_place"] = torch.tensor([c.get("place", (0.0, 1.0)) for c in contexts])
        if any(weight not in (None, 1.0) for weight in weights):
            batch["answer_weights"] = torch.tensor([1.0 if w is None else w for w in weights])
        if self.with_teacher:
            batch.update(self._teacher_tensors(rows, prompt_lengths, teachers, length))
        return batch

    @staticmethod
    def _teacher_tensors(rows, prompt_lengths, teachers, length) -> dict[str, torch.Tensor]:
        top_k = max((len(t["top_ids"][0]) for t in teachers if t and t.get("top_ids")), default=1)
        top_ids = torch.zeros((len(rows), length, top_k), dtype=torch.long)
        top_logprobs = torch.full((len(rows), length, top_k), -math.inf)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, (ids, prompt_length, teacher) in enumerate(zip(rows, prompt_lengths, teachers, strict=True)):
            if not teacher:
                continue
            for step in range(min(len(ids) - prompt_length, len(teacher["top_ids"]))):
                k = len(teacher["top_ids"][step])
                top_ids[i, prompt_length + step, :k] = torch.tensor(teacher["top_ids"][step])
                top_logprobs[i, prompt_length + step, :k] = torch.tensor(teacher["top_logprobs"][step])
                mask[i, prompt_length + step] = True
        return {"teacher_top_ids": top_ids, "teacher_top_logprobs": top_logprobs, "teacher_mask": mask}


# ---- trainer ---------------------------------------------------------------------------------------------------------


class Video2LoRATrainer(Trainer):
    """
    `Trainer` for the hypernetwork: an optimizer over the hypernetwork only, and a final save that names the base by
    `base_model_reference`.

    The loss is the model's own ([`modeling_video2lora.student_loss`], through `Video2LoRAModel.forward`), taken by
    Trainer's default `compute_loss`. The model accepts `num_items_in_batch`, so Trainer counts the answer tokens
    (`labels != -100`) of all micro-batches of an optimizer step, summed over processes with
    `average_tokens_across_devices`, and the forward divides its summed loss by that count: accumulated gradients
    equal those of one big batch. Trainer then uses the loss as scaled for accumulation, and with
    `average_tokens_across_devices` multiplies it by the number of processes to undo DDP's mean of the gradients.

    Args:
        base_model_reference (`str`, *optional*): how `save_model` (the final checkpoint) names the base.
    """

    def __init__(self, *args, base_model_reference: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_model_reference = base_model_reference
        if self.is_fsdp_enabled:
            # accelerate's FSDP2 preparation gives `model.get_input_embeddings()` a unit of its own. This model's input
            # embeddings are the frozen base's, which `configs/accelerate_fsdp.yaml` leaves out of FSDP (ignored and
            # replicated), and `Video2LoRAModel` does not define the method (PreTrainedModel's raises).
            self.model.get_input_embeddings = lambda: None

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The default AdamW and weight-decay grouping, over the hypernetwork's parameters only."""
        hypernetwork = self.accelerator.unwrap_model(self.model).hypernetwork
        return super().create_optimizer(hypernetwork)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Trainer's save, with the model's own class: FSDP2 swaps it for a subclass defined in torch, whose module
        `save_pretrained` would otherwise copy as the checkpoint's code and name in `auto_map`."""
        with _own_class(self.model):
            super()._save(output_dir, state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the hypernetwork; the final (non-internal) save names the base by `base_model_reference`."""
        if _internal_call or self.base_model_reference is None:
            return super().save_model(output_dir, _internal_call)
        config = self.accelerator.unwrap_model(self.model).config
        original = config.base_model_name_or_path
        config.base_model_name_or_path = self.base_model_reference
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            config.base_model_name_or_path = original


@contextlib.contextmanager
def _own_class(model: torch.nn.Module):
    """Within the block, `model` has its class from before `fully_shard` (FSDP2 swaps in `FSDP<Class>`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2: nothing was swapped
        yield
        return
    swapped = type(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = next(cls for cls in swapped.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = swapped


# ---- model, Hub folder -----------------------------------------------------------------------------------------------


def build_model(model_args: ModelArguments, data_args: DataArguments) -> Video2LoRAModel:
    """A fresh hypernetwork on the base, or a checkpoint to continue; frame settings go into the config."""
    dtype = model_args.base_dtype if model_args.base_dtype == "auto" else getattr(torch, model_args.base_dtype)
    if model_args.init_from is not None:
        overrides = model_args.hypernetwork_overrides()
        growth = {name: overrides.pop(name) for name in GROWABLE_FIELDS if overrides.get(name)}
        if overrides:
            raise TrainingSetupError(f"--init_from continues a checkpoint with its own architecture; drop {sorted(overrides)}.")
        model = Video2LoRAModel.from_pretrained(model_args.init_from, dtype=dtype, **growth)
    else:
        base = model_args.base_model_name_or_path
        if os.path.isdir(base):
            # Checkpoints live elsewhere; a relative path would resolve against them (or the wrong cwd) when loaded.
            base = os.path.abspath(base)
        model = Video2LoRAModel.from_base(base, revision=model_args.base_model_revision, dtype=dtype,
                                          **model_args.hypernetwork_overrides())
    if model.processor is None:
        raise TrainingSetupError("The base has no processor files (tokenizer and image processor); save them beside it.")
    if data_args.num_frames is not None:
        model.processor.update_video_sampling(max_frames=data_args.num_frames)
    model.hypernetwork.float()  # fp32 master weights whatever the base's dtype (bf16 runs under autocast)
    # The model's forward computes the loss; the flag always wins over a continued checkpoint's recorded weight.
    model.config.kl_weight = data_args.kl_weight
    return model


def _hub_id_or_none(reference: str | None) -> str | None:
    """`reference` when it looks like a Hub repo id rather than a local path."""
    if not reference or reference.startswith((".", "/", "~")) or os.path.exists(reference):
        return None
    return reference if reference.count("/") <= 1 else None


TRAINING_RECORD_NAME = "training_record.json"


def _enum_value(value: Any) -> Any:
    """`TrainingArguments` holds some settings as enums (`OptimizerNames.ADAMW_TORCH`); the card shows their value."""
    return getattr(value, "value", value)


def training_record(model: Video2LoRAModel, data_args: DataArguments, training_args: TrainingArguments,
                    rows: Sequence[dict[str, Any]], *, steps: int, metrics: dict[str, float],
                    base_model_reference: str | None = None, init_from: str | None = None) -> dict[str, Any]:
    """
    What a run trained, as its card states it: the settings that ran (`recipe`), the rows it read (`data`,
    [`video2lora.cards.training_data_statistics`]) and its final metrics. Files are named by their base name only,
    so no machine path is shipped.
    """
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    videos_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size)
    weights = parse_question_type_weights(data_args.question_type_weights)
    base = base_model_reference or model.config.base_model_name_or_path
    recipe = {
        "base": base if _hub_id_or_none(base) else Path(base).name,
        "base dtype": str(model.base_model.dtype).removeprefix("torch."),
        "continued from": Path(init_from).name if init_from else None,
        "frames per video / frame size": f"{model.processor.video_sampling['max_frames']} / "
                                         f"{model.processor.frame_size} px",
        "training manifest": Path(data_args.train_manifest).name if data_args.train_manifest else None,
        "questions per video": data_args.questions_per_video,
        "loss": "cross-entropy on the teacher's answers" + (f" + {data_args.kl_weight:g} x KL to its top-k"
                                                             if data_args.kl_weight else ""),
        "question-type weights": ", ".join(f"{k}={v:g}" for k, v in weights.items()) or None,
        "optimizer": f"{_enum_value(training_args.optim)}, lr {training_args.learning_rate:g}, weight decay "
                     f"{training_args.weight_decay:g}",
        "schedule": f"{_enum_value(training_args.lr_scheduler_type)}, warm-up {training_args.warmup_steps:g}",
        "gradient clipping": training_args.max_grad_norm,
        "precision": precision,
        "activation checkpointing": "on" if training_args.activation_checkpointing else None,
        "videos per step": f"{videos_per_step} = {training_args.world_size} x "
                           f"{training_args.per_device_train_batch_size} x {training_args.gradient_accumulation_steps}"
                           " (processes x videos per device x accumulation)",
        "optimizer steps": steps,
        "seed": training_args.seed,
    }
    recipe = {name: str(value) for name, value in recipe.items() if value is not None}
    return {"recipe": recipe, "data": training_data_statistics(rows),
            "metrics": {name: value for name, value in metrics.items() if isinstance(value, (int, float))}}


def prepare_hub_folder(model: Video2LoRAModel, output_dir: str | os.PathLike, *, repo_id: str | None = None,
                       base_model_reference: str | None = None, dataset_names: Sequence[str] | None = None,
                       license: str = "apache-2.0", training_summary: str | None = None,
                       record: dict[str, Any] | None = None,
                       evaluations_from: str | os.PathLike | None = None) -> Path:
    """
    Write exactly the folder a Hub upload sends: hypernetwork weights (safetensors, no base weights), config with
    `auto_map`, the custom code files, the processor files and a model card from `video2lora/hub_cards/hypernetwork.md`.

    The card says what was trained and on what (`record`, also written beside it as `training_record.json`), the
    `video2lora eval` results found in `evaluations_from` and its sub-folders, and lists what no evaluation there
    covers under "Not measured".

    Args:
        model: the trained model.
        output_dir: the folder to write; must be empty or missing.
        repo_id: the Hub repo, used in the card's usage snippet.
        base_model_reference: how the uploaded config names the base (a Hub id); defaults to the model's own.
        dataset_names: Hub datasets for the card's `datasets` metadata.
        license: the card's license.
        training_summary: free text (e.g. final losses) added to the card.
        record: [`training_record`] of the run, if known.
        evaluations_from: a folder with `video2lora eval` outputs (`summary.json` in it or one level below).

    Returns:
        `Path` of the folder.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TrainingSetupError(f"The Hub folder '{output_dir}' is not empty; give an empty or new folder.")
    config = model.config
    reference = base_model_reference or config.base_model_name_or_path
    hub_base = _hub_id_or_none(reference)
    if hub_base is None:
        logger.warning(f"The base '{reference}' is not a Hub id: the uploaded model can only load it where that path "
                       "exists. Pass --base_model_reference with the base's Hub id.")
    original = config.base_model_name_or_path
    config.base_model_name_or_path = reference
    try:
        model.save_pretrained(output_dir)
    finally:
        config.base_model_name_or_path = original
    repo_id = repo_id or output_dir.name
    num_parameters = sum(p.numel() for p in model.hypernetwork.parameters())
    data = record["data"] if record else None
    # One row per question type, and per task type that has none (captions, summaries).
    data_kinds = {} if data is None else {**data["question_types"], **{
        task: count for task, count in data["task_types"].items()
        if not any(kind.startswith(f"{task}/") for kind in data["question_types"])}}
    card = render_card(
        "hypernetwork", library_name="transformers", base_model=hub_base, pipeline_tag="video-text-to-text",
        tags=["video2lora", "hypernetwork", "lora", "smolvlm", "video"], license=license,
        datasets=list(dataset_names) if dataset_names else None, model_name=repo_id.split("/")[-1],
        repo_id=repo_id, base_model_reference=reference,
        base_model_url=f"https://huggingface.co/{hub_base}" if hub_base else reference,
        num_parameters=f"{num_parameters / 1e6:.1f}M" if num_parameters >= 1e5 else f"{num_parameters:,}",
        lora_r=config.lora_r, effective_rank=config.effective_rank, target_modules=", ".join(config.target_modules),
        latent_size=config.latent_size, num_latents=config.num_latents, num_blocks=config.num_blocks,
        head_type=config.head_type, segments=(
            "composed in latent space" if config.segment_composition == "latents" else "composed in rank space")
        + (", each told its place" if config.use_segment_place else ""),
        num_frames=model.processor.video_sampling["max_frames"],
        frame_size=model.processor.frame_size,
        kl_weight=None, training_summary=training_summary,
        recipe=record["recipe"] if record else None, data=data, data_kinds=data_kinds,
        **evaluation_fields(find_eval_summaries(evaluations_from) if evaluations_from else []),
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    if record:
        (output_dir / TRAINING_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return output_dir


def _hub_repo_id(training_args: TrainingArguments) -> str:
    return training_args.hub_model_id or Path(training_args.output_dir).name


def check_hub_access(training_args: TrainingArguments) -> str:
    """
    Whether this run's upload can succeed, checked before any model loads, with read-only calls: the Hub is reachable
    and online, the token is valid (`whoami`), it may write (a `write` token, or a fine-grained one with
    `repo.write` on the repo or its namespace), its user may write to the repo's namespace (their own, or an
    organization where their role is not `read`), and the repo is found or will be created (`repo_info`).

    Nothing is created: the repo is made by the upload at the end, as before.

    Returns:
        `str`: one line saying where the upload will go.

    Raises:
        [`TrainingSetupError`]: one line saying what is wrong and what to do.
    """
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    repo_id = _hub_repo_id(training_args)
    endpoint = huggingface_hub.constants.ENDPOINT
    prefix = f"--push_to_hub {repo_id}:"
    offline = (f"{prefix} the Hub is offline (HF_HUB_OFFLINE=1), so the upload after training would fail; unset "
               "HF_HUB_OFFLINE, or train without --push_to_hub and push the run later with --init_from OUTPUT_DIR "
               "--do_train false --push_to_hub.")
    if huggingface_hub.is_offline_mode():
        raise TrainingSetupError(offline)
    api = HfApi(endpoint=endpoint, token=training_args.hub_token)

    def failure(error: Exception, what: str) -> TrainingSetupError:
        if isinstance(error, OfflineModeIsEnabled):
            return TrainingSetupError(offline)
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            status = error.response.status_code
            if status == 401:
                return TrainingSetupError(f"{prefix} {endpoint} refused the token (401 Unauthorized): it is invalid "
                                          "or expired; pass a valid --hub_token or run `hf auth login`.")
            return TrainingSetupError(f"{prefix} {what} failed at {endpoint} (HTTP {status}).")
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        return TrainingSetupError(f"{prefix} cannot reach the Hub at {endpoint} ({reason}); check the network or "
                                  "HF_ENDPOINT, or train without --push_to_hub.")

    try:
        identity = api.whoami()
    except LocalTokenNotFoundError:
        raise TrainingSetupError(f"{prefix} no Hugging Face token; pass --hub_token, set HF_TOKEN or run "
                                 "`hf auth login` with a token that can write.") from None
    except Exception as error:  # the client raises its own, httpx's and OS errors for an unreachable Hub
        raise failure(error, "whoami") from None
    user = identity.get("name")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    token = identity.get("auth", {}).get("accessToken", {})
    role = token.get("role")
    if role == "read":
        raise TrainingSetupError(f"{prefix} the token is read-only; use a token with write access (--hub_token).")
    if role == "fineGrained":
        scoped = token.get("fineGrained", {}).get("scoped", [])
        full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
        if not any(entry.get("entity", {}).get("name") in (namespace, full_id)
                   and "repo.write" in entry.get("permissions", []) for entry in scoped):
            raise TrainingSetupError(f"{prefix} the fine-grained token has no repo.write permission on {namespace} or "
                                     f"{full_id}; add it or use another --hub_token.")
    if namespace != user:
        roles = {org.get("name"): org.get("roleInOrg") for org in identity.get("orgs", [])}
        if namespace not in roles:
            raise TrainingSetupError(f"{prefix} {user} is not a member of '{namespace}'; choose a --hub_model_id in "
                                     f"your namespace ({user}/...) or an organization you belong to.")
        if roles[namespace] == "read":
            raise TrainingSetupError(f"{prefix} {user} has the read role in '{namespace}' and cannot write there.")
    try:
        api.repo_info(repo_id if "/" in repo_id else f"{user}/{repo_id}")
        state = "exists"
    except RepositoryNotFoundError:
        state = "will be created"
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 404:
            raise failure(error, "repo_info") from None
        state = "will be created"
    except Exception as error:
        raise failure(error, "repo_info") from None
    return (f"the Hub at {endpoint} accepts uploads from {user} ({role or 'unknown'} token); the repo {repo_id} "
            f"{state}.")


def push_hypernetwork_to_hub(model: Video2LoRAModel, training_args: TrainingArguments, *,
                             base_model_reference: str | None, dataset_names: Sequence[str] | None,
                             training_summary: str | None = None, record: dict[str, Any] | None = None,
                             evaluations_from: str | os.PathLike | None = None) -> str:
    """Prepare the Hub folder under `output_dir/hub` ([`prepare_hub_folder`]) and upload it with
    `huggingface_hub.upload_folder`."""
    from huggingface_hub import HfApi

    repo_id = _hub_repo_id(training_args)
    folder = Path(training_args.output_dir) / "hub"
    if folder.exists():
        shutil.rmtree(folder)
    prepare_hub_folder(model, folder, repo_id=repo_id, base_model_reference=base_model_reference,
                       dataset_names=dataset_names, training_summary=training_summary, record=record,
                       evaluations_from=evaluations_from)
    api = HfApi(token=training_args.hub_token)
    repo_id = api.create_repo(repo_id, private=training_args.hub_private_repo, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload Video2LoRA hypernetwork",
                      revision=training_args.hub_revision)
    return repo_id


# ---- dry run ---------------------------------------------------------------------------------------------------------

# Hub ids of the published bases -> their architecture in `benchmarks/architectures.py` (used when the config is
# neither a folder nor in the Hub cache: nothing is downloaded).
KNOWN_BASES = {"huggingfacetb/smolvlm2-500m-video-instruct": "500m", "huggingfacetb/smolvlm2-2.2b-instruct": "2.2b",
               "500m": "500m", "2.2b": "2.2b"}
GIB = 1024**3


def _dtype_bytes(dtype: str | torch.dtype | None) -> int:
    return torch.empty((), dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype).element_size()


def resolve_base(model_args: ModelArguments) -> tuple[Any, Video2LoRAConfig | None, Video2LoRAProcessor | None, str]:
    """
    The base's config without its weights: `(base config, the checkpoint's Video2LoRAConfig or None, the base's
    processor or None, where the config came from)`. Read from `--init_from`'s config, the base's folder, the Hub
    cache (`local_files_only`), or, for the published SmolVLM2 bases, `benchmarks/architectures.py`.
    """
    from transformers import AutoConfig

    from families_video2lora import family_of
    from modeling_video2lora import _try_load_processor

    if model_args.init_from is not None:
        config = Video2LoRAConfig.from_pretrained(model_args.init_from)
        if config.base_config is None:
            raise TrainingSetupError(f"--dry_run: {model_args.init_from} records no base config.")
        processor = _try_load_processor(model_args.init_from, family_of(config.base_config), trust_remote_code=True)
        return config.base_config, config, processor, f"{model_args.init_from}/config.json"
    name = model_args.base_model_name_or_path
    try:
        base_config = AutoConfig.from_pretrained(name, revision=model_args.base_model_revision, local_files_only=True)
    except (OSError, ValueError):
        base_config = None
    if base_config is not None:
        processor = _try_load_processor(name, family_of(base_config), revision=model_args.base_model_revision)
        return base_config, None, processor, "folder" if os.path.isdir(name) else "Hub cache"
    known = KNOWN_BASES.get(name.lower())
    if known is None:
        raise TrainingSetupError(f"--dry_run: no config for '{name}': not a folder, not in the Hub cache, and not one "
                                 f"of the SmolVLM2 bases this repository knows ({', '.join(sorted(KNOWN_BASES))}).")
    try:
        from benchmarks.architectures import benchmark_tokenizer, real_smolvlm_config
    except ImportError:
        raise TrainingSetupError("--dry_run of a known SmolVLM2 architecture needs benchmarks/architectures.py: run "
                                 "it from the repository's root folder.") from None
    return (real_smolvlm_config(known, benchmark_tokenizer()), None, None,
            f"benchmarks/architectures.py ({known}, the published config.json)")


def _stand_in_processor(base_config) -> Video2LoRAProcessor:
    """A processor for a base whose own processor files are not here: SmolVLM's image processor at the tower's size
    and a small stand-in tokenizer with SmolVLM2's special tokens (it spends more tokens on text than SmolVLM2's)."""
    from benchmarks.architectures import benchmark_tokenizer
    from video2lora.tiny import build_processor

    return build_processor(benchmark_tokenizer(), base_config)


def _reduced_base_config(base_config):
    """The same architecture at the same widths, with 2 decoder layers, 1 vision layer and small frames (a few tokens
    per frame): what one CPU step can afford, with the real per-token costs."""
    reduced = copy.deepcopy(base_config)
    text, vision = reduced.text_config, reduced.vision_config
    text.num_hidden_layers = min(text.num_hidden_layers, 2)
    vision.num_hidden_layers = min(vision.num_hidden_layers, 1)
    step = vision.patch_size * reduced.scale_factor  # the connector needs whole groups of patches
    vision.image_size = min(vision.image_size, 2 * step)
    return reduced


class SavedTensorBytes:
    """
    Bytes of the tensors autograd saves for the backward pass during a `Video2LoRAModel.forward`, by phase:
    `context` (the perceiver over every layer's states), `decode` (latents to LoRA), `student` (the base's decoder
    layers over the question rows), `student_other` (embeddings, final norm and head of the student pass), `loss`.
    Each storage counts once; weights, and the low-precision copies autocast makes of them, are not activations and
    are not counted.
    """

    def __init__(self, model: Video2LoRAModel):
        self.model = model
        self.bytes: collections.Counter[str] = collections.Counter()
        self.phase = "context"
        self._seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._handles: list = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _set(self, phase: str, when: tuple[str, ...] | None = None):
        def hook(*_):
            if when is None or self.phase in when:
                self.phase = phase
        return hook

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        grad_fn = tensor.grad_fn
        if grad_fn is not None and grad_fn.name() == "ToCopyBackward0" and any(
                type(fn).__name__ == "AccumulateGrad" for fn, _ in grad_fn.next_functions if fn is not None):
            return tensor  # a weight cast by autocast
        storage = tensor.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes[self.phase] += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorBytes:
        model = self.model
        self._handles = [
            model.hypernetwork.decoder.register_forward_pre_hook(self._set("decode", ("context",))),
            model.vlm.register_forward_pre_hook(self._set("student_other")),
            model.vlm.register_forward_hook(self._set("loss")),
        ]
        for layer in model._decoder_layers():
            self._handles.append(layer.register_forward_pre_hook(self._set("student", ("student_other",))))
            self._handles.append(layer.register_forward_hook(self._set("student_other", ("student",))))
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()


def _dry_run_features(frame_size: int, num_frames: int, num_questions: int, answer_words: int, seed: int = 0
                      ) -> list[dict]:
    """One video of random (never all-black) frames and `num_questions` rows with answers of `answer_words` words."""
    frames = np.random.default_rng(seed).integers(1, 256, (num_frames, frame_size, frame_size, 3), dtype=np.uint8)
    answer = " ".join(["the red circle moves left"] * answer_words).split()[:answer_words]
    return [{"frames": frames, "timestamps": [float(i) for i in range(num_frames)], "duration": float(num_frames),
             "questions": [{"prompt": f"What happens in the video? ({i})", "target": " ".join(answer),
                            "teacher": None, "weight": None} for i in range(num_questions)]}]


def measure_activation_costs(model: Video2LoRAModel, collator: Video2LoRACollator, *, num_frames: int,
                             autocast: bool) -> dict[str, float]:
    """
    Bytes autograd keeps per unit of work, measured on `model` (random weights, CPU) from four forwards that differ
    in one thing at a time (frames, then answer length, then the number of videos), so every fixed cost cancels:

    - `context`: per (decoder layer, context token), the perceiver reading the base's states;
    - `context_video`: per (decoder layer, video) on top of that (e.g. broadcast copies of projection weights);
    - `decode`: per (decoder layer, video), turning the latents into the LoRA;
    - `student`: per (decoder layer, student token), the base's layers with the LoRA;
    - `student_row`: per (decoder layer, question row) on top of that (the row's LoRA factors in the base's dtype);
    - `student_other`: per student token outside the layers; `loss`: per answer token.
    """
    num_layers = len(model._decoder_layers())
    frame_size = collator.processor.frame_size
    short = max(1, num_frames // 2)
    runs = []
    for videos, frames, words in ((1, short, 4), (1, max(short + 1, num_frames), 4),
                                  (1, max(short + 1, num_frames), 16), (2, max(short + 1, num_frames), 16)):
        batch = collator([feature for seed in range(videos)
                          for feature in _dry_run_features(frame_size, frames, 2, words, seed=seed)])
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with precision, SavedTensorBytes(model) as saved:
            model(**batch)
        counts = {"context": batch["context_attention_mask"].numel(), "student": batch["input_ids"].numel(),
                  "answer": int((batch["labels"][:, 1:] != -100).sum()), "video": videos,
                  "row": batch["input_ids"].shape[0]}
        runs.append((saved.bytes, counts))
    (a, na), (b, nb), (c, nc), (d, nd) = runs
    costs = {"context": (b["context"] - a["context"]) / (num_layers * (nb["context"] - na["context"])),
             "student": (c["student"] - b["student"]) / (num_layers * (nc["student"] - nb["student"])),
             "student_other": (c["student_other"] - b["student_other"]) / (nc["student"] - nb["student"]),
             "loss": (c["loss"] - b["loss"]) / max(1, nc["answer"] - nb["answer"]),
             "decode": (d["decode"] - c["decode"]) / num_layers}
    costs["context_video"] = (d["context"] - c["context"] - costs["context"] * num_layers
                              * (nd["context"] - nc["context"])) / num_layers
    costs["student_row"] = (d["student"] - c["student"] - costs["student"] * num_layers
                            * (nd["student"] - nc["student"])) / (num_layers * (nd["row"] - nc["row"]))
    return {name: max(0.0, value) for name, value in costs.items()}


@dataclass
class MemoryEstimate:
    """Peak memory per device of one training step, in bytes, by term (see `estimate_peak_memory`)."""

    terms: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.terms.values())


def estimate_peak_memory(*, strategy: str, num_devices: int, checkpointing: bool, base_parameters: int,
                         hypernetwork_parameters: int, largest_unit_parameters: int, lora_row_parameters: int,
                         base_bytes: int, bf16: bool, costs: dict[str, float], num_layers: int, hidden_size: int,
                         vocab_size: int, videos: int, questions: int, context_tokens: int, text_tokens: int,
                         answer_tokens: int, num_frames: int, frame_size: int) -> MemoryEstimate:
    """
    The estimate `--dry_run` prints, per device, for `videos` videos x `questions` questions per device (R = videos x
    questions student rows), L decoder layers of width h, vocabulary V, T context tokens per video, S tokens per
    student row and A answer tokens per row; P_b base and P_h hypernetwork parameters:

    - base weights: `P_b x base_bytes` (frozen; replicated by DDP and by `configs/accelerate_fsdp.yaml`);
    - hypernetwork, DDP: fp32 weights, gradients, DDP's gradient buckets and Adam's two moments,
      `(4 + 4 + 4 + 8) x P_h`, plus `2 x P_h` for the bf16 copies autocast makes;
      FSDP over N devices: `16 x P_h / N` sharded, plus the gathered compute copy of every unit (`2 x P_h` in bf16:
      the config keeps units gathered between forward and backward) and the largest unit's unsharded gradient;
    - frames, as fp32 and in the base's dtype: `videos x F x 3 x size^2 x (4 + base_bytes)`;
    - activations the backward pass needs, from per-unit costs *measured* by [`measure_activation_costs`] at the
      real widths: `L x videos x (c_context x T + c_context_video + c_decode) + L x R x (c_student x S + c_row) +
      c_other x R x S + c_loss x R x A`. With activation checkpointing the layers keep only their inputs,
      `L x (videos x T + R x S) x h x base_bytes`, and each row's fp32 LoRA factors for the recomputation
      (`4 x R x L x r_eff x (in + out)`), plus one layer's costs while it is recomputed;
    - logits and their gradient, alive together when the backward pass starts: `2 x R x S x V x 2` (bf16; 4 in fp32).

    Not included: the CUDA context and kernels' workspace (about 0.5-1 GiB), allocator fragmentation, the base's
    transient working set during its no-grad pass over the context, and dataloader prefetching.
    """
    rows, activation_bytes = videos * questions, 2 if bf16 else 4
    if strategy == "ddp":
        hypernetwork = {"hypernetwork fp32 weights + grads + DDP buckets": 12 * hypernetwork_parameters,
                        "Adam moments (fp32)": 8 * hypernetwork_parameters}
        if bf16:
            hypernetwork["bf16 copies of the hypernetwork (autocast)"] = 2 * hypernetwork_parameters
    else:
        hypernetwork = {"hypernetwork fp32 weights + grads (sharded)": 8 * hypernetwork_parameters / num_devices,
                        "Adam moments (fp32, sharded)": 8 * hypernetwork_parameters / num_devices,
                        "gathered hypernetwork for compute": activation_bytes * hypernetwork_parameters,
                        "largest unit's unsharded gradient": activation_bytes * largest_unit_parameters}
    context = costs["context"] * context_tokens + costs["context_video"]
    student = costs["student"] * text_tokens + costs["student_row"]
    if checkpointing:
        layers = {
            "checkpointed layer inputs": num_layers * (videos * context_tokens + rows * text_tokens) * hidden_size
            * base_bytes,
            "LoRA factors kept for the recomputation": 4 * rows * lora_row_parameters,
            "one layer recomputed": videos * context + rows * student,
        }
    else:
        layers = {"context encoding (perceiver, every layer)": num_layers * videos * context,
                  "student pass (base layers with the LoRA)": num_layers * rows * student}
    terms = {
        "base weights (frozen)": base_parameters * base_bytes, **hypernetwork,
        "frames (fp32 + base dtype)": videos * num_frames * 3 * frame_size**2 * (4 + base_bytes),
        **layers,
        "LoRA decode": costs["decode"] * num_layers * videos,
        "student pass outside the layers": costs["student_other"] * rows * text_tokens,
        "loss (log-probs of the answer tokens)": costs["loss"] * rows * answer_tokens,
        "logits and their gradient": 2 * rows * text_tokens * vocab_size * activation_bytes,
    }
    return MemoryEstimate(terms)


def _largest_fsdp_unit(model: Video2LoRAModel) -> int:
    """Parameters of the largest module `configs/accelerate_fsdp.yaml` wraps (a perceiver block or a LoRA head)."""
    from perceiver_video2lora import LoraHead, PerceiverBlock

    sizes = [sum(p.numel() for p in module.parameters()) for module in model.hypernetwork.modules()
             if isinstance(module, (PerceiverBlock, LoraHead))]
    return max(sizes, default=0)


def run_one_step(model: Video2LoRAModel, collator: Video2LoRACollator, training_args: TrainingArguments, *,
                 num_frames: int, questions: int) -> dict[str, float]:
    """One optimizer step of `Video2LoRATrainer` on CPU (the recipe's optimizer, schedule without warm-up,
    precision, clipping and checkpointing) over one video with `questions` rows."""
    import tempfile

    copied = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
              "lr_scheduler_type", "optim", "bf16", "seed", "activation_checkpointing",
              "activation_checkpointing_kwargs", "average_tokens_across_devices")
    with tempfile.TemporaryDirectory(prefix="video2lora-dry-run-") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, use_cpu=True, max_steps=1, per_device_train_batch_size=1,
            gradient_accumulation_steps=1, warmup_steps=0, save_strategy="no", eval_strategy="no", logging_steps=1,
            report_to="none", disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
            dataloader_pin_memory=False, **{name: getattr(training_args, name) for name in copied})
        dataset = _dry_run_features(collator.processor.frame_size, num_frames, questions, 12)
        trainer = Video2LoRATrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        result = trainer.train()
    grad_norm = next((entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry), math.nan)
    return {"loss": float(result.training_loss), "grad_norm": float(grad_norm)}


def dry_run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
            file=None) -> dict[str, Any]:
    """
    `--dry_run`: sizes, optimizer state and the peak-memory estimate of the full-size model (built on the meta
    device), then one real training step at reduced size on CPU. Prints a report and returns its numbers.
    """
    from video2lora.tiny import build_processor

    file = file or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=file, flush=True)

    base_config, checkpoint_config, processor, source = resolve_base(model_args)
    if checkpoint_config is not None:
        settings = {k: v for k, v in checkpoint_config.to_dict().items() if k in HYPERNETWORK_FIELDS}
    else:
        settings = model_args.hypernetwork_overrides()
    with torch.device("meta"):
        full = Video2LoRAModel(Video2LoRAConfig(base_config=copy.deepcopy(base_config), **settings))
    base_parameters = sum(p.numel() for p in full.vlm.parameters())
    hypernetwork_parameters = sum(p.numel() for p in full.hypernetwork.parameters())
    largest_unit = _largest_fsdp_unit(full)
    text = base_config.text_config
    base_dtype = model_args.base_dtype
    if base_dtype == "auto":  # what `from_pretrained(dtype="auto")` would load: the config's dtype (SmolVLM2: bf16)
        base_dtype = str(getattr(base_config, "dtype", None) or "bfloat16").removeprefix("torch.")
    base_bytes = _dtype_bytes(base_dtype)

    stand_in = processor is None
    processor = processor or _stand_in_processor(base_config)
    num_frames = data_args.num_frames or processor.video_sampling["max_frames"]
    frame_size = processor.frame_size
    context = processor.encode_videos(
        [np.full((num_frames, frame_size, frame_size, 3), 128, dtype=np.uint8)], full.config.instruction,
        timestamps=[[float(i) for i in range(num_frames)]], durations=[float(num_frames)])
    context_tokens = int(context["input_ids"].shape[1])
    videos, questions = training_args.per_device_train_batch_size, data_args.questions_per_video
    text_tokens, answer_tokens = model_args.dry_run_text_tokens, model_args.dry_run_answer_tokens
    bf16 = bool(training_args.bf16)

    say(f"train_hf.py --dry_run: base {model_args.base_model_name_or_path or model_args.init_from} "
        f"(config from {source})")
    say(f"  base: {text.num_hidden_layers} decoder layers, hidden {text.hidden_size}, intermediate "
        f"{text.intermediate_size}, vocabulary {text.vocab_size}; frames {frame_size}x{frame_size} px, "
        f"{processor.image_seq_len} tokens each; {num_frames} frames -> {context_tokens} context tokens per video"
        + (" (text counted with a stand-in tokenizer)" if stand_in else ""))
    say(f"  parameters: {(base_parameters + hypernetwork_parameters) / 1e6:,.1f}M total, "
        f"{hypernetwork_parameters / 1e6:,.1f}M trainable (the hypernetwork), {base_parameters / 1e6:,.1f}M frozen "
        f"(the base, {base_dtype})")
    say(f"  optimizer state (AdamW, fp32): {8 * hypernetwork_parameters / GIB:.2f} GiB (two moments) + "
        f"{4 * hypernetwork_parameters / GIB:.2f} GiB fp32 master weights; "
        f"/{model_args.dry_run_num_devices} per device with FSDP")

    # The same architecture at the same widths, reduced in depth and resolution, with random weights on CPU.
    reduced_config = _reduced_base_config(base_config)
    tokenizer = processor.tokenizer
    step_processor = build_processor(tokenizer, reduced_config, video_sampling={"fps": None,
                                                                                "max_frames": num_frames})
    torch.manual_seed(training_args.seed)
    reduced = Video2LoRAModel(Video2LoRAConfig(base_config=reduced_config, **settings), processor=step_processor)
    reduced.vlm.to(getattr(torch, base_dtype))
    collator = Video2LoRACollator(step_processor, reduced.config.instruction)
    reduced.train()
    costs = measure_activation_costs(reduced, collator, num_frames=num_frames, autocast=bf16)
    reduced.zero_grad(set_to_none=True)

    estimates = {}
    lora_row_parameters = text.num_hidden_layers * full.config.effective_rank * sum(
        inputs + outputs for inputs, outputs in full.config.target_module_dims().values())
    shape = dict(base_parameters=base_parameters, hypernetwork_parameters=hypernetwork_parameters,
                 largest_unit_parameters=largest_unit, lora_row_parameters=lora_row_parameters,
                 base_bytes=base_bytes, bf16=bf16, costs=costs,
                 num_layers=text.num_hidden_layers, hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                 videos=videos, questions=questions, context_tokens=context_tokens, text_tokens=text_tokens,
                 answer_tokens=answer_tokens, num_frames=num_frames, frame_size=frame_size)
    devices = model_args.dry_run_num_devices
    for strategy in ("ddp", "fsdp"):
        for checkpointing in (False, True):
            estimates[(strategy, checkpointing)] = estimate_peak_memory(
                strategy=strategy, num_devices=devices, checkpointing=checkpointing, **shape)
    say(f"  activation costs measured at the real widths ({'bf16 autocast' if bf16 else 'fp32'}, CPU kernels), per "
        f"decoder layer: {costs['context'] / 1024:.1f} KiB per context token + {costs['context_video'] / 2**20:.1f} "
        f"MiB per video, {costs['student'] / 1024:.1f} KiB per student token + {costs['student_row'] / 2**20:.2f} MiB "
        f"per question row; {costs['loss'] / 1024:.1f} KiB per answer token")
    say(f"  peak GPU memory per device, estimated for {videos} video(s) x {questions} question(s) per device, "
        f"{num_frames} frames, {text_tokens} tokens per question row ({answer_tokens} answer), "
        f"{'bf16' if bf16 else 'fp32'}:")
    say(f"    {'':28}{'no checkpointing':>18}{'--gradient_checkpointing':>26}")
    for strategy, label in (("ddp", "DDP (any N)"), ("fsdp", f"FSDP over N={devices}")):
        plain, checkpointed = estimates[(strategy, False)], estimates[(strategy, True)]
        say(f"    {label:28}{plain.total / GIB:>14.1f} GiB{checkpointed.total / GIB:>22.1f} GiB")
    say("    terms (DDP, no checkpointing): " + "; ".join(
        f"{name} {value / GIB:.2f}" for name, value in estimates[("ddp", False)].terms.items()) + " (GiB)")

    step = run_one_step(reduced, collator, training_args, num_frames=num_frames, questions=min(questions, 2))
    reduced_text = reduced_config.text_config
    say(f"  one real training step on CPU, random weights, {reduced_text.num_hidden_layers} decoder layers and "
        f"{reduced_config.vision_config.num_hidden_layers} vision layer(s) at the real widths, "
        f"{step_processor.frame_size} px frames ({step_processor.image_seq_len} tokens each), {num_frames} frames, "
        f"{min(questions, 2)} question(s): loss {step['loss']:.4f}, grad norm {step['grad_norm']:.4g}")
    if not math.isfinite(step["loss"]):
        raise TrainingSetupError(f"--dry_run: the training step's loss is {step['loss']}.")
    return {
        "base_parameters": base_parameters, "hypernetwork_parameters": hypernetwork_parameters,
        "largest_unit_parameters": largest_unit, "optimizer_state_bytes": 8 * hypernetwork_parameters,
        "context_tokens": context_tokens,
        "costs": costs, "estimates": {f"{s}{'+checkpointing' if c else ''}": e.total
                                      for (s, c), e in estimates.items()},
        "step": step,
    }


# ---- entry point -----------------------------------------------------------------------------------------------------


RECIPE_SUFFIXES = (".json", ".yaml", ".yml")


def read_recipe(path: str | os.PathLike, parser: HfArgumentParser) -> dict[str, Any]:
    """
    A recipe file (`configs/recipes/*.yaml`, or JSON): a mapping of this script's flags to values, e.g.
    `learning_rate: 1.0e-4`. Unknown names are an error, so a typo cannot silently fall back to a default.
    """
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        recipe = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except OSError as error:
        raise TrainingSetupError(f"Cannot read the recipe '{path}': {error.strerror or error}.") from None
    except (ValueError, yaml.YAMLError) as error:
        kind = "JSON" if str(path).endswith(".json") else "YAML"
        raise TrainingSetupError(f"The recipe '{path}' is not valid {kind}: {' '.join(str(error).split())[:200]}"
                                 ) from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise TrainingSetupError(f"The recipe '{path}' must be a mapping of flag names to values.")
    known = {f.name for dataclass_type in parser.dataclass_types for f in dataclasses.fields(dataclass_type)}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise TrainingSetupError(f"The recipe '{path}' sets unknown flags: {', '.join(unknown)}.")
    return recipe


def parse_args(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """
    The command line, in three dataclasses. The first argument may be a recipe file (`.yaml`, `.yml` or `.json`, see
    [`read_recipe`]): its values replace the defaults and the flags after it override them, e.g.
    `train_hf.py configs/recipes/smolvlm2_500m.yaml --train_manifest m.jsonl --output_dir runs/x`. Defaults are
    `TRAINING_DEFAULTS` (the published optimizer settings) over `TrainingArguments`'.
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes without GPUs (torchrun on CPU): only `use_cpu` makes accelerate set up gloo DDP;
        # otherwise every process would train alone on all the data.
        parser.set_defaults(use_cpu=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**read_recipe(argv[0], parser))
        argv = argv[1:]
    if not torch.cuda.is_available() and any(arg.split("=")[0] == "--dry_run" for arg in argv):
        # The dry run's one real step runs on CPU, a GPU recipe's bf16 included.
        parser.set_defaults(use_cpu=True)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except TrainingSetupError:
        raise
    except ValueError as error:  # TrainingArguments' own checks: one line too
        raise TrainingSetupError(" ".join(str(error).split())) from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args = parse_args(argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("video2lora").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(f"Process rank: {training_args.process_index}, device: {training_args.device}, "
                   f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value}, "
                   f"bf16: {training_args.bf16}")
    logger.info(f"Training parameters {training_args}")

    if model_args.dry_run:  # no data, no output folder, no Hub: see `dry_run`
        return dry_run(model_args, data_args, training_args)

    # Our own upload (prepare_hub_folder) replaces Trainer's, which would push checkpoints with a generic card.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False

    # Checked before any model or video is read: a bad path should not surface after the data is decoded.
    for flag, manifest in (("--train_manifest", data_args.train_manifest), ("--eval_manifest", data_args.eval_manifest)):
        if manifest is not None and not os.path.isfile(manifest):
            raise TrainingSetupError(f"{flag} '{manifest}' does not exist or is not a file.")
    try:
        check_writable_folder(training_args.output_dir, "--output_dir")
    except UsageError as error:
        raise TrainingSetupError(str(error)) from None
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None and checkpoint.lower() in ("true", "last"):
        # `--resume_from_checkpoint last` picks the newest checkpoint-N of output_dir.
        checkpoint = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if checkpoint is None:
            raise TrainingSetupError(f"--resume_from_checkpoint last: no checkpoint-N folder in {training_args.output_dir}.")
    elif checkpoint is not None and not os.path.isdir(checkpoint):
        raise TrainingSetupError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder.")
    if push_to_hub and training_args.process_index == 0:
        # Before hours of training, not after: the main process uploads, so it checks (if it fails, the launcher
        # stops the others).
        logger.warning(f"train_hf.py: {check_hub_access(training_args)}")
    set_seed(training_args.seed)

    model = build_model(model_args, data_args)
    config = model.config
    logger.info(f"Hypernetwork: {sum(p.numel() for p in model.hypernetwork.parameters()):,} trainable parameters; "
                f"base {config.base_model_name_or_path} frozen.")
    frames = {"sampling": model.processor.sampling_kwargs()}
    train_dataset = None
    if training_args.do_train:
        if not data_args.train_manifest:
            raise TrainingSetupError("--train_manifest is required to train (or pass --do_train false --do_eval).")
        train_dataset = build_dataset(data_args.train_manifest, data_args, **frames, seed=training_args.seed,
                                      max_videos=data_args.max_train_videos, training_args=training_args)
    eval_dataset = None
    if data_args.eval_manifest:
        eval_dataset = build_dataset(data_args.eval_manifest, data_args, **frames, seed=training_args.seed,
                                     max_videos=data_args.max_eval_videos, training_args=training_args)
    with_teacher = data_args.kl_weight > 0
    if with_teacher and train_dataset is not None and not any(
            row.get("teacher_logprobs") for _, rows in train_dataset.examples for row in rows):
        raise TrainingSetupError("--kl_weight > 0 needs `teacher_logprobs` in the manifest; run the teacher with "
                         "--top_k_logprobs K.")

    trainer = Video2LoRATrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=Video2LoRACollator(model.processor, config.instruction, with_teacher=with_teacher),
        base_model_reference=model_args.base_model_reference,
    )

    metrics: dict[str, float] = {}
    if training_args.do_train:  # on by default; `--do_train false --do_eval` evaluates a checkpoint only
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics.update(train_result.metrics)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if eval_dataset is not None and (training_args.do_eval or training_args.eval_strategy != "no"):
        eval_metrics = trainer.evaluate()
        metrics.update(eval_metrics)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)

    # The run's record and the folder whose evaluations its card shows (the main process writes and pushes).
    record, run_folder = None, Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        if training_args.do_train:
            rows = [row for _, video_rows in train_dataset.examples for row in video_rows]
            record = training_record(model, data_args, training_args, rows, steps=trainer.state.global_step,
                                     metrics=metrics, base_model_reference=model_args.base_model_reference,
                                     init_from=model_args.init_from)
            write_text_atomically(run_folder / TRAINING_RECORD_NAME, json.dumps(record, indent=2) + "\n")
        elif model_args.init_from:
            # Pushing a trained run later (`--init_from RUN --do_train false --push_to_hub`): its record and evaluations.
            run_folder = Path(model_args.init_from)
            if (run_folder / TRAINING_RECORD_NAME).is_file():
                record = json.loads((run_folder / TRAINING_RECORD_NAME).read_text(encoding="utf-8"))
    if push_to_hub and trainer.is_world_process_zero():
        dataset_names = sorted((record or {}).get("data", {}).get("datasets", {}))
        summary = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k.endswith("loss"))
        repo_id = push_hypernetwork_to_hub(
            model, training_args, base_model_reference=model_args.base_model_reference,
            dataset_names=[name for name in dataset_names if "/" in name] or None,
            training_summary=f"Final metrics: {summary}." if summary else None, record=record,
            evaluations_from=run_folder,
        )
        logger.info(f"Pushed the hypernetwork to https://huggingface.co/{repo_id}")
    return metrics


def _run_from_command_line() -> int:
    """`main()` with user errors as one line (exit 2) and Ctrl-C as one line (exit 130); checkpoints already written
    stay, and `--resume_from_checkpoint last` continues from the newest."""
    try:
        main()
    except (TrainingSetupError, ManifestError, VideoDecodeError) as error:
        print(f"train_hf.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_hf.py: interrupted; rerun with --resume_from_checkpoint last to continue from the newest "
              "checkpoint", file=sys.stderr)
        return 130
    end_distributed_run()
    return 0


def end_distributed_run() -> None:
    """Under `accelerate launch`: wait for every process, then close the process group. A process that exits while
    another still writes or uploads tears its communication threads down mid-use; DeepSpeed's run then aborts
    (`terminate called without an active exception`) after a run whose checkpoints are all written."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(_run_from_command_line())

"""Train the Video2LoRA hypernetwork with the 🤗 Trainer (docs/design.md §5).

```
python train_hf.py --base_model_name_or_path HuggingFaceTB/SmolVLM2-500M-Video-Instruct \
    --train_manifest data/train_teacher.jsonl --output_dir runs/v2l
accelerate launch train_hf.py ...                                           # one process, or per accelerate config
accelerate launch --config_file configs/accelerate_multi_gpu.yaml train_hf.py ...
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

import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from modeling_video2lora import Video2LoRAModel
from processing_video2lora import Video2LoRAProcessor
from video2lora.cards import render_card
from video2lora.checks import UsageError, check_writable_folder
from video2lora.data import ManifestError, question_type, read_manifest
from video2lora.video import VideoDecodeError, sample_video

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
                       "instruction")
# Settings that `--init_from` may turn on: their new weights start as a no-op, so the checkpoint's function is kept.
GROWABLE_FIELDS = ("use_context_positions",)


class TrainingSetupError(ValueError):
    """Bad arguments or data, reported on the command line as one line (no traceback)."""
_FRAME_CACHE_VERSION = 1  # bump when the cached frame format changes


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
    instruction: str | None = field(default=None, metadata={"help": "Text after the frames when reading a video."})

    def __post_init__(self):
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


def _frame_cache_file(keys: list, sampling: dict, cache_dir: str | None) -> str:
    """A cache file named by everything the decoded frames depend on, files' sizes and times included."""
    stats = []
    for path, span in keys:
        stat = os.stat(path) if os.path.exists(path) else None
        stats.append([path, span, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    digest = hashlib.sha256(json.dumps([_FRAME_CACHE_VERSION, sampling, stats], sort_keys=True).encode()).hexdigest()
    directory = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "video2lora_frames"
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"frames-{digest[:20]}.arrow")


def decode_videos(keys: list[tuple[str, tuple[float, float] | None]], *, sampling: dict[str, Any],
                  cache_dir: str | None = None, num_proc: int | None = None, desc: str = "decoding videos"
                  ) -> datasets.Dataset:
    """
    Decode and sample every video once, into an Arrow table (memory-mapped, cached on disk).

    Args:
        keys: `(absolute video path, span or None)` per video.
        sampling: keyword arguments of `sample_video`, the one sampler (`Video2LoRAProcessor.sampling_kwargs()`).
        cache_dir: folder of the cache file; defaults to the datasets cache.
        num_proc: decoding processes.

    Returns:
        `datasets.Dataset` with, per video, `frames` (raw uint8 bytes), `shape` (`[N, H, W, 3]`), `timestamps`,
        `duration` and `error` (`None`, or why the video could not be read).
    """
    table = datasets.Dataset.from_dict({
        "video_path": [path for path, _ in keys],
        "span": [list(span) if span else None for _, span in keys],
    })

    def decode(example: dict) -> dict:
        span = example["span"]
        try:
            video = sample_video(example["video_path"], start=span[0] if span else None,
                                 end=span[1] if span else None, **sampling)
        except (VideoDecodeError, OSError, ValueError) as error:
            return {"frames": b"", "shape": [], "timestamps": [], "duration": 0.0, "error": str(error)}
        return {"frames": video.frames.tobytes(), "shape": list(video.frames.shape),
                "timestamps": [float(t) for t in video.timestamps], "duration": float(video.duration), "error": None}

    list_feature = getattr(datasets, "List", None) or datasets.Sequence  # `List` replaced `Sequence` in datasets 4
    features = datasets.Features({
        "video_path": datasets.Value("string"), "span": list_feature(datasets.Value("float64")),
        "frames": datasets.Value("binary"), "shape": list_feature(datasets.Value("int32")),
        "timestamps": list_feature(datasets.Value("float64")), "duration": datasets.Value("float64"),
        "error": datasets.Value("string"),
    })
    return table.map(decode, features=features, num_proc=num_proc, desc=desc, writer_batch_size=64,
                     cache_file_name=_frame_cache_file(keys, sampling, cache_dir))


class VideoQuestionDataset(torch.utils.data.Dataset):
    """
    One example per (video, group of up to `questions_per_video` of its rows); frames come from the decoded table.

    Args:
        rows: valid manifest rows (absolute `video_path`).
        frames: the table from [`decode_videos`] over `keys`.
        keys: `(video path, span)` per table row.
        questions_per_video: rows per example.
        seed: fixes which rows of a video share an example.
        type_weights: loss weight per question type (`metadata.question_type`, else `task_type`); default 1.
    """

    def __init__(self, rows: list[dict], frames: datasets.Dataset, keys: list, questions_per_video: int, seed: int,
                 type_weights: dict[str, float] | None = None):
        self.frames = frames
        self.type_weights = type_weights or {}
        index_of_key = {key: i for i, key in enumerate(keys)}
        by_video: dict[int, list[dict]] = {}
        for row in rows:
            by_video.setdefault(index_of_key[_video_key(row)], []).append(row)
        rng = random.Random(seed)
        self.examples: list[tuple[int, list[dict]]] = []
        for video_index, video_rows in by_video.items():
            video_rows = video_rows[:]
            rng.shuffle(video_rows)  # mixes captions and questions within an example
            for start in range(0, len(video_rows), questions_per_video):
                self.examples.append((video_index, video_rows[start:start + questions_per_video]))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_index, rows = self.examples[index]
        record = self.frames[video_index]
        frames = np.frombuffer(record["frames"], dtype=np.uint8).reshape(record["shape"])
        return {"frames": frames, "timestamps": record["timestamps"], "duration": record["duration"],
                "questions": [{"prompt": row["prompt"], "target": row["target_text"],
                               "teacher": row.get("teacher_logprobs"), "weight": self._weight(row)} for row in rows]}

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
    keys = list(dict.fromkeys(_video_key(row) for row in report.rows))
    if max_videos is not None:
        keys = keys[:max_videos]
    # The main process decodes and writes the cache; the others then read the same cache file.
    with training_args.main_process_first(desc=f"decoding the videos of {manifest}"):
        frames = decode_videos(keys, sampling=sampling, cache_dir=data_args.frame_cache_dir, num_proc=data_args.preprocessing_num_workers,
                               desc=f"decoding {Path(manifest).name}")
    errors = [(key, error) for key, error in zip(keys, frames["error"], strict=True) if error]
    for (path, _), error in errors:
        logger.warning(f"{manifest}: skipping every row of video {path}: {error}")
    good = {key for key, error in zip(keys, frames["error"], strict=True) if not error}
    rows = [row for row in report.rows if _video_key(row) in good]
    if not rows:
        raise TrainingSetupError(f"{manifest}: none of its {len(keys)} videos could be decoded; see the warnings above.")
    dataset = VideoQuestionDataset(rows, frames, keys, data_args.questions_per_video, seed,
                                   type_weights=data_args.type_weights)
    logger.info(f"{manifest}: {len(rows)} rows over {len(good)} videos -> {len(dataset)} examples "
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
        context = self.processor.encode_videos(
            [f["frames"] for f in features], self.instruction, timestamps=[f["timestamps"] for f in features],
            durations=[f["duration"] for f in features],
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

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The default AdamW and weight-decay grouping, over the hypernetwork's parameters only."""
        hypernetwork = self.accelerator.unwrap_model(self.model).hypernetwork
        return super().create_optimizer(hypernetwork)

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


def prepare_hub_folder(model: Video2LoRAModel, output_dir: str | os.PathLike, *, repo_id: str | None = None,
                       base_model_reference: str | None = None, dataset_names: Sequence[str] | None = None,
                       license: str = "apache-2.0", training_summary: str | None = None) -> Path:
    """
    Write exactly the folder a Hub upload sends: hypernetwork weights (safetensors, no base weights), config with
    `auto_map`, the custom code files, the processor files and a model card from `video2lora/hub_cards/hypernetwork.md`.

    Args:
        model: the trained model.
        output_dir: the folder to write; must be empty or missing.
        repo_id: the Hub repo, used in the card's usage snippet.
        base_model_reference: how the uploaded config names the base (a Hub id); defaults to the model's own.
        dataset_names: Hub datasets for the card's `datasets` metadata.
        license: the card's license.
        training_summary: free text (e.g. final losses) added to the card.

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
    card = render_card(
        "hypernetwork", library_name="transformers", base_model=hub_base, pipeline_tag="video-text-to-text",
        tags=["video2lora", "hypernetwork", "lora", "smolvlm", "video"], license=license,
        datasets=list(dataset_names) if dataset_names else None, model_name=repo_id.split("/")[-1],
        repo_id=repo_id, base_model_reference=reference,
        base_model_url=f"https://huggingface.co/{hub_base}" if hub_base else reference,
        num_parameters=f"{num_parameters / 1e6:.1f}M" if num_parameters >= 1e5 else f"{num_parameters:,}",
        lora_r=config.lora_r, effective_rank=config.effective_rank, target_modules=", ".join(config.target_modules),
        latent_size=config.latent_size, num_latents=config.num_latents, num_blocks=config.num_blocks,
        head_type=config.head_type, num_frames=model.processor.video_sampling["max_frames"],
        frame_size=model.processor.frame_size,
        kl_weight=None, training_summary=training_summary,
    )
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return output_dir


def push_hypernetwork_to_hub(model: Video2LoRAModel, training_args: TrainingArguments, *,
                             base_model_reference: str | None, dataset_names: Sequence[str] | None,
                             training_summary: str | None = None) -> str:
    """Prepare the Hub folder under `output_dir/hub` and upload it with `huggingface_hub.upload_folder`."""
    from huggingface_hub import HfApi

    repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
    folder = Path(training_args.output_dir) / "hub"
    if folder.exists():
        shutil.rmtree(folder)
    prepare_hub_folder(model, folder, repo_id=repo_id, base_model_reference=base_model_reference,
                       dataset_names=dataset_names, training_summary=training_summary)
    api = HfApi(token=training_args.hub_token)
    repo_id = api.create_repo(repo_id, private=training_args.hub_private_repo, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload Video2LoRA hypernetwork",
                      revision=training_args.hub_revision)
    return repo_id


# ---- entry point -----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes without GPUs (torchrun on CPU): only `use_cpu` makes accelerate set up gloo DDP;
        # otherwise every process would train alone on all the data.
        parser.set_defaults(use_cpu=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = os.path.abspath(argv[0])
        if argv[0].endswith(".json"):
            return parser.parse_json_file(path)
        return parser.parse_yaml_file(path)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
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

    if push_to_hub and trainer.is_world_process_zero():
        examples = train_dataset.examples if train_dataset is not None else []
        dataset_names = sorted({row["dataset"] for _, rows in examples for row in rows})
        summary = ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items() if k.endswith("loss"))
        repo_id = push_hypernetwork_to_hub(
            model, training_args, base_model_reference=model_args.base_model_reference,
            dataset_names=[name for name in dataset_names if "/" in name] or None,
            training_summary=f"Final metrics: {summary}." if summary else None,
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
    return 0


if __name__ == "__main__":
    sys.exit(_run_from_command_line())

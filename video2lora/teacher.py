"""Teacher targets: the frozen base answers every manifest prompt with the video in context (docs/design.md §5).

```
python -m video2lora.teacher --model BASE_OR_V2L_DIR --manifest in.jsonl --output out.jsonl
accelerate launch -m video2lora.teacher --model ... --manifest in.jsonl --output out.jsonl   # sharded
```

Every valid row of the input manifest gets `target_text` replaced by the teacher's greedy answer; the original target
is kept as `reference_text` (never overwritten when the input is itself a teacher manifest), and with
`--top_k_logprobs K` the row also gets `teacher_logprobs`: the generated `token_ids` and, per generated token, the
teacher's `top_ids` and `top_logprobs` (for a KL term in training).

The run is resumable and never leaves a half-written output. Each process appends the rows it finishes to its own part
file, `<output>.part-<rank>`, flushed and synced after every batch; a rerun skips every id already found in the part
files or in an existing output. When every process is done, the main process merges the parts in manifest order,
writes the output atomically and removes the parts. Process `rank` of `world_size` takes the rows whose index in the
manifest satisfies `index % world_size == rank`.

Each video is encoded once. A process answers its rows video by video (a video being a file and span): the prompts
of one video agree token for token up to the end of its frames (chat header, frame timestamps and image tokens, and
whatever the questions share after them), so that common prefix goes through the frozen VLM once, pixel values
included, and every batch of the video's questions continues a copy of its key/value cache with only its own
remaining tokens. The answers are the ones the prompts get when each is encoded whole with its video (tested to the
token, log-probs within float rounding); a chat template whose prompts differ before the last image token (a question
before the video) gets the per-row encoding instead.

Rows that cannot be used (invalid manifest rows, undecodable videos, empty teacher answers) are skipped, counted and
logged with their line number and the reason.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from processing_video2lora import VIDEO_PLACEHOLDER

from .data import ManifestError, read_manifest, resolve_data_root, write_manifest
from .video import SampledVideo, VideoDecodeError

__all__ = ["TeacherReport", "generate_teacher_targets", "load_teacher", "main"]

logger = logging.getLogger(__name__)

# How many decoded videos stay cached: rows are answered video by video, so only the video in hand is needed again.
_VIDEO_CACHE_SIZE = 1
# Log-probabilities are rounded in the manifest: 4 decimals are far below any effect on a KL term and halve the size.
_LOGPROB_DECIMALS = 4


@dataclass
class TeacherReport:
    """What a teacher run did.

    Args:
        num_rows (`int`): Valid rows of the input manifest.
        num_generated (`int`): Rows answered by this process in this run.
        num_resumed (`int`): Rows of this process skipped because an earlier run had answered them.
        bad_rows (`list[tuple[int, str]]`): `(1-based line number, reason)` of every skipped row seen by this process.
        output (`Path`, *optional*): The merged manifest, once written (main process only).
    """

    num_rows: int = 0
    num_generated: int = 0
    num_resumed: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    output: Path | None = None


def load_teacher(model_name_or_path: str | os.PathLike, *, dtype: str | torch.dtype = "auto",
                 device: str | torch.device | None = None):
    """
    Load the frozen teacher: a base folder (or Hub id) of a known family, or the base of a Video2LoRA checkpoint.

    Args:
        model_name_or_path (`str` or `os.PathLike`): The SmolVLM or Video2LoRA checkpoint.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): Weight dtype of the base.
        device (`str` or `torch.device`, *optional*): Where to put the base.

    Returns:
        `(PreTrainedModel, Video2LoRAProcessor)`: the base in eval mode and its processor, whose
        saved settings sample the frames (a Video2LoRA checkpoint's own processor, or the base's).
    """
    from transformers import PreTrainedConfig

    from families_video2lora import FAMILIES
    from modeling_video2lora import Video2LoRAModel, load_base

    path = str(model_name_or_path)
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as error:
        raise ValueError(f"Cannot read a model config from '{path}': {error}") from error
    model_type = config_dict.get("model_type")
    if model_type == "video2lora":
        model = Video2LoRAModel.from_pretrained(path, dtype=dtype)
        vlm, processor = model.vlm, model.processor
    elif model_type in FAMILIES:
        vlm, processor = load_base(path, dtype=dtype)
    else:
        raise ValueError(f"'{path}' is a '{model_type}' model; the teacher needs a base of a known family "
                         f"({', '.join(sorted(FAMILIES))}) or a Video2LoRA checkpoint (model_type 'video2lora').")
    if processor is None:
        raise ValueError(f"No processor found for '{path}'; save the tokenizer and image processor beside the model.")
    if device is not None:
        vlm.to(device)
    vlm.eval()
    return vlm, processor


def _part_path(output: Path, rank: int) -> Path:
    return output.with_name(f"{output.name}.part-{rank:05d}")


def _part_paths(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f"{output.name}.part-*"))


def _read_rows(path: Path) -> list[dict]:
    """Rows of a part file or of a finished output. A torn last line (a run killed mid-write) is ignored."""
    rows = []
    with path.open("r", encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                rows.append(row)
    return rows


def weights_fingerprint(model: torch.nn.Module) -> str:
    """
    A short hash of a model's weights (every parameter's name, shape and sum in float64): two checkpoints under one
    path, e.g. a teacher retrained in place, get different fingerprints. One pass over the weights, no file hashing.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            digest.update(f"{name}{tuple(parameter.shape)}{parameter.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:16]


def _teacher_weights(row: dict) -> str | None:
    """The weights fingerprint of the teacher that answered `row` (`None` for rows from before fingerprints)."""
    return ((row.get("metadata") or {}).get("teacher") or {}).get("weights")


def _repair_torn_tail(path: Path) -> None:
    """Cut a part file back to its last complete line, so that appending never glues a row onto a torn one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _raw_rows_by_line(manifest: Path) -> dict[int, dict]:
    """The rows as written (relative `video_path` kept), by 1-based line number."""
    rows = {}
    with manifest.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                row = json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(row, dict):
                rows[number] = row
    return rows


def _video_key(row: dict) -> tuple[str, tuple[float, ...] | None]:
    """What identifies a row's video: its file and span. Rows with one key share frames and a prompt prefix."""
    span = row.get("span")
    return row["video_path"], tuple(span) if span else None


def _load_video(row: dict, cache: dict, processor, *, num_frames: int | None) -> SampledVideo:
    key = _video_key(row)
    if key not in cache:
        if len(cache) >= _VIDEO_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        span = row.get("span")
        start, end = (span[0], span[1]) if span else (None, None)
        cache[key] = processor.sample_video(row["video_path"], start=start, end=end, num_frames=num_frames)
    return cache[key]


def _eos_ids(vlm, processor) -> set[int]:
    eos = vlm.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    end_of_utterance = getattr(processor, "end_of_utterance_token", None)
    if end_of_utterance:
        ids.add(processor.tokenizer.convert_tokens_to_ids(end_of_utterance))
    ids.discard(None)
    return ids


def _pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _generate(vlm, processor, inputs: dict, *, max_new_tokens: int, top_k: int) -> list[tuple[str, dict | None]]:
    """
    Greedy answers to a left-padded batch, and optionally the top-k log-probs of every answer token.

    Args:
        inputs (`dict`): `generate()` inputs: `input_ids` and `attention_mask` `[B, S]`, plus either the frames
            (`pixel_values`, `pixel_attention_mask`) or a `cache` that already holds the start of every row.
        max_new_tokens (`int`): Answer length limit.
        top_k (`int`): How many log-probs to keep per answer token; 0 keeps none.

    Returns:
        One `(text, logprobs)` per row: `logprobs` is `None` when `top_k` is 0, else `{"token_ids", "top_ids",
        "top_logprobs"}` for the tokens up to and including the first end-of-answer token, the log-probs unrounded.
    """
    tokenizer = processor.tokenizer
    output = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                          return_dict_in_generate=True, output_logits=top_k > 0, pad_token_id=_pad_token_id(tokenizer))
    generated = output.sequences[:, inputs["input_ids"].shape[1]:].tolist()  # [B, T] new tokens only
    eos_ids = _eos_ids(vlm, processor)
    results = []
    for row, token_ids in enumerate(generated):
        # Keep the tokens up to and including the first end-of-answer token; the rest is padding.
        length = next((i + 1 for i, token in enumerate(token_ids) if token in eos_ids), len(token_ids))
        token_ids = token_ids[:length]
        text = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
        logprobs = None
        if top_k > 0:
            steps = torch.stack([output.logits[t][row] for t in range(length)]).float().log_softmax(-1)  # [T, V]
            top = steps.topk(min(top_k, steps.shape[-1]), dim=-1)
            logprobs = {"token_ids": token_ids, "top_ids": top.indices.tolist(), "top_logprobs": top.values.tolist()}
        results.append((text, logprobs))
    return results


@torch.no_grad()
def _answer_rows(vlm, processor, videos: list[SampledVideo], prompts: list[str], *, max_new_tokens: int,
                 top_k: int) -> list[tuple[str, dict | None]]:
    """Answers with each row's video encoded in its own prompt (one video prefill per row); see `_generate`."""
    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # batched generation continues every row from its last real token
    try:
        inputs = processor.encode_videos([v.frames for v in videos], prompts,
                                         timestamps=[v.timestamps for v in videos],
                                         durations=[v.duration for v in videos])
    finally:
        tokenizer.padding_side = padding_side
    inputs = inputs.to(vlm.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(vlm.dtype)
    return _generate(vlm, processor, dict(inputs), max_new_tokens=max_new_tokens, top_k=top_k)


def _video_prompt_ids(processor, video: SampledVideo, prompts: list[str]) -> list[list[int]]:
    """Every prompt's token ids with `video` in context, unpadded: the text `encode_videos` lays out and tokenizes."""
    layout = processor.video_prompt(len(video.frames), video.timestamps, video.duration)
    texts = [processor.chat_prompt(prompt, with_video=True).replace(VIDEO_PLACEHOLDER, layout, 1) for prompt in prompts]
    return processor.tokenizer(texts)["input_ids"]


def _shared_prefix_length(prompt_ids: list[list[int]], image_token_id: int) -> int | None:
    """
    How many leading tokens all prompts share and can be cached: their longest common prefix, short of every
    prompt's last token (generation starts from at least one token of each row's own). `None` when an image token
    lies beyond it, since the frames enter the model with the prefix only.
    """
    length = min(len(os.path.commonprefix(prompt_ids)), min(len(ids) for ids in prompt_ids) - 1)
    if any(image_token_id in ids[length:] for ids in prompt_ids):
        return None
    return length


@torch.no_grad()
def _prefill_prefix(vlm, processor, video: SampledVideo, prefix_ids: list[int], prompt: str):
    """The frozen VLM's key/value cache (batch 1) after `prefix_ids` `[P]`, the frames read by the vision tower once.
    `prompt` is any of the video's prompts; only the frames of its encoding are used."""
    pixels = processor.encode_videos([video.frames], prompt, timestamps=[video.timestamps],
                                     durations=[video.duration]).to(vlm.device)
    # The inner model: the cache needs the prefix's keys and values, not its logits.
    return vlm.model(input_ids=torch.tensor([prefix_ids], device=vlm.device),
                     pixel_values=pixels["pixel_values"].to(vlm.dtype),
                     pixel_attention_mask=pixels["pixel_attention_mask"], use_cache=True).cache


@torch.no_grad()
def _answer_from_prefix(vlm, processor, prefix_ids: list[int], prefix_cache, tails: list[list[int]], *,
                        max_new_tokens: int, top_k: int) -> list[tuple[str, dict | None]]:
    """
    Answers to prompts that all start with `prefix_ids` `[P]`, given the prefix's cache: each row feeds only its tail.

    Rows are laid out `[prefix | left padding | tail]` `[B, P + W]`, the padding masked out, so each tail's positions
    continue right after the prefix (`generate` numbers positions by the attention mask), exactly as in the prompt
    encoded whole. `generate` appends to the cache it is given, so it gets a copy widened to the batch.
    """
    pad = _pad_token_id(processor.tokenizer)
    width = max(len(tail) for tail in tails)
    input_ids = [prefix_ids + [pad] * (width - len(tail)) + tail for tail in tails]
    attention_mask = [[1] * len(prefix_ids) + [0] * (width - len(tail)) + [1] * len(tail) for tail in tails]
    cache = copy.deepcopy(prefix_cache)
    if len(tails) > 1:
        cache.batch_repeat_interleave(len(tails))  # [1, heads, P, head_dim] -> [B, heads, P, head_dim] per layer
    inputs = {"input_ids": torch.tensor(input_ids, device=vlm.device),
              "attention_mask": torch.tensor(attention_mask, device=vlm.device), "cache": cache}
    return _generate(vlm, processor, inputs, max_new_tokens=max_new_tokens, top_k=top_k)


def _answer_video(vlm, processor, video: SampledVideo, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                  top_k: int) -> Iterator[list[tuple[str, dict | None]]]:
    """
    Answers to all of one video's prompts, one list per batch of `batch_size` prompts in order (see `_generate`).

    The prompts' shared prefix, frames included, is prefilled once and every batch continues from its cache. If the
    prompts differ before their last image token (a chat template that writes the question before the video), no
    prefix holds the frames, and each row is encoded with its video instead.
    """
    prompt_ids = _video_prompt_ids(processor, video, prompts)
    length = _shared_prefix_length(prompt_ids, processor.image_token_id)
    prefix_cache = None if length is None else _prefill_prefix(vlm, processor, video, prompt_ids[0][:length],
                                                               prompts[0])
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        if prefix_cache is None:
            yield _answer_rows(vlm, processor, [video] * len(prompts[start:stop]), prompts[start:stop],
                               max_new_tokens=max_new_tokens, top_k=top_k)
        else:
            yield _answer_from_prefix(vlm, processor, prompt_ids[0][:length], prefix_cache,
                                      [ids[length:] for ids in prompt_ids[start:stop]],
                                      max_new_tokens=max_new_tokens, top_k=top_k)


def generate_teacher_targets(
    vlm,
    processor,
    manifest: str | os.PathLike,
    output: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    num_frames: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    top_k_logprobs: int = 0,
    teacher_name: str | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    barrier: Callable[[], None] | None = None,
    on_batch_end: Callable[[int], None] | None = None,
    progress: bool = True,
) -> TeacherReport:
    """
    Answer every prompt of `manifest` with the teacher and write the teacher manifest `output` (see module docstring).

    Args:
        vlm (`SmolVLMForConditionalGeneration`): The frozen teacher.
        processor (`Video2LoRAProcessor`): Its processor.
        manifest (`str` or `os.PathLike`): Input JSONL manifest; `target_text` may be missing or empty.
        output (`str` or `os.PathLike`): Output manifest. `video_path` values are copied as written, so put it where
            the input's relative paths still resolve (next to the input, or read it with the same `data_root`).
        data_root (`str` or `os.PathLike`, *optional*): Root of relative video paths; see `resolve_data_root`.
        num_frames (`int`, *optional*): Overrides the processor's `video_sampling["max_frames"]`; frames are sampled
            by `processor.sample_video`, like every other door.
        batch_size (`int`, *optional*, defaults to 8): Rows answered per `generate` call.
        max_new_tokens (`int`, *optional*, defaults to 64): Answer length limit.
        top_k_logprobs (`int`, *optional*, defaults to 0): Store the top-k log-probs of every answer token when > 0.
        teacher_name (`str`, *optional*): Recorded in each row's `metadata["teacher"]`.
        process_index (`int`, *optional*, defaults to 0) / num_processes (`int`, *optional*, defaults to 1): This
            process's shard: rows with `index % num_processes == process_index`.
        barrier (`Callable`, *optional*): Called before the merge so that every process has finished its part.
        on_batch_end (`Callable[[int], None]`, *optional*): Called with the number of rows written so far after each
            batch is durably on disk (progress hooks; tests interrupt a run here).
        progress (`bool`, *optional*, defaults to `True`): Show a tqdm bar on the main process.

    Returns:
        [`TeacherReport`].
    """
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens),
                        ("num_frames", 1 if num_frames is None else num_frames), ("num_processes", num_processes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if top_k_logprobs < 0:
        raise ValueError(f"top_k_logprobs must be >= 0, got {top_k_logprobs}.")
    manifest, output = Path(manifest), Path(output)
    if output.resolve() == manifest.resolve():
        raise ValueError(f"--output must differ from --manifest ('{manifest}'); the input is never overwritten.")
    report = TeacherReport()
    manifest_report = read_manifest(manifest, data_root=data_root, strict=False, require_target=False)
    raw_by_line = _raw_rows_by_line(manifest)
    bad_lines = {line for line, _ in manifest_report.bad_rows}
    valid_lines = [line for line in raw_by_line if line not in bad_lines]
    if len(valid_lines) != len(manifest_report.rows):  # both come from the same file in one pass each
        raise ManifestError(manifest, None, "the manifest changed while it was read; rerun")
    rows = [(line, raw_by_line[line], resolved)
            for line, resolved in zip(valid_lines, manifest_report.rows, strict=True)]
    report.num_rows = len(rows)
    if process_index == 0:
        for line, reason in manifest_report.bad_rows:
            logger.warning(f"{manifest}:{line}: skipped: {reason}")
    report.bad_rows.extend(manifest_report.bad_rows)
    if process_index == 0 and rows:
        root = resolve_data_root(data_root, manifest)
        if output.parent.resolve() != root and any(not os.path.isabs(raw["video_path"]) for _, raw, _ in rows):
            logger.warning(f"{output} is not in the data root {root}: read it with data_root='{root}' (or "
                           "--data_root), since its relative video paths are copied as written.")

    # Resume: every id already answered, by any process of any earlier run, is skipped.
    output.parent.mkdir(parents=True, exist_ok=True)
    own_part = _part_path(output, process_index)
    _repair_torn_tail(own_part)
    fingerprint = weights_fingerprint(vlm)
    done: set[str] = set()
    for source in [*_part_paths(output), *([output] if output.is_file() else [])]:
        answered = _read_rows(source)
        # Resuming must never mix two teachers' answers: a retrained teacher under the same path would otherwise
        # skip every row the old one answered.
        stale = next((row for row in answered if _teacher_weights(row) != fingerprint), None)
        if stale is not None:
            raise ValueError(f"{source} already holds answers from another teacher (row '{stale['id']}', weights "
                             f"{_teacher_weights(stale)}; this teacher's are {fingerprint}); delete it or choose "
                             "another --output.")
        done.update(row["id"] for row in answered)
    mine = [entry for index, entry in enumerate(rows) if index % num_processes == process_index]
    pending = [entry for entry in mine if entry[1]["id"] not in done]
    # Rows are answered video by video (a batch continues one video's cached prefix), videos in manifest order. A
    # generate call lasts as long as its longest answer, so within a video short QA answers come before the long
    # captions and share batches with them only at the end. The output keeps manifest order anyway.
    by_video: dict[tuple, list] = {}
    for entry in pending:
        by_video.setdefault(_video_key(entry[2]), []).append(entry)
    groups = [sorted(entries, key=lambda entry: entry[2]["task_type"] != "qa") for entries in by_video.values()]
    report.num_resumed = len(mine) - len(pending)
    if report.num_resumed:
        logger.info(f"Resuming: {report.num_resumed} of this process's {len(mine)} rows are already answered.")

    sampling = processor.sampling_kwargs(num_frames)
    teacher_meta = {"model": teacher_name, "weights": fingerprint, "num_frames": sampling["num_frames"],
                    "frame_size": sampling["max_edge"], "sampling_fps": sampling["fps"],
                    "max_new_tokens": max_new_tokens}
    video_cache: dict = {}
    bar = tqdm(total=len(pending), desc="teacher", unit="row", disable=not progress or process_index != 0)
    with own_part.open("a", encoding="utf-8") as part:
        for entries in groups:
            good, video = [], None
            for line, raw, resolved in entries:
                try:
                    video = _load_video(resolved, video_cache, processor, num_frames=num_frames)
                except (VideoDecodeError, OSError, ValueError) as error:
                    reason = " ".join(str(error).split())
                    logger.warning(f"{manifest}:{line}: skipped: {reason}")
                    report.bad_rows.append((line, reason))
                    continue
                good.append((line, raw, resolved))
            bar.update(len(entries) - len(good))
            if not good:
                continue
            batches = _answer_video(vlm, processor, video, [resolved["prompt"] for _, _, resolved in good],
                                    batch_size=batch_size, max_new_tokens=max_new_tokens, top_k=top_k_logprobs)
            for start, answers in zip(range(0, len(good), batch_size), batches, strict=True):
                batch = good[start:start + batch_size]
                for (line, raw, _), (text, logprobs) in zip(batch, answers, strict=True):
                    if not text:
                        reason = "the teacher's answer is empty"
                        logger.warning(f"{manifest}:{line}: skipped: {reason}")
                        report.bad_rows.append((line, reason))
                        continue
                    row = dict(raw)
                    row.setdefault("reference_text", raw.get("target_text", ""))
                    row["target_text"] = text
                    row["metadata"] = {**(raw.get("metadata") or {}), "teacher": teacher_meta}
                    if logprobs is not None:
                        row["teacher_logprobs"] = {
                            **logprobs, "top_logprobs": [[round(value, _LOGPROB_DECIMALS) for value in step]
                                                         for step in logprobs["top_logprobs"]]}
                    part.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                    report.num_generated += 1
                # Durable per batch: a crash loses at most the batch in flight.
                part.flush()
                os.fsync(part.fileno())
                bar.update(len(batch))
                if on_batch_end is not None:
                    on_batch_end(report.num_generated)
    bar.close()

    if barrier is not None:
        barrier()
    if process_index == 0:
        merged: dict[str, dict] = {}
        for source in [*([output] if output.is_file() else []), *_part_paths(output)]:
            merged.update((row["id"], row) for row in _read_rows(source))
        write_manifest(output, (merged[raw["id"]] for _, raw, _ in rows if raw["id"] in merged))
        for part_path in _part_paths(output):
            part_path.unlink()
        report.output = output
        logger.info(f"Wrote {sum(raw['id'] in merged for _, raw, _ in rows)} of {len(rows)} rows to {output} "
                    f"({len(report.bad_rows)} skipped).")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m video2lora.teacher",
        description="Replace each manifest row's target_text with the frozen base's greedy answer given the video.",
    )
    parser.add_argument("--model", required=True,
                        help="SmolVLM folder or Hub id, or a Video2LoRA checkpoint (its base is used).")
    parser.add_argument("--manifest", required=True, help="Input JSONL manifest.")
    parser.add_argument("--output", required=True, help="Output JSONL manifest (written atomically; resumable).")
    parser.add_argument("--data_root", default=None, help="Root of relative video paths (default: the manifest's "
                        "folder, or $VIDEO2LORA_DATA_ROOT).")
    parser.add_argument("--num_frames", type=int, default=None,
                        help="Most frames per video (default: the processor's video_sampling max_frames).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--top_k_logprobs", type=int, default=0,
                        help="Also store the teacher's top-k log-probs per answer token (for --kl_weight).")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    return parser


def main(argv: Sequence[str] | None = None) -> TeacherReport:
    """Command line entry point; see `python -m video2lora.teacher --help`."""
    from accelerate import PartialState

    args = build_parser().parse_args(argv)
    # accelerate only sets up several CPU processes (torchrun, `accelerate launch --multi_gpu` without GPUs) when
    # told it runs on CPU; otherwise each process would believe it is alone and answer every row.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=True) if multi_cpu else PartialState()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if state.is_main_process else logging.WARNING)
    try:
        dtype: Any = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        vlm, processor = load_teacher(args.model, dtype=dtype, device=state.device)
        report = generate_teacher_targets(
            vlm, processor, args.manifest, args.output, data_root=args.data_root, num_frames=args.num_frames,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, top_k_logprobs=args.top_k_logprobs,
            teacher_name=str(args.model), process_index=state.process_index, num_processes=state.num_processes,
            barrier=state.wait_for_everyone, progress=not args.no_progress,
        )
    except (ManifestError, ValueError, FileNotFoundError) as error:
        print(f"video2lora.teacher: error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Answered rows are already on disk in the part files; a rerun skips them.
        print("video2lora.teacher: interrupted; rerun the same command to continue", file=sys.stderr)
        raise SystemExit(130) from None
    if state.is_main_process:
        print(f"teacher: {report.num_rows} rows, {len(report.bad_rows)} skipped, output {report.output}")
    return report


if __name__ == "__main__":
    main()

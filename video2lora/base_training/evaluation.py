"""Greedy exact match of the base per question type, with the video in context and blind."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from transformers import SmolVLMForConditionalGeneration

from processing_video2lora import Video2LoRAProcessor

from ..tiny import END_OF_UTTERANCE
from ..world import QUESTION_TYPES, generate_clip
from .batches import PromptEncoder, clip_video, fast_pixel_values
from .recipe import WORLD_OPTIONS

__all__ = ["evaluate_base", "format_scores"]


@torch.no_grad()
def evaluate_base(
    model: SmolVLMForConditionalGeneration,
    processor: Video2LoRAProcessor,
    seeds: Iterable[int],
    *,
    batch_size: int = 128,
    max_new_tokens: int = 8,
    world_options: dict | None = None,
) -> dict:
    """Greedy exact match per question type, with the video in context and blind (text only, same model).

    This is "Base answers with video" (`video2lora.runner.answer_with_video`) and "Blind" on the bare base, with its
    own loop for two reasons. The runner's functions take a `Video2LoRAModel`, a hypernetwork around the base, which
    does not exist while the base trains, and Blind there goes through the hypernetwork's `answer`. And the runner
    generates one video's questions per call, where this answers `batch_size` questions of many clips per call from
    [`fast_pixel_values`]: about 25 times fewer calls for a validation that runs every few minutes inside the
    training budget. The prompts are the same (the processor's, see [`PromptEncoder`]); on 40 test clips the
    runner's 289 answers equal these prompts' answered one clip at a time, and both score 1.000. But a batch mixing
    clips pads each row differently, which may change the last bits of the logits, so identical greedy answers are
    not guaranteed; this path is the one that scored the shipped base (`eval.json`).

    Args:
        model (`SmolVLMForConditionalGeneration`): The base.
        processor (`Video2LoRAProcessor`): Its processor.
        seeds (`Iterable[int]`): Clip seeds (use a held-out split).
        batch_size (`int`): Questions per generate call.
        max_new_tokens (`int`): Answers are one word; a few tokens suffice.
        world_options (`dict`, *optional*): `generate_clip` options; defaults to the training world.

    Returns:
        `dict`: `video` and `blind` map each question type (and `overall`) to exact match; `num_items` counts the
        questions per type.
    """
    model.eval()
    world_options = WORLD_OPTIONS if world_options is None else world_options
    items = []
    for seed in seeds:
        clip = generate_clip(int(seed), **world_options)
        video, timestamps, duration = clip_video(clip)
        for question, answer, kind in clip.questions:
            items.append((video, timestamps, duration, question, answer, kind))
    tokenizer = processor.tokenizer
    eou = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    encoders: dict[tuple, PromptEncoder] = {}
    correct = {"video": defaultdict(int), "blind": defaultdict(int)}
    totals: dict[str, int] = defaultdict(int)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        rows_video, rows_blind = [], []
        for video, timestamps, duration, question, _, _ in chunk:
            key = (len(video), tuple(timestamps), duration)
            if key not in encoders:
                encoders[key] = PromptEncoder(processor, *key)
            rows_video.append(encoders[key].prompt_ids(question, with_video=True))
            rows_blind.append(encoders[key].prompt_ids(question, with_video=False))
        encoder = next(iter(encoders.values()))
        pixel_values = fast_pixel_values(np.stack([entry[0] for entry in chunk])).to(model.device)
        for mode, rows in (("video", rows_video), ("blind", rows_blind)):
            input_ids, attention_mask = (tensor.to(model.device) for tensor in encoder.pad(rows, side="left"))
            extra = {"pixel_values": pixel_values} if mode == "video" else {}
            generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, eos_token_id=eou,
                                       pad_token_id=tokenizer.pad_token_id, **extra)
            answers = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
            for (_, _, _, _, reference, kind), prediction in zip(chunk, answers, strict=True):
                hit = int(prediction.strip() == reference)
                correct[mode][kind] += hit
                correct[mode]["overall"] += hit
        for entry in chunk:
            totals[entry[5]] += 1
            totals["overall"] += 1
    order = [kind for kind in (*QUESTION_TYPES, "overall") if totals.get(kind)]
    return {
        mode: {kind: correct[mode][kind] / totals[kind] for kind in order} for mode in ("video", "blind")
    } | {"num_items": {kind: totals[kind] for kind in order}}


def format_scores(scores: dict[str, float]) -> str:
    """One line of `type=score` pairs, for progress messages."""
    return " ".join(f"{kind}={value:.3f}" for kind, value in scores.items())

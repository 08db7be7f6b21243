"""The recipe of the embedded default's base: its architecture, the world it sees, the training knobs, a fresh model.

The architecture and schedule are docs/design.md §8's working recipe: patch size 4 with pixel-shuffle 4 (16 tokens per
frame), lr 1e-3 with warm-up and cosine decay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, SmolVLMForConditionalGeneration

from processing_video2lora import Video2LoRAProcessor

from ..tiny import END_OF_UTTERANCE, build_processor, build_tokenizer, tiny_smolvlm_config
from ..world import CAPTION_PROMPT, generate_clip, split_seeds

__all__ = [
    "BASE_ARCHITECTURE",
    "WORLD_OPTIONS",
    "BaseTrainingArguments",
    "base_generation_config",
    "build_base",
    "world_corpus",
]

# The working recipe of docs/design.md §8.
BASE_ARCHITECTURE = dict(image_size=64, patch_size=4, scale_factor=4, vision_hidden=64, vision_layers=2,
                         text_hidden=128, text_layers=4, text_heads=4)
# World options the base is trained and evaluated with: 4 key steps, shapes of radius 8 at 64 px.
WORLD_OPTIONS = dict(num_steps=4, size=64, radius=8.0)


@dataclass
class BaseTrainingArguments:
    """Knobs of [`~video2lora.base_training.train_base`]; every field but `architecture` is a command-line flag.

    Args:
        output_dir (`str`): Where `last-checkpoint/` and `log.jsonl` go.
        minutes (`float`): Wall-time budget of this invocation; training stops early when it is spent.
        max_steps (`int`): The most steps ever taken.
        vision_warmup_steps (`int`): First steps that train only the vision tower and connector on the per-token
            colour and shape losses, a cheap head start for the slowest skill (shape).
        batch_clips (`int`): Clips per step.
        questions_per_clip (`int`): Questions packed as turns of one sequence per clip.
        caption_probability (`float`): Probability that a clip's sequence ends with the caption.
        order_weight (`float`): How much more often than most types an order question is packed (see
            [`~video2lora.base_training.sample_turns`]).
        learning_rate (`float`): Peak AdamW learning rate.
        warmup_fraction (`float`): Fraction of the run spent in linear warm-up before the cosine decay.
        schedule_minutes (`float`): Wall time the learning-rate schedule spans, across resumptions (defaults to
            `minutes`). Progress is the further of `step / max_steps` and elapsed training time over this. Given
            with `--resume`, it replaces the checkpoint's span, which lets a finished run continue.
        new_cycle (`bool`): With `--resume`, start a fresh schedule (warm-up, then cosine over `schedule_minutes`)
            from the checkpoint's weights and optimizer state: a warm restart that also anneals by the end.
        weight_decay (`float`): AdamW weight decay.
        shape_weight (`float`): Weight of the per-token shape loss relative to the colour loss.
        aux_weight (`float`): Weight of all auxiliary losses relative to the answer loss.
        binding_weight (`float`): Weight of the binding loss (see [`~video2lora.base_training.binding_loss`]); 0
            turns it off and keeps the faster SDPA attention.
        save_minutes (`float`): Minutes between checkpoints.
        eval_minutes (`float`): Minutes between validation runs.
        num_validation_clips (`int`): Validation clips scored at every validation run.
        tokenizer_clips (`int`): Training clips whose text trains the tokenizer.
        seed (`int`): Seeds the model initialization and the clip sampling.
        threads (`int`): Torch CPU threads.
        device (`str`): Torch device to train on (`cpu`, `cuda`). Checkpoints are saved on the CPU, so a run may
            resume on another device; clips are still rendered on the CPU.
        architecture (`dict`): Overrides of [`BASE_ARCHITECTURE`] for a fresh model (tests use a smaller one).
    """

    output_dir: str = "runs/base"
    minutes: float = 35.0
    max_steps: int = 100000
    vision_warmup_steps: int = 100
    batch_clips: int = 16
    questions_per_clip: int = 4
    caption_probability: float = 0.25
    order_weight: float = 2.0
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.04
    schedule_minutes: float = 0.0
    new_cycle: bool = False
    weight_decay: float = 0.01
    shape_weight: float = 3.0
    aux_weight: float = 1.0
    binding_weight: float = 1.0
    save_minutes: float = 3.0
    eval_minutes: float = 4.0
    num_validation_clips: int = 60
    tokenizer_clips: int = 3000
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    architecture: dict = field(default_factory=lambda: dict(BASE_ARCHITECTURE))


def world_corpus(num_clips: int) -> list[str]:
    """Captions, questions and answers of the first `num_clips` training clips, plus the caption prompt."""
    corpus = [CAPTION_PROMPT]
    for seed in split_seeds("train", num_clips):
        clip = generate_clip(seed, **WORLD_OPTIONS)
        corpus.append(clip.caption)
        for question, answer, _ in clip.questions:
            corpus += [question, answer]
    return corpus


def build_base(
    tokenizer_clips: int = 3000, seed: int = 0, **architecture
) -> tuple[SmolVLMForConditionalGeneration, Video2LoRAProcessor]:
    """A freshly initialized tiny SmolVLM and its processor, with a tokenizer trained on the world's text.

    Args:
        tokenizer_clips (`int`): Training clips whose text trains the byte-level BPE.
        seed (`int`): Torch seed of the initialization.
        architecture: Overrides of [`BASE_ARCHITECTURE`] (see `tiny_smolvlm_config`).

    Returns:
        `tuple`: The model (its generation config set by [`base_generation_config`]) and its processor.
    """
    tokenizer = build_tokenizer(world_corpus(tokenizer_clips), vocab_size=512)
    config = tiny_smolvlm_config(tokenizer, **{**BASE_ARCHITECTURE, **architecture})
    config.text_config.use_cache = True
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    model.generation_config = base_generation_config(tokenizer)
    return model, build_processor(tokenizer, config)


def base_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy decoding that stops at `<end_of_utterance>`, at most 64 new tokens (the teacher's setting).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The base's tokenizer, for the special token ids.
    """
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=64,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )

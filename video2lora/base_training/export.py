"""The trained base as a standard Hugging Face folder, its held-out score and its model card (`video2lora/hub_cards/base.md`)."""

from __future__ import annotations

import json
import os

import torch
from transformers import SmolVLMForConditionalGeneration

from processing_video2lora import Video2LoRAProcessor

from ..cards import render_card
from ..world import split_seeds
from .evaluation import evaluate_base
from .recipe import WORLD_OPTIONS, base_generation_config

__all__ = ["REPRODUCE_COMMAND", "evaluate_folder", "export_base", "write_model_card"]

REPRODUCE_COMMAND = (
    "python -m video2lora.base_training --output_dir runs/base --minutes 180 --export video2lora/checkpoints/smolvlm-world "
    "--eval_test"
)
CARD_TAGS = ["smolvlm", "video", "video2lora", "tiny", "synthetic"]


def write_model_card(path: str, num_parameters: int, command: str = REPRODUCE_COMMAND,
                     result: dict | None = None) -> None:
    """Write the folder's `README.md` from `video2lora/hub_cards/base.md`, with the evaluation table when `result` is given.

    Args:
        path (`str`): The exported folder.
        num_parameters (`int`): The base's parameter count.
        command (`str`): The command that reproduces the base.
        result (`dict`, *optional*): An [`evaluate_folder`] result (`eval.json`).
    """
    card = render_card("base", library_name="transformers", pipeline_tag="image-text-to-text", license="apache-2.0",
                       tags=CARD_TAGS, num_parameters=f"{num_parameters:,}", command=command, result=result)
    with open(os.path.join(path, "README.md"), "w") as handle:
        handle.write(card)


def export_base(model: SmolVLMForConditionalGeneration, processor: Video2LoRAProcessor, path: str,
                command: str = REPRODUCE_COMMAND) -> None:
    """Save the base as a standard Hugging Face folder: weights, config, generation config, processor, card.

    Args:
        model (`SmolVLMForConditionalGeneration`): The trained base.
        processor (`Video2LoRAProcessor`): Its processor.
        path (`str`): The folder (created when missing).
        command (`str`): The command the card gives to reproduce the base.
    """
    os.makedirs(path, exist_ok=True)
    model.generation_config = base_generation_config(processor.tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    write_model_card(path, sum(p.numel() for p in model.parameters()), command)


def evaluate_folder(path: str, num_clips: int = 400, threads: int = 2, device: str = "cpu") -> dict:
    """Evaluate an exported base on the test split, write `eval.json` next to it and put the table on its card.

    Args:
        path (`str`): The exported folder.
        num_clips (`int`): Test clips to score.
        threads (`int`): Torch CPU threads.
        device (`str`): Torch device to run on.

    Returns:
        `dict`: The [`~video2lora.base_training.evaluate_base`] result plus `split`, `num_clips` and
        `world_options`.
    """
    torch.set_num_threads(threads)
    model = SmolVLMForConditionalGeneration.from_pretrained(path).to(device)
    processor = Video2LoRAProcessor.from_pretrained(path)
    result = evaluate_base(model, processor, split_seeds("test", num_clips))
    result["split"], result["num_clips"], result["world_options"] = "test", num_clips, WORLD_OPTIONS
    with open(os.path.join(path, "eval.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    write_model_card(path, sum(p.numel() for p in model.parameters()), result=result)
    return result

"""The training loop of the base: learning-rate schedule, logging and resumable checkpoints.

Every few minutes the model, the auxiliary heads, the optimizer, the scheduler and the RNG states are written
atomically to `<output_dir>/last-checkpoint/` as safetensors plus JSON (no pickle). Checkpoints are device-free:
`--device cuda` trains on a GPU (clips are still rendered on the CPU) and a run may resume on either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

from processing_video2lora import Video2LoRAProcessor

from ..world import SPLIT_SEED_RANGES, generate_clip, split_seeds
from .batches import TYPE_WEIGHTS, PromptEncoder, assert_fast_pixels_match, clip_video, make_batch
from .evaluation import evaluate_base, format_scores
from .losses import AuxiliaryHeads, training_losses
from .recipe import WORLD_OPTIONS, BaseTrainingArguments, build_base

__all__ = [
    "CHECKPOINT_DIR",
    "find_checkpoint",
    "learning_rate_factor",
    "load_training_checkpoint",
    "save_training_checkpoint",
    "train_base",
]

CHECKPOINT_DIR = "last-checkpoint"


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON scalars; no pickle anywhere."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of [`_flatten_optimizer`]: an optimizer `state_dict`."""
    state: dict[int, dict] = defaultdict(dict)
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state[int(index)][name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state[int(index)][name] = value
    return {"state": dict(state), "param_groups": meta["param_groups"]}


def save_training_checkpoint(output_dir: str, model: SmolVLMForConditionalGeneration, processor: Video2LoRAProcessor,
                             heads: AuxiliaryHeads, optimizer: torch.optim.Optimizer,
                             schedule: dict, step: int, rng: np.random.Generator,
                             args: BaseTrainingArguments) -> str:
    """Atomically write `<output_dir>/last-checkpoint/` (safetensors + JSON).

    The checkpoint is written to a temporary folder first, then swapped in with `os.replace`: a crash leaves
    either the old checkpoint or the new one, never half of one.

    Args:
        output_dir (`str`): The run's folder.
        model (`SmolVLMForConditionalGeneration`): The base (saved as a Hugging Face folder).
        processor (`Video2LoRAProcessor`): Its processor.
        heads (`AuxiliaryHeads`): The auxiliary heads (`aux_heads.safetensors`).
        optimizer (`torch.optim.Optimizer`): Its tensors go to `optimizer.safetensors`, the rest to JSON.
        schedule (`dict`): The wall-time schedule (`elapsed_s`, `total_s`, optionally `start_step`).
        step (`int`): Steps taken.
        rng (`np.random.Generator`): The clip-sampling stream; the torch RNG goes to `rng.safetensors`.
        args (`BaseTrainingArguments`): The run's arguments, for the record.

    Returns:
        `str`: The checkpoint folder.
    """
    final = os.path.join(output_dir, CHECKPOINT_DIR)
    temporary, previous = final + ".tmp", final + ".old"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    model.save_pretrained(temporary)
    processor.save_pretrained(temporary)
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
              os.path.join(temporary, "aux_heads.safetensors"))
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer)
    save_file(optimizer_tensors, os.path.join(temporary, "optimizer.safetensors"))
    save_file({"torch_rng": torch.get_rng_state()}, os.path.join(temporary, "rng.safetensors"))
    trainer_state = {
        "step": step,
        "optimizer": optimizer_meta,
        "scheduler": dict(schedule),
        "numpy_rng": rng.bit_generator.state,
        "args": asdict(args),
    }
    with open(os.path.join(temporary, "trainer_state.json"), "w") as handle:
        json.dump(trainer_state, handle, indent=1)
    # A directory cannot be replaced while non-empty: move the old one aside, swap, then delete it.
    if os.path.isdir(final):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(final, previous)
    os.replace(temporary, final)
    shutil.rmtree(previous, ignore_errors=True)
    return final


def find_checkpoint(output_dir: str) -> str | None:
    """The last complete checkpoint under `output_dir`, including one left aside by a crash mid-swap."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
    return None


def load_training_checkpoint(path: str) -> tuple[SmolVLMForConditionalGeneration, Video2LoRAProcessor, dict]:
    """Model, processor and the raw training state of a checkpoint written by [`save_training_checkpoint`].

    Args:
        path (`str`): The checkpoint folder.

    Returns:
        `tuple`: The model, its processor and `trainer_state.json` with `aux_heads`, `optimizer` (a `state_dict`)
        and `torch_rng` filled in from the safetensors files.
    """
    model = SmolVLMForConditionalGeneration.from_pretrained(path)
    processor = Video2LoRAProcessor.from_pretrained(path)
    with open(os.path.join(path, "trainer_state.json")) as handle:
        state = json.load(handle)
    state["aux_heads"] = load_file(os.path.join(path, "aux_heads.safetensors"))
    state["optimizer"] = _unflatten_optimizer(load_file(os.path.join(path, "optimizer.safetensors")), state["optimizer"])
    state["torch_rng"] = load_file(os.path.join(path, "rng.safetensors"))["torch_rng"]
    return model, processor, state


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def learning_rate_factor(progress: float, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak; `progress` runs from 0 to 1 over the whole run."""
    if progress < warmup_fraction:
        return max(progress / warmup_fraction, 0.01)
    progress = min(1.0, (progress - warmup_fraction) / (1.0 - warmup_fraction))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _log(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def train_base(args: BaseTrainingArguments, resume: bool = False,
               ) -> tuple[SmolVLMForConditionalGeneration, Video2LoRAProcessor, dict]:
    """Train (or continue training) the base within `args.minutes` of wall time.

    Args:
        args (`BaseTrainingArguments`): The recipe.
        resume (`bool`): Continue from `<output_dir>/last-checkpoint/` when there is one.

    Returns:
        `tuple`: The model, its processor and the last validation result (empty when none ran).
    """
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "log.jsonl")
    checkpoint = find_checkpoint(args.output_dir) if resume else None
    if checkpoint:
        model, processor, state = load_training_checkpoint(checkpoint)
        step = state["step"]
    else:
        model, processor = build_base(args.tokenizer_clips, args.seed, **args.architecture)
        state, step = None, 0
    config: SmolVLMConfig = model.config
    num_steps = WORLD_OPTIONS["num_steps"]
    device = torch.device(args.device)
    model.to(device)
    heads = AuxiliaryHeads(config.text_config.hidden_size, num_steps).to(device)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=args.learning_rate,
                                  weight_decay=args.weight_decay)
    # The schedule runs on wall time as well as steps: on a shared CPU the step rate is unknown in advance, and
    # a step-only cosine cut short by the time budget would end training at a high learning rate.
    schedule = {"elapsed_s": 0.0, "total_s": 60.0 * (args.schedule_minutes or args.minutes)}
    rng = np.random.default_rng([args.seed, 1])
    if state is not None:
        heads.load_state_dict(state["aux_heads"])
        optimizer.load_state_dict(state["optimizer"])
        schedule = state["scheduler"]
        if args.new_cycle:
            schedule = {"elapsed_s": 0.0, "total_s": 60.0 * (args.schedule_minutes or args.minutes),
                        "start_step": step}
        elif args.schedule_minutes:
            # An explicit span on resume stretches the schedule (a warm restart of the cosine), so that a finished
            # run can be continued instead of stopping at once at progress 1.
            schedule["total_s"] = 60.0 * args.schedule_minutes
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    grid = config.vision_config.image_size // config.vision_config.patch_size // config.scale_factor
    probe = generate_clip(0, **WORLD_OPTIONS)
    video, timestamps, duration = clip_video(probe)
    assert_fast_pixels_match(processor, video)
    encoder = PromptEncoder(processor, len(video), timestamps, duration)
    validation_seeds = split_seeds("validation", args.num_validation_clips)
    train_seeds = SPLIT_SEED_RANGES["train"]
    type_weights = TYPE_WEIGHTS | {"order": args.order_weight}

    deadline = started + 60 * args.minutes
    last_save = last_eval = time.monotonic()
    result: dict = {}
    running: dict[str, float] = defaultdict(float)
    running_count = 0
    model.train()
    progress = tqdm(total=args.max_steps, initial=step, desc="base", dynamic_ncols=True)
    resumed_elapsed, loop_start = schedule["elapsed_s"], time.monotonic()

    def progress_fraction() -> float:
        schedule["elapsed_s"] = resumed_elapsed + time.monotonic() - loop_start
        steps_done = step - schedule.get("start_step", 0)  # a new cycle counts its own steps
        return min(1.0, max(steps_done / args.max_steps, schedule["elapsed_s"] / schedule["total_s"]))

    while progress_fraction() < 1.0 and time.monotonic() < deadline:
        lr = args.learning_rate * learning_rate_factor(progress_fraction(), args.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = rng.integers(train_seeds.start, train_seeds.stop, size=args.batch_clips)
        clips = [generate_clip(int(seed), **WORLD_OPTIONS) for seed in seeds]
        batch = make_batch(clips, encoder, rng, args.questions_per_clip, args.caption_probability, grid,
                           type_weights).to(device)
        losses = training_losses(model, heads, batch, args, vision_only=step < args.vision_warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()), 1.0)
        optimizer.step()
        step += 1
        for name, value in losses.items():
            running[name] += value.item() if isinstance(value, torch.Tensor) else float(value)
        running_count += 1
        progress.update(1)
        progress.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}",
                             answer=f"{float(losses.get('answer', torch.zeros(())).detach()):.3f}")

        now = time.monotonic()
        if step % 10 == 0:
            _log(log_path, {"step": step, "elapsed_s": round(now - started, 1), "lr": lr,
                            **{k: round(v / running_count, 4) for k, v in running.items()}})
            running.clear()
            running_count = 0
        if now - last_eval > 60 * args.eval_minutes and step > args.vision_warmup_steps:
            result = evaluate_base(model, processor, validation_seeds)
            model.train()
            _log(log_path, {"step": step, "elapsed_s": round(now - started, 1), "validation": result})
            progress.write(f"step {step} validation video {format_scores(result['video'])} | "
                           f"blind {format_scores(result['blind'])}")
            last_eval = time.monotonic()
        if now - last_save > 60 * args.save_minutes:
            save_training_checkpoint(args.output_dir, model, processor, heads, optimizer, schedule, step, rng, args)
            last_save = time.monotonic()
    progress.close()
    save_training_checkpoint(args.output_dir, model, processor, heads, optimizer, schedule, step, rng, args)
    result = evaluate_base(model, processor, validation_seeds)
    _log(log_path, {"step": step, "elapsed_s": round(time.monotonic() - started, 1), "validation": result,
                    "final": True})
    print(f"step {step} validation video {format_scores(result['video'])} | blind {format_scores(result['blind'])}")
    model.eval()
    return model, processor, result

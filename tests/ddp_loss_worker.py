"""One process of `test_train_hf.test_ddp_normalizes_by_the_global_token_count` (run by torchrun, 2 CPU processes).

Each process trains one `training_step` of `Video2LoRATrainer` through DDP on its own one-question batch (answers of
different lengths and weights), then checks the averaged gradient against a single process's:

- `average_tokens_across_devices=True`: the gradient of the one big batch of both questions (the loss normalized by the
  global answer-token count);
- `average_tokens_across_devices=False`: the mean of each process's per-batch token mean.

Usage: `torchrun --standalone --nproc_per_node 2 tests/ddp_loss_worker.py BASE_DIR OUTPUT_DIR`
"""

import sys

import torch
from transformers import TrainingArguments

import train_hf
from modeling_video2lora import Video2LoRAModel
from tests.conftest import TINY_HYPERNETWORK, make_frames, perturb_

QUESTIONS = [("what colour is the square?", "blue", 1.0), ("what shape is it?", "a red circle moves left.", 2.0)]


def fresh_model(base: str) -> Video2LoRAModel:
    """The same perturbed hypernetwork in every process and every call."""
    torch.manual_seed(0)
    model = Video2LoRAModel.from_base(base, **TINY_HYPERNETWORK)
    perturb_(model)
    return model


def features(index: int) -> dict:
    prompt, target, weight = QUESTIONS[index]
    return {"frames": make_frames(2, seed=index), "timestamps": [0.0, 1.0], "duration": 2.0,
            "questions": [{"prompt": prompt, "target": target, "teacher": None, "weight": weight}]}


def grads_of(model: Video2LoRAModel) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.hypernetwork.parameters()]


def main(base: str, output_dir: str) -> None:
    for average_tokens in (True, False):
        args = TrainingArguments(output_dir=output_dir, report_to="none", use_cpu=True,
                                 average_tokens_across_devices=average_tokens, ddp_find_unused_parameters=False)
        rank, world_size = args.process_index, args.world_size
        assert world_size == len(QUESTIONS), world_size
        model = fresh_model(base)
        collator = train_hf.Video2LoRACollator(model.processor, model.config.instruction)
        trainer = train_hf.Video2LoRATrainer(model=model, args=args, data_collator=collator)
        wrapped = trainer.accelerator.prepare_model(model)  # DistributedDataParallel, as `train` wraps it
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)

        batch = collator([features(rank)])
        _, num_items = trainer.get_batch_samples(iter([batch]), 1, args.device)
        counts = [(collator([features(i)])["labels"] != -100).sum().item() for i in range(world_size)]
        assert num_items == (sum(counts) if average_tokens else counts[rank]), (num_items, counts)
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(wrapped, batch, num_items)
        ddp_grads = grads_of(model)  # averaged over the processes by DDP

        reference = fresh_model(base)  # one process, no DDP
        if average_tokens:
            reference(**collator([features(i) for i in range(world_size)])).loss.backward()
            expected = grads_of(reference)
        else:
            per_process = []
            for i in range(world_size):
                reference.zero_grad()
                reference(**collator([features(i)])).loss.backward()
                per_process.append(grads_of(reference))
            expected = [sum(grads) / world_size for grads in zip(*per_process, strict=True)]
        for got, want in zip(ddp_grads, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        trainer.accelerator.wait_for_everyone()
        print(f"rank {rank}: average_tokens_across_devices={average_tokens} ok", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])

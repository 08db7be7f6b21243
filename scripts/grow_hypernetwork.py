"""Give a trained hypernetwork more capacity without changing what it emits, so that training can go on with it
(README, "Long videos"): a larger LoRA rank, more perceiver latents, a deeper encoder, or any of them together.

- `--rank R`: each new rank direction gets a new output query (drawn like the first ones) and, with the bias block, a
  new row of the video-independent block; their B columns start at zero (`b_scale` 0, `bias_b` 0), so every adapter
  is exactly the old one's until it trains. `lora_scale` stays the old rank's.
- `--latents N` (a multiple of the old count): each latent is copied N/n times. The encoder has no attention among
  latents, so a copy stays equal to its original, and the decoder's attention over k copies of every key and value
  is the attention over one copy of each: the adapters are the old ones exactly (`--noise 0`). Identical copies would
  get identical gradients and never part, so by default each copy is moved by `--noise` (relative to the latents'
  spread), which moves the adapters slightly.
- `--blocks N`: encoder blocks are appended until there are N, each a copy of the last one with the output
  projections of its attention and its MLP at zero. Both are residual, so a new block passes the latents through
  unchanged and the adapters are the old ones exactly; its output projections have gradients from the start, and
  the copied projections give the block the last one's reading of the context to start from.

The folder's other files are copied, its subfolders are not.

    python scripts/grow_hypernetwork.py video2lora/checkpoints/video2lora-world runs/rank16 --rank 16
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configuration_video2lora import Video2LoRAConfig
from video2lora.checks import positive_int


def grow_rank(weights: dict[str, torch.Tensor], old_rank: int, new_rank: int, num_modules: int, std: float,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The hypernetwork's `weights` with rank `new_rank` instead of `old_rank`, emitting the same adapters."""
    extra = new_rank - old_rank
    grown = dict(weights)
    queries = weights["hypernetwork.output_queries"]  # [M * r, d], module-major
    dim = queries.shape[-1]
    new = torch.randn(num_modules, extra, dim, generator=generator, dtype=queries.dtype) * std
    grown["hypernetwork.output_queries"] = torch.cat([queries.view(num_modules, old_rank, dim), new], 1).flatten(0, 1)
    for name, tensor in weights.items():
        if not name.startswith("hypernetwork.heads."):
            continue
        if name.endswith(".a_scale"):  # [L, r]
            grown[name] = torch.cat([tensor, torch.ones(tensor.shape[0], extra, dtype=tensor.dtype)], 1)
        elif name.endswith(".b_scale"):  # [L, r]: new directions are silent until trained
            grown[name] = torch.cat([tensor, torch.zeros(tensor.shape[0], extra, dtype=tensor.dtype)], 1)
        elif name.endswith(".bias_a"):  # [L, r, in]
            rows = torch.randn(tensor.shape[0], extra, tensor.shape[2], generator=generator, dtype=tensor.dtype)
            grown[name] = torch.cat([tensor, rows * tensor.shape[2] ** -0.5], 1)
        elif name.endswith(".bias_b"):  # [L, out, r]
            grown[name] = torch.cat([tensor, torch.zeros(*tensor.shape[:2], extra, dtype=tensor.dtype)], 2)
    return grown


def grow_latents(weights: dict[str, torch.Tensor], copies: int, noise: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The hypernetwork's `weights` with every latent `copies` times, each copy but the first moved by `noise` times
    the latents' standard deviation."""
    latents = weights["hypernetwork.latents"]  # [n, d]
    grown = latents.repeat(copies, 1)  # [copies * n, d]: copy j of latent i at row j * n + i
    jitter = torch.randn(grown.shape, generator=generator, dtype=latents.dtype) * noise * latents.std()
    jitter[: latents.shape[0]] = 0  # the originals stay as they were
    return {**weights, "hypernetwork.latents": grown + jitter}


def grow_blocks(weights: dict[str, torch.Tensor], old_blocks: int, new_blocks: int,
                share_context_kv: bool) -> dict[str, torch.Tensor]:
    """The hypernetwork's `weights` with `new_blocks` encoder blocks instead of `old_blocks`, the new ones silent
    copies of the last."""
    last = f"hypernetwork.encoder.{old_blocks - 1}."
    # With shared keys and values only block 0 projects the context, so a copy of it leaves that projection out.
    own_context = (".attention.norm_context.", ".attention.to_kv.")
    grown = dict(weights)
    for index in range(old_blocks, new_blocks):
        for name, tensor in weights.items():
            if not name.startswith(last) or (share_context_kv and any(part in name for part in own_context)):
                continue
            silent = name.endswith((".attention.to_out.weight", ".feed_forward.1.down.weight"))
            copy = torch.zeros_like(tensor) if silent else tensor.clone()
            grown[f"hypernetwork.encoder.{index}." + name[len(last):]] = copy
    return grown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a hypernetwork checkpoint folder")
    parser.add_argument("output", type=Path)
    parser.add_argument("--rank", type=positive_int, default=None, help="the new rank, larger than the old")
    parser.add_argument("--latents", type=positive_int, default=None,
                        help="the new number of latents, a multiple of the old")
    parser.add_argument("--blocks", type=positive_int, default=None,
                        help="the new number of perceiver encoder blocks, larger than the old")
    parser.add_argument("--noise", type=float, default=1e-3,
                        help="how far each latent's copies move from it, relative to the latents' spread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rank is None and args.latents is None and args.blocks is None:
        parser.error("give --rank, --latents, --blocks or several of them")
    if not math.isfinite(args.noise) or args.noise < 0:
        parser.error(f"--noise must be a number at least 0, got {args.noise}")
    if not (args.model / "config.json").is_file() or not (args.model / "model.safetensors").is_file():
        parser.error(f"{args.model} is not a hypernetwork checkpoint (config.json and model.safetensors)")
    config = Video2LoRAConfig.from_pretrained(args.model)  # its lora_scale resolved for its own rank
    old_rank, old_latents, old_blocks = config.lora_r, config.num_latents, config.num_blocks
    if args.rank is not None and args.rank <= old_rank:
        parser.error(f"--rank must be larger than the checkpoint's rank {old_rank}, got {args.rank}")
    if args.latents is not None and (args.latents <= old_latents or args.latents % old_latents):
        parser.error(f"--latents must be a larger multiple of the checkpoint's {old_latents} latents, got {args.latents}")
    if args.blocks is not None and args.blocks <= old_blocks:
        parser.error(f"--blocks must be larger than the checkpoint's {old_blocks} encoder blocks, got {args.blocks}")
    if args.output.exists():
        parser.error(f"{args.output} exists: choose a new folder")
    generator = torch.Generator().manual_seed(args.seed)
    weights = load_file(args.model / "model.safetensors")
    if args.rank is not None:
        weights = grow_rank(weights, old_rank, args.rank, len(config.target_modules), config.initializer_range,
                            generator)
        config.lora_r = args.rank  # lora_scale stays the old rank's, so the old directions keep their scale
    if args.latents is not None:
        weights = grow_latents(weights, args.latents // old_latents, args.noise, generator)
        config.num_latents = args.latents
    if args.blocks is not None:
        weights = grow_blocks(weights, old_blocks, args.blocks, config.share_context_kv)
        config.num_blocks = args.blocks
    staging = args.output.with_name(f".{args.output.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = {"config.json", "model.safetensors"}  # written below, grown
    for path in args.model.iterdir():  # the checkpoint's own files, not the runs or evaluations kept beside them
        if path.is_file() and not path.is_symlink() and path.name not in written:
            shutil.copy2(path, staging / path.name)
    config.save_pretrained(staging)
    save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
    (staging / "model.safetensors").chmod(0o644)
    staging.rename(args.output)
    print(f"wrote {args.output}: rank {config.lora_r} (was {old_rank}), {config.num_latents} latents (was "
          f"{old_latents}), {config.num_blocks} encoder blocks (was {old_blocks})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

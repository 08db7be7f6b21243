"""Give a trained hypernetwork more capacity without changing what it emits, so that training can go on with it
(README, "Long videos"): a larger LoRA rank, more perceiver latents, a deeper encoder, more target modules, or any of
them together.

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
- `--modules NAME ...`: the adapters also reach these modules of every decoder layer (e.g. `self_attn.o_proj`), each
  through new output queries and a new head, initialized as a fresh model's are: B starts at zero, so the new modules'
  updates are zero and every adapter is the old one exactly until it trains.

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


def grow_modules(weights: dict[str, torch.Tensor], config: Video2LoRAConfig, old_count: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The hypernetwork's `weights`, made for the first `old_count` of `config.target_modules`, with a silent head and
    `r` output queries more for each of the others."""
    rank, layers = config.lora_r, config.text_config.num_hidden_layers
    new_modules = config.target_modules[old_count:]
    grown = dict(weights)
    queries = weights["hypernetwork.output_queries"]  # [M * r, d], module-major: the new modules' queries go last
    dim, dtype = queries.shape[-1], queries.dtype
    new_queries = torch.randn(len(new_modules) * rank, dim, generator=generator, dtype=dtype) * config.initializer_range
    grown["hypernetwork.output_queries"] = torch.cat([queries, new_queries])
    per_layer = (layers,) if config.head_type == "per_layer" else ()
    dims = config.target_module_dims()
    for index, name in enumerate(new_modules, start=old_count):
        in_features, out_features = dims[name]
        head = f"hypernetwork.heads.{index}."
        # As `Video2LoRAPreTrainedModel._init_weights` starts a head: the features it reads are unit vectors.
        grown[head + "weight"] = torch.randn(*per_layer, dim, in_features + out_features, generator=generator,
                                             dtype=dtype) * dim**-0.5
        grown[head + "bias"] = torch.zeros(*per_layer, in_features + out_features, dtype=dtype)
        grown[head + "a_scale"] = torch.ones(layers, rank, dtype=dtype)
        grown[head + "b_scale"] = torch.zeros(layers, rank, dtype=dtype)  # silent until trained
        if config.use_bias_block:
            grown[head + "bias_a"] = torch.randn(layers, rank, in_features, generator=generator,
                                                 dtype=dtype) * in_features**-0.5
            grown[head + "bias_b"] = torch.zeros(layers, out_features, rank, dtype=dtype)
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
    parser.add_argument("--modules", nargs="+", default=None, metavar="NAME",
                        help="more target modules of every decoder layer, e.g. self_attn.o_proj mlp.up_proj")
    parser.add_argument("--noise", type=float, default=1e-3,
                        help="how far each latent's copies move from it, relative to the latents' spread")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rank is None and args.latents is None and args.blocks is None and args.modules is None:
        parser.error("give --rank, --latents, --blocks, --modules or several of them")
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
    old_modules = list(config.target_modules)
    if args.modules is not None:
        config.target_modules = old_modules + args.modules
        try:  # unknown or repeated names
            config._validate()
        except ValueError as error:
            parser.error(f"--modules: {error}")
    if args.output.exists():
        parser.error(f"{args.output} exists: choose a new folder")
    generator = torch.Generator().manual_seed(args.seed)
    weights = load_file(args.model / "model.safetensors")
    if args.rank is not None:
        weights = grow_rank(weights, old_rank, args.rank, len(old_modules), config.initializer_range,
                            generator)
        config.lora_r = args.rank  # lora_scale stays the old rank's, so the old directions keep their scale
    if args.latents is not None:
        weights = grow_latents(weights, args.latents // old_latents, args.noise, generator)
        config.num_latents = args.latents
    if args.modules is not None:  # after the rank: the new heads are made at the new rank
        weights = grow_modules(weights, config, len(old_modules), generator)
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
          f"{old_latents}), {config.num_blocks} encoder blocks (was {old_blocks}), target modules "
          f"{', '.join(config.target_modules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

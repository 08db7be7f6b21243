"""The perceiver hypernetwork: per-layer hidden states of the frozen VLM in, one LoRA per video out.

This is a Hub file: it imports only torch, its sibling Hub files and the standard library (no einops, so the
shapes live in comments).

Shapes (docs/design.md §3): `B` videos, `L` decoder layers, `T` context positions, `h` VLM hidden size, `d` latent size,
`n` latent queries, `M` target modules per layer, `r` LoRA rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # loaded as a Hub module (a package) by trust_remote_code, or as an installed top-level module
    from .configuration_video2lora import Video2LoRAConfig
except ImportError:
    from configuration_video2lora import Video2LoRAConfig


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Positions `[b, t]` -> the Transformer's sin/cos encoding `[b, t, dim]` (wavelengths 2π to 2π·10⁴)."""
    frequencies = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(10_000.0) / dim))
    angles = positions.float()[..., None] * frequencies  # [b, t, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def attends_through_projections(*, heads: int, num_queries: int, dim: int) -> bool:
    """Whether a cross-attention reads its context through the key and value projections (few queries) rather than
    projecting every context token: cheaper per token exactly when `heads * num_queries < dim`."""
    return heads * num_queries < dim


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention from `queries` to `context`, with a key padding mask.

    With `project_context=False` the module has no key/value projection of its own and attends to `keys_values`
    projected by another block (`PerceiverHypernetwork` with `share_context_kv`).
    """

    def __init__(self, *, dim: int, heads: int, project_context: bool = True):
        super().__init__()
        self.heads = heads
        self.norm_queries = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        if project_context:
            self.norm_context = nn.LayerNorm(dim)
            self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context `[b, t, d]` -> keys, values `[b, heads, t, d/heads]`."""
        batch, length, _ = context.shape
        k, v = self.to_kv(self.norm_context(context)).view(batch, length, 2, self.heads, -1).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None = None,
                keys_values: tuple[torch.Tensor, torch.Tensor] | None = None):
        # queries [b, n, d], context [b, t, d], context_mask [b, t] (True = attend)
        batch, num_queries, dim = queries.shape
        q = self.to_q(self.norm_queries(queries)).view(batch, num_queries, self.heads, -1).transpose(1, 2)
        if keys_values is None and attends_through_projections(heads=self.heads, num_queries=num_queries, dim=dim):
            out = self._attend_through_projections(q, context, context_mask)
        else:
            k, v = keys_values if keys_values is not None else self.project_context(context)
            attn_mask = None if context_mask is None else context_mask[:, None, None, :]  # [b, 1, 1, t]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [b, heads, n, d/heads]
        return self.to_out(out.transpose(1, 2).reshape(batch, num_queries, dim))

    def _attend_through_projections(self, q: torch.Tensor, context: torch.Tensor,
                                    context_mask: torch.Tensor | None) -> torch.Tensor:
        """
        The same attention without projecting the context: `q·(x W_k) = (q W_kᵀ)·x` and `Σ p (x W_v) = (Σ p x) W_v`.

        A few latents read thousands of context tokens, so pulling the `heads * n` queries back through the key
        projection and pushing the `heads * n` attention-weighted context sums forward through the value projection
        costs `2 * heads * n * d` per token instead of the `2 * d * d` of projecting every token; with the published
        8 heads and 8 latents at d = 512, 8x less, and no `[b, t, 2d]` keys and values in memory.
        """
        batch, heads, num_queries, head_dim = q.shape
        normed = self.norm_context(context)  # [b, t, d]
        w_k, w_v = self.to_kv.weight.view(2, heads, head_dim, -1).unbind(0)  # each [heads, d/heads, d]
        q_in_context = torch.matmul(q, w_k).reshape(batch, heads * num_queries, -1)  # [b, heads * n, d]
        scores = torch.bmm(q_in_context, normed.transpose(1, 2)) * head_dim**-0.5  # [b, heads * n, t]
        if context_mask is not None:
            scores = scores.masked_fill(~context_mask[:, None, :], float("-inf"))
        mixed = torch.bmm(scores.softmax(dim=-1), normed).view(batch, heads, num_queries, -1)  # [b, heads, n, d]
        return torch.matmul(mixed, w_v.transpose(1, 2))  # [b, heads, n, d/heads]


class GatedMLP(nn.Module):
    """SwiGLU MLP `in -> hidden -> out`, the MLP of Llama-style decoders and Idefics2's perceiver."""

    def __init__(self, *, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.gate_up = nn.Linear(in_features, 2 * hidden_features, bias=False)
        self.down = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class FeedForward(nn.Sequential):
    """Pre-norm gated MLP `d -> ratio * d -> d`."""

    def __init__(self, *, dim: int, ratio: int):
        super().__init__(nn.LayerNorm(dim), GatedMLP(in_features=dim, hidden_features=ratio * dim, out_features=dim))


class PerceiverBlock(nn.Module):
    """Cross-attention from the queries to the context, then an MLP; both residual. No self-attention."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: int, project_context: bool = True):
        super().__init__()
        self.attention = CrossAttention(dim=dim, heads=heads, project_context=project_context)
        self.feed_forward = FeedForward(dim=dim, ratio=mlp_ratio)

    def forward(self, queries, context, context_mask=None, keys_values=None):
        queries = queries + self.attention(queries, context, context_mask, keys_values)
        return queries + self.feed_forward(queries)


class LoraHead(nn.Module):
    """
    Maps one feature per (layer, rank direction) to a row of A and a column of B for one target module.

    The published head is a separate `d -> in + out` linear map per layer; the shared head uses one map for all layers
    (the queries carry a layer embedding instead), which removes most of the hypernetwork's parameters at 2.2B.
    Learned scalers multiply A (start 1) and B (start 0), and a video-independent bias block (B starts 0) is
    concatenated along the rank, so an untrained hypernetwork emits an exact no-op.
    """

    def __init__(self, *, num_layers: int, rank: int, dim: int, in_features: int, out_features: int,
                 per_layer: bool, use_bias_block: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        width = in_features + out_features
        if per_layer:
            self.weight = nn.Parameter(torch.empty(num_layers, dim, width))
            self.bias = nn.Parameter(torch.zeros(num_layers, width))
        else:
            self.weight = nn.Parameter(torch.empty(dim, width))
            self.bias = nn.Parameter(torch.zeros(width))
        self.a_scale = nn.Parameter(torch.ones(num_layers, rank))
        self.b_scale = nn.Parameter(torch.zeros(num_layers, rank))
        if use_bias_block:
            self.bias_a = nn.Parameter(torch.empty(num_layers, rank, in_features))
            self.bias_b = nn.Parameter(torch.zeros(num_layers, out_features, rank))
        else:
            self.bias_a = self.bias_b = None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # features [b, L, r, d] -> A [b, L, r_eff, in], B [b, L, out, r_eff]
        if self.weight.dim() == 3:
            rows = torch.einsum("blrd,ldw->blrw", features, self.weight) + self.bias[:, None, :]
        else:
            rows = features @ self.weight + self.bias
        lora_a, b_columns = rows.split([self.in_features, self.out_features], dim=-1)
        lora_a = lora_a * self.a_scale[..., None]
        lora_b = (b_columns * self.b_scale[..., None]).transpose(-1, -2)
        if self.bias_a is not None:
            batch = features.shape[0]
            lora_a = torch.cat([lora_a, self.bias_a.expand(batch, -1, -1, -1)], dim=2)
            lora_b = torch.cat([lora_b, self.bias_b.expand(batch, -1, -1, -1)], dim=3)
        return lora_a, lora_b


class PerceiverHypernetwork(nn.Module):
    """
    Layer-to-layer perceiver: each decoder layer's states are summarized by the same encoder into `n` latents,
    `M * r` output queries read those latents, and a head turns each query into one rank direction of a LoRA.
    """

    def __init__(self, config: Video2LoRAConfig):
        super().__init__()
        text_config = config.text_config
        dim, self.rank = config.latent_size, config.lora_r
        self.num_layers = text_config.num_hidden_layers
        self.module_names = list(config.target_modules)
        projection_size = config.input_projection_size or text_config.intermediate_size
        self.input_projection = GatedMLP(in_features=text_config.hidden_size, hidden_features=projection_size,
                                         out_features=dim)
        self.latents = nn.Parameter(torch.empty(config.num_latents, dim))
        # Starts at zero (see `_init_weights`), so turning positions on for a trained perceiver is a no-op at first.
        self.position_projection = nn.Parameter(torch.empty(dim, dim)) if config.use_context_positions else None
        # Starts at zero too: a checkpoint given the segment's place reads single clips exactly as before.
        self.place_projection = nn.Parameter(torch.empty(dim, dim)) if config.use_segment_place else None
        use_layer_embedding = config.use_layer_embedding or config.head_type == "shared"
        self.layer_embedding = nn.Parameter(torch.empty(self.num_layers, dim)) if use_layer_embedding else None
        block = dict(dim=dim, heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio)
        # With shared keys and values, only the first encoder block projects the context; the others attend to it.
        self.share_context_kv = config.share_context_kv
        self.encoder = nn.ModuleList(PerceiverBlock(**block, project_context=index == 0 or not self.share_context_kv)
                                     for index in range(config.num_blocks))
        self.output_queries = nn.Parameter(torch.empty(len(self.module_names) * self.rank, dim))
        self.decoder = PerceiverBlock(**block)
        self.head_mlp = FeedForward(dim=dim, ratio=config.mlp_ratio)
        self.heads = nn.ModuleList(
            LoraHead(num_layers=self.num_layers, rank=self.rank, dim=dim, in_features=in_features,
                     out_features=out_features, per_layer=config.head_type == "per_layer",
                     use_bias_block=config.use_bias_block)
            for in_features, out_features in config.target_module_dims().values()
        )

    def position_term(self, mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """
        What `use_context_positions` adds to every layer's projected context: `[b, T, d]` (`[1, T, d]` without a
        mask), or `None` when positions are off. It is the same for every layer, so callers compute it once per
        context and pass it to each `encode_layer`.
        """
        if self.position_projection is None:
            return None
        if mask is None:
            positions = torch.arange(length, device=self.position_projection.device)[None]
        else:  # count real tokens only, so a padded row gets the positions it would have unpadded
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        encoding = sinusoidal_encoding(positions, self.position_projection.shape[0])  # [b, T, d]
        return encoding.to(self.position_projection.dtype) @ self.position_projection

    def place_term(self, place: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """
        What `use_segment_place` adds to the latent queries: `[b, 1, d]` from `place` `[b, 2]`, the fractions of the
        whole video at which each context starts and ends (`None`: every context is a whole video, `(0, 1)`), or
        `None` when the setting is off.
        """
        if self.place_projection is None:
            return None
        if place is None:
            place = torch.tensor([[0.0, 1.0]], device=self.place_projection.device).expand(batch, -1)
        dim = self.place_projection.shape[0]
        # A fraction times 100 spans the encoding's wavelengths as a hundred token positions would.
        encoding = sinusoidal_encoding(place.to(self.place_projection.device) * 100.0, dim // 2)  # [b, 2, d/2]
        return (encoding.flatten(1).to(self.place_projection.dtype) @ self.place_projection)[:, None, :]

    def encode_layer(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, layer: int,
                     position_term: torch.Tensor | None = None, place_term: torch.Tensor | None = None) -> torch.Tensor:
        """Summarize one layer's states `[b, T, h]` (mask `[b, T]`, True = real token) into latents `[b, n, d]`;
        `position_term` and `place_term` are [`position_term`]'s and [`place_term`]'s outputs for this context
        (required when their settings are on)."""
        if (position_term is None) != (self.position_projection is None):
            raise ValueError("encode_layer needs `position_term(mask, T)` exactly when use_context_positions is on.")
        if (place_term is None) != (self.place_projection is None):
            raise ValueError("encode_layer needs `place_term(place, b)` exactly when use_segment_place is on.")
        context = self.input_projection(hidden_states.to(self.latents.dtype))  # [b, T, d]
        if position_term is not None:
            context = context + position_term
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)
        if self.layer_embedding is not None:
            latents = latents + self.layer_embedding[layer]
        if place_term is not None:
            latents = latents + place_term
        keys_values = self.encoder[0].attention.project_context(context) if self.share_context_kv else None
        for block in self.encoder:
            latents = block(latents, context, mask, keys_values)
        return latents

    def decode(self, latents: torch.Tensor,
               latents_mask: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """
        Latents `[b, L, N, d]` -> `{module: (A [b, L, r_eff, in], B [b, L, out, r_eff])}`.

        `N` is `n` for one context, or the latents of several segments side by side (`segment_composition =
        "latents"`); `latents_mask` `[b, N]` (True = real) hides the padding of videos with fewer segments.
        """
        batch, num_layers, num_latents, dim = latents.shape
        latents = latents.reshape(batch * num_layers, num_latents, dim)  # the layer axis folds into the batch
        if latents_mask is not None:
            latents_mask = latents_mask.repeat_interleave(num_layers, dim=0)  # [b L, N], rows in the latents' order
        queries = self.output_queries.expand(batch, num_layers, -1, -1)
        if self.layer_embedding is not None:
            queries = queries + self.layer_embedding[None, :, None, :]
        queries = queries.reshape(batch * num_layers, -1, dim)
        features = self.decoder(queries, latents, latents_mask)
        features = F.normalize(features + self.head_mlp(features), dim=-1)
        # [(b L), (M r), d] -> M x [b, L, r, d]: one chunk of r rank directions per target module
        features = features.view(batch, num_layers, len(self.heads), self.rank, dim).unbind(2)
        return {name: head(chunk) for name, head, chunk in zip(self.module_names, self.heads, features, strict=True)}


__all__ = ["PerceiverHypernetwork", "sinusoidal_encoding", "attends_through_projections", "LoraHead", "PerceiverBlock", "CrossAttention", "FeedForward", "GatedMLP"]

"""The losses of the base: the answer loss, training-only auxiliary heads and the binding loss.

Without the auxiliary heads (docs/design.md §8), which make the vision tower perceive shape and the text model perceive
motion, shape and direction stay at chance. Without the binding loss the model never learns to find an object by its
shape name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SmolVLMForConditionalGeneration

from ..world import COLOURS, DIRECTIONS, SHAPES
from .batches import IGNORE, Batch
from .recipe import BaseTrainingArguments

__all__ = [
    "AuxiliaryHeads",
    "answer_loss",
    "binding_loss",
    "forward_rows",
    "training_losses",
    "visual_features",
]

# Text layer whose states over the visual tokens feed the temporal auxiliary heads ("text layer 2", docs/design.md §8).
TEMPORAL_LAYER = 2
# Text layers whose heads the binding loss may choose from: the last two, which read the temporal features.
BINDING_LAYERS = (-2, -1)


class AuxiliaryHeads(nn.Module):
    """Training-only linear probes that shape what the visual tokens carry (docs/design.md §8); never saved with the base.

    Connector heads read each visual token as the text model receives it and predict the colour and shape of the
    object under it, so the vision tower must resolve shape locally. Temporal heads read text layer 2 over the
    tokens of frames 2 and later, which can attend to earlier frames, and predict the object's direction of motion,
    its first colour, when it appeared and whether its colour has changed: what the motion, colour-change and order
    questions need.

    Args:
        hidden_size (`int`): Text hidden size (also the connector's output size).
        num_steps (`int`): Key steps per clip.
    """

    CONNECTOR = ("colour", "shape")
    TEMPORAL = ("direction", "first_colour", "first_step", "changed")

    def __init__(self, hidden_size: int, num_steps: int):
        super().__init__()
        self.colour = nn.Linear(hidden_size, len(COLOURS) + 1)
        self.shape = nn.Linear(hidden_size, len(SHAPES) + 1)
        self.direction = nn.Linear(hidden_size, len(DIRECTIONS))
        self.first_colour = nn.Linear(hidden_size, len(COLOURS))
        self.first_step = nn.Linear(hidden_size, num_steps)
        self.changed = nn.Linear(hidden_size, 2)

    def losses(self, states: torch.Tensor, labels: dict[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Cross-entropy of each named head on `states` `[N, h]` against `labels[name]` `[N]`.

        A head whose labels are all `IGNORE` (say, no object in frames 2 and later) gives no loss rather than NaN.
        """
        losses = {}
        for name in names:
            target = labels[name]
            if (target != IGNORE).any():
                losses[name] = F.cross_entropy(getattr(self, name)(states), target, ignore_index=IGNORE)
        return losses


def visual_features(model: SmolVLMForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """Connector output for every frame of every clip, `[B, F * tokens, h]` (all frames are real, none padding)."""
    features = model.model.get_image_features(pixel_values, return_dict=True).pooler_output
    return torch.stack(list(features))


def forward_rows(model: SmolVLMForConditionalGeneration, batch: Batch, features: torch.Tensor,
                 output_attentions: bool = False):
    """Run the text model on every row with its clip's visual features scattered over the `<image>` tokens.

    Rows of one clip share one vision pass, which is what the library does internally for a single row; the
    result is identical to passing `pixel_values` row by row.

    Args:
        model (`SmolVLMForConditionalGeneration`): The base.
        batch (`Batch`): Its rows and `row_clip`.
        features (`torch.Tensor`): [`visual_features`] of the batch's clips.
        output_attentions (`bool`): Also return the attention probabilities (needs eager attention).

    Returns:
        `tuple`: The model's output (with hidden states) and the `[R, S]` mask of the `<image>` tokens.
    """
    embeddings = model.get_input_embeddings()(batch.input_ids)
    image_mask = batch.input_ids == model.config.image_token_id
    row_features = features[batch.row_clip].to(embeddings.dtype)
    if int(image_mask.sum()) != row_features.shape[0] * row_features.shape[1]:
        raise ValueError("every row must hold exactly one clip's worth of <image> tokens")
    embeddings = embeddings.masked_scatter(image_mask[..., None], row_features.reshape(-1, row_features.shape[-1]))
    outputs = model(inputs_embeds=embeddings, attention_mask=batch.attention_mask, output_hidden_states=True,
                    output_attentions=output_attentions)
    return outputs, image_mask


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy on the answer tokens, averaged per answer, then over answers.

    Averaging per answer first keeps a long caption from outweighing the one-word answers in the same batch.

    Args:
        logits (`torch.Tensor`): `[R, S, vocab]`.
        labels (`torch.Tensor`): `[R, S]`, `IGNORE` outside the answers.
        weights (`torch.Tensor`): `[R, S]`, `1 / answer length` on answer tokens.
    """
    logits, labels, weights = logits[:, :-1].float(), labels[:, 1:], weights[:, 1:]
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return (token_loss * weights).sum() / weights.sum().clamp(min=1e-6)


def binding_loss(attentions: Sequence[torch.Tensor], batch: Batch, image_mask: torch.Tensor) -> torch.Tensor:
    """Make the token that answers a question about one object look at that object, and at no other.

    "What colour is the circle?" must find the circle among up to three objects, that is, match the word *circle*
    against the shape each visual token carries. The answer loss alone formed this lookup for objects named by
    colour but not, in 7,000 steps, for objects named by shape: the teacher answered with another object's colour
    in 116 of 208 such test questions. Its last layer had a head on the right object *and* a head on a wrong one.
    This loss states the lookup directly, at the last prompt token and in the late layers ([`BINDING_LAYERS`]),
    which read the temporal features (direction, first step) the answer needs:

    - *attract*: the best head puts its mass on the named object's visual tokens (`-log` of that mass). Taking the
      best head leaves the model free to choose which head does it;
    - *repel*: no head puts mass on the other objects' tokens (mean `-log(1 - mass)`); background tokens are free.

    Args:
        attentions (`Sequence[torch.Tensor]`): Attention probabilities per text layer, `[R, heads, S, S]`.
        batch (`Batch`): Its `binding_*` fields name the queries and their targets.
        image_mask (`torch.Tensor`): `[R, S]`, where the visual tokens sit.

    Returns:
        `torch.Tensor`: Attract plus repel, averaged over queries.
    """
    rows, positions = batch.binding_rows, batch.binding_positions
    probs = torch.cat([attentions[layer][rows, :, positions] for layer in BINDING_LAYERS], dim=1)  # [Q, L*heads, S]
    # Spread the per-visual-token labels over each query's row; row-major, the mask's order is the tokens' order.
    visual = image_mask[rows]  # [Q, S]
    targets = torch.zeros_like(visual)
    targets[visual] = batch.binding_targets.reshape(-1)
    objects = torch.zeros_like(visual)
    objects[visual] = (batch.token_labels["object"][rows] != IGNORE).reshape(-1)
    others = objects & ~targets
    probs = probs.float()
    on_target = (probs * targets[:, None]).sum(-1)  # [Q, L*heads]
    on_others = (probs * others[:, None]).sum(-1)  # [Q, L*heads]
    attract = -on_target.max(-1).values.clamp_min(1e-6).log()
    repel = -(1 - on_others).clamp_min(1e-6).log().mean(-1)
    return (attract + repel).mean()


def training_losses(model: SmolVLMForConditionalGeneration, heads: AuxiliaryHeads, batch: Batch,
                    args: BaseTrainingArguments, vision_only: bool = False) -> dict[str, torch.Tensor]:
    """All losses of one step; `loss` is their weighted sum.

    Args:
        model (`SmolVLMForConditionalGeneration`): The base, in training mode.
        heads (`AuxiliaryHeads`): The auxiliary heads.
        batch (`Batch`): On the model's device.
        args (`BaseTrainingArguments`): The loss weights.
        vision_only (`bool`): Only the connector heads' losses (the vision warm-up); the text model does not run.

    Returns:
        `dict[str, torch.Tensor]`: Every loss by name, and their weighted sum under `loss`.
    """
    features = visual_features(model, batch.pixel_values)
    hidden = features.shape[-1]
    labels = {name: value.reshape(-1) for name, value in batch.token_labels.items()}
    losses = heads.losses(features.reshape(-1, hidden), labels, AuxiliaryHeads.CONNECTOR)
    aux = losses.get("colour", 0.0) + args.shape_weight * losses.get("shape", 0.0)
    if vision_only:
        losses["loss"] = aux
        return losses

    binding = args.binding_weight > 0 and len(batch.binding_rows) > 0
    if binding and model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")  # only eager attention returns the probabilities the loss reads
    outputs, image_mask = forward_rows(model, batch, features, output_attentions=binding)
    losses["answer"] = answer_loss(outputs.logits, batch.labels, batch.label_weights)
    # Visual-token states are identical across the rows of one clip (same causal prefix): read the first row.
    first_rows = torch.tensor([int(torch.nonzero(batch.row_clip == c)[0]) for c in range(features.shape[0])],
                              device=features.device)
    states = outputs.hidden_states[TEMPORAL_LAYER][first_rows][image_mask[first_rows]].reshape(features.shape)
    tokens = features.shape[1] // batch.pixel_values.shape[1]
    later = states[:, tokens:].reshape(-1, hidden)  # frames 2 and later can see motion and change
    later_labels = {name: value[:, tokens:].reshape(-1) for name, value in batch.token_labels.items()}
    temporal = heads.losses(later, later_labels, AuxiliaryHeads.TEMPORAL)
    losses.update(temporal)
    aux = aux + sum(temporal.values())
    losses["loss"] = losses["answer"] + args.aux_weight * aux
    if binding:
        losses["binding"] = binding_loss(outputs.attentions, batch, image_mask)
        losses["loss"] = losses["loss"] + args.binding_weight * losses["binding"]
    return losses

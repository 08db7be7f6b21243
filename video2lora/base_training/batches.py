"""Training batches of the base: frames, turns packed into one chat per clip, and per-visual-token labels.

A row is one clip's conversation: the video and a first question exactly as [`Video2LoRAProcessor.encode_videos`]
lays them out at inference, then more questions as later turns of SmolVLM's chat template. Packing several questions
after one video amortizes the ~150 tokens of video prompt, which dominate the cost of a row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from processing_video2lora import VIDEO_PLACEHOLDER, Video2LoRAProcessor

from ..tiny import END_OF_UTTERANCE
from ..world import CAPTION_PROMPT, COLOURS, SHAPES, Clip

__all__ = [
    "IGNORE",
    "Batch",
    "PromptEncoder",
    "assert_fast_pixels_match",
    "clip_video",
    "fast_pixel_values",
    "follow_up_prompt",
    "make_batch",
    "sample_turns",
    "token_labels",
]

IGNORE = -100
# A token is labelled with the object covering most of its pixels when that object covers at least this many
# pixels; tokens with fewer object pixels are ambiguous and ignored, tokens with none are background.
MIN_OBJECT_PIXELS = 24

# Relative frequency of question types when packing turns (others 1). "what colour is the square?" is the only
# type that must find an object by its *shape* among several; that binding is the last skill to form (the teacher
# answered questions that find an object by colour at 0.98 while those that find it by shape sat near 0.5). Order
# questions come twice as often: only clips where something appears or disappears have them, they name two objects,
# and they were the last type under 0.9 once binding had formed (0.885 on the test split). Training overrides the
# order weight with `--order_weight` (the shipped base's last cycle used 4).
TYPE_WEIGHTS = {"colour": 3.0, "order": 2.0}
# Questions about every object at once (how many?) have nothing particular to look up: no binding target.
UNBOUND_TYPES = ("count",)
# Question types whose answers give each other away for the same clip.
EXCLUSIVE_TYPES = {"colour": ("shape",), "shape": ("colour",)}


# --------------------------------------------------------------------------------------------------------------
# Frames and per-token labels
# --------------------------------------------------------------------------------------------------------------


def clip_video(clip: Clip) -> tuple[np.ndarray, list[float], float]:
    """One frame at the centre of every key step, so that every event is seen.

    Args:
        clip (`Clip`): The clip.

    Returns:
        `tuple`: frames `[num_steps, H, W, 3]` uint8, their timestamps in seconds and the clip's duration.
    """
    indices = clip.step_centre_frames
    return clip.frames[indices], [float(i) / clip.fps for i in indices], clip.duration


def fast_pixel_values(frames: np.ndarray) -> torch.Tensor:
    """SmolVLM's image preprocessing for frames already at the model's size: `(x / 255 - 0.5) / 0.5`.

    The image processor would resize to the same size (a no-op) and normalize with mean = std = 0.5; doing it in
    one vectorized op avoids a PIL round trip per frame. [`assert_fast_pixels_match`] checks the equality at the
    start of every training run.

    Args:
        frames (`np.ndarray`): `[..., H, W, 3]` uint8.

    Returns:
        `torch.Tensor`: `[..., 3, H, W]` float32.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).float().movedim(-1, -3)
    return pixels.div_(255.0).sub_(0.5).div_(0.5)


def assert_fast_pixels_match(processor: Video2LoRAProcessor, frames: np.ndarray) -> None:
    """Check that [`fast_pixel_values`] equals the processor's image processor on `frames`.

    Args:
        processor (`Video2LoRAProcessor`): The base's processor.
        frames (`np.ndarray`): `[F, H, W, 3]` uint8 frames at the model's size.

    Raises:
        `AssertionError`: The two differ (a processor whose size or normalization is not the base's).
    """
    reference = processor.image_processor([list(frames)], do_image_splitting=False, return_tensors="pt")
    fast = fast_pixel_values(frames)
    if reference["pixel_values"].shape[1:] != fast.shape or not torch.allclose(
        reference["pixel_values"][0], fast, atol=1e-5
    ):
        raise AssertionError("fast pixel path differs from the image processor; check size and normalization")


def token_labels(clip: Clip, frame_indices: Sequence[int], grid: int) -> dict[str, np.ndarray]:
    """Per-visual-token targets of the auxiliary losses, from the world's object-id maps.

    Each frame's `grid x grid` tokens tile it in row-major order (that is how SmolVLM's pixel-shuffle connector
    orders them), so token `(i, j)` covers pixel block `(i, j)`. A token is given the object covering most of its
    block, or the background when no object pixel falls in it; tokens with only a sliver of an object are ignored.

    Args:
        clip (`Clip`): The clip.
        frame_indices (`Sequence[int]`): The sampled frames.
        grid (`int`): Tokens per side of a frame.

    Returns:
        `dict[str, np.ndarray]`: int64 arrays of shape `[F, grid * grid]`. `colour` (current colour, background =
        `len(COLOURS)`) and `shape` (background = `len(SHAPES)`) for the connector heads; `direction`,
        `first_colour` (colour when first seen), `first_step` (step it appeared) and `changed` (its colour changed
        by this frame) for the temporal heads, `IGNORE` on background; `object` (index of the object the token
        shows, `IGNORE` elsewhere) for the binding loss.
    """
    maps = clip.object_maps[list(frame_indices)].astype(np.int64)  # [F, H, W]
    num_frames, size = maps.shape[0], maps.shape[1]
    block = size // grid
    blocks = maps.reshape(num_frames, grid, block, grid, block).transpose(0, 1, 3, 2, 4).reshape(num_frames, -1, block**2)
    num_objects = len(clip.objects)
    counts = np.stack([(blocks == o).sum(-1) for o in range(num_objects)], axis=-1)  # [F, T, O]
    owner = counts.argmax(-1)
    owned = counts.max(-1) >= MIN_OBJECT_PIXELS
    empty = counts.sum(-1) == 0

    steps = clip.frame_steps[list(frame_indices)]
    colours_now = np.array([obj.colours for obj in clip.objects])[:, steps].T  # [F, O]
    per_object = {
        "shape": np.array([obj.shape for obj in clip.objects]),
        "direction": np.array([obj.direction for obj in clip.objects]),
        "first_colour": np.array([obj.colour for obj in clip.objects]),
        "first_step": np.array([obj.first_step for obj in clip.objects]),
    }
    labels = {
        "colour": np.where(owned, np.take_along_axis(colours_now, owner, axis=1), IGNORE),
        "shape": np.where(owned, per_object["shape"][owner], IGNORE),
    }
    labels["colour"][empty] = len(COLOURS)
    labels["shape"][empty] = len(SHAPES)
    for name in ("direction", "first_colour", "first_step"):
        labels[name] = np.where(owned, per_object[name][owner], IGNORE)
    changed = np.take_along_axis(colours_now, owner, axis=1) != per_object["first_colour"][owner]
    labels["changed"] = np.where(owned, changed.astype(np.int64), IGNORE)
    labels["object"] = np.where(owned, owner, IGNORE)
    return {name: value.astype(np.int64) for name, value in labels.items()}


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


def follow_up_prompt(processor: Video2LoRAProcessor, text: str) -> str:
    """A later user turn of a conversation, as the processor's chat template writes it after an answer.

    The text runs from just after the previous answer's `<end_of_utterance>` to the generation prompt
    (`"\\nUser: <text><end_of_utterance>\\nAssistant:"` with SmolVLM's template). It is cut out of a rendered
    two-question conversation, so that the template, not a copy of it, decides the layout.

    Args:
        processor (`Video2LoRAProcessor`): Its `chat_template` renders the conversation.
        text (`str`): The user's message.

    Raises:
        `ValueError`: The template does not end an assistant message with `<end_of_utterance>`, which the packed
            answers ([`PromptEncoder.answer_ids`]) rely on.
    """
    marker = "\x00answer\x00"  # cannot occur in a template, so it finds the earlier answer unambiguously

    def message(role: str, content: str) -> dict:
        return {"role": role, "content": [{"type": "text", "text": content}]}

    conversation = [message("user", ""), message("assistant", marker), message("user", text)]
    rendered = processor.tokenizer.apply_chat_template(conversation, chat_template=processor.chat_template,
                                                       tokenize=False, add_generation_prompt=True)
    answer_end = marker + END_OF_UTTERANCE
    if answer_end not in rendered:
        raise ValueError(f"The chat template does not end an assistant message with {END_OF_UTTERANCE}; packed "
                         "training turns need SmolVLM's chat template.")
    return rendered[rendered.index(answer_end) + len(answer_end) :]


class PromptEncoder:
    """Token ids of a conversation's turns about one video layout, cached: the world's questions and answers repeat.

    Every piece comes from the processor: the first turn is [`Video2LoRAProcessor.chat_prompt`] with the video
    placeholder replaced by [`Video2LoRAProcessor.video_prompt`] (what `encode_videos` feeds the tokenizer), the
    blind turn is [`Video2LoRAProcessor.encode_text`] and later turns are [`follow_up_prompt`]. The answer is
    tokenized apart from its prompt and appended with `<end_of_utterance>`; the byte-level pre-tokenizer splits at
    the space before the answer and at special tokens, so the pieces concatenated equal tokenizing the whole text.

    Args:
        processor (`Video2LoRAProcessor`): The base's processor.
        num_frames (`int`): Frames of every video.
        timestamps (`Sequence[float]`): Their timestamps in seconds.
        duration (`float`): The videos' duration in seconds.
    """

    def __init__(self, processor: Video2LoRAProcessor, num_frames: int, timestamps: Sequence[float], duration: float):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.video_text = processor.video_prompt(num_frames, timestamps, duration)
        self.eou = self.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
        self._prompts: dict[tuple[str, bool | None], list[int]] = {}
        self._answers: dict[str, list[int]] = {}

    def prompt_ids(self, text: str, with_video: bool = True) -> list[int]:
        """The first (or only) user turn of a conversation, up to `Assistant:`, with or without the video."""
        key = (text, with_video)
        if key not in self._prompts:
            if with_video:
                prompt = self.processor.chat_prompt(text, with_video=True).replace(VIDEO_PLACEHOLDER,
                                                                                   self.video_text, 1)
                self._prompts[key] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                self._prompts[key] = self.processor.encode_text(text, return_tensors=None)["input_ids"][0]
        return self._prompts[key]

    def follow_up_ids(self, text: str) -> list[int]:
        """A later user turn in the same conversation, after an answer's `<end_of_utterance>`."""
        key = (text, None)
        if key not in self._prompts:
            self._prompts[key] = self.tokenizer(follow_up_prompt(self.processor, text),
                                                add_special_tokens=False)["input_ids"]
        return self._prompts[key]

    def answer_ids(self, answer: str) -> list[int]:
        """The assistant's answer after `Assistant:`, ended by `<end_of_utterance>`."""
        if answer not in self._answers:
            self._answers[answer] = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [self.eou]
        return self._answers[answer]

    def pad(self, rows: list[list[int]], side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
        """Pad id lists into `input_ids` and `attention_mask` `[B, S]` (`side="left"` for generation)."""
        padded = self.tokenizer.pad({"input_ids": rows}, padding_side=side, return_tensors="pt")
        return padded["input_ids"], padded["attention_mask"]


# --------------------------------------------------------------------------------------------------------------
# Turns and batches
# --------------------------------------------------------------------------------------------------------------


def sample_turns(clip: Clip, rng: np.random.Generator, questions: int,
                 caption_probability: float, type_weights: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """Pick the `(prompt, answer)` turns of one clip's training sequence.

    Question types are drawn among those the clip has, uniformly except for `type_weights` (by default
    [`TYPE_WEIGHTS`]: colour questions, which find an object by its shape, three times as often; order twice), so
    rare types get their share. Turns that would give each other away never share a sequence: a colour question and a
    shape question (docs/design.md §8), the two colour-change questions, or any turn whose answer word is named by another
    turn's question ("which way does the red object move?" before "what colour is the circle?" in a one-object clip):
    a leaked answer can be copied from the text, and copying teaches nothing about the video. The caption states
    everything, so it only ever comes last.

    Args:
        clip (`Clip`): The clip.
        rng (`np.random.Generator`): The training's sampling stream.
        questions (`int`): The most questions to pick.
        caption_probability (`float`): Probability that the caption is appended as the last turn.
        type_weights (`dict[str, float]`, *optional*): Relative frequency per question type.

    Returns:
        `list[tuple[str, str]]`: The turns, in order.
    """
    type_weights = type_weights or TYPE_WEIGHTS
    by_type = defaultdict(list)
    for item in clip.qa:
        by_type[item.question_type].append(item)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < questions and by_type:
        kinds = list(by_type)
        weights = np.array([type_weights.get(kind, 1.0) for kind in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        items = by_type[kind]
        item = items.pop(int(rng.integers(len(items))))
        if not items or kind == "colour_change":
            by_type.pop(kind)
        for exclusive in EXCLUSIVE_TYPES.get(kind, ()):
            by_type.pop(exclusive, None)
        if any(_names(question, item.answer) or _names(item.question, answer) for question, answer in chosen):
            continue
        chosen.append((item.question, item.answer))
    if rng.random() < caption_probability:
        chosen.append((CAPTION_PROMPT, clip.caption))
    return chosen


def _names(question: str, answer: str) -> bool:
    """Whether `question` contains the word `answer` (so it gives that answer away)."""
    return answer in question.replace("?", " ").replace(",", " ").split()


@dataclass
class Batch:
    """One training step's inputs and targets.

    Rows are token sequences and clips are videos: several rows may read one clip (`row_clip`), which then needs one
    vision pass.
    """

    pixel_values: torch.Tensor  # [B, F, 3, H, W]
    input_ids: torch.Tensor  # [R, S]
    attention_mask: torch.Tensor  # [R, S]
    labels: torch.Tensor  # [R, S], IGNORE outside the answers
    label_weights: torch.Tensor  # [R, S], 1 / answer length on answer tokens, so every answer counts the same
    row_clip: torch.Tensor  # [R], which clip each row reads
    token_labels: dict[str, torch.Tensor]  # [B, F * tokens]
    # Binding queries: the last prompt token of every question about particular objects, and those objects' tokens.
    binding_rows: torch.Tensor  # [Q]
    binding_positions: torch.Tensor  # [Q]
    binding_targets: torch.Tensor  # [Q, F * tokens] bool

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor, token labels included, on `device`."""

        def move(value):
            return {name: tensor.to(device) for name, tensor in value.items()} if isinstance(value, dict) \
                else value.to(device)

        return Batch(**{field_.name: move(getattr(self, field_.name)) for field_ in fields(self)})


def make_batch(clips: Sequence[Clip], encoder: PromptEncoder, rng: np.random.Generator, questions_per_clip: int,
               caption_probability: float, grid: int, type_weights: dict[str, float] | None = None) -> Batch:
    """Frames, one multi-turn sequence per clip and auxiliary labels.

    The first turn is exactly the single-question prompt used at inference; later turns follow the chat template
    (see [`follow_up_prompt`]).

    Args:
        clips (`Sequence[Clip]`): The step's clips, all with the layout `encoder` was made for.
        encoder (`PromptEncoder`): Token ids of the turns.
        rng (`np.random.Generator`): The training's sampling stream (see [`sample_turns`]).
        questions_per_clip (`int`): The most questions per row.
        caption_probability (`float`): Probability that a row ends with the caption.
        grid (`int`): Visual tokens per side of a frame.
        type_weights (`dict[str, float]`, *optional*): Relative frequency per question type.

    Returns:
        [`Batch`]: On the CPU.
    """
    frames, rows, labels, weights, aux = [], [], [], [], defaultdict(list)
    binding_rows, binding_positions, binding_targets = [], [], []
    for row, clip in enumerate(clips):
        video, _, _ = clip_video(clip)
        frames.append(video)
        for name, value in token_labels(clip, clip.step_centre_frames, grid).items():
            aux[name].append(value.reshape(-1))
        about = {item.question: item.objects for item in clip.qa if item.question_type not in UNBOUND_TYPES}
        ids, row_labels, row_weights = [], [], []
        turns = sample_turns(clip, rng, questions_per_clip, caption_probability, type_weights)
        for turn, (prompt, answer) in enumerate(turns):
            prompt_ids = encoder.prompt_ids(prompt) if turn == 0 else encoder.follow_up_ids(prompt)
            answer_ids = encoder.answer_ids(answer)
            targets = np.isin(aux["object"][-1], about.get(prompt, ()))
            if targets.any():
                binding_rows.append(row)
                binding_positions.append(len(ids) + len(prompt_ids) - 1)
                binding_targets.append(targets)
            ids += prompt_ids + answer_ids
            row_labels += [IGNORE] * len(prompt_ids) + answer_ids
            row_weights += [0.0] * len(prompt_ids) + [1.0 / len(answer_ids)] * len(answer_ids)
        rows.append(ids)
        labels.append(row_labels)
        weights.append(row_weights)
    input_ids, attention_mask = encoder.pad(rows)
    label_ids = torch.full_like(input_ids, IGNORE)
    label_weights = torch.zeros(input_ids.shape)
    for i, (row, row_weights) in enumerate(zip(labels, weights, strict=True)):
        label_ids[i, : len(row)] = torch.tensor(row)
        label_weights[i, : len(row)] = torch.tensor(row_weights)
    return Batch(
        pixel_values=fast_pixel_values(np.stack(frames)),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=label_ids,
        label_weights=label_weights,
        row_clip=torch.arange(len(clips)),
        token_labels={name: torch.from_numpy(np.stack(value)) for name, value in aux.items()},
        binding_rows=torch.tensor(binding_rows, dtype=torch.long),
        binding_positions=torch.tensor(binding_positions, dtype=torch.long),
        binding_targets=torch.from_numpy(np.stack(binding_targets)) if binding_targets
        else torch.zeros((0, len(aux["object"][0])), dtype=torch.bool),
    )

"""SmolVLM2's video prompt layout without a video processor.

`SmolVLMProcessor` insists on a `SmolVLMVideoProcessor`, which needs torchvision. This processor drops it: frames are
sampled by the caller (PyAV, an array, PIL images), pushed through SmolVLM's image processor one image per frame, and
the prompt is expanded by `SmolVLMProcessor.replace_video_token` itself, so the token layout is the library's, not a
copy of it.

This is a Hub file: it imports only torch, transformers, its sibling Hub files and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, SmolVLMProcessor
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE
from transformers.video_utils import VideoMetadata

# The placeholder the chat template writes for a video; replaced by the expanded per-frame layout.
VIDEO_PLACEHOLDER = "<video>"


class Video2LoRAProcessor(SmolVLMProcessor):
    r"""
    Tokenizer plus image processor for SmolVLM2 video prompts, with no torchvision dependency.

    Args:
        image_processor (`SmolVLMImageProcessor` or `SmolVLMImageProcessorPil`):
            Turns each sampled frame into one image of `pixel_values`. Frame splitting must be off.
        tokenizer (`PreTrainedTokenizerBase`):
            The base model's tokenizer.
        image_seq_len (`int`, *optional*, defaults to 169):
            `<image>` tokens per frame: `(image_size // patch_size) ** 2 // scale_factor ** 2`.
        chat_template (`str`, *optional*):
            Jinja chat template. Defaults to SmolVLM's video chat template.
    """

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template: str | None = None,
                 **kwargs):
        # `ProcessorMixin` takes its attributes from this signature, which has no video processor; passing `None`
        # positionally keeps SmolVLMProcessor's own token bookkeeping.
        super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len,
                         chat_template=chat_template or DEFAULT_CHAT_TEMPLATE, **kwargs)
        self.video_processor = None

    def video_prompt(self, num_frames: int, timestamps: Sequence[float], duration: float | None = None) -> str:
        """The text that stands for one video: an intro line, then one timestamp line and image tokens per frame."""
        metadata = VideoMetadata(total_num_frames=num_frames, fps=1.0, duration=duration,
                                 frames_indices=list(timestamps))  # fps 1 makes frame indices read as seconds
        fake_pixels = np.empty((1, num_frames, 0), dtype=np.uint8)  # only `.shape[1]` is read
        return self.replace_video_token({"pixel_values": fake_pixels, "video_metadata": [metadata]}, 0)

    def chat_prompt(self, text: str, *, with_video: bool, answer: str | None = None) -> str:
        """One user turn (optionally led by the video placeholder), then `Assistant:` and the optional answer."""
        content = [{"type": "video"}] if with_video else []
        content.append({"type": "text", "text": text})
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=True,
        )
        return prompt if answer is None else prompt + " " + answer

    def encode_videos(
        self,
        videos: Sequence[np.ndarray | Sequence],
        text: str | Sequence[str],
        *,
        timestamps: Sequence[Sequence[float]] | None = None,
        durations: Sequence[float | None] | None = None,
        answers: Sequence[str] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Encode a batch of videos, each followed by a text (e.g. the internalization instruction or a question).

        Args:
            videos: one entry per video: a `[T, H, W, 3]` uint8 array or a list of PIL images, already sampled.
            text: one text for all videos, or one per video.
            timestamps: seconds of every frame per video. Defaults to one frame per second.
            durations: clip length in seconds per video. Defaults to the last timestamp.
            answers: optional assistant answers appended after `Assistant:` (teacher forcing).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` `[B, S]`, `pixel_values` `[B, F, 3, H, W]` and
            `pixel_attention_mask` `[B, F, H, W]`. Videos with fewer frames are padded with all-zero frames, which
            the model drops.
        """
        texts = [text] * len(videos) if isinstance(text, str) else list(text)
        if len(texts) != len(videos):
            raise ValueError(f"Got {len(videos)} videos but {len(texts)} texts; give one text or one per video.")
        prompts, images = [], []
        for index, frames in enumerate(videos):
            frames = list(frames)
            if not frames:
                raise ValueError(f"Video {index} has no frames.")
            stamps = list(timestamps[index]) if timestamps is not None else [float(i) for i in range(len(frames))]
            if len(stamps) != len(frames):
                raise ValueError(f"Video {index} has {len(frames)} frames but {len(stamps)} timestamps.")
            duration = durations[index] if durations is not None else None
            chat = self.chat_prompt(texts[index], with_video=True, answer=answers[index] if answers else None)
            prompts.append(chat.replace(VIDEO_PLACEHOLDER, self.video_prompt(len(frames), stamps, duration), 1))
            images.append(frames)
        pixels = self.image_processor(images, do_image_splitting=False, return_tensors=return_tensors)
        tokens = self.tokenizer(prompts, padding=True, return_tensors=return_tensors)
        return BatchFeature({**tokens, "pixel_values": pixels["pixel_values"],
                             "pixel_attention_mask": pixels["pixel_attention_mask"]})

    def encode_text(self, text: str | Sequence[str], *, answers: Sequence[str] | None = None,
                    padding_side: str = "right", return_tensors: str = "pt") -> BatchFeature:
        """Encode text-only chat turns (the student's view: no visual tokens at all). Generation wants
        `padding_side="left"`."""
        texts = [text] if isinstance(text, str) else list(text)
        prompts = [self.chat_prompt(t, with_video=False, answer=answers[i] if answers else None)
                   for i, t in enumerate(texts)]
        return self.tokenizer(prompts, padding=True, padding_side=padding_side, return_tensors=return_tensors)

    def visual_token_count(self, input_ids: torch.Tensor) -> int:
        """Number of `<image>` tokens in a batch of token ids."""
        return int((input_ids == self.image_token_id).sum())


Video2LoRAProcessor.register_for_auto_class()

__all__ = ["Video2LoRAProcessor"]

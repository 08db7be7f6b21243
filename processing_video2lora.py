"""SmolVLM2's video prompt layout without a video processor.

`SmolVLMProcessor` insists on a `SmolVLMVideoProcessor`, which needs torchvision. This processor drops it: frames are
sampled by [`sample_video`] (PyAV, an array, PIL images) with the settings saved in this processor's config, pushed
through SmolVLM's image processor one image per frame, and the prompt is expanded by
`SmolVLMProcessor.replace_video_token` itself, so the token layout is the library's, not a copy of it.

Frame settings live here and only here: how many frames and at what rate (`video_sampling`, saved in
`processor_config.json`, read from a real SmolVLM2 base's `video_preprocessor_config.json`), and the resolution (the
image processor's `max_image_size`, the vision tower's input size).

This is a Hub file: it imports only torch, transformers, its sibling Hub files and the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, SmolVLMProcessor
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE
from transformers.utils import cached_file
from transformers.video_utils import VideoMetadata

try:  # loaded as a Hub module (a package) by trust_remote_code, or as installed top-level modules
    from .video_processing_video2lora import SampledVideo, check_sampling, sample_video
except ImportError:
    from video_processing_video2lora import SampledVideo, check_sampling, sample_video

# The placeholder the chat template writes for a video; replaced by the expanded per-frame layout.
VIDEO_PLACEHOLDER = "<video>"
# SmolVLM2's video processor samples one frame per second, at most 64 (its `video_sampling`), and skips 1 s at both
# ends of a long clip (`SmolVLMVideoProcessor.sample_frames`).
DEFAULT_VIDEO_SAMPLING = {"fps": 1.0, "max_frames": 64, "skip_secs": 1.0}
VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"


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
        video_sampling (`dict`, *optional*):
            How frames are taken from a video: `max_frames` (the most frames), `fps` (frames per second of video,
            SmolVLM2's rule; `None` takes exactly `max_frames`, uniformly in time) and `skip_secs` (seconds skipped at
            both ends of a long clip when `fps` is set). Defaults to SmolVLM2's own, `{"fps": 1, "max_frames": 64,
            "skip_secs": 1}`. See `video_processing_video2lora.py` for the rule.
    """

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template: str | None = None,
                 video_sampling: dict | None = None, **kwargs):
        # `ProcessorMixin` takes its attributes from this signature, which has no video processor; passing `None`
        # positionally keeps SmolVLMProcessor's own token bookkeeping.
        super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len,
                         chat_template=chat_template or DEFAULT_CHAT_TEMPLATE, **kwargs)
        self.video_processor = None
        unknown = set(video_sampling or {}) - set(DEFAULT_VIDEO_SAMPLING)
        if unknown:
            raise ValueError(f"Unknown video_sampling keys {sorted(unknown)}; use {sorted(DEFAULT_VIDEO_SAMPLING)}.")
        self.video_sampling = {**DEFAULT_VIDEO_SAMPLING, **(video_sampling or {})}
        check_sampling(**self.sampling_kwargs())  # fail at load, not at the first video

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load as `ProcessorMixin.from_pretrained` does; a real SmolVLM2 folder's sampling comes from its
        `video_preprocessor_config.json` (`video_sampling.fps` and `max_frames`), which this processor has no class
        for."""
        if "video_sampling" not in kwargs:
            sampling = _base_video_sampling(pretrained_model_name_or_path, kwargs)
            if sampling is not None:
                kwargs["video_sampling"] = sampling
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def update_video_sampling(self, **changes) -> None:
        """Change `video_sampling` entries (`max_frames`, `fps`, `skip_secs`), checked before they take effect."""
        unknown = set(changes) - set(DEFAULT_VIDEO_SAMPLING)
        if unknown:
            raise ValueError(f"Unknown video_sampling keys {sorted(unknown)}; use {sorted(DEFAULT_VIDEO_SAMPLING)}.")
        updated = {**self.video_sampling, **changes}
        check_sampling(num_frames=updated["max_frames"], fps=updated["fps"], skip_secs=updated["skip_secs"],
                       max_edge=self.frame_size)
        self.video_sampling = updated

    @property
    def frame_size(self) -> int:
        """Longest edge a sampled frame is resized to: the vision tower's input size (`max_image_size`)."""
        return int(self.image_processor.max_image_size["longest_edge"])

    def sampling_kwargs(self, num_frames: int | None = None) -> dict:
        """Keyword arguments of `sample_video` for this processor's settings (`num_frames` overrides `max_frames`)."""
        return {"num_frames": num_frames or self.video_sampling["max_frames"], "fps": self.video_sampling["fps"],
                "skip_secs": self.video_sampling["skip_secs"], "max_edge": self.frame_size}

    def sample_video(self, video, *, start: float | None = None, end: float | None = None,
                     frame_rate: float | None = None, num_frames: int | None = None,
                     interleave: tuple[int, int] | None = None) -> SampledVideo:
        """
        Sample and resize a video with this processor's settings: the one way frames enter Video2LoRA.

        Args:
            video: a file path, a `[T, H, W, 3]` uint8 array, PIL images, or an already `SampledVideo` (kept as is).
            start / end: a span of a file, in seconds.
            frame_rate: the rate of frames in memory (1 per second when `None`).
            num_frames: overrides `video_sampling["max_frames"]` (e.g. several segments' worth for the whole video).
            interleave: `(part, parts)`: one of `parts` interleaved parts of `num_frames * parts` frames
                (`sample_video`), each covering the whole span.
        """
        if isinstance(video, SampledVideo):
            return video
        return sample_video(video, start=start, end=end, frame_rate=frame_rate, interleave=interleave,
                            **self.sampling_kwargs(num_frames))

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
        if with_video and VIDEO_PLACEHOLDER not in prompt:
            # Without it the frames would get no image tokens at all and the model would fail deep in its forward.
            raise ValueError(
                f"The chat template writes no '{VIDEO_PLACEHOLDER}' for a video message, so frames have nowhere to go. "
                "Use SmolVLM2's video chat template: delete chat_template.jinja (and any `chat_template` entry) from "
                "the processor folder, or pass `chat_template=transformers.models.smolvlm.processing_smolvlm."
                "DEFAULT_CHAT_TEMPLATE`."
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
        # Longest edge to the tower's size, then square, as SmolVLMVideoProcessor resizes frames (the image
        # processor's own `size` is 4x larger, for splitting images into tiles).
        pixels = self.image_processor(images, do_image_splitting=False, size={"longest_edge": self.frame_size},
                                      return_tensors=return_tensors)
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


def _base_video_sampling(name_or_path, kwargs: dict) -> dict | None:
    """`video_sampling` of a SmolVLM2 base's video processor config, if the folder or repo has one."""
    options = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
               if key in kwargs}
    path = cached_file(name_or_path, VIDEO_PREPROCESSOR_CONFIG, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **options)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        sampling = json.load(handle).get("video_sampling") or {}
    return {key: sampling[key] for key in ("fps", "max_frames") if key in sampling} or None


Video2LoRAProcessor.register_for_auto_class()

__all__ = ["Video2LoRAProcessor"]

"""`pipeline("video-to-lora", model=..., trust_remote_code=True)`: a video in, its adapter out, and an answer when a
question is given (with zero visual tokens).

```python
from transformers import pipeline

video_to_lora = pipeline("video-to-lora", model="org/video2lora-2.2b", trust_remote_code=True)
adapter = video_to_lora("clip.mp4")["adapter"]                         # a Video2LoRAAdapter (adapter.save_pretrained)
video_to_lora("clip.mp4", question="what colour is the square?")["answer"]
```

This is a Hub file: it imports only transformers and the standard library. The checkpoint's config names it in
`custom_pipelines`, so `pipeline()` finds it; everything it does goes through the model's own methods.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline

__all__ = ["Video2LoRAPipeline"]

TASK = "video-to-lora"


class Video2LoRAPipeline(Pipeline):
    """
    Internalize a video (a file, a `[T, H, W, 3]` uint8 array or PIL images) into a LoRA adapter; with `question`, also
    answer it (or each of a list of questions) from the adapter alone.

    Call arguments:
        question (`str` or `list[str]`, *optional*): what to ask about the video.
        max_new_tokens (`int`, *optional*, defaults to 64): greedy decoding budget per answer.
        num_frames (`int`, *optional*): overrides the processor's `video_sampling["max_frames"]`.
        segments / segment_seconds (*optional*): read a long video file in segments, composed into one adapter.

    Returns:
        `dict` with `adapter` (a `Video2LoRAAdapter`) and, with a question, `answer` (one string, or a list for a
        list of questions).
    """

    # The model carries its own processor; the pipeline must not look for a tokenizer or image processor of its own.
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, question: str | list[str] | None = None, max_new_tokens: int | None = None,
                             num_frames: int | None = None, segments: int | None = None,
                             segment_seconds: float | None = None, **unused: Any):
        preprocess = {"num_frames": num_frames, "segments": segments, "segment_seconds": segment_seconds}
        forward = {"question": question, "max_new_tokens": max_new_tokens}
        return preprocess, forward, {}

    def preprocess(self, video, num_frames: int | None = None, segments: int | None = None,
                   segment_seconds: float | None = None) -> dict[str, Any]:
        return {"video": video, "num_frames": num_frames, "segments": segments, "segment_seconds": segment_seconds}

    def _forward(self, inputs: dict[str, Any], question: str | list[str] | None = None,
                 max_new_tokens: int | None = None) -> dict[str, Any]:
        video = inputs.pop("video")
        adapter = self.model.internalize(video, **inputs)
        outputs = {"adapter": adapter}
        if question is not None:
            outputs["answer"] = self.model.answer(adapter, question, max_new_tokens=max_new_tokens or 64)
        return outputs

    def postprocess(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return outputs

"""A procedurally generated video world: the embedded default's training and benchmark data (docs/design.md §8).

Clips show one to three coloured shapes on a dark-grey background that move left, right, up or down or stay
still, and may appear, disappear or change colour. Each clip comes with frames, per-pixel and per-object ground
truth, a caption and short-answer questions, all determined by an integer seed.

```python
from video2lora.world import generate_clip

clip = generate_clip(7)
clip.frames.shape       # (8, 64, 64, 3): 4 steps x 2 frames, 64 px, 4 fps
clip.caption            # e.g. "a red circle moves left. a blue square appears and stays still."
clip.questions[0]       # e.g. ("what colour is the circle?", "red", "colour")
```

Modules: `scene` (vocabularies, sampling, rendering), `language` (captions, questions), `clip` (the `Clip`
bundle and the generators), `splits` (seed ranges), `export` (videos and manifests); `python -m video2lora.world`
is the command line.
"""

from .clip import Clip, Segment, generate_clip, generate_two_segment_clip
from .export import DATASET_NAME, clip_rows, write_world
from .language import CAPTION_PROMPT, COUNT_WORDS, QUESTION_TYPES, QAItem
from .scene import (
    BACKGROUND_RGB,
    COLOURS,
    DIRECTIONS,
    EVENT_KINDS,
    PALETTE,
    SHAPES,
    Event,
    Scene,
    WorldConfig,
    WorldObject,
)
from .splits import SPLIT_SEED_RANGES, split_of_seed, split_seeds

__all__ = [
    "BACKGROUND_RGB",
    "CAPTION_PROMPT",
    "COLOURS",
    "COUNT_WORDS",
    "DATASET_NAME",
    "DIRECTIONS",
    "EVENT_KINDS",
    "PALETTE",
    "QUESTION_TYPES",
    "SHAPES",
    "SPLIT_SEED_RANGES",
    "Clip",
    "Event",
    "QAItem",
    "Scene",
    "Segment",
    "WorldConfig",
    "WorldObject",
    "clip_rows",
    "generate_clip",
    "generate_two_segment_clip",
    "split_of_seed",
    "split_seeds",
    "write_world",
]

"""Training of the embedded default's frozen base (the teacher): a tiny SmolVLM trained from scratch on the world.

A real `SmolVLMForConditionalGeneration` (vision 64 x 2 layers, text 128 x 4 layers, about 1M parameters) reads
4 frames of 64 px (one per key step of a clip) and answers the world's questions with the video in context. The
recipe is docs/design.md §8's working one: patch size 4 with pixel-shuffle 4 (16 tokens per frame), lr 1e-3 with
warm-up and cosine decay, and small *training-only* auxiliary heads that make the vision tower perceive shape and
the text model perceive motion. Without those heads shape and direction stay at chance. A binding loss on the
late layers' attention ([`binding_loss`]) then makes the token that answers a question about one object look at that
object: without it the model never learned to find an object by its shape name.

```bash
python -m video2lora.base_training --output_dir runs/base --minutes 35 --export video2lora/checkpoints/smolvlm-world --eval_test
```

Training is resumable (`--resume`): see `loop`. Modules: `recipe` (arguments, architecture, world options, a fresh
model), `batches` (frames, packed chat turns, per-token labels), `losses` (answer, auxiliary and binding losses),
`evaluation` (greedy exact match with the video and blind), `loop` (training, schedule, checkpoints), `export` (the
Hugging Face folder and its card, `video2lora/hub_cards/base.md`); `python -m video2lora.base_training` is the command line.
"""

from .batches import (
    IGNORE,
    Batch,
    PromptEncoder,
    assert_fast_pixels_match,
    clip_video,
    fast_pixel_values,
    follow_up_prompt,
    make_batch,
    sample_turns,
    token_labels,
)
from .evaluation import evaluate_base
from .export import REPRODUCE_COMMAND, evaluate_folder, export_base, write_model_card
from .loop import find_checkpoint, learning_rate_factor, load_training_checkpoint, save_training_checkpoint, train_base
from .losses import AuxiliaryHeads, answer_loss, binding_loss, training_losses
from .recipe import BASE_ARCHITECTURE, WORLD_OPTIONS, BaseTrainingArguments, base_generation_config, build_base

__all__ = [
    "BASE_ARCHITECTURE",
    "IGNORE",
    "REPRODUCE_COMMAND",
    "WORLD_OPTIONS",
    "AuxiliaryHeads",
    "BaseTrainingArguments",
    "Batch",
    "PromptEncoder",
    "answer_loss",
    "assert_fast_pixels_match",
    "base_generation_config",
    "binding_loss",
    "build_base",
    "clip_video",
    "evaluate_base",
    "evaluate_folder",
    "export_base",
    "fast_pixel_values",
    "find_checkpoint",
    "follow_up_prompt",
    "learning_rate_factor",
    "load_training_checkpoint",
    "make_batch",
    "sample_turns",
    "save_training_checkpoint",
    "token_labels",
    "train_base",
    "training_losses",
    "write_model_card",
]

"""The architectures the benchmarks time, written out because no SmolVLM2 weights can be downloaded here.

The real SmolVLM2 shapes are copied from the checkpoints' `config.json` (the same values as `tests/test_modeling.py`).
They are built with **random weights**: the time and memory of a forward pass depend on the shapes, not on the values
of the weights, so every number measured on them holds for the real checkpoints on the same machine. Every benchmark
output says which weights it used.
"""

from __future__ import annotations

import copy
from functools import cache

from transformers import PreTrainedTokenizerFast, SmolVLMConfig

from video2lora.tiny import IMAGE, build_tokenizer

SMOLVLM2_500M = dict(
    image_token_id=49190, scale_factor=4,
    text_config=dict(model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                     num_attention_heads=15, num_key_value_heads=5, vocab_size=49280, max_position_embeddings=8192,
                     rope_theta=100000.0, rms_norm_eps=1e-5),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       patch_size=16, image_size=512),
)
SMOLVLM2_2B = dict(
    image_token_id=49190, scale_factor=3,
    text_config=dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=49280, max_position_embeddings=16384,
                     rope_theta=273768.0, rms_norm_eps=1e-5),
    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       patch_size=14, image_size=384),
)
REAL_ARCHITECTURES = {"500m": SMOLVLM2_500M, "2.2b": SMOLVLM2_2B}

# The shape of the embedded default (docs/design.md §8, the recipe that works): used with random weights when the trained
# checkpoint is not on disk yet, so that the tiny benchmark times the same computation either way.
TINY_WORLD_VISION = dict(image_size=64, patch_size=4, scale_factor=4, vision_hidden=64, vision_layers=2,
                         text_hidden=128, text_layers=4, text_heads=4)
TINY_WORLD_HYPERNETWORK = dict(lora_r=8, latent_size=128, num_latents=16, num_blocks=2, num_attention_heads=4)

# The tests' tiny model (`tests/conftest.py`): what `--quick` runs on, in seconds.
QUICK_HYPERNETWORK = dict(lora_r=4, latent_size=32, num_latents=4, num_blocks=2, num_attention_heads=4,
                          input_projection_size=32)

# Words the benchmark prompts use, so the small tokenizer encodes them in few tokens like a real one would.
BENCHMARK_CORPUS = [
    "What colour is the circle that moves left?", "How many shapes appear in the video?",
    "Describe what happens in the video, in order.", "Which shape changes colour first?",
    "red green blue yellow circle square triangle moves up down left right appears disappears",
]


@cache
def benchmark_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE with SmolVLM2's special tokens; its ids are valid in any larger vocabulary. Cached: it
    is trained in memory, and every model a benchmark builds shares it."""
    return build_tokenizer(BENCHMARK_CORPUS)


def real_smolvlm_config(name: str, tokenizer: PreTrainedTokenizerFast, *, image_size: int | None = None
                        ) -> SmolVLMConfig:
    """
    A real SmolVLM2 architecture (`"500m"` or `"2.2b"`) wired to `tokenizer`'s special tokens.

    The vocabulary keeps its real size (49,280 rows, so the embedding and LM head cost what they really cost); the
    small tokenizer's ids all fall inside it. `image_size` changes the vision input resolution, and with it the tokens
    per frame: `(image_size / patch_size)^2 / scale_factor^2`.
    """
    values = copy.deepcopy(REAL_ARCHITECTURES[name])
    if len(tokenizer) > values["text_config"]["vocab_size"]:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, more than the architecture's vocabulary.")
    eos = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    values["image_token_id"] = tokenizer.convert_tokens_to_ids(IMAGE)
    values["text_config"].update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=eos)
    if image_size is not None:
        patch = values["vision_config"]["patch_size"]
        if image_size % (patch * values["scale_factor"]):
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size x scale_factor "
                             f"({patch} x {values['scale_factor']}).")
        values["vision_config"]["image_size"] = image_size
    return SmolVLMConfig(**values, pad_token_id=tokenizer.pad_token_id)

"""A tiny SmolVLM built entirely offline: tokenizer, config and processor.

No SmolVLM2 weights can be downloaded here, so tests, examples and the embedded default use a real
`SmolVLMForConditionalGeneration` with a small config, a byte-level BPE tokenizer trained in memory with `tokenizers`,
and SmolVLM's own image processor.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, PreTrainedConfig, PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessorPil

from processing_video2lora import Video2LoRAProcessor

# SmolVLM2's special tokens; the processor and model look them up by these strings.
PAD, EOS, IM_START, END_OF_UTTERANCE = "<|endoftext|>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>"
IMAGE, FAKE_IMAGE, GLOBAL_IMAGE = "<image>", "<fake_token_around_image>", "<global-img>"
SPECIAL_TOKENS = [PAD, IM_START, END_OF_UTTERANCE, IMAGE, FAKE_IMAGE, GLOBAL_IMAGE]

# Text the video layout and chat template always produce; the BPE must cover it whatever the training corpus is.
_LAYOUT_TEXT = [
    "User: You are provided the following series of one two three four five six seven eight nine ten eleven twelve "
    "frames from a 0:00:00 [H:MM:SS] video.", "Frame from 00:00: 00:01 00:02 00:03 00:04 00:05 00:06 00:07 00:08",
    "Assistant: 0 1 2 3 4 5 6 7 8 9", "Internalize this video for later captioning.",
]


def build_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (plus SmolVLM2's layout text); any text stays encodable."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([*_LAYOUT_TEXT, *corpus], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=END_OF_UTTERANCE, bos_token=IM_START,
        extra_special_tokens={"image_token": IMAGE, "fake_image_token": FAKE_IMAGE,
                              "global_image_token": GLOBAL_IMAGE, "end_of_utterance_token": END_OF_UTTERANCE},
    )


def tiny_smolvlm_config(tokenizer: PreTrainedTokenizerFast, *, image_size: int = 64, patch_size: int = 8,
                        scale_factor: int = 2, vision_hidden: int = 32, vision_layers: int = 1,
                        text_hidden: int = 64, text_layers: int = 2, text_heads: int = 4,
                        text_intermediate: int | None = None, model_type: str = "smolvlm") -> PreTrainedConfig:
    """A small but real SmolVLM config (or another family of the same layout, e.g. `model_type="idefics3"`) wired to
    `tokenizer`'s special token ids."""
    text_config = {
        "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": text_hidden,
        "intermediate_size": text_intermediate or 2 * text_hidden, "num_hidden_layers": text_layers,
        "num_attention_heads": text_heads, "num_key_value_heads": text_heads, "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE), "tie_word_embeddings": False,
    }
    vision_config = {
        "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden, "num_hidden_layers": vision_layers,
        "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size,
    }
    return AutoConfig.for_model(model_type, text_config=text_config, vision_config=vision_config,
                                scale_factor=scale_factor, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                                pad_token_id=tokenizer.pad_token_id)


def tokens_per_frame(config: SmolVLMConfig) -> int:
    """`<image>` tokens one frame costs: patches after the pixel-shuffle connector."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def build_processor(tokenizer: PreTrainedTokenizerFast, config: SmolVLMConfig,
                    video_sampling: dict | None = None) -> Video2LoRAProcessor:
    """SmolVLM's PIL image processor at the config's frame size, one image per frame, plus the tokenizer; frames are
    sampled by `video_sampling` (SmolVLM2's 1 fps, at most 64, by default)."""
    size = config.vision_config.image_size
    image_processor = SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": size}, max_image_size={"longest_edge": size},
    )
    return Video2LoRAProcessor(image_processor, tokenizer, image_seq_len=tokens_per_frame(config),
                               video_sampling=video_sampling)

"""The base-family seam: what Video2LoRA needs to know about a family of vision-language models, and nothing more.

The perceiver, the adapter and the trainer never name a VLM class. They ask the base's [`VLMFamily`] for its model
class, where its text decoder's layers are (the hooks and the PEFT keys are built from that path), which processor
turns sampled frames plus text into its inputs, which extra vision inputs its forward takes, and its end-of-turn
token. Adding a family is one `register_family(VLMFamily(...))` call.

SmolVLM(2) is the first family. Idefics3 is the second: the same layout (a SigLIP tower, a pixel-shuffle connector and
a Llama decoder at `model.text_model.layers`) under another class, so SmolVLM2's video prompt layout serves it too.

This is a Hub file: it imports only transformers and the standard library. Classes are named, not imported, so that
the configuration can consult the registry without loading any modeling code.
"""

from __future__ import annotations

from dataclasses import dataclass

import transformers

__all__ = ["FAMILIES", "VLMFamily", "family_of", "register_family"]


@dataclass(frozen=True)
class VLMFamily:
    """
    One family of vision-language models that Video2LoRA can read videos with and emit adapters for.

    Args:
        model_type (`str`):
            The base config's `model_type` (e.g. `"smolvlm"`), which selects the family.
        model_class_name (`str`):
            The `transformers` class loaded as the frozen base (e.g. `"SmolVLMForConditionalGeneration"`).
        decoder_layers_path (`str`):
            Dotted path, inside that class, of the text decoder's `nn.ModuleList` of layers. Forward hooks are
            registered on its members and PEFT keys read `base_model.model.<path>.<i>.<module>.lora_A.weight`.
        vision_inputs (`tuple[str, ...]`):
            Keyword inputs of the model's forward that carry the frames (besides `input_ids` and `attention_mask`).
        end_of_turn_token (`str`):
            The token that closes a turn; greedy answers stop on it.
        processor_class_name (`str`, *optional*, defaults to `"Video2LoRAProcessor"`):
            The processor that samples frames and lays out a video prompt for this family.
    """

    model_type: str
    model_class_name: str
    decoder_layers_path: str
    vision_inputs: tuple[str, ...]
    end_of_turn_token: str
    processor_class_name: str = "Video2LoRAProcessor"

    @property
    def model_class(self) -> type:
        return getattr(transformers, self.model_class_name)

    @property
    def config_class(self) -> type:
        return transformers.CONFIG_MAPPING[self.model_type]

    def decoder_layers(self, model):
        """The decoder's `nn.ModuleList` inside a model of this family."""
        return model.get_submodule(self.decoder_layers_path)


FAMILIES: dict[str, VLMFamily] = {}


def register_family(family: VLMFamily) -> VLMFamily:
    """Make a family known by its `model_type`; returns it."""
    FAMILIES[family.model_type] = family
    return family


def family_of(config_or_model_type) -> VLMFamily:
    """The family of a base config (or of a `model_type`), with the known ones listed when there is none."""
    model_type = getattr(config_or_model_type, "model_type", config_or_model_type)
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"No Video2LoRA family for base model_type {model_type!r}; known: {sorted(FAMILIES)}. "
                         "Register one with families_video2lora.register_family.") from None


SMOLVLM = register_family(VLMFamily(
    model_type="smolvlm", model_class_name="SmolVLMForConditionalGeneration",
    decoder_layers_path="model.text_model.layers", vision_inputs=("pixel_values", "pixel_attention_mask"),
    end_of_turn_token="<end_of_utterance>",
))
IDEFICS3 = register_family(VLMFamily(
    model_type="idefics3", model_class_name="Idefics3ForConditionalGeneration",
    decoder_layers_path="model.text_model.layers", vision_inputs=("pixel_values", "pixel_attention_mask"),
    end_of_turn_token="<end_of_utterance>",
))

"""Configuration of the Video2LoRA hypernetwork.

This is a Hub file: it imports only torch, transformers, peft, its sibling Hub files and the standard library, so
`AutoConfig.from_pretrained(..., trust_remote_code=True)` works on machines that never installed this project.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

try:  # loaded as a Hub module (a package) by trust_remote_code, or as installed top-level modules
    from .families_video2lora import FAMILIES, family_of
except ImportError:
    from families_video2lora import FAMILIES, family_of

# Decoder-layer linear modules that can carry the generated LoRA, with their (in_features, out_features) read off a
# Llama-style text config. Names are relative to one decoder layer.
_TARGET_MODULE_DIMS = {
    "mlp.down_proj": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.up_proj": lambda c: (c.hidden_size, c.intermediate_size),
    "mlp.gate_proj": lambda c: (c.hidden_size, c.intermediate_size),
    "self_attn.q_proj": lambda c: (c.hidden_size, c.num_attention_heads * _head_dim(c)),
    "self_attn.k_proj": lambda c: (c.hidden_size, c.num_key_value_heads * _head_dim(c)),
    "self_attn.v_proj": lambda c: (c.hidden_size, c.num_key_value_heads * _head_dim(c)),
    "self_attn.o_proj": lambda c: (c.num_attention_heads * _head_dim(c), c.hidden_size),
}
HEAD_TYPES = ("per_layer", "shared")
SEGMENT_COMPOSITIONS = ("concat", "latents")
DEFAULT_INSTRUCTION = "Internalize this video for later captioning."


def _head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


class Video2LoRAConfig(PreTrainedConfig):
    r"""
    Configuration of a [`Video2LoRAModel`]: a perceiver hypernetwork that reads the per-layer hidden states of a
    frozen SmolVLM2 over a video and emits one LoRA adapter per video, in a single forward pass.

    Args:
        base_model_name_or_path (`str`, *optional*):
            Hub id or local folder of the frozen base (a `SmolVLMForConditionalGeneration`, or another registered
            family's model), e.g.
            `"HuggingFaceTB/SmolVLM2-2.2B-Instruct"`. The base is loaded by reference and never copied into the
            hypernetwork checkpoint. A relative path starting with `./` or `../` resolves against the folder the
            hypernetwork is loaded from, so a checkpoint can name a base shipped beside it. When `None`, the base is
            built from `base_config` with random weights and saved together with the hypernetwork (tests, tiny
            models).
        base_model_revision (`str`, *optional*):
            Revision (branch, tag or commit) of `base_model_name_or_path` on the Hub.
        base_config (`PreTrainedConfig` or `dict`, *optional*):
            Architecture of the frozen base: the config of a registered VLM family (`families_video2lora.py`;
            `SmolVLMConfig` or `Idefics3Config`), whose `model_type` selects the family. Filled in from the loaded
            base when missing; required when `base_model_name_or_path` is `None`. The hypernetwork's output shapes are read from its text config.
        lora_r (`int`, *optional*, defaults to 16):
            Rank of the video-dependent part of the adapter, per target module and layer.
        lora_scale (`float`, *optional*):
            Multiplier of the LoRA update `s * B (A x)`. Defaults to `2 * lora_r ** 1.5` (128 for rank 16), the
            published recipe, which applies it directly rather than as `alpha / r`.
        target_modules (`list[str]`, *optional*, defaults to `["mlp.down_proj"]`):
            Linear modules of each text-decoder layer that receive a LoRA, named relative to the layer. One of
            `mlp.{down,up,gate}_proj` and `self_attn.{q,k,v,o}_proj`. The vision tower is never targeted.
        use_bias_block (`bool`, *optional*, defaults to `True`):
            Concatenate a learned, video-independent rank-`lora_r` block to every adapter, so the effective rank is
            `2 * lora_r`. Its B starts at zero.
        latent_size (`int`, *optional*, defaults to 512):
            Width `d` of the perceiver.
        num_latents (`int`, *optional*, defaults to 8):
            Number of learned latent queries that summarize one layer's states.
        num_blocks (`int`, *optional*, defaults to 9):
            Encoder blocks, each a cross-attention from the latents to the context followed by an MLP.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of every perceiver attention; must divide `latent_size`.
        mlp_ratio (`int`, *optional*, defaults to 4):
            Hidden width of the perceiver MLPs as a multiple of `latent_size`.
        input_projection_size (`int`, *optional*):
            Hidden width of the MLP that projects the base's hidden states to `latent_size`. Defaults to the
            base's MLP intermediate size. Setting it to `latent_size` cuts the perceiver's per-token cost about 5x at
            SmolVLM2-500M (see `docs/benchmarks.md`).
        share_context_kv (`bool`, *optional*, defaults to `False`):
            Project each layer's context to keys and values once, in the first encoder block, and let every encoder
            block attend to those; by default (Perceiver IO, the Idefics2 resampler) each block projects its own.
            Sharing makes adapter generation cheaper by `(num_blocks - 1)` context projections per token and layer.
        head_type (`str`, *optional*, defaults to `"per_layer"`):
            `"per_layer"` (the published head: one `d -> in + out` map per decoder layer, the bulk of the
            parameters) or `"shared"` (one map for all layers, told apart by a learned layer embedding).
        use_layer_embedding (`bool`, *optional*, defaults to `False`):
            Add a learned per-layer embedding to the latents. Always on for the `"shared"` head, which needs it.
        use_context_positions (`bool`, *optional*, defaults to `False`):
            Add a sinusoidal encoding of each context token's position, through a learned projection that starts at
            zero, to the projected context. Cross-attention alone is blind to token order, so without it the
            perceiver knows which frame a visual token came from only through what the base wrote into its states;
            with it, temporal facts (which way an object moves, what happens first) can be read off positions. The
            published perceiver has none. Turning it on for a trained checkpoint changes nothing until it trains.
        use_segment_place (`bool`, *optional*, defaults to `False`):
            Tell the perceiver where in the whole video the context lies: the fractions of the video at which it
            starts and ends (`(0, 1)` for a whole clip), as a sinusoidal encoding through a learned projection that
            starts at zero, added to the latent queries. The base reads a placed segment's frame times only as text it
            was never trained on past a clip's length; this states the place directly, so a segment's latents can hold
            what is true at the video's start only when the segment is there. Starts as a no-op, so it can be turned
            on for a trained checkpoint.
        segment_composition (`str`, *optional*, defaults to `"concat"`):
            How the segments of a long video become one adapter, in `internalize(segments=k)` and in training.
            `"concat"` internalizes each segment on its own and stacks the adapters' ranks (the rank grows with k;
            see `Video2LoRAAdapter.compose`). `"latents"` stacks the segments' perceiver latents instead and decodes
            them once, so the output queries attend over every segment together and the adapter keeps its rank
            whatever k is. Single clips are unaffected, so it can be switched on for a trained checkpoint.
        instruction (`str`, *optional*, defaults to `"Internalize this video for later captioning."`):
            Text placed after the frames when the base encodes a video.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initializer of the hypernetwork's weights.
        kl_weight (`float`, *optional*, defaults to 0.0):
            Weight of `KL(teacher || student)` over the teacher's cached top-k in the training loss of
            [`Video2LoRAModel.forward`], added to the answers' cross-entropy where the batch carries teacher
            distributions; 0 trains on the cross-entropy alone. `train_hf.py --kl_weight` sets it, so a checkpoint
            records the weight it was trained with. Inference never reads it.
    """

    model_type = "video2lora"
    # Any registered family's config (its `model_type` picks the class); SmolVLM when none is named.
    sub_configs_defaults: ClassVar = {"base_config": SubConfigSpec(AutoConfig, model_type="smolvlm", optional=True)}

    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    base_config: dict | PreTrainedConfig | None = None
    lora_r: int = 16
    lora_scale: float | None = None
    target_modules: list[str] | None = None
    use_bias_block: bool = True
    latent_size: int = 512
    num_latents: int = 8
    num_blocks: int = 9
    num_attention_heads: int = 8
    mlp_ratio: int = 4
    input_projection_size: int | None = None
    share_context_kv: bool = False
    head_type: str = "per_layer"
    use_layer_embedding: bool = False
    use_context_positions: bool = False
    use_segment_place: bool = False
    segment_composition: str = "concat"
    instruction: str = DEFAULT_INSTRUCTION
    initializer_range: float = 0.02
    kl_weight: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.target_modules is None:
            self.target_modules = ["mlp.down_proj"]
        if self.lora_scale is None:
            self.lora_scale = 2.0 * self.lora_r**1.5
        self._validate()

    def _validate(self) -> None:
        def fail(message: str):
            raise ValueError(f"Invalid Video2LoRAConfig: {message}")

        for name in ("lora_r", "latent_size", "num_latents", "num_blocks", "num_attention_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                fail(f"`{name}` must be a positive integer, got {value!r}.")
        if self.use_context_positions and self.latent_size % 2:
            fail(f"use_context_positions needs an even latent_size (sin/cos pairs), got {self.latent_size}.")
        if self.use_segment_place and self.latent_size % 4:
            fail(f"use_segment_place needs a latent_size divisible by 4 (sin/cos pairs for start and end), got "
                 f"{self.latent_size}.")
        if self.latent_size % self.num_attention_heads:
            fail(f"`latent_size` ({self.latent_size}) must be divisible by `num_attention_heads` "
                 f"({self.num_attention_heads}).")
        if self.head_type not in HEAD_TYPES:
            fail(f"`head_type` must be one of {HEAD_TYPES}, got {self.head_type!r}.")
        if self.segment_composition not in SEGMENT_COMPOSITIONS:
            fail(f"`segment_composition` must be one of {SEGMENT_COMPOSITIONS}, got {self.segment_composition!r}.")
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            fail(f"`target_modules` must be a non-empty list without repeats, got {self.target_modules!r}.")
        unknown = [name for name in self.target_modules if name not in _TARGET_MODULE_DIMS]
        if unknown:
            fail(f"unknown target modules {unknown}; choose from {sorted(_TARGET_MODULE_DIMS)}.")
        if self.base_model_name_or_path is None and self.base_config is None:
            fail("give `base_model_name_or_path` (Hub id or folder) or `base_config` (random base, for tests).")
        if self.base_config is not None and getattr(self.base_config, "model_type", None) not in FAMILIES:
            fail(f"`base_config` must be the config of a known VLM family ({sorted(FAMILIES)}), got "
                 f"{type(self.base_config).__name__}.")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            fail("`instruction` must be a non-empty string.")
        if self.kl_weight < 0:
            fail(f"`kl_weight` must be >= 0, got {self.kl_weight}.")

    @property
    def family(self):
        """The base's [`VLMFamily`]: its model class, decoder-layer path and vision inputs."""
        if self.base_config is None:
            raise ValueError("The base architecture is unknown until the base is loaded; load the model first.")
        return family_of(self.base_config)

    @property
    def text_config(self):
        """Text-decoder config of the frozen base."""
        if self.base_config is None:
            raise ValueError("The base architecture is unknown until the base is loaded; load the model first.")
        return self.base_config.text_config

    @property
    def num_target_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def effective_rank(self) -> int:
        return 2 * self.lora_r if self.use_bias_block else self.lora_r

    def target_module_dims(self) -> dict[str, tuple[int, int]]:
        """`(in_features, out_features)` of every target module, in `target_modules` order."""
        return {name: _TARGET_MODULE_DIMS[name](self.text_config) for name in self.target_modules}


__all__ = ["Video2LoRAConfig"]

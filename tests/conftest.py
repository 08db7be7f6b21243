"""Shared fixtures: a tiny, random, fully offline SmolVLM plus a small Video2LoRA hypernetwork on top."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a Hub lookup would hang for minutes before failing

import numpy as np  # noqa: E402  (the offline flag must be set before transformers is imported)
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import SmolVLMForConditionalGeneration  # noqa: E402

from configuration_video2lora import Video2LoRAConfig  # noqa: E402
from modeling_video2lora import Video2LoRAModel  # noqa: E402
from video2lora.tiny import build_processor, build_tokenizer, tiny_smolvlm_config  # noqa: E402

# Tiny models: with 2 threads on a shared 2-core machine, thread hand-offs cost more than the matmuls themselves.
torch.set_num_threads(1)

TINY_HYPERNETWORK = dict(lora_r=4, latent_size=32, num_latents=4, num_blocks=2, num_attention_heads=4,
                         input_projection_size=32)
# The embedded default's sampling: exactly 4 frames, uniformly in time.
TINY_SAMPLING = {"fps": None, "max_frames": 4}


@pytest.fixture(autouse=True)
def adapter_store(tmp_path_factory, monkeypatch):
    """Every test's `video2lora ask VIDEO` stores adapters in a fresh folder, never in the user's cache."""
    root = tmp_path_factory.mktemp("store")
    monkeypatch.setenv("VIDEO2LORA_STORE", str(root))
    return root


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer(["a red circle moves left.", "what colour is the square?", "blue", "triangle"])


@pytest.fixture(scope="session")
def base_config(tokenizer):
    return tiny_smolvlm_config(tokenizer)


@pytest.fixture(scope="session")
def processor(tokenizer, base_config):
    return build_processor(tokenizer, base_config, video_sampling=TINY_SAMPLING)


@pytest.fixture(scope="session")
def saved_base(tmp_path_factory, base_config, processor):
    """The tiny random base and its processor saved as a SmolVLM folder, as a user's base would be on disk."""
    path = tmp_path_factory.mktemp("saved") / "base"
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(base_config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_frames(num_frames: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Random, never all-black frames (all-zero frames are padding to SmolVLM)."""
    return np.random.default_rng(seed).integers(1, 256, (num_frames, size, size, 3), dtype=np.uint8)


@pytest.fixture
def make_model(base_config, processor):
    def build(seed: int = 0, **overrides) -> Video2LoRAModel:
        torch.manual_seed(seed)
        config = Video2LoRAConfig(base_config=base_config, **{**TINY_HYPERNETWORK, **overrides})
        return Video2LoRAModel(config, processor=processor).eval()
    return build


def perturb_(model: Video2LoRAModel, seed: int = 1, std: float = 0.05) -> None:
    """Move every hypernetwork weight, the zero-initialized B scalers included, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.hypernetwork.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * std)


def load_script(name: str):
    """`scripts/<name>.py` as a module (the scripts are not a package), registered under `name`."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module

"""The base-family seam: a second family (Idefics3, SmolVLM's layout under another class) works through
`families_video2lora.py` alone, with the perceiver, the adapter and the trainer untouched."""


import pytest
import torch
from peft import PeftModel
from transformers import Idefics3ForConditionalGeneration

from configuration_video2lora import Video2LoRAConfig
from families_video2lora import FAMILIES, family_of
from modeling_video2lora import AdapterMismatchError, Video2LoRAAdapter, Video2LoRAModel
from tests.conftest import TINY_HYPERNETWORK, make_frames, perturb_
from tests.test_modeling import load_with_automodel_elsewhere
from video2lora.tiny import tiny_smolvlm_config


@pytest.fixture(scope="module")
def idefics3_config(tokenizer):
    return tiny_smolvlm_config(tokenizer, model_type="idefics3")


@pytest.fixture
def idefics3_model(idefics3_config, processor):
    torch.manual_seed(0)
    return Video2LoRAModel(Video2LoRAConfig(base_config=idefics3_config, **TINY_HYPERNETWORK),
                           processor=processor).eval()


def test_both_families_are_registered(idefics3_config, base_config):
    assert {"smolvlm", "idefics3"} <= set(FAMILIES)
    assert family_of(idefics3_config).model_class is Idefics3ForConditionalGeneration
    with pytest.raises(ValueError, match="No Video2LoRA family for base model_type 'llama'"):
        family_of(base_config.text_config)
    with pytest.raises(ValueError, match="known VLM family"):
        Video2LoRAConfig(base_config=base_config.text_config)


def test_untrained_idefics3_adapter_is_an_exact_no_op(idefics3_model):
    assert isinstance(idefics3_model.vlm, Idefics3ForConditionalGeneration)
    adapter = idefics3_model.internalize(make_frames(3))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        bare = idefics3_model.vlm(input_ids=ids).logits
        with idefics3_model.apply_adapter(adapter):
            adapted = idefics3_model.vlm(input_ids=ids).logits
    assert torch.equal(bare, adapted)


def test_idefics3_peft_export_loads_with_zero_missing_keys_and_identical_logits(idefics3_model, tmp_path):
    perturb_(idefics3_model)
    adapter = idefics3_model.internalize(make_frames(3))
    adapter.save_pretrained(tmp_path / "adapter", dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        bare = idefics3_model.vlm(input_ids=ids).logits
        with idefics3_model.apply_adapter(adapter):
            ours = idefics3_model.vlm(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(idefics3_model.vlm, tmp_path / "adapter")
    # Every saved tensor found its module: PEFT only warns on unmatched keys and would leave B at zero.
    loaded = {name for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert len(loaded) == 2 * idefics3_model.config.num_target_layers
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    peft_model.unload()
    torch.testing.assert_close(theirs, ours)
    assert not torch.allclose(ours, bare)
    reread = Video2LoRAAdapter.from_pretrained(tmp_path / "adapter")
    assert reread.decoder_layers_path == "model.text_model.layers"
    idefics3_model.check_adapter(reread)


def test_adapter_keys_of_an_unknown_decoder_are_refused(idefics3_model, tmp_path):
    adapter = idefics3_model.internalize(make_frames(2))
    adapter.decoder_layers_path = "language_model.model.layers"  # a layout no registered family has
    adapter.save_pretrained(tmp_path / "foreign")
    with pytest.raises(AdapterMismatchError, match="known VLM family"):
        Video2LoRAAdapter.from_pretrained(tmp_path / "foreign")


def test_idefics3_checkpoint_loads_with_automodel_from_another_directory(idefics3_model, tmp_path):
    perturb_(idefics3_model)
    idefics3_model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "families_video2lora.py").is_file()
    out = load_with_automodel_elsewhere(tmp_path / "model", tmp_path)
    with torch.no_grad():
        expected = idefics3_model.vlm(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    torch.testing.assert_close(out["logits"], expected)

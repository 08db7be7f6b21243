"""The core contract: adapter shapes, the exact no-op at init, PEFT-exact export, batching, AutoModel loading."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

from configuration_video2lora import Video2LoRAConfig
from modeling_video2lora import AdapterMismatchError, Video2LoRAAdapter, Video2LoRAModel
from perceiver_video2lora import CrossAttention
from tests.conftest import TINY_HYPERNETWORK, load_script, make_frames, perturb_

INSTRUCTION = "Internalize this video for later captioning."


def context(processor, *frame_counts, seed=0):
    videos = [make_frames(count, seed=seed + i) for i, count in enumerate(frame_counts)]
    return processor.encode_videos(videos, INSTRUCTION)


def student_logits(model, processor, adapter, questions=("what colour is the square?",), answers=None):
    inputs = processor.encode_text(list(questions), answers=answers or ["blue"] * len(questions))
    if adapter is None:
        return model.vlm(**inputs).logits
    with model.apply_adapter(adapter):
        return model.vlm(**inputs).logits


@pytest.mark.parametrize("num_frames", [1, 3, 16])
def test_adapter_shapes(make_model, processor, num_frames):
    model = make_model()
    adapter = model.generate_adapter(**context(processor, num_frames))
    text = model.config.text_config
    rank = 2 * TINY_HYPERNETWORK["lora_r"]  # the bias block doubles the rank
    assert list(adapter.lora_A) == ["mlp.down_proj"]
    assert adapter.lora_A["mlp.down_proj"].shape == (1, text.num_hidden_layers, rank, text.intermediate_size)
    assert adapter.lora_B["mlp.down_proj"].shape == (1, text.num_hidden_layers, text.hidden_size, rank)
    assert adapter.scale == pytest.approx(2 * TINY_HYPERNETWORK["lora_r"] ** 1.5)


def test_visual_tokens_per_frame_match_the_base(processor, base_config):
    inputs = context(processor, 3)
    vision = base_config.vision_config
    per_frame = (vision.image_size // vision.patch_size) ** 2 // base_config.scale_factor**2
    assert processor.visual_token_count(inputs["input_ids"]) == 3 * per_frame
    assert inputs["pixel_values"].shape[:2] == (1, 3)


def test_several_target_modules_and_shared_head(make_model, processor):
    model = make_model(target_modules=["mlp.down_proj", "self_attn.q_proj"], head_type="shared")
    adapter = model.generate_adapter(**context(processor, 2))
    text = model.config.text_config
    assert adapter.lora_A["self_attn.q_proj"].shape[-1] == text.hidden_size
    assert adapter.lora_B["self_attn.q_proj"].shape[-2] == text.hidden_size
    assert adapter.lora_A["mlp.down_proj"].shape[-1] == text.intermediate_size


@pytest.mark.parametrize(("dim", "heads", "num_queries"), [(32, 4, 4), (512, 8, 8)])
def test_attention_through_the_projections_equals_projecting_the_context(dim, heads, num_queries, monkeypatch):
    torch.manual_seed(0)
    attention = CrossAttention(dim=dim, heads=heads)
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.normal_(std=dim**-0.5)
    queries, context = torch.randn(2, num_queries, dim), torch.randn(2, 40, dim)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :7] = False  # a left-padded row
    projected = attention(queries, None, mask, keys_values=attention.project_context(context))

    def unused(_):
        raise AssertionError("the context was projected")

    monkeypatch.setattr(attention, "project_context", unused)  # few queries: the context is never projected
    torch.testing.assert_close(attention(queries, context, mask), projected, atol=1e-5, rtol=1e-4)


def encode_first_layer(hypernetwork, states, mask=None):
    """`encode_layer` for layer 0, with the position term as `encode_context` computes it."""
    return hypernetwork.encode_layer(states, mask, 0, hypernetwork.position_term(mask, states.shape[1]))


def test_context_positions_let_the_perceiver_see_token_order(make_model):
    blind, positioned = make_model(), make_model(use_context_positions=True)
    hypernetwork = positioned.hypernetwork
    torch.testing.assert_close(hypernetwork.position_projection, torch.zeros_like(hypernetwork.position_projection))
    perturb_(blind, std=0.3)  # a trained perceiver's attention is selective; near-uniform attention averages order away
    hypernetwork.load_state_dict(blind.hypernetwork.state_dict(), strict=False)
    states = torch.randn(1, 10, blind.config.text_config.hidden_size)
    reversed_states = states.flip(1)

    # Zero-initialized: exactly the perceiver without positions, which cannot tell a sequence from its reverse.
    for model in (blind, positioned):
        torch.testing.assert_close(encode_first_layer(model.hypernetwork, states),
                                   encode_first_layer(blind.hypernetwork, states))
    torch.testing.assert_close(encode_first_layer(blind.hypernetwork, states),
                               encode_first_layer(blind.hypernetwork, reversed_states), atol=1e-4, rtol=1e-4)

    # Once the projection has trained, order shows, and left padding does not shift the positions.
    with torch.no_grad():
        hypernetwork.position_projection.normal_(std=0.5)
    forward = encode_first_layer(hypernetwork, states)
    assert (forward - encode_first_layer(hypernetwork, reversed_states)).abs().max() > 0.05
    padded = torch.cat([torch.randn(1, 3, states.shape[-1]), states], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 10])
    torch.testing.assert_close(encode_first_layer(hypernetwork, padded, mask), forward, atol=1e-4, rtol=1e-4)


def test_a_saved_checkpoint_is_readable_by_everyone(make_model, tmp_path):
    make_model().save_pretrained(tmp_path)
    weights = list(tmp_path.glob("*.safetensors"))
    assert weights and all(path.stat().st_mode & 0o444 == 0o444 for path in weights)


def _trained_checkpoint(make_model, directory, **config) -> Video2LoRAModel:
    """A model whose every hypernetwork weight has moved, as training moves them, saved to `directory`."""
    model = make_model(**config)
    perturb_(model)
    model.save_pretrained(directory)
    return model


def test_context_positions_grow_a_saved_checkpoint_as_a_no_op(make_model, processor, tmp_path):
    model = _trained_checkpoint(make_model, tmp_path)
    grown = Video2LoRAModel.from_pretrained(tmp_path, use_context_positions=True).eval()
    assert grown.config.use_context_positions and grown.hypernetwork.position_projection.abs().sum() == 0
    inputs = context(processor, 2)
    torch.testing.assert_close(grown.generate_adapter(**inputs).lora_B["mlp.down_proj"],
                               model.generate_adapter(**inputs).lora_B["mlp.down_proj"])


def _grow_hypernetwork():
    return load_script("grow_hypernetwork")


def _update(adapter):  # the weight update B A of every layer: what an adapter does, whatever its rank
    return adapter.lora_B["mlp.down_proj"] @ adapter.lora_A["mlp.down_proj"]


def test_growing_the_rank_of_a_saved_checkpoint_keeps_every_adapter_and_then_trains(make_model, processor, tmp_path,
                                                                                     capsys):
    grow = _grow_hypernetwork()
    model = _trained_checkpoint(make_model, tmp_path / "small")
    assert grow.main([str(tmp_path / "small"), str(tmp_path / "grown"), "--rank", str(2 * model.config.lora_r)]) == 0
    grown = Video2LoRAModel.from_pretrained(tmp_path / "grown").eval()
    assert grown.config.lora_r == 2 * model.config.lora_r and grown.config.lora_scale == model.config.lora_scale
    inputs = context(processor, 2)
    old, new = model.generate_adapter(**inputs), grown.generate_adapter(**inputs)
    assert new.rank == 2 * old.rank
    torch.testing.assert_close(_update(new), _update(old))
    # The new directions are silent, not dead: a loss on the update reaches their B scales.
    grown.generate_adapter(**inputs).lora_B["mlp.down_proj"].sum().backward()
    assert grown.hypernetwork.heads[0].b_scale.grad[:, model.config.lora_r:].abs().sum() > 0
    with pytest.raises(SystemExit) as exit_info:
        grow.main([str(tmp_path / "small"), str(tmp_path / "smaller"), "--rank", str(model.config.lora_r)])
    assert exit_info.value.code == 2 and "larger than" in capsys.readouterr().err
    assert not (tmp_path / "smaller").exists()


def test_copied_latents_keep_every_adapter_exactly_and_noise_moves_it_slightly(make_model, processor, tmp_path, capsys):
    grow = _grow_hypernetwork()
    model = _trained_checkpoint(make_model, tmp_path / "small")
    latents = model.config.num_latents
    inputs = context(processor, 2)
    old = _update(model.generate_adapter(**inputs))
    for noise in ("0", "1e-3"):
        grow.main([str(tmp_path / "small"), str(tmp_path / noise), "--latents", str(2 * latents), "--noise", noise])
        grown = Video2LoRAModel.from_pretrained(tmp_path / noise).eval()
        assert grown.config.num_latents == 2 * latents
        new = _update(grown.generate_adapter(**inputs))
        if noise == "0":
            torch.testing.assert_close(new, old)
        else:  # near, and not equal: the copies differ, so training can part them
            assert 0 < (new - old).abs().max() < 1e-2 * old.abs().max()
    with pytest.raises(SystemExit) as exit_info:
        grow.main([str(tmp_path / "small"), str(tmp_path / "odd"), "--latents", str(latents + 1)])
    assert exit_info.value.code == 2 and "multiple" in capsys.readouterr().err


@pytest.mark.parametrize("share_context_kv", [False, True])
def test_added_encoder_blocks_keep_every_adapter_exactly_and_then_train(make_model, processor, tmp_path, capsys,
                                                                        share_context_kv):
    grow = _grow_hypernetwork()
    model = _trained_checkpoint(make_model, tmp_path / "small", share_context_kv=share_context_kv)
    blocks = model.config.num_blocks
    assert grow.main([str(tmp_path / "small"), str(tmp_path / "deep"), "--blocks", str(blocks + 2)]) == 0
    deep = Video2LoRAModel.from_pretrained(tmp_path / "deep").eval()
    assert deep.config.num_blocks == len(deep.hypernetwork.encoder) == blocks + 2
    inputs = context(processor, 2)
    update = _update(deep.generate_adapter(**inputs))
    torch.testing.assert_close(update, _update(model.generate_adapter(**inputs)))
    # Silent, not dead: a loss on the adapter reaches the new blocks' output projections.
    update.square().sum().backward()
    for block in deep.hypernetwork.encoder[blocks:]:
        assert block.attention.to_out.weight.grad.abs().sum() > 0
        assert block.feed_forward[1].down.weight.grad.abs().sum() > 0
    with pytest.raises(SystemExit) as exit_info:
        grow.main([str(tmp_path / "small"), str(tmp_path / "same"), "--blocks", str(blocks)])
    assert exit_info.value.code == 2 and "larger than" in capsys.readouterr().err
    assert not (tmp_path / "same").exists()


@pytest.mark.parametrize("head_type", ["per_layer", "shared"])
def test_added_target_modules_start_silent_keep_every_adapter_and_then_train(make_model, processor, tmp_path, capsys,
                                                                             head_type):
    grow = _grow_hypernetwork()
    model = _trained_checkpoint(make_model, tmp_path / "small", head_type=head_type)
    rank = 2 * model.config.lora_r
    assert grow.main([str(tmp_path / "small"), str(tmp_path / "wide"), "--rank", str(rank),
                      "--modules", "self_attn.o_proj", "mlp.up_proj"]) == 0
    wide = Video2LoRAModel.from_pretrained(tmp_path / "wide").eval()
    assert wide.config.target_modules == ["mlp.down_proj", "self_attn.o_proj", "mlp.up_proj"]
    inputs = context(processor, 2)
    old, new = model.generate_adapter(**inputs), wide.generate_adapter(**inputs)
    torch.testing.assert_close(_update(new), _update(old))
    for name in ("self_attn.o_proj", "mlp.up_proj"):
        assert new.lora_A[name].shape[2] == 2 * rank  # the grown rank and a bias block as wide
        assert (new.lora_B[name] @ new.lora_A[name]).abs().max() == 0
    # With the new modules in it, the VLM answers as before, and a loss reaches their heads.
    questions = processor.encode_text(["what colour is the circle?"])
    with torch.no_grad(), model.apply_adapter(old):
        before = model.vlm(**questions).logits
    with torch.no_grad(), wide.apply_adapter(new):
        torch.testing.assert_close(wide.vlm(**questions).logits, before)
    with wide.apply_adapter(new):
        wide.vlm(**questions).logits.square().mean().backward()
    assert all(head.b_scale.grad.abs().sum() > 0 for head in wide.hypernetwork.heads[1:])
    for modules, message in ((["self_attn.x_proj"], "unknown target modules"), (["mlp.down_proj"], "repeats")):
        with pytest.raises(SystemExit) as exit_info:
            grow.main([str(tmp_path / "small"), str(tmp_path / "bad"), "--modules", *modules])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_shared_context_keys_and_values(make_model, processor):
    separate, shared = make_model(num_blocks=3), make_model(num_blocks=3, share_context_kv=True)
    dim = shared.config.latent_size
    # Two blocks fewer with their own LayerNorm (2d) and K/V projection (d x 2d).
    saved = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    assert saved == 2 * (2 * dim + 2 * dim * dim)
    blocks = shared.hypernetwork.encoder
    assert hasattr(blocks[0].attention, "to_kv") and not any(hasattr(b.attention, "to_kv") for b in blocks[1:])

    # Every block attends to the first block's keys and values: the same as copying its projection into the others.
    perturb_(shared)
    for block in separate.hypernetwork.encoder:
        block.attention.norm_context.load_state_dict(blocks[0].attention.norm_context.state_dict())
        block.attention.to_kv.load_state_dict(blocks[0].attention.to_kv.state_dict())
    separate.hypernetwork.load_state_dict(shared.hypernetwork.state_dict(), strict=False)
    separate.vlm.load_state_dict(shared.vlm.state_dict())
    inputs = context(processor, 2)
    torch.testing.assert_close(separate.generate_adapter(**inputs).lora_A["mlp.down_proj"],
                               shared.generate_adapter(**inputs).lora_A["mlp.down_proj"])


def test_untrained_adapter_is_an_exact_no_op_and_training_changes_it(make_model, processor):
    model = make_model()
    adapter = model.generate_adapter(**context(processor, 3))
    bare = student_logits(model, processor, None)
    assert torch.equal(student_logits(model, processor, adapter), bare)

    perturb_(model)
    moved = model.generate_adapter(**context(processor, 3))
    assert (student_logits(model, processor, moved) - bare).abs().max() > 1e-3


def test_adapter_depends_on_the_video(make_model, processor):
    model = make_model()
    perturb_(model)
    first, second = model.generate_adapter(**context(processor, 3, 3))[[0, 1]].lora_A["mlp.down_proj"]
    assert not torch.allclose(first, second)


def test_peft_round_trip_is_exact(make_model, processor, tmp_path):
    model = make_model()
    perturb_(model)
    adapter = model.generate_adapter(**context(processor, 3))
    adapter.save_pretrained(tmp_path)

    peft_config, state_dict = adapter.to_peft()
    assert peft_config.r == peft_config.lora_alpha == adapter.rank
    base = SmolVLMForConditionalGeneration(model.config.base_config)
    base.load_state_dict(model.vlm.state_dict())
    peft_model = PeftModel.from_pretrained(base, tmp_path)
    peft_model.eval()
    # Our keys are exactly PEFT's own on-disk keys for this base: nothing missing, nothing unexpected.
    assert set(get_peft_model_state_dict(peft_model)) == set(state_dict)
    wrapped = [name for name, _ in peft_model.named_modules() if name.endswith("lora_A.default")]
    assert len(wrapped) == model.config.text_config.num_hidden_layers
    assert all(".text_model." in name for name in wrapped), "the vision tower must never be targeted"

    inputs = processor.encode_text(["what colour is the square?"], answers=["blue"])
    ours = student_logits(model, processor, adapter)
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
        bare = model.vlm(**inputs).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (theirs - bare).abs().max() > 1e-3

    reloaded = Video2LoRAAdapter.from_pretrained(tmp_path)
    assert reloaded.fingerprint == model.fingerprint
    torch.testing.assert_close(student_logits(model, processor, reloaded), ours, atol=1e-5, rtol=0)


def test_batched_adapters_equal_one_by_one(make_model, processor):
    model = make_model()
    perturb_(model)
    adapters = model.generate_adapter(**context(processor, 2, 4, 3))
    questions = ["what colour is the square?", "a red circle moves left.", "triangle"]
    batched = student_logits(model, processor, adapters, questions)
    inputs = processor.encode_text(questions, answers=["blue"] * 3)
    for row in range(3):
        alone = student_logits(model, processor, adapters[row], [questions[row]])
        length = int(inputs["attention_mask"][row].sum())
        torch.testing.assert_close(batched[row, :length], alone[0, :length], atol=1e-5, rtol=1e-5)
    # and the batch really differs per row: the first row with the second row's adapter gives other logits
    swapped = student_logits(model, processor, adapters[1], [questions[0]])
    assert (swapped[0] - batched[0, : swapped.shape[1]]).abs().max() > 1e-4


def test_adapter_index_serves_several_questions_per_video(make_model, processor):
    model = make_model()
    perturb_(model)
    ctx = context(processor, 2, 3)
    inputs = processor.encode_text(["q one", "q two", "q three"], answers=["a", "b", "c"])
    index = torch.tensor([1, 0, 1])
    out = model(**inputs, context_input_ids=ctx["input_ids"], context_attention_mask=ctx["attention_mask"],
                pixel_values=ctx["pixel_values"], pixel_attention_mask=ctx["pixel_attention_mask"],
                adapter_index=index)
    expected = student_logits(model, processor, out.adapter[index], ["q one", "q two", "q three"], ["a", "b", "c"])
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_only_hypernetwork_parameters_train(make_model, processor):
    model = make_model().train()
    assert not model.vlm.training, "the frozen base must stay in eval mode"
    ctx = context(processor, 2, 3)
    inputs = processor.encode_text(["q one", "q two"], answers=["blue", "red"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    # Train one step first so the zero-initialized B scalers let gradient reach every head parameter.
    perturb_(model)
    out = model(**inputs, labels=labels, context_input_ids=ctx["input_ids"],
                context_attention_mask=ctx["attention_mask"], pixel_values=ctx["pixel_values"],
                pixel_attention_mask=ctx["pixel_attention_mask"])
    out.loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("hypernetwork.") for name in trainable)
    assert all(p.grad is None for p in model.vlm.parameters())
    with_grad = {name for name, p in model.hypernetwork.named_parameters() if p.grad is not None}
    assert with_grad == {name for name, _ in model.hypernetwork.named_parameters()}


def test_forward_loss_is_weighted_ce_plus_kl_over_the_token_count(make_model, processor):
    model = make_model()
    perturb_(model)
    adapter = model.generate_adapter(**context(processor, 2))
    inputs = processor.encode_text(["q one", "q two"], answers=["blue", "a red circle"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels[:, :4] = -100  # a prompt
    batch, length = labels.shape
    top_ids = torch.randint(0, model.config.text_config.vocab_size, (batch, length, 3),
                            generator=torch.Generator().manual_seed(0))
    top_logprobs = torch.tensor([-0.2, -1.5, -math.inf]).expand(batch, length, 3).clone()  # one padded slot
    teacher_mask = labels != -100
    teacher_mask[1] = False  # only the first row has the teacher's distributions
    teacher = {"teacher_top_ids": top_ids, "teacher_top_logprobs": top_logprobs, "teacher_mask": teacher_mask}
    weights = torch.tensor([3.0, 1.0])

    def forward(**kwargs):
        return model(**inputs, labels=labels, adapter=adapter, adapter_index=torch.tensor([0, 0]), **kwargs)

    # By hand: position t - 1 predicts label t; the KL is over the renormalized top-k, padded slots left out.
    log_probs = forward().logits.float().log_softmax(-1)
    ce_sum = weighted_sum = count = 0.0
    for row, t in (labels[:, 1:] != -100).nonzero().tolist():
        t += 1
        ce = -log_probs[row, t - 1, labels[row, t]].item()
        kl = 0.0
        if teacher_mask[row, t]:
            p = top_logprobs[row, t].softmax(-1)
            kl = sum(p[j].item() * (p[j].log().item() - log_probs[row, t - 1, top_ids[row, t, j]].item())
                     for j in range(3) if p[j] > 0)
        ce_sum += ce
        weighted_sum += weights[row].item() * (ce + 0.5 * kl)
        count += 1

    assert model.config.kl_weight == 0.0  # by default the teacher's distributions are not used
    assert forward(**teacher).loss.item() == pytest.approx(ce_sum / count, rel=1e-5)
    weighted_ce = forward(**teacher, answer_weights=weights).loss
    model.config.kl_weight = 0.5
    loss = forward(**teacher, answer_weights=weights).loss
    assert loss.item() == pytest.approx(weighted_sum / count, rel=1e-5)  # the normalizer stays the token count
    assert loss > weighted_ce + 0.1  # the KL term is there
    # Gradient accumulation: the sum over this batch divided by the whole step's token count.
    accumulated = forward(**teacher, answer_weights=weights, num_items_in_batch=torch.tensor(40)).loss
    assert accumulated.item() == pytest.approx(weighted_sum / 40, rel=1e-5)
    assert model(**inputs, adapter=adapter).loss is None  # no labels, no loss


def test_composition_sums_or_averages_the_video_parts_and_keeps_the_bias_block_once(make_model, processor):
    model = make_model()
    perturb_(model)
    first, second = model.generate_adapter(**context(processor, 2, 2))[[0, 1]], None
    first, second = first[0], first[1]
    shared = first.shared_rank
    assert shared == model.config.lora_r and first.rank == 2 * shared
    concat = Video2LoRAAdapter.compose([first, second])
    average = Video2LoRAAdapter.compose([first, second], mode="average")
    assert concat.rank == first.rank + second.rank - shared and concat.shared_rank == shared

    def delta(adapter, slots=slice(None)):
        b, a = adapter.scaled_B()["mlp.down_proj"][0][..., slots], adapter.lora_A["mlp.down_proj"][0][:, slots]
        return torch.einsum("lor,lri->loi", b, a)

    video, bias = slice(0, first.rank - shared), slice(first.rank - shared, None)
    assert torch.equal(first.lora_A["mlp.down_proj"][:, :, bias], second.lora_A["mlp.down_proj"][:, :, bias])
    torch.testing.assert_close(delta(concat), delta(first, video) + delta(second, video) + delta(first, bias),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(delta(average), (delta(first, video) + delta(second, video)) / 2 + delta(first, bias),
                               atol=1e-5, rtol=1e-5)
    # Composing again keeps it once too, and one part composes to itself.
    thrice = Video2LoRAAdapter.compose([concat, first])
    assert thrice.rank == 3 * (first.rank - shared) + shared and thrice.metadata["composed"]["parts"] == 3
    torch.testing.assert_close(delta(Video2LoRAAdapter.compose([first])), delta(first))


def test_composing_groups_of_a_batch_equals_composing_each_video(make_model, processor):
    """What the trainer composes: rows grouped by video, groups of different sizes in one batch."""
    model = make_model()
    perturb_(model)
    parts = model.generate_adapter(**context(processor, 2, 2, 2, 2, 2))  # five segment adapters
    grouped = parts.compose_groups(torch.tensor([0, 0, 1, 2, 2]))  # videos of 2, 1 and 2 segments
    assert len(grouped) == 3 and grouped.rank == 2 * (parts.rank - parts.shared_rank) + parts.shared_rank

    def delta(adapter):
        b, a = adapter.scaled_B()["mlp.down_proj"], adapter.lora_A["mlp.down_proj"]
        return torch.einsum("blor,blri->bloi", b, a)

    for video, rows in enumerate(([0, 1], [2], [3, 4])):
        expected = Video2LoRAAdapter.compose([parts[row] for row in rows])
        torch.testing.assert_close(delta(grouped[video]), delta(expected), atol=1e-6, rtol=1e-5)
    # Differentiable: the trainer's loss reaches the hypernetwork through the composition.
    grouped.lora_B["mlp.down_proj"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hypernetwork.parameters())
    with pytest.raises(ValueError, match="none empty"):
        parts.compose_groups([0, 0, 2, 2, 2])


def test_compression_is_exact_while_the_rank_fits_and_optimal_below(make_model, processor, tmp_path):
    model = make_model()
    perturb_(model)
    adapters = model.generate_adapter(**context(processor, 2, 2, 2))
    composed = Video2LoRAAdapter.compose([adapters[0], adapters[1], adapters[2]])
    shared = composed.shared_rank

    def delta(adapter, slots=slice(None)):
        return torch.einsum("blor,blri->bloi", adapter.scaled_B()["mlp.down_proj"][..., slots],
                            adapter.lora_A["mlp.down_proj"][:, :, slots]).double()

    assert composed.compress(composed.rank) is composed
    full, own = delta(composed), slice(0, composed.rank - shared)
    video, bias = delta(composed, own), delta(composed, slice(composed.rank - shared, None))
    # Above the bias block's rank, it is kept exactly and the video part gets the best rank - shared directions:
    # the error is exactly the energy of that part's dropped singular values (Eckart-Young), layer by layer.
    for rank in (composed.rank - 1, shared + 1):
        small = composed.compress(rank)
        assert small.rank == rank and small.shared_rank == shared
        torch.testing.assert_close(delta(small, slice(rank - shared, None)), bias)
        expected = torch.linalg.svdvals(video)[..., rank - shared:].pow(2).sum(-1).sqrt()
        torch.testing.assert_close(torch.linalg.matrix_norm(delta(small) - full), expected, atol=1e-4, rtol=1e-3)
    # At or below it, the whole update is compressed.
    for rank in (shared, 1):
        small = composed.compress(rank)
        assert small.rank == rank and small.shared_rank == 0
        expected = torch.linalg.svdvals(full)[..., rank:].pow(2).sum(-1).sqrt()
        torch.testing.assert_close(torch.linalg.matrix_norm(delta(small) - full), expected, atol=1e-4, rtol=1e-3)
    small[0].save_pretrained(tmp_path / "small")
    assert Video2LoRAAdapter.from_pretrained(tmp_path / "small").rank == 1


def segment_in_place(model, frames, first, stop, frame_rate=1.0):
    """Frames `first:stop` of a video in memory, sampled alone and stated at their times in the whole video."""
    sampled = model.processor.sample_video(frames[first:stop], frame_rate=frame_rate)
    return replace(sampled, timestamps=[first / frame_rate + t for t in sampled.timestamps],
                   duration=len(frames) / frame_rate)


def test_a_rank_bound_keeps_long_videos_small_and_is_exact_while_it_fits(make_model, tmp_path):
    model = make_model()
    perturb_(model)
    frames = make_frames(16, seed=6)
    composed = model.internalize(frames, segments=4)
    assert composed.rank == 4 * model.config.lora_r + model.config.lora_r
    fits = model.internalize(frames, segments=4, max_rank=composed.rank)
    torch.testing.assert_close(fits.lora_A["mlp.down_proj"], composed.lora_A["mlp.down_proj"])
    bounded = model.internalize(frames, segments=4, max_rank=12)
    assert bounded.rank == 12 and bounded.shared_rank == model.config.lora_r
    averaged = model.internalize(frames, segments=4, compose="average")
    parts = [model.internalize(segment_in_place(model, frames, i, i + 4)) for i in range(0, 16, 4)]
    reference = Video2LoRAAdapter.compose(parts, mode="average")
    torch.testing.assert_close(averaged.scaled_B()["mlp.down_proj"], reference.scaled_B()["mlp.down_proj"])


def test_latent_composition_decodes_every_segment_at_once_and_keeps_the_rank(make_model):
    """`segment_composition="latents"`: the segments' latents, read in place, side by side through one decode."""
    model = make_model(segment_composition="latents")
    perturb_(model)
    frames = make_frames(16, seed=6)
    composed = model.internalize(frames, segments=4)
    assert composed.rank == model.config.effective_rank  # whatever the number of segments
    assert composed.metadata["composed"] == {"mode": "latents", "parts": 4, "layout": "contiguous"}

    def latents(sampled):
        inputs = model.processor.encode_videos([sampled.frames], INSTRUCTION, timestamps=[sampled.timestamps],
                                               durations=[sampled.duration])
        return model.encode_context(**inputs)  # [1, L, n, d]

    parts = [latents(segment_in_place(model, frames, i, i + 4)) for i in range(0, 16, 4)]
    expected = model.hypernetwork.decode(torch.cat(parts, dim=2))["mlp.down_proj"]
    torch.testing.assert_close(composed.lora_A["mlp.down_proj"], expected[0])
    torch.testing.assert_close(composed.lora_B["mlp.down_proj"], expected[1])
    # The decode reads a set: which segment came first is told by the times each was read at, not by its slot.
    swapped = model.hypernetwork.decode(torch.cat(parts[::-1], dim=2))["mlp.down_proj"]
    torch.testing.assert_close(swapped[0], expected[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(parts[0], parts[-1])
    # Rank-space composition stays on offer.
    concat = model.internalize(frames, segments=4, compose="concat")
    assert concat.rank == 4 * model.config.lora_r + model.config.lora_r
    assert model.internalize(frames, segments=1).rank == composed.rank


def test_segment_place_starts_as_a_no_op_and_then_tells_the_segments_apart(make_model, processor):
    """`use_segment_place`: where a context lies in its video reaches the latents, through a projection that starts at
    zero (a checkpoint grown with it is unchanged); a whole video is the place `(0, 1)`."""
    placed, plain = make_model(use_segment_place=True), make_model()
    perturb_(plain)
    missing = placed.load_state_dict(plain.state_dict(), strict=False).missing_keys  # the same weights, grown
    assert missing == ["hypernetwork.place_projection"] and not placed.hypernetwork.place_projection.any()
    frames = make_frames(8, seed=3)
    torch.testing.assert_close(placed.internalize(frames, segments=2).lora_A["mlp.down_proj"],
                               plain.internalize(frames, segments=2).lora_A["mlp.down_proj"])
    perturb_(placed, seed=4)
    inputs = context(processor, 2, 2)
    first, second = torch.tensor([[0.0, 0.5]] * 2), torch.tensor([[0.5, 1.0]] * 2)
    assert not torch.allclose(placed.encode_context(**inputs, segment_place=first),
                              placed.encode_context(**inputs, segment_place=second))
    torch.testing.assert_close(placed.encode_context(**inputs),
                               placed.encode_context(**inputs, segment_place=torch.tensor([[0.0, 1.0]] * 2)))
    # internalize(segments=2) tells each half its place: the first half is [0, 0.5) of the video, the second the rest.
    halves = []
    for begin, place in ((0, (0.0, 0.5)), (4, (0.5, 1.0))):
        sampled = segment_in_place(placed, frames, begin, begin + 4)
        half = processor.encode_videos([sampled.frames], INSTRUCTION, timestamps=[sampled.timestamps],
                                       durations=[sampled.duration])
        halves.append(placed.generate_adapter(**half, segment_place=torch.tensor([place])))
    torch.testing.assert_close(placed.internalize(frames, segments=2).scaled_B()["mlp.down_proj"],
                               Video2LoRAAdapter.compose(halves).scaled_B()["mlp.down_proj"])


def test_latent_composition_of_a_batch_masks_the_padding_of_shorter_videos(make_model, processor):
    """What the trainer composes with `segment_composition="latents"`: videos of 2, 1 and 2 segments in one batch,
    each the decode of its own segments' latents, a one-segment video exactly its plain adapter."""
    model = make_model(segment_composition="latents")
    perturb_(model)
    inputs = context(processor, 2, 2, 2, 2, 2)
    grouped = model.generate_adapter(**inputs, context_video_index=torch.tensor([0, 0, 1, 2, 2]))
    assert len(grouped) == 3 and grouped.rank == model.config.effective_rank
    latents = model.encode_context(**inputs)
    for video, rows in enumerate(([0, 1], [2], [3, 4])):
        stacked = torch.cat([latents[row:row + 1] for row in rows], dim=2)
        a, b = model.hypernetwork.decode(stacked)["mlp.down_proj"]
        torch.testing.assert_close(grouped.lora_A["mlp.down_proj"][video], a[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grouped.lora_B["mlp.down_proj"][video], b[0], atol=1e-6, rtol=1e-5)
    grouped.lora_B["mlp.down_proj"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.hypernetwork.parameters())
    with pytest.raises(ValueError, match="none empty"):
        model.generate_adapter(**inputs, context_video_index=[0, 0, 2, 2, 2])


def test_adapter_for_another_base_is_refused(make_model, processor, tmp_path, base_config):
    model = make_model()
    other_config = SmolVLMConfig(**{**base_config.to_dict(), "text_config": {
        **base_config.text_config.to_dict(), "num_hidden_layers": 3}})
    other = Video2LoRAModel(Video2LoRAConfig(base_config=other_config, **TINY_HYPERNETWORK), processor=processor)
    foreign = other.generate_adapter(**context(processor, 2))
    with pytest.raises(AdapterMismatchError, match="Internalize the video again"):
        model.answer(foreign, "what colour?")
    foreign.fingerprint = None  # a PEFT folder from elsewhere carries no fingerprint: the shapes still give it away
    with pytest.raises(AdapterMismatchError, match="do not fit this base"):
        model.answer(foreign, "what colour?")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    from safetensors.torch import save_file
    save_file({"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": torch.zeros(2, 4)},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError, match="another base model"):
        Video2LoRAAdapter.from_pretrained(tmp_path)


def test_internalize_and_answer_from_array_pil_and_file(make_model, processor, tmp_path):
    from PIL import Image

    from video2lora.video import write_video

    model = make_model()
    perturb_(model)
    frames = make_frames(8, seed=3)
    from_array = model.internalize(frames, frame_rate=4.0)
    from_pil = model.internalize([Image.fromarray(f) for f in frames], frame_rate=4.0)
    torch.testing.assert_close(from_array.lora_A["mlp.down_proj"], from_pil.lora_A["mlp.down_proj"])
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps=4.0)
    from_file = model.internalize(path)
    assert from_file.lora_A["mlp.down_proj"].shape == from_array.lora_A["mlp.down_proj"].shape
    answer = model.answer(from_array, "what colour is the square?", max_new_tokens=3)
    assert isinstance(answer, str)
    answers = model.answer(from_array, ["what colour is the square?", "triangle"], max_new_tokens=3)
    assert len(answers) == 2 and answers[0] == answer
    with pytest.raises(ValueError, match="uint8"):
        model.internalize(frames.astype("float32"))


def test_answer_reuses_the_header_cache_without_changing_answers(make_model, processor):
    model = make_model()
    perturb_(model)
    adapters = model.internalize(make_frames(6, seed=1)), model.internalize(make_frames(6, seed=2))
    questions = ["what colour is the square?", "how many", "which shape moved left first?"]

    def uncached(adapter, texts):  # the whole text-only prompt prefilled at once, left-padded
        inputs = processor.encode_text(texts, padding_side="left")
        with model.apply_adapter(adapter) if adapter is not None else torch.no_grad():
            output = model.vlm.generate(**inputs, max_new_tokens=5, do_sample=False)
        return [t.strip() for t in processor.batch_decode(output[:, inputs["input_ids"].shape[1]:],
                                                          skip_special_tokens=True)]

    for adapter in (adapters[0], None, Video2LoRAAdapter.compose(adapters, mode="average")):
        assert model.answer(adapter, questions, max_new_tokens=5) == uncached(adapter, questions)
        assert model.answer(adapter, questions[1], max_new_tokens=5) == uncached(adapter, questions[1:2])[0]
    first, second = adapters  # one adapter per row below
    rows = Video2LoRAAdapter(**{**vars(first),
                                "lora_A": {k: torch.cat([v, second.lora_A[k]]) for k, v in first.lora_A.items()},
                                "lora_B": {k: torch.cat([v, second.lora_B[k]]) for k, v in first.lora_B.items()}})
    assert model.answer(rows, questions[:2], max_new_tokens=5) == [
        model.answer(adapters[0], questions[0], max_new_tokens=5), model.answer(adapters[1], questions[1],
                                                                                max_new_tokens=5)]
    # One prefill of the header per adapter: a second question about the same video reuses it.
    model.answer(adapters[0], questions[0], max_new_tokens=1)
    header_cache = model._last_header_cache[2]
    model.answer(adapters[0], questions[1], max_new_tokens=1)
    assert model._last_header_cache[2] is header_cache
    model.answer(adapters[1], questions[1], max_new_tokens=1)
    assert model._last_header_cache[2] is not header_cache
    # A dead adapter's cache must never serve a blind question.
    model.answer(Video2LoRAAdapter.compose(adapters, mode="average"), questions[0], max_new_tokens=1)
    assert model.answer(None, questions, max_new_tokens=5) == uncached(None, questions)
    with pytest.raises(ValueError, match="cannot answer 3 questions"):
        model.answer(rows, questions, max_new_tokens=1)


def test_reference_mode_saves_only_the_hypernetwork(saved_base):
    from safetensors import safe_open

    base_dir, model_dir = saved_base, saved_base.parent / "reference-mode"
    model = Video2LoRAModel.from_base(str(base_dir), **TINY_HYPERNETWORK)
    assert model.processor is not None
    model.config.base_model_name_or_path = "../base"  # a base shipped beside the checkpoint
    model.save_pretrained(model_dir)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("hypernetwork.") for key in keys)
    reloaded = Video2LoRAModel.from_pretrained(model_dir)
    for name, tensor in model.vlm.state_dict().items():
        assert torch.equal(reloaded.vlm.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in reloaded.vlm.parameters())


AUTOMODEL_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class BlockProject(importlib.abc.MetaPathFinder):
        # The folder's own code must be what runs, never this project's installed modules.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"video2lora", "modeling_video2lora", "configuration_video2lora",
                                      "perceiver_video2lora", "processing_video2lora", "video_processing_video2lora",
                                      "families_video2lora", "pipeline_video2lora", "tests"}:
                raise ImportError(f"project module {name} imported")

    sys.meta_path.insert(0, BlockProject())
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.save({"logits": model.vlm(input_ids=ids).logits,
                "a": model.hypernetwork.heads[0].a_scale.detach().clone(),
                "processor": type(model.processor).__name__}, sys.argv[2])
""")


def load_with_automodel_elsewhere(model_dir, tmp_path) -> dict:
    """Run `AUTOMODEL_SCRIPT` on `model_dir` from a fresh folder, offline, with this project's modules out of reach;
    returns what it saved."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", AUTOMODEL_SCRIPT, str(model_dir), str(tmp_path / "o.pt")],
                            cwd=workdir, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "o.pt", weights_only=True)


def test_automodel_loads_from_another_directory(make_model, tmp_path):
    model = make_model()
    perturb_(model)
    model.save_pretrained(tmp_path / "model")
    saved = sorted(os.listdir(tmp_path / "model"))
    assert "model.safetensors" in saved and not any(name.endswith((".bin", ".pt")) for name in saved)
    assert {"modeling_video2lora.py", "configuration_video2lora.py", "perceiver_video2lora.py",
            "processing_video2lora.py"} <= set(saved)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]["AutoModel"] == (
        "modeling_video2lora.Video2LoRAModel")
    out = load_with_automodel_elsewhere(tmp_path / "model", tmp_path)
    with torch.no_grad():
        expected = model.vlm(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["a"], model.hypernetwork.heads[0].a_scale.detach())
    assert out["processor"] == "Video2LoRAProcessor"


# The real configs' values (from the checkpoints' config.json), written here because nothing can be downloaded.
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


@pytest.mark.parametrize(("name", "values", "published_millions"), [("500M", SMOLVLM2_500M, 129),
                                                                     ("2.2B", SMOLVLM2_2B, 227)])
def test_real_architectures_on_meta_device(name, values, published_millions):
    base_config = SmolVLMConfig(**values)
    counts = {}
    with torch.device("meta"):
        for head_type in ("per_layer", "shared"):
            model = Video2LoRAModel(Video2LoRAConfig(base_config=base_config, head_type=head_type))
            counts[head_type] = sum(p.numel() for p in model.hypernetwork.parameters())
    tokens_per_frame = (base_config.vision_config.image_size // base_config.vision_config.patch_size) ** 2 // (
        base_config.scale_factor**2)
    print(f"\nSmolVLM2-{name}: {tokens_per_frame} tokens/frame; hypernetwork {counts['per_layer'] / 1e6:.1f}M "
          f"(published {published_millions}M), shared head {counts['shared'] / 1e6:.1f}M")
    assert tokens_per_frame == {"500M": 64, "2.2B": 81}[name]
    assert abs(counts["per_layer"] / 1e6 - published_millions) / published_millions < 0.15
    assert counts["shared"] < 0.6 * counts["per_layer"]


def _write_adapter_repeatedly(adapter, folder, marker, rounds):
    for _ in range(rounds):
        adapter.metadata = {"marker": marker}
        adapter.save_pretrained(folder, extra_files={"marker.txt": marker})


def test_concurrent_writers_leave_one_whole_adapter(make_model, tmp_path):
    """Three processes write different adapters to one folder while this one reads it: every read sees one writer's
    complete folder (its weights, their metadata and its side files agree), never a mix or a torn file, every writer
    finishes and no staging folder is left behind."""
    import multiprocessing

    from safetensors import safe_open

    model = make_model()
    perturb_(model)
    adapters = [model.internalize(make_frames(2, seed=seed)) for seed in (1, 2, 3)]
    folder = tmp_path / "adapter"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_adapter_repeatedly, args=(adapter, folder, marker, 15))
               for adapter, marker in zip(adapters, "abc", strict=True)]
    for writer in writers:
        writer.start()
    reads = 0
    while any(writer.is_alive() for writer in writers) or reads == 0:
        try:
            directory = os.open(folder, os.O_RDONLY)  # pins one folder: a later rename cannot swap it under us
        except FileNotFoundError:
            continue
        try:
            marker = open(os.open("marker.txt", os.O_RDONLY, dir_fd=directory)).read()
            with open(os.open("adapter_model.safetensors", os.O_RDONLY, dir_fd=directory), "rb") as handle:
                blob = handle.read()
            config = json.loads(open(os.open("adapter_config.json", os.O_RDONLY, dir_fd=directory)).read())
        except FileNotFoundError:  # that folder was replaced and removed while being read: read the new one
            continue
        finally:
            os.close(directory)
        scratch = tmp_path / "read.safetensors"
        scratch.write_bytes(blob)
        with safe_open(str(scratch), "pt") as handle:  # a torn file would not parse
            assert json.loads(handle.metadata()["video2lora_metadata"])["marker"] == marker
        assert config["peft_type"] == "LORA"
        reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert reads > 0 and not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_segments_compose_per_segment_adapters_and_one_segment_is_the_plain_adapter(make_model, tmp_path):
    from video2lora.video import write_video

    model = make_model()
    perturb_(model)
    path = tmp_path / "long.mp4"
    write_video(path, make_frames(24, seed=4), fps=4.0)  # 6 s
    plain = model.internalize(path)
    one = model.internalize(path, segments=1)
    assert all(torch.equal(one.lora_A[k], plain.lora_A[k]) for k in plain.lora_A)
    two = model.internalize(path, segments=2, num_frames=2)
    halves = [model.processor.sample_video(path, start=begin, end=finish, num_frames=2) for begin, finish in ((0, 3), (3, 6))]
    # Each half is read in its place: the second half's frames are stated at 3 s and later, of a 6 s video.
    placed = [replace(half, timestamps=[begin + t for t in half.timestamps], duration=6.0)
              for half, begin in zip(halves, (0.0, 3.0), strict=True)]
    expected = Video2LoRAAdapter.compose([model.internalize(half) for half in placed])
    assert two.metadata["segments"] == [[0.0, 3.0], [3.0, 6.0]]
    assert all(torch.equal(two.lora_A[k], expected.lora_A[k]) for k in plain.lora_A)
    # keep_place: one half of the file read on its own, in its place, is that half's part of the composition.
    kept = [model.internalize(path, start=begin, end=finish, num_frames=2, keep_place=True)
            for begin, finish in ((0, 3), (3, 6))]
    assert all(torch.equal(two.lora_A[k], Video2LoRAAdapter.compose(kept).lora_A[k]) for k in plain.lora_A)
    with pytest.raises(ValueError, match="not inside the video"):
        model.internalize(path, start=7.0, keep_place=True)
    with pytest.raises(ValueError, match="without segments"):
        model.internalize(path, start=0.0, end=3.0, segments=2, keep_place=True)
    out_of_place = Video2LoRAAdapter.compose([model.internalize(half) for half in halves])
    assert not torch.equal(two.lora_A["mlp.down_proj"], out_of_place.lora_A["mlp.down_proj"])
    assert two.rank == 2 * plain.rank - plain.shared_rank  # the bias block once
    by_seconds = model.internalize(path, segment_seconds=2.5)
    assert by_seconds.metadata["segments"] == [[0.0, 2.5], [2.5, 5.0], [5.0, 6.0]]
    # Segments read in batches (a shorter last one padded in its batch): the same adapter, either composition.
    for compose in ("concat", "latents"):
        one_at_a_time = model.internalize(path, segment_seconds=2.5, compose=compose)
        batched = model.internalize(path, segment_seconds=2.5, compose=compose, segment_batch_size=2)
        assert batched.rank == one_at_a_time.rank and batched.metadata == one_at_a_time.metadata
        for name, b in one_at_a_time.scaled_B().items():
            torch.testing.assert_close(batched.scaled_B()[name], b, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(batched.lora_A[name], one_at_a_time.lora_A[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="segment_batch_size"):
        model.internalize(path, segments=2, segment_batch_size=0)
    # segment_overlap=1: the second half opens with the first half's last sampled frame, at its own time.
    first, second = placed
    opened = replace(second, frames=np.concatenate([first.frames[-1:], second.frames]),
                     timestamps=[first.timestamps[-1], *second.timestamps])
    overlapped = model.internalize(path, segments=2, num_frames=2, segment_overlap=1, compose="concat")
    expected = Video2LoRAAdapter.compose([model.internalize(first), model.internalize(opened)])
    assert all(torch.equal(overlapped.lora_A[k], expected.lora_A[k]) for k in plain.lora_A)
    # ... and the frame carried over crosses batches: 3 segments one at a time or two per batch agree.
    thirds_overlapped = [model.internalize(path, segments=3, num_frames=2, segment_overlap=1, segment_batch_size=b)
                         for b in (1, 2)]
    torch.testing.assert_close(thirds_overlapped[1].scaled_B()["mlp.down_proj"],
                               thirds_overlapped[0].scaled_B()["mlp.down_proj"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="segment_overlap"):
        model.internalize(path, segments=2, segment_overlap=-1)
    frames = make_frames(12, seed=5)
    in_memory = model.internalize(frames, frame_rate=2.0, segments=3)
    thirds = [model.internalize(segment_in_place(model, frames, i, i + 4, frame_rate=2.0)) for i in (0, 4, 8)]
    torch.testing.assert_close(in_memory.lora_A["mlp.down_proj"],
                               Video2LoRAAdapter.compose(thirds).lora_A["mlp.down_proj"])
    with pytest.raises(ValueError, match="segments or segment_seconds"):
        model.internalize(path, segments=2, segment_seconds=1.0)
    with pytest.raises(ValueError, match="already sampled"):
        model.internalize(model.processor.sample_video(path), segments=2)


def test_interleaved_segments_each_cover_the_whole_video(make_model, tmp_path):
    from video2lora.video import write_video

    model = make_model()
    perturb_(model)
    path = tmp_path / "long.mp4"
    write_video(path, make_frames(24, seed=4), fps=4.0)  # 6 s
    interleaved = model.internalize(path, segments=3, num_frames=2, segment_layout="interleaved", compose="concat")
    # Segment i reads frames i, i + 3, ... of the 6 frames sampled over the whole video, in their places in it.
    whole = model.processor.sample_video(path, num_frames=6)
    parts = [replace(whole, frames=whole.frames[i::3], timestamps=whole.timestamps[i::3]) for i in range(3)]
    expected = Video2LoRAAdapter.compose([model.internalize(part) for part in parts])
    assert all(torch.equal(interleaved.lora_A[k], expected.lora_A[k]) for k in expected.lora_A)
    for name, b in expected.scaled_B().items():
        torch.testing.assert_close(interleaved.scaled_B()[name], b)
    assert interleaved.metadata["segments"] == [[0.0, 6.0]] * 3
    assert interleaved.metadata["composed"] == {"mode": "concat", "parts": 3, "layout": "interleaved"}
    contiguous = model.internalize(path, segments=3, num_frames=2, compose="concat")
    assert contiguous.metadata["composed"]["layout"] == "contiguous"
    assert not torch.equal(contiguous.lora_A["mlp.down_proj"], interleaved.lora_A["mlp.down_proj"])
    # Frames in memory, read in batches, their latents decoded together: the same parts.
    frames = make_frames(12, seed=5)
    in_memory = [model.internalize(frames, frame_rate=2.0, segments=2, num_frames=3, segment_layout="interleaved",
                                   compose="latents", segment_batch_size=b) for b in (1, 2)]
    sampled = model.processor.sample_video(frames, frame_rate=2.0, num_frames=6)
    halves = [replace(sampled, frames=sampled.frames[i::2], timestamps=sampled.timestamps[i::2]) for i in range(2)]
    torch.testing.assert_close(in_memory[0].lora_A["mlp.down_proj"], model._decode(torch.cat(
        [model._encode_frames([half], None, [(0.0, 1.0)]) for half in halves], dim=2)).lora_A["mlp.down_proj"])
    torch.testing.assert_close(in_memory[1].scaled_B()["mlp.down_proj"], in_memory[0].scaled_B()["mlp.down_proj"],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="segment_layout"):
        model.internalize(path, segments=2, segment_layout="shuffled")
    with pytest.raises(ValueError, match="interleaved segments each cover the whole video"):
        model.internalize(path, segments=2, segment_layout="interleaved", segment_overlap=1)


def test_the_vision_tower_in_chunks_gives_the_same_adapter(make_model, processor):
    model = make_model()
    perturb_(model)
    inputs = context(processor, 6, 3)
    whole = model.generate_adapter(**inputs)
    model.vision_chunk_frames = 2
    chunked = model.generate_adapter(**inputs)
    for name in whole.lora_A:
        torch.testing.assert_close(chunked.lora_A[name], whole.lora_A[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(chunked.lora_B[name], whole.lora_B[name], atol=1e-6, rtol=1e-5)


def test_a_missing_relative_base_folder_is_named(tmp_path):
    """A checkpoint copied without the base beside it says which folder it expected, not a Hub-id error."""
    from video2lora.runner import DEFAULT_MODEL_PATH

    alone = tmp_path / "video2lora-world"
    shutil.copytree(DEFAULT_MODEL_PATH, alone, ignore=shutil.ignore_patterns("eval*"))
    with pytest.raises(ValueError, match=r"base folder '\.\./smolvlm-world'.*does not exist.*smolvlm-world"):
        Video2LoRAModel.from_pretrained(alone)

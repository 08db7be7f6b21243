"""The embedded default's frozen base (`video2lora.base_training`): prompts, batches, losses, training, checkpoints,
export, the command line and the shipped base's quality."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import SmolVLMForConditionalGeneration

from processing_video2lora import Video2LoRAProcessor
from video2lora.base_training import (
    IGNORE,
    WORLD_OPTIONS,
    AuxiliaryHeads,
    BaseTrainingArguments,
    PromptEncoder,
    assert_fast_pixels_match,
    binding_loss,
    build_base,
    clip_video,
    evaluate_base,
    export_base,
    fast_pixel_values,
    follow_up_prompt,
    load_training_checkpoint,
    make_batch,
    sample_turns,
    save_training_checkpoint,
    token_labels,
    train_base,
    training_losses,
    write_model_card,
)
from video2lora.base_training.__main__ import main as base_training_main
from video2lora.tiny import END_OF_UTTERANCE
from video2lora.world import COLOURS, QUESTION_TYPES, SHAPES, generate_clip

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "video2lora" / "checkpoints" / "smolvlm-world"
TRAINING_STATE = REPO / "video2lora" / "checkpoints" / "smolvlm-world-training" / "last-checkpoint"
# A micro version of the recipe: same patch 4 / pixel-shuffle 4 layout (16 tokens per frame), far fewer weights.
MICRO = dict(vision_hidden=16, vision_layers=1, text_hidden=32, text_layers=2, text_heads=2)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_base(tokenizer_clips=20, **MICRO)


def micro_batch(processor, seeds=range(4), questions=3):
    clips = [generate_clip(seed, **WORLD_OPTIONS) for seed in seeds]
    _, timestamps, duration = clip_video(clips[0])
    encoder = PromptEncoder(processor, len(timestamps), timestamps, duration)
    return make_batch(clips, encoder, np.random.default_rng(0), questions, 0.5, grid=4)


def test_fast_pixels_equal_image_processor(micro):
    _, processor = micro
    frames, _, _ = clip_video(generate_clip(3, **WORLD_OPTIONS))
    reference = processor.image_processor([list(frames)], do_image_splitting=False, return_tensors="pt")
    torch.testing.assert_close(fast_pixel_values(frames), reference["pixel_values"][0], atol=1e-6, rtol=0)
    assert_fast_pixels_match(processor, frames)


def test_batch_answers_follow_the_prompt_layout(micro):
    _, processor = micro
    batch = micro_batch(processor)
    tokenizer = processor.tokenizer
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    text = tokenizer.decode(ids)
    # The cached pieces, concatenated, tokenize exactly like the whole string.
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    # The first turn is the processor's own single-question video prompt.
    clip = generate_clip(0, **WORLD_OPTIONS)
    first_question = min((item.question for item in clip.qa if item.question in text), key=text.index)
    frames, timestamps, duration = clip_video(clip)
    reference = processor.encode_videos([frames], first_question, timestamps=[timestamps], durations=[duration])
    assert ids[: reference["input_ids"].shape[1]] == reference["input_ids"][0].tolist()
    assert (batch.input_ids == processor.image_token_id).sum(1).tolist() == [4 * 16] * 4
    # Every supervised answer ends with <end_of_utterance>.
    eou = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert int((batch.labels[0] == eou).sum()) >= 2


# Token ids the hand-written chat turns of the original trainer produced for the shipped base's tokenizer: the
# conversation layout every step of the shipped base was trained on. Any change here is a change of the recipe.
SHIPPED_FOLLOW_UP_IDS = {
    "what colour is the square?": [204, 508, 31, 226, 274, 295, 287, 264, 318, 36, 2, 204, 504, 89, 31],
    "what appears first, the cross or the circle?": [204, 508, 31, 226, 274, 409, 369, 17, 264, 317, 405, 264, 316,
                                                     36, 2, 204, 504, 89, 31],
}


@pytest.fixture(scope="module")
def shipped_processor():
    if not (EMBEDDED / "tokenizer.json").is_file():
        pytest.skip(f"{EMBEDDED} not built yet")
    return Video2LoRAProcessor.from_pretrained(EMBEDDED)


def test_follow_up_turns_are_token_for_token_the_trained_layout(micro, shipped_processor):
    """Later turns come from the processor's chat template and equal, token for token, the layout the shipped base
    was trained with: `"\\nUser: <question><end_of_utterance>\\nAssistant:"` after an answer's end of utterance."""
    for processor in (micro[1], shipped_processor):
        encoder = PromptEncoder(processor, 4, [0.25, 0.75, 1.25, 1.75], 2.0)
        for question in (*SHIPPED_FOLLOW_UP_IDS, "Describe the video."):
            expected = f"\nUser: {question}{END_OF_UTTERANCE}\nAssistant:"
            assert follow_up_prompt(processor, question) == expected
            assert encoder.follow_up_ids(question) == processor.tokenizer(expected, add_special_tokens=False)["input_ids"]
    encoder = PromptEncoder(shipped_processor, 4, [0.25, 0.75, 1.25, 1.75], 2.0)
    for question, ids in SHIPPED_FOLLOW_UP_IDS.items():
        assert encoder.follow_up_ids(question) == ids
    assert encoder.answer_ids("red") == [349, 2]
    assert encoder.prompt_ids("what colour is the square?", with_video=False) == [1, *SHIPPED_FOLLOW_UP_IDS[
        "what colour is the square?"][1:]]


def test_packed_row_is_the_chat_template_of_the_whole_conversation(micro):
    """A row, decoded, is exactly what the processor's chat template writes for its conversation, video expanded."""
    _, processor = micro
    clips = [generate_clip(seed, **WORLD_OPTIONS) for seed in range(3)]
    _, timestamps, duration = clip_video(clips[0])
    encoder = PromptEncoder(processor, len(timestamps), timestamps, duration)
    for clip in clips:
        turns = sample_turns(clip, np.random.default_rng(clip.seed), 4, 1.0)
        ids = encoder.prompt_ids(turns[0][0])
        for turn, (prompt, answer) in enumerate(turns):
            ids = ids + (encoder.follow_up_ids(prompt) if turn else []) + encoder.answer_ids(answer)
        conversation = []
        for turn, (prompt, answer) in enumerate(turns):
            video = [{"type": "video"}] if turn == 0 else []
            conversation += [{"role": "user", "content": [*video, {"type": "text", "text": prompt}]},
                             {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        text = processor.tokenizer.apply_chat_template(conversation, chat_template=processor.chat_template,
                                                       tokenize=False)
        text = text.replace("<video>", encoder.video_text, 1).removesuffix("\n")  # the last answer ends the row
        assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == ids


def test_blind_prompts_and_padding_are_the_processors(micro):
    _, processor = micro
    encoder = PromptEncoder(processor, 4, [0.25, 0.75, 1.25, 1.75], 2.0)
    question = "what colour is the square?"
    blind = processor.tokenizer(processor.chat_prompt(question, with_video=False), add_special_tokens=False)
    assert encoder.prompt_ids(question, with_video=False) == blind["input_ids"]
    ids, mask = encoder.pad([[5, 6, 7], [8]], side="left")
    pad = processor.tokenizer.pad_token_id
    assert ids.tolist() == [[5, 6, 7], [pad, pad, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = encoder.pad([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, pad, pad]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batch_moves_every_tensor_to_the_training_device(micro):
    _, processor = micro
    batch = micro_batch(processor)
    moved = batch.to("meta")  # a device without data: catches any field left behind on the CPU
    tensors = [moved.pixel_values, moved.input_ids, moved.attention_mask, moved.labels, moved.label_weights,
               moved.row_clip, moved.binding_rows, moved.binding_positions, moved.binding_targets,
               *moved.token_labels.values()]
    assert all(tensor.device.type == "meta" for tensor in tensors)
    assert moved.input_ids.shape == batch.input_ids.shape and moved.token_labels.keys() == batch.token_labels.keys()


def test_a_few_steps_reduce_the_loss(micro):
    model, processor = micro
    model = SmolVLMForConditionalGeneration(model.config)  # fresh weights, the fixture stays untouched
    model.train()
    heads = AuxiliaryHeads(model.config.text_config.hidden_size, WORLD_OPTIONS["num_steps"])
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=3e-3)
    batch = micro_batch(processor)
    args = BaseTrainingArguments()
    losses = []
    for _ in range(12):
        loss = training_losses(model, heads, batch, args)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _clip_with(colour: str, shape: str) -> tuple:
    for seed in range(500):
        clip = generate_clip(seed, **WORLD_OPTIONS)
        for index, obj in enumerate(clip.objects):
            if COLOURS[obj.colours[0]] == colour and SHAPES[obj.shape] == shape and obj.visible[0]:
                return clip, index
    raise AssertionError(f"no {colour} {shape} in the first 500 clips")


def test_binding_queries_point_at_the_named_object(micro):
    """Each binding query sits on the token before its answer, and its targets are the named object's tokens."""
    _, processor = micro
    seeds = range(8)
    batch = micro_batch(processor, seeds, questions=4)
    clips = [generate_clip(seed, **WORLD_OPTIONS) for seed in seeds]
    assert len(batch.binding_rows) > 0
    for row, position, targets in zip(batch.binding_rows, batch.binding_positions, batch.binding_targets, strict=True):
        assert batch.labels[row, position] == IGNORE and batch.labels[row, position + 1] != IGNORE
        prompt = processor.tokenizer.decode(batch.input_ids[row, : position + 1]).rsplit("User:", 1)[-1]
        item = next(item for item in clips[row].qa if item.question in prompt)
        assert item.question_type != "count"
        objects = batch.token_labels["object"][row]
        assert targets.any() and set(objects[targets].tolist()) <= set(item.objects)
        assert not (np.isin(objects[~targets].numpy(), item.objects)).any()


def test_binding_loss_rewards_looking_at_the_named_object_only(micro):
    _, processor = micro
    batch = micro_batch(processor, range(8), questions=4)
    image_mask = batch.input_ids == processor.image_token_id
    rows, length = batch.input_ids.shape
    objects = torch.zeros(rows, length, dtype=torch.long) - 1
    objects[image_mask] = batch.token_labels["object"].reshape(-1)

    def attentions(spread: str) -> list[torch.Tensor]:
        """Two layers of two heads; every query's head 0 spreads evenly over the tokens `spread` names."""
        layers = [torch.full((rows, 2, length, length), 1.0 / length) for _ in range(2)]
        for query, (row, position) in enumerate(zip(batch.binding_rows, batch.binding_positions, strict=True)):
            target = torch.zeros(length, dtype=torch.bool)
            target[image_mask[row]] = batch.binding_targets[query]
            chosen = {"target": target, "others": (objects[row] >= 0) & ~target}[spread]
            if spread == "others" and not chosen.any():
                chosen = ~image_mask[row]  # a one-object clip has no other object: look at the text instead
            for layer in layers:
                layer[row, 0, position] = chosen.float() / chosen.sum()
        return layers

    on_target = binding_loss(attentions("target"), batch, image_mask)
    on_others = binding_loss(attentions("others"), batch, image_mask)
    assert on_target < 0.1 < 2.0 < on_others


def test_aux_labels_line_up_with_object_maps():
    clip, index = _clip_with("red", "square")
    frames = clip.step_centre_frames
    labels = token_labels(clip, frames, grid=4)
    # The token whose 16 x 16 block holds most of the square at the first frame.
    blocks = clip.object_maps[frames[0]].reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, -1)
    token = int((blocks == index).sum(1).argmax())
    assert labels["colour"][0, token] == COLOURS.index("red")
    assert labels["shape"][0, token] == SHAPES.index("square")
    assert labels["direction"][0, token] == clip.objects[index].direction
    empty = np.flatnonzero((blocks >= 0).sum(1) == 0)
    assert len(empty) and (labels["colour"][0, empty] == len(COLOURS)).all()
    assert (labels["shape"][0, empty] == len(SHAPES)).all()
    assert (labels["direction"][0, empty] == -100).all()


def test_token_order_matches_pixel_shuffle(micro):
    """Token t of a frame must come from pixel block t (row-major), which is what `token_labels` assumes."""
    model, _ = micro
    side, scale = 16, 4  # 16 x 16 patches, pixel-shuffle 4
    patches = torch.arange(side * side, dtype=torch.float32).reshape(1, side * side, 1)
    shuffled = model.model.connector.pixel_shuffle(patches, scale)[0]  # [16 tokens, 16 patches]
    for token in range(16):
        rows, cols = shuffled[token].long() // side, shuffled[token].long() % side
        assert set((rows // scale).tolist()) == {token // 4} and set((cols // scale).tolist()) == {token % 4}


def test_checkpoint_roundtrip_and_resume(tmp_path):
    args = BaseTrainingArguments(output_dir=str(tmp_path / "run"), minutes=5, max_steps=2, vision_warmup_steps=1,
                                 batch_clips=2, questions_per_clip=2, num_validation_clips=1, tokenizer_clips=20,
                                 architecture=dict(MICRO, image_size=64, patch_size=4, scale_factor=4))
    model, processor, _ = train_base(args)
    checkpoint = tmp_path / "run" / "last-checkpoint"
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in os.listdir(checkpoint))
    loaded, _, state = load_training_checkpoint(str(checkpoint))
    assert state["step"] == 2
    for (name, value), (_, other) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(value, other, rtol=0, atol=0, msg=name)
    assert load_file(str(checkpoint / "optimizer.safetensors"))  # Adam moments are stored as tensors

    # Resuming restores everything and continues the step count.
    args.max_steps = 3
    resumed, _, _ = train_base(args, resume=True)
    with open(checkpoint / "trainer_state.json") as handle:
        assert json.load(handle)["step"] == 3
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters(), strict=True))


def test_new_cycle_restarts_the_schedule_from_the_checkpoint(tmp_path):
    args = BaseTrainingArguments(output_dir=str(tmp_path / "run"), minutes=5, max_steps=3, vision_warmup_steps=1,
                                 batch_clips=2, questions_per_clip=2, num_validation_clips=1, tokenizer_clips=20,
                                 architecture=dict(MICRO, image_size=64, patch_size=4, scale_factor=4))
    train_base(args)  # runs until step / max_steps reaches 1: the schedule is spent
    state_path = tmp_path / "run" / "last-checkpoint" / "trainer_state.json"
    assert json.loads(state_path.read_text())["step"] == 3
    train_base(args, resume=True)  # a plain resume has nothing left to do
    assert json.loads(state_path.read_text())["step"] == 3
    args.new_cycle, args.schedule_minutes = True, 5.0
    train_base(args, resume=True)  # a new cycle counts its own steps: three more
    state = json.loads(state_path.read_text())
    assert state["step"] == 6 and state["scheduler"]["start_step"] == 3
    assert state["scheduler"]["total_s"] == 300.0


def test_shipped_training_state_still_resumes(tmp_path):
    """`video2lora/checkpoints/smolvlm-world-training/last-checkpoint` (the shipped base's training state) loads and trains on."""
    if not (TRAINING_STATE / "trainer_state.json").is_file():
        pytest.skip(f"{TRAINING_STATE} not present")
    run = tmp_path / "run"
    shutil.copytree(TRAINING_STATE, run / "last-checkpoint")
    step = json.loads((run / "last-checkpoint" / "trainer_state.json").read_text())["step"]
    # A new cycle of one step, on two clips: enough to restore every piece of state and take a step.
    args = BaseTrainingArguments(output_dir=str(run), minutes=10, max_steps=1, new_cycle=True, schedule_minutes=10,
                                 batch_clips=2, num_validation_clips=1, threads=1)
    model, _, _ = train_base(args, resume=True)
    state = json.loads((run / "last-checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == step + 1 and state["scheduler"]["start_step"] == step
    shipped = load_file(str(TRAINING_STATE / "model.safetensors"))
    assert shipped.keys() == model.state_dict().keys()


def test_save_and_load_restore_optimizer_and_rng(micro, tmp_path):
    model, processor = micro
    heads = AuxiliaryHeads(model.config.text_config.hidden_size, 4)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=1e-3)
    model.train()
    loss = training_losses(model, heads, micro_batch(processor, range(2), 2), BaseTrainingArguments())["loss"]
    loss.backward()
    optimizer.step()
    rng = np.random.default_rng(5)
    path = save_training_checkpoint(str(tmp_path), model, processor, heads, optimizer, {"elapsed_s": 1.0,
                                    "total_s": 9.0}, 7, rng, BaseTrainingArguments())
    _, _, state = load_training_checkpoint(path)
    assert state["step"] == 7 and state["scheduler"] == {"elapsed_s": 1.0, "total_s": 9.0}
    restored = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=1e-3)
    restored.load_state_dict(state["optimizer"])
    for key, value in optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            torch.testing.assert_close(restored.state_dict()["state"][key][name], tensor)
    copy = np.random.default_rng(0)
    copy.bit_generator.state = state["numpy_rng"]
    assert copy.integers(1 << 30) == rng.integers(1 << 30)
    for name, tensor in heads.state_dict().items():
        torch.testing.assert_close(state["aux_heads"][name], tensor)


def test_export_loads_offline_and_generates(micro, tmp_path):
    model, processor = micro
    export_base(model, processor, str(tmp_path / "base"))
    folder = tmp_path / "base"
    for name in ("model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert "library_name: transformers" in (folder / "README.md").read_text()
    loaded = SmolVLMForConditionalGeneration.from_pretrained(folder)
    loaded_processor = Video2LoRAProcessor.from_pretrained(folder)
    assert loaded.generation_config.eos_token_id == loaded_processor.tokenizer.convert_tokens_to_ids(
        "<end_of_utterance>"
    )
    frames, timestamps, duration = clip_video(generate_clip(1, **WORLD_OPTIONS))
    inputs = loaded_processor.encode_videos([frames], "what colour is the square?", timestamps=[timestamps],
                                            durations=[duration])
    output = loaded.generate(**inputs, max_new_tokens=3)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    scores = evaluate_base(loaded, loaded_processor, [1_000_000])
    assert set(scores) == {"video", "blind", "num_items"}


def test_card_carries_the_metadata_the_command_and_the_scores(tmp_path):
    result = {"video": {"colour": 1.0, "overall": 0.9995}, "blind": {"colour": 0.25, "overall": 0.2},
              "num_items": {"colour": 8, "overall": 8}, "split": "test", "num_clips": 2}
    write_model_card(str(tmp_path), 1_005_248, result=result)
    card = (tmp_path / "README.md").read_text()
    front_matter = card.split("---")[1]
    for line in ("library_name: transformers", "pipeline_tag: image-text-to-text", "license: apache-2.0",
                 "- smolvlm", "- synthetic"):
        assert line in front_matter.splitlines(), line
    assert "(1,005,248 parameters" in card
    assert "`python -m video2lora.base_training --output_dir runs/base --minutes 180" in card
    assert "of 2 held-out\ntest clips" in card
    assert card.endswith("| colour | 8 | 1.000 | 0.250 |\n| overall | 8 | 1.000 | 0.200 |\n")
    write_model_card(str(tmp_path), 10)
    assert (tmp_path / "README.md").read_text().endswith("written to `eval.json` by `--eval_test`.\n")


def test_shipped_card_is_the_rendered_template(tmp_path):
    """`video2lora/checkpoints/smolvlm-world/README.md` is what `--eval_test` writes from `video2lora/hub_cards/base.md` and `eval.json`."""
    result = _embedded_eval()
    num_parameters = sum(value.numel() for value in load_file(str(EMBEDDED / "model.safetensors")).values())
    write_model_card(str(tmp_path), num_parameters, result=result)
    assert (tmp_path / "README.md").read_text() == (EMBEDDED / "README.md").read_text()


def test_command_line_help_and_usage_errors(capsys):
    done = subprocess.run([sys.executable, "-m", "video2lora.base_training", "--help"], capture_output=True,
                          text=True, cwd=REPO, check=True)
    assert done.stdout.startswith("usage: python -m video2lora.base_training")
    assert "--binding_weight" in done.stdout and "--resume" in done.stdout and "Default: 0.001." in done.stdout
    with pytest.raises(SystemExit):
        base_training_main(["--eval_only"])
    assert "--eval_only needs --export" in capsys.readouterr().err


def _embedded_eval() -> dict:
    eval_path = EMBEDDED / "eval.json"
    if not eval_path.is_file():
        if os.environ.get("REQUIRE_EMBEDDED") == "1":
            pytest.fail(f"{eval_path} is missing; train it with `python -m video2lora.base_training`")
        pytest.skip(f"{eval_path} not built yet (set REQUIRE_EMBEDDED=1 to make this an error)")
    return json.loads(eval_path.read_text())


def test_embedded_base_is_small_and_really_sees_the_video():
    result = _embedded_eval()
    assert (EMBEDDED / "model.safetensors").stat().st_size < 10 * 2**20
    assert result["split"] == "test" and result["num_items"]["overall"] >= 500
    # Far above blind overall, on enough questions that one type cannot carry it.
    assert result["video"]["overall"] - result["blind"]["overall"] >= 0.7
    assert min(result["num_items"][kind] for kind in QUESTION_TYPES) >= 100


def test_embedded_base_meets_targets():
    """The issue's bar for the teacher: >= 0.9 on every question type and >= 0.3 above blind."""
    result = _embedded_eval()
    for kind in QUESTION_TYPES:
        assert result["video"][kind] >= 0.9, (kind, result["video"][kind])
        assert result["video"][kind] - result["blind"][kind] >= 0.3, (kind, result["video"][kind])


def test_packed_turns_never_give_each_other_away():
    rng = np.random.default_rng(0)
    packed = 0
    for seed in range(300):
        clip = generate_clip(seed, **WORLD_OPTIONS)
        turns = sample_turns(clip, rng, 4, 0.0)
        packed += len(turns) > 1
        for i, (question, _) in enumerate(turns):
            words = set(question.replace("?", " ").replace(",", " ").split())
            assert not any(answer in words for j, (_, answer) in enumerate(turns) if j != i), turns
    assert packed > 200  # the constraint still leaves several questions per sequence

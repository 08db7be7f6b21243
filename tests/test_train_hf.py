"""train_hf.py: a real `accelerate launch` run on a tiny base, resume, checkpoints, Hub folder, optimizer and loss."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModel, TrainingArguments

import train_hf
from modeling_video2lora import Video2LoRAModel
from tests.conftest import TINY_HYPERNETWORK, perturb_
from video2lora.data import write_manifest
from video2lora.world import write_world

REPO = Path(__file__).resolve().parent.parent
HYPERNETWORK_FLAGS = [item for name, value in TINY_HYPERNETWORK.items() for item in (f"--{name}", str(value))]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, saved_base):
    """A tiny random base saved to disk, and 2 world clips with 2 fixed-target rows each."""
    root = tmp_path_factory.mktemp("train_hf")
    world = write_world(root, split="train", num_clips=2, progress=False)
    rows = [json.loads(line) for line in world.read_text().splitlines()]
    rows = [r for r in rows if r["id"].endswith(("-qa0", "-qa1"))]
    manifest = root / "fixed.jsonl"
    write_manifest(manifest, rows)
    return {"root": root, "base": saved_base, "manifest": manifest}


def _train_command(workspace, output_dir, *extra):
    return [
        "train_hf.py", "--base_model_name_or_path", str(workspace["base"]), "--train_manifest",
        str(workspace["manifest"]), "--output_dir", str(output_dir), *HYPERNETWORK_FLAGS,
        "--questions_per_video", "2", "--per_device_train_batch_size", "2", "--max_steps", "8",
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--logging_steps", "1", "--save_steps", "4",
        "--seed", "0", "--disable_tqdm", "true", "--num_frames", "3", "--frame_cache_dir", str(workspace["root"] / "frames"), *extra,
    ]


def _run(command, workspace):
    # A private HF_HOME: no accelerate config file, no Hub cache; exactly what a fresh machine sees.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(workspace["root"] / "hf_home"),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _losses(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


@pytest.fixture(scope="module")
def trained(workspace):
    output_dir = workspace["root"] / "run"
    _run(["accelerate", "launch", *_train_command(workspace, output_dir)], workspace)
    return output_dir


def test_accelerate_launch_trains_and_saves_only_the_hypernetwork(trained, workspace):
    losses = _losses(trained)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.3, losses  # the fixed set is being fitted
    for folder in (trained, trained / "checkpoint-4", trained / "checkpoint-8"):
        assert not list(folder.glob("*.bin")) or {p.name for p in folder.glob("*.bin")} == {"training_args.bin"}
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
        assert keys and all(key.startswith("hypernetwork.") for key in keys)
    config = json.loads((trained / "config.json").read_text())
    assert config["base_model_name_or_path"] == str(workspace["base"]) and "num_frames" not in config
    # Frame settings live with the processor: --num_frames capped the base's 4, the resolution stayed the base's.
    processor_config = json.loads((trained / "processor_config.json").read_text())
    assert processor_config["video_sampling"]["max_frames"] == 3
    assert processor_config["image_processor"]["max_image_size"] == {"longest_edge": 64}
    model = AutoModel.from_pretrained(trained, trust_remote_code=True)
    assert type(model).__name__ == "Video2LoRAModel" and model.processor is not None
    fresh = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    with safe_open(str(trained / "model.safetensors"), framework="pt") as handle:
        for name, parameter in model.state_dict().items():
            if name.startswith("hypernetwork."):
                assert torch.equal(parameter, handle.get_tensor(name))
    # Training moved the zero-initialized B scalers: the loaded model is not an untrained one.
    assert any(not torch.equal(p, fresh.state_dict()[n]) for n, p in model.state_dict().items() if "b_scale" in n)


def test_a_run_records_what_it_trained_for_its_card(trained, workspace):
    record = json.loads((trained / "training_record.json").read_text())
    rows = workspace["manifest"].read_text().splitlines()
    assert record["data"]["rows"] == len(rows) and record["data"]["videos"] == 2
    assert record["recipe"]["optimizer steps"] == "8" and record["recipe"]["frames per video / frame size"] == "3 / 64 px"
    assert record["recipe"]["optimizer"].endswith(", lr 0.01, weight decay 0.01")  # the Trainer's default AdamW
    assert record["metrics"]["train_loss"] > 0
    assert str(workspace["root"]) not in json.dumps(record)  # no machine paths


def test_resume_from_checkpoint_continues_the_same_run(trained, workspace, tmp_path):
    # A copy of checkpoint-4 whose logged step-1 loss is a marker: a resumed run carries the checkpoint's state over.
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(trained / "checkpoint-4", checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["log_history"][0]["loss"] = 123.0
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    resumed = tmp_path / "resumed"
    # In-process (the launch path is covered above): the imports are already paid for.
    train_hf.main(_train_command(workspace, resumed, "--resume_from_checkpoint", str(checkpoint))[1:])
    original, continued = _losses(trained), _losses(resumed)
    assert continued[1] == 123.0 and sorted(continued) == list(range(1, 9))
    # Weights, optimizer, scheduler and data order all came back: steps 5-8 repeat the uninterrupted run.
    for step in (5, 6, 7, 8):
        assert continued[step] == pytest.approx(original[step], rel=1e-4)
    with pytest.raises(ValueError, match="no such checkpoint"):
        train_hf.main(_train_command(workspace, resumed, "--resume_from_checkpoint", str(tmp_path / "nope"))[1:])


@pytest.fixture
def small_trainer(workspace, tmp_path):
    model = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    perturb_(model)  # non-zero B scalers, so every hypernetwork weight gets a gradient
    data_args = train_hf.DataArguments(train_manifest=str(workspace["manifest"]), questions_per_video=1,
                                       frame_cache_dir=str(workspace["root"] / "frames"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **{
        k: v for k, v in train_hf.TRAINING_DEFAULTS.items() if k != "save_strategy"})
    dataset = train_hf.build_dataset(str(workspace["manifest"]), data_args, sampling=model.processor.sampling_kwargs(),
                                     seed=0, max_videos=None, training_args=args)
    collator = train_hf.Video2LoRACollator(model.processor, model.config.instruction)
    trainer = train_hf.Video2LoRATrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    return trainer, dataset, collator


def test_optimizer_holds_only_hypernetwork_parameters(small_trainer):
    trainer, _, _ = small_trainer
    optimizer = trainer.create_optimizer()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    hypernetwork = {id(p) for p in trainer.model.hypernetwork.parameters()}
    assert in_optimizer == hypernetwork
    assert not in_optimizer & {id(p) for p in trainer.model.vlm.parameters()}
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.01, 0.0}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def _hypernetwork_grads(model):
    return [p.grad.clone() for p in model.hypernetwork.parameters()]


def test_gradient_accumulation_matches_one_big_batch(small_trainer):
    trainer, dataset, collator = small_trainer
    model = trainer.model
    # Two single-question examples whose answers differ in length, so a mean of per-batch means would be wrong.
    lengths = [(collator([dataset[i]])["labels"] != -100).sum().item() for i in range(len(dataset))]
    first = 0
    second = next(i for i in range(len(dataset)) if lengths[i] != lengths[first])
    big = collator([dataset[first], dataset[second]])
    micro = [collator([dataset[first]]), collator([dataset[second]])]

    # One optimizer step of Trainer's loop over two micro-batches: count the step's answer tokens, then a
    # `training_step` (default `compute_loss`, backward) per micro-batch.
    assert trainer.model_accepts_loss_kwargs
    batches, num_items = trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    assert num_items == (big["labels"][:, 1:] != -100).sum()  # every predicted answer token of the step
    trainer.current_gradient_accumulation_steps = 2  # what the loop sets; dividing by it again would be wrong
    model.zero_grad()
    accumulated_loss = sum(trainer.training_step(model, batch, num_items) for batch in batches)
    accumulated_grads = _hypernetwork_grads(model)

    model.zero_grad()
    big_loss = model(**big).loss  # the mean over the big batch's answer tokens
    big_loss.backward()
    big_grads = _hypernetwork_grads(model)
    assert accumulated_loss.item() == pytest.approx(big_loss.item(), rel=1e-5)
    for a, b in zip(accumulated_grads, big_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    # The naive alternative, a mean of per-micro-batch token means, weights the two answers' tokens unequally.
    naive = []
    for batch in micro:
        model.zero_grad()
        model(**batch).loss.backward()
        naive.append(_hypernetwork_grads(model))
    naive_grads = [(a + b) / 2 for a, b in zip(*naive, strict=True)]
    assert not all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(naive_grads, big_grads, strict=True))


def test_ddp_normalizes_by_the_global_token_count(workspace, tmp_path):
    # Two gloo processes; tests/ddp_loss_worker.py compares each DDP-averaged gradient with a single process's.
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "tests/ddp_loss_worker.py", str(workspace["base"]), str(tmp_path)], workspace)
    for rank in (0, 1):
        for average in (True, False):
            assert f"rank {rank}: average_tokens_across_devices={average} ok" in result.stdout, result.stdout


def test_trainer_trains_and_evaluates_on_the_models_weighted_loss(small_trainer):
    trainer, dataset, collator = small_trainer
    model = trainer.model
    batch = collator([dataset[0], dataset[1]])
    plain = model(**batch).loss
    batch["answer_weights"] = torch.tensor([3.0, 1.0])
    weighted = model(**batch).loss
    assert weighted > plain  # the weights reach the model's loss
    # Eval loss: Trainer counts this batch's answer tokens, so it is the model's mean over them.
    eval_loss, _, _ = trainer.prediction_step(model, batch, prediction_loss_only=True)
    assert eval_loss.item() == pytest.approx(weighted.item(), rel=1e-5)
    # Training: the same loss, scaled for an accumulation of one micro-batch.
    _, num_items = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert trainer.training_step(model, batch, num_items).item() == pytest.approx(weighted.item(), rel=1e-5)


def test_question_type_weights_reach_the_batch(small_trainer, workspace):
    trainer, dataset, collator = small_trainer
    assert "answer_weights" not in collator([dataset[0], dataset[1]])  # no weights asked: the batch is unchanged
    question_type = dataset.examples[0][1][0]["metadata"]["question_type"]
    data_args = train_hf.DataArguments(train_manifest=str(workspace["manifest"]), questions_per_video=1,
                                       frame_cache_dir=str(workspace["root"] / "frames"),
                                       question_type_weights=f"{question_type}=4,qa=2")
    weighted = train_hf.build_dataset(str(workspace["manifest"]), data_args,
                                      sampling=collator.processor.sampling_kwargs(), seed=0, max_videos=None,
                                      training_args=trainer.args)
    batch = collator([weighted[i] for i in range(len(weighted))])
    # The question type wins over the task type; every other QA row gets the task type's weight.
    expected = [4.0 if row["metadata"]["question_type"] == question_type else 2.0 for _, (row,) in weighted.examples]
    assert batch["answer_weights"].tolist() == expected and 4.0 in expected


@pytest.mark.parametrize("text", ["order", "order=0", "order=-1", "=2", "order=x", "order=nan"])
def test_bad_question_type_weights_fail_clearly(text):
    with pytest.raises(train_hf.TrainingSetupError, match="TYPE=WEIGHT"):
        train_hf.parse_question_type_weights(text)
    assert train_hf.parse_question_type_weights(" order=4, direction=1.5 ") == {"order": 4.0, "direction": 1.5}
    assert train_hf.parse_question_type_weights(None) == {}


def test_prepare_hub_folder_writes_exactly_the_upload(workspace, tmp_path):
    model = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    folder = train_hf.prepare_hub_folder(model, tmp_path / "hub", repo_id="me/v2l-tiny",
                                         base_model_reference="HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                                         dataset_names=["HuggingFaceFV/finevideo"])
    assert sorted(p.name for p in folder.iterdir()) == sorted([
        "README.md", "config.json", "model.safetensors", "configuration_video2lora.py", "modeling_video2lora.py",
        "perceiver_video2lora.py", "processing_video2lora.py", "video_processing_video2lora.py",
        "families_video2lora.py", "pipeline_video2lora.py", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja",
    ])
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert all(key.startswith("hypernetwork.") for key in handle.keys())
    config = json.loads((folder / "config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    assert config["auto_map"]["AutoModel"] == "modeling_video2lora.Video2LoRAModel"
    assert model.config.base_model_name_or_path == str(workspace["base"])  # the live model is left as it was
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "video-text-to-text"
    assert card.data.base_model == "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["HuggingFaceFV/finevideo"]
    assert "video2lora" in card.data.tags
    assert 'AutoModel.from_pretrained("me/v2l-tiny", trust_remote_code=True)' in card.text
    with pytest.raises(ValueError, match="not empty"):
        train_hf.prepare_hub_folder(model, folder)


@pytest.mark.parametrize("recipe, base_id", [("smolvlm2_500m", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"),
                                              ("smolvlm2_2.2b", "HuggingFaceTB/SmolVLM2-2.2B-Instruct")])
def test_recipe_cards_say_what_was_trained_on_what_and_what_was_not_measured(recipe, base_id, workspace, tmp_path):
    from video2lora.cards import NOT_MEASURED

    run = tmp_path / "run"
    _, data_args, training_args = train_hf.parse_args([
        f"configs/recipes/{recipe}.yaml", "--train_manifest", str(workspace["manifest"]), "--output_dir", str(run),
        "--question_type_weights", "order=4", "--use_cpu", "true"])
    model = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    rows = [json.loads(line) for line in workspace["manifest"].read_text().splitlines()]
    record = train_hf.training_record(model, data_args, training_args, rows, steps=1234, metrics={"train_loss": 0.5},
                                      base_model_reference=base_id)

    def card(name):
        folder = train_hf.prepare_hub_folder(model, tmp_path / name, repo_id=f"me/{name}", base_model_reference=base_id,
                                             record=record, evaluations_from=run)
        assert json.loads((folder / "training_record.json").read_text()) == record
        return ModelCard.load(folder / "README.md").text

    text = card("untested")
    # What ran: the recipe's published settings, as the Trainer read them.
    for line in (f"| base | {base_id} |", "| optimizer | adamw_torch, lr 0.0001, weight decay 0.01 |",
                 "| schedule | cosine, warm-up 0.03 |", "| gradient clipping | 1.0 |", "| precision | bf16 |",
                 "| optimizer steps | 1234 |", "| question-type weights | order=4 |", "| training manifest | fixed.jsonl |"):
        assert line in text
    # On what: the rows it read.
    assert f"| {len(rows)} | 2 | 2 | world ({len(rows)} rows) |" in text
    kinds = {f"qa/{row['metadata']['question_type']}" for row in rows}
    assert all(f"| {kind} |" in text for kind in kinds)
    # Nothing evaluated: every item is listed as not measured, and no machine path is shipped.
    assert "This checkpoint was not evaluated." in text and all(item in text for item in NOT_MEASURED.values())
    assert str(workspace["root"]) not in text and str(tmp_path) not in text

    # The run's evaluations, once `video2lora eval` wrote them into its folder, go on the card and off the list.
    shipped = REPO / "video2lora" / "checkpoints" / "video2lora-world"
    for folder in ("eval", "eval-compose-2"):
        (run / folder).mkdir(parents=True)
        shutil.copy(shipped / folder / "summary.json", run / folder / "summary.json")
    text = card("tested")
    assert "### `eval`: test.jsonl, 3621 items" in text and "Base reads 64 visual tokens per question" in text
    assert "2 segment adapters per video, composed by latents. Rows where segment=whole." in text
    assert "| qa/order |" in text and "This checkpoint was not evaluated." not in text
    assert not any(NOT_MEASURED[key] in text for key in ("qa", "caption", "composition"))
    assert all(NOT_MEASURED[key] in text for key in ("summary", "long_videos", "benchmarks", "speed"))


def test_bad_arguments_fail_clearly(workspace):
    with pytest.raises(ValueError, match="exactly one of"):
        train_hf.parse_args(["--train_manifest", "x.jsonl", "--output_dir", "o"])
    with pytest.raises(ValueError, match="questions_per_video"):
        train_hf.parse_args(["--base_model_name_or_path", "b", "--train_manifest", "x", "--questions_per_video", "0"])
    with pytest.raises(ValueError, match="segment_overlap"):
        train_hf.parse_args(["--base_model_name_or_path", "b", "--train_manifest", "x", "--segment_overlap", "-1"])
    model_args, data_args, _ = train_hf.parse_args(["--base_model_name_or_path", str(workspace["base"]),
                                                    "--train_manifest", "x", "--output_dir", "o"])
    assert model_args.hypernetwork_overrides() == {} and data_args.kl_weight == 0.0


def test_init_from_keeps_the_architecture_but_may_add_context_positions(trained):
    def build(*flags):
        return train_hf.build_model(*train_hf.parse_args(["--init_from", str(trained), "--train_manifest", "x",
                                                          "--output_dir", "o", *flags])[:2])

    with pytest.raises(train_hf.TrainingSetupError, match="drop \\['num_blocks'\\]"):
        build("--num_blocks", "3")
    saved = Video2LoRAModel.from_pretrained(trained).hypernetwork.state_dict()
    grown = build("--use_context_positions", "true", "--kl_weight", "0.5")
    assert grown.config.use_context_positions
    assert grown.config.kl_weight == 0.5  # the flag reaches the loss of the model's forward
    state = grown.hypernetwork.state_dict()
    assert set(state) - set(saved) == {"position_projection"} and state["position_projection"].abs().sum() == 0
    for name, tensor in saved.items():
        torch.testing.assert_close(state[name], tensor)


def test_collator_batches_each_video_once_with_teacher_tokens(processor):
    from tests.conftest import make_frames

    collator = train_hf.Video2LoRACollator(processor, "Internalize this video for later captioning.", with_teacher=True)
    tokenizer = processor.tokenizer
    teacher_ids = tokenizer("blue", add_special_tokens=False)["input_ids"] + [collator.eos_token_id]
    teacher = {"token_ids": teacher_ids, "top_ids": [[i, 0] for i in teacher_ids],
               "top_logprobs": [[-0.1, -2.5]] * len(teacher_ids)}
    features = [
        {"frames": make_frames(2, seed=1), "timestamps": [0.0, 1.0], "duration": 2.0,
         "questions": [{"prompt": "what colour is the square?", "target": "blue", "teacher": teacher},
                       {"prompt": "what colour is the circle?", "target": "red", "teacher": None}]},
        {"frames": make_frames(2, seed=2), "timestamps": [0.0, 1.0], "duration": 2.0,
         "questions": [{"prompt": "what shape is it?", "target": "triangle", "teacher": None}]},
    ]
    batch = collator(features)
    assert batch["context_input_ids"].shape[0] == 2 and batch["input_ids"].shape[0] == 3
    assert batch["adapter_index"].tolist() == [0, 0, 1]
    prompt_ids = tokenizer(processor.chat_prompt("what colour is the square?", with_video=False))["input_ids"]
    labels = batch["labels"][0]
    assert (labels[:len(prompt_ids)] == -100).all()
    assert labels[len(prompt_ids):len(prompt_ids) + len(teacher_ids)].tolist() == teacher_ids  # the teacher's tokens
    assert batch["teacher_mask"][0].sum() == len(teacher_ids) and not batch["teacher_mask"][1:].any()
    assert batch["teacher_top_ids"][0, len(prompt_ids), 0] == teacher_ids[0]
    # A text target ends with the end-of-utterance token, so the student learns to stop.
    text_row = batch["labels"][1][batch["labels"][1] != -100].tolist()
    assert text_row[-1] == collator.eos_token_id
    assert tokenizer.decode(text_row[:-1]).strip() == "red"
    assert batch["pixel_values"].shape[:2] == (2, 2)


def test_adapter_card_renders_front_matter_and_rejects_missing_fields():
    from video2lora.cards import render_card

    fields = dict(library_name="peft", base_model="HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                  pipeline_tag="image-text-to-text", tags=["video2lora", "lora"], license="apache-2.0",
                  model_name="clip7-adapter", repo_id="me/clip7-adapter", hypernetwork_reference="me/v2l",
                  hypernetwork_url="https://huggingface.co/me/v2l",
                  base_model_reference="HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                  base_model_url="https://huggingface.co/HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                  video_name="clip7.mp4", num_frames=12, rank=32, target_modules="mlp.down_proj")
    card = ModelCard(render_card("adapter", **fields))
    assert card.data.library_name == "peft" and card.data.base_model == fields["base_model"]
    assert "clip7.mp4" in card.text and 'PeftModel.from_pretrained(base, "me/clip7-adapter")' in card.text
    with pytest.raises(ValueError, match="video_name"):
        render_card("adapter", **{k: v for k, v in fields.items() if k != "video_name"})
    with pytest.raises(FileNotFoundError, match="hypernetwork.md"):
        render_card("nope")


def test_push_uploads_the_prepared_folder(workspace, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True,
                             hub_model_id="me/v2l-tiny", hub_token="secret")
    repo_id = train_hf.push_hypernetwork_to_hub(model, args, base_model_reference="HuggingFaceTB/SmolVLM2-2.2B-Instruct",
                                                dataset_names=None)
    assert repo_id == "me/v2l-tiny" and calls["token"] == "secret"
    assert calls["create_repo"] == ("me/v2l-tiny", None, True)
    expected = sorted(p.name for p in (tmp_path / "out" / "hub").iterdir())
    assert calls["upload"] == ("me/v2l-tiny", expected) and "README.md" in expected and "model.safetensors" in expected


def test_setup_errors_are_one_line_and_exit_2_before_anything_loads(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--train_manifest", str(tmp_path / "gone.jsonl")], "--train_manifest", "does not exist"),
        (["--train_manifest", str(tmp_path / "file"), "--output_dir", str(tmp_path / "file" / "out")],
         "--output_dir", "is a file"),
    ]
    for extra, *fragments in cases:
        command = [sys.executable, "train_hf.py", "--base_model_name_or_path", str(tmp_path / "no-base"),
                   "--output_dir", str(tmp_path / "out"), *extra]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        errors = [line for line in result.stderr.splitlines() if line.startswith("train_hf.py: error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
        assert all(fragment in errors[0] for fragment in fragments), errors[0]
        assert "Traceback" not in result.stderr


def test_decoding_in_workers_gives_the_same_examples_as_the_cached_table(workspace, tmp_path):
    """`--decode_in_workers`: each rank's DataLoader decodes on demand, nothing is cached, the examples are the same."""
    model = Video2LoRAModel.from_base(str(workspace["base"]), **TINY_HYPERNETWORK)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    built = {}
    for live in (False, True):
        data_args = train_hf.DataArguments(train_manifest=str(workspace["manifest"]), questions_per_video=1,
                                           frame_cache_dir=str(tmp_path / f"frames-{live}"), decode_in_workers=live)
        built[live] = train_hf.build_dataset(str(workspace["manifest"]), data_args,
                                             sampling=model.processor.sampling_kwargs(), seed=0, max_videos=None,
                                             training_args=args)
    assert not list((tmp_path / "frames-True").glob("*.arrow"))  # nothing written for the live path
    assert len(built[True]) == len(built[False])
    for index in range(len(built[False])):
        cached, live = built[False][index], built[True][index]
        np.testing.assert_array_equal(cached["frames"], live["frames"])
        assert cached["timestamps"] == live["timestamps"] and cached["questions"] == live["questions"]
    loader = torch.utils.data.DataLoader(built[True], batch_size=None, num_workers=2)
    assert sum(1 for _ in loader) == len(built[True])  # worker processes decode it too


@pytest.mark.parametrize("composition, place, overlap, layout",
                         [("concat", False, 0, "contiguous"), ("latents", False, 0, "contiguous"),
                          ("latents", True, 0, "contiguous"), ("latents", True, 1, "contiguous"),
                          ("latents", True, 0, "interleaved")])
def test_segmented_rows_train_the_adapter_that_internalize_composes(small_trainer, workspace, composition, place,
                                                                     overlap, layout):
    """A row with `segments: 2` trains on the composition of its halves, the very adapter `internalize(segments=2)`
    gives at inference, whichever way the model composes, with the halves told their place or not, and with the
    second half opening on the first's last frame (`--segment_overlap`) or not, or read as interleaved halves
    (`segment_layout: interleaved`); in one batch with an unsegmented video."""
    trainer, plain_dataset, collator = small_trainer
    model = trainer.model
    model.config.segment_composition = composition
    if place:  # grown as `--init_from ... --use_segment_place true` grows a checkpoint, then moved as training would
        model.config.use_segment_place = True
        model.hypernetwork.place_projection = torch.nn.Parameter(torch.randn(2 * [model.config.latent_size]) * 0.05)
    rows = [json.loads(line) for line in workspace["manifest"].read_text().splitlines()]
    manifest = workspace["root"] / "segmented.jsonl"
    write_manifest(manifest, [{**rows[0], "segments": 2, "segment_layout": layout}, rows[-1],
                              {**rows[0], "id": "bad", "segments": 0},
                              {**rows[0], "id": "bad-layout", "segments": 2, "segment_layout": "shuffled"}])
    data_args = train_hf.DataArguments(train_manifest=str(manifest), questions_per_video=1, segment_overlap=overlap,
                                       frame_cache_dir=str(workspace["root"] / "frames"))
    dataset = train_hf.build_dataset(str(manifest), data_args, sampling=model.processor.sampling_kwargs(), seed=0,
                                     max_videos=None, training_args=trainer.args)
    assert len(dataset) == 2  # the rows with segments 0 and an unknown layout are skipped as bad
    segmented = next(example for example in (dataset[0], dataset[1]) if "segments" in example)
    plain = next(example for example in (dataset[0], dataset[1]) if "segments" not in example)
    first, second = segmented["segments"]
    assert len(second["frames"]) == len(first["frames"]) + overlap
    batch = collator([segmented, plain])
    assert batch["context_input_ids"].shape[0] == 3 and batch["context_video_index"].tolist() == [0, 0, 1]
    output = model(**batch)
    output.loss.backward()
    assert all(p.grad is not None for p in model.hypernetwork.parameters() if p.requires_grad)

    video = str(workspace["root"] / rows[0]["video_path"])
    expected = model.internalize(video, segments=2, segment_overlap=overlap, segment_layout=layout)
    other = model.internalize(str(workspace["root"] / rows[-1]["video_path"]))

    def delta(adapter):
        b, a = adapter.scaled_B()["mlp.down_proj"], adapter.lora_A["mlp.down_proj"]
        return torch.einsum("blor,blri->bloi", b, a)

    trained = output.adapter.detach()
    torch.testing.assert_close(delta(trained[0]), delta(expected), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta(trained[1]), delta(other), atol=1e-5, rtol=1e-4)

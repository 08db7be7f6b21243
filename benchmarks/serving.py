"""Serving at scale: questions about V different videos through vLLM with one adapter per video, through the
project's batched `answer()`, and through vLLM serving the bare base (the engine's floor: no LoRA at all).

For each V in `--videos` (1, 4, 16), V held-out world clips are internalized once (fp32 adapters, as the tiny base
runs in fp32) and one question is asked about each, all V at once:

- **vllm_lora**: V concurrent streaming `/v1/completions` requests to vLLM's OpenAI server, request i naming video
  i's adapter (registered at runtime; `--max-loras` is the largest V, so one batch can hold every adapter);
- **project**: one `model.answer(adapters[:V], questions[:V])` call, row i with adapter i, in this process;
- **vllm_base**: the same V requests to the bare base (the same engine, no LoRA: the floor).

Every answer is forced to `--new-tokens` tokens (`min_tokens` + `ignore_eos` / `min_new_tokens`), so that the three
decode the same number of tokens. Throughput is questions (and tokens) per second of wall time, from the first
request sent to the last answer received; time to first token (TTFT) is measured per question, from the moment the
batch is sent to the first streamed token (vLLM) or to the first token `generate` emits (the project, through a
streamer). The contenders run interleaved, the order rotated every round, and the medians over `--repeats` rounds are
compared (benchmarks/common.py says why). vLLM's numbers include its HTTP front end and tokenizer, which a real
deployment pays too; the project's are in-process. Both run the model on one CPU thread: vLLM's CPU worker binds one
core and reserves the other, and this process uses `--threads 1`.

Needs the vLLM environment of `scripts/vllm_check.py` (`.venv-vllm/`); `--install` creates it when missing. The server
listens on 127.0.0.1 only and is stopped at the end.

Run: `python -m benchmarks.serving` (about 3 minutes once the environment exists).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, RESULTS_DIR, format_table, machine_info, ratio, write_json


def _load_vllm_check():
    """The check's helpers (the environment, the server, the request format), from scripts/vllm_check.py."""
    if "vllm_check" in sys.modules:
        return sys.modules["vllm_check"]
    spec = importlib.util.spec_from_file_location("vllm_check", REPO_ROOT / "scripts" / "vllm_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vllm_check"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


vllm_check = _load_vllm_check()

CONTENDERS = ("vllm_lora", "project", "vllm_base")


@dataclasses.dataclass
class Sample:
    """One batch of V questions: its wall time, and each question's time to first token."""

    wall_s: float
    ttft_s: list[float]


class FirstTokenTimer:
    """A `generate` streamer that notes when the first generated token comes out (the first `put` is the prompt)."""

    def __init__(self, started: float):
        self.started, self.calls, self.first_token_s = started, 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started

    def end(self) -> None:
        pass


def stream_completion(port: int, payload: dict[str, Any], started: float, *, timeout: float) -> tuple[float, float]:
    """Send one streaming completion; seconds from `started` to its first token and to its last chunk."""
    request = urllib.request.Request(vllm_check.local_url(port, "/v1/completions"),
                                     data=json.dumps({**payload, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    first = None
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:  # server-sent events: `data: {...}` lines, then `data: [DONE]`
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if first is None and any(choice.get("text") or choice.get("token_ids") for choice in chunk["choices"]):
                first = time.perf_counter() - started
    done = time.perf_counter() - started
    return (done if first is None else first), done


def vllm_batch(port: int, models: Sequence[str], prompts: Sequence[str], *, new_tokens: int,
               timeout: float) -> Callable[[], Sample]:
    """A contender: V concurrent streaming requests, request i to `models[i]`, each forced to `new_tokens` tokens."""
    payloads = [{**vllm_check.completion_payload(model, prompt, max_tokens=new_tokens, stop_token_ids=[]),
                 "min_tokens": new_tokens, "ignore_eos": True} for model, prompt in zip(models, prompts, strict=True)]

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(payloads))  # made once: not part of any timing
    for _ in pool.map(lambda _: None, payloads):  # start every worker thread now
        pass

    def run() -> Sample:
        started = time.perf_counter()
        results = list(pool.map(lambda p: stream_completion(port, p, started, timeout=timeout), payloads))
        return Sample(wall_s=time.perf_counter() - started, ttft_s=[first for first, _ in results])

    run.close = pool.shutdown
    return run


def project_batch(model, adapters, questions: Sequence[str], *, new_tokens: int) -> Callable[[], Sample]:
    """A contender: one `model.answer` call for the V questions, row i with adapter i, forced to `new_tokens`."""
    def run() -> Sample:
        started = time.perf_counter()
        timer = FirstTokenTimer(started)
        model.answer(adapters, list(questions), max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=timer)
        wall = time.perf_counter() - started
        return Sample(wall_s=wall, ttft_s=[timer.first_token_s or wall] * len(questions))  # one batch: one first step

    return run


def run_interleaved(cases: dict[str, Callable[[], Sample]], repeats: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """`warmup` untimed rounds, then `repeats` rounds of one call per case, the order rotated every round."""
    names = list(cases)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sample = cases[name]()
            if round_index >= warmup:
                samples[name].append(sample)
    return samples


def summarize(samples: list[Sample], videos: int, new_tokens: int) -> dict[str, Any]:
    """Medians over the rounds (and the best round, less sensitive to other jobs on a shared CPU)."""
    wall = statistics.median(sample.wall_s for sample in samples)
    best = min(sample.wall_s for sample in samples)
    ttft = [statistics.median(sample.ttft_s) for sample in samples]
    return {"wall_s_median": wall, "wall_s_min": best, "questions_per_s": videos / wall,
            "questions_per_s_best": videos / best, "tokens_per_s": videos * new_tokens / wall,
            "ttft_s_median": statistics.median(ttft), "ttft_s_min": min(ttft),
            "ttft_s_slowest_question_median": statistics.median(max(sample.ttft_s) for sample in samples),
            "wall_s_samples": [round(sample.wall_s, 5) for sample in samples],
            "ttft_s_samples": [round(value, 5) for value in ttft]}


def wall(sample: Sample) -> float:
    return sample.wall_s


def first_token(sample: Sample) -> float:
    return statistics.median(sample.ttft_s)


def paired(numerator: list[Sample], denominator: list[Sample], measure: Callable[[Sample], float]) -> float:
    """Median over rounds of `measure(numerator) / measure(denominator)`: the two ran back to back in each round, so
    a slow drift in the machine's load cancels."""
    return statistics.median(measure(a) / measure(b) for a, b in zip(numerator, denominator, strict=True))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = [point["videos"] for point in result["points"]]
    labels = {"vllm_lora": "vLLM, one adapter per video", "project": "project, batched answer()",
              "vllm_base": "vLLM, bare base (floor)"}
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in CONTENDERS:
        left.plot(videos, [p[name]["questions_per_s"] for p in result["points"]], marker="o", label=labels[name])
        right.plot(videos, [1e3 * p[name]["ttft_s_median"] for p in result["points"]], marker="o", label=labels[name])
    for axis, title, unit in ((left, "throughput", "questions / s"), (right, "time to first token", "ms (median)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(videos, [str(v) for v in videos])
        axis.set_xlabel("V: videos (one question each, asked at once)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle(f"Serving the tiny embedded default on the CPU, {result['new_tokens']} new tokens per answer",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[1, 4, 16], help="values of V")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per answer (forced)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per contender and V")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (the project)")
    parser.add_argument("--venv", type=Path, default=vllm_check.DEFAULT_VENV, help="the separate vLLM environment")
    parser.add_argument("--install", action="store_true", help="create the vLLM environment if it is missing")
    parser.add_argument("--request-timeout", type=float, default=300, help="seconds one request may take")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where JSON and PNG files go")
    args = parser.parse_args(argv)

    from video2lora.runner import load_model
    from video2lora.world import generate_clip, split_seeds

    torch.set_num_threads(args.threads)
    versions = vllm_check.ensure_venv(args.venv, install=args.install)
    model = load_model(None)
    processor = model.processor
    most = max(args.videos)
    clips = [generate_clip(seed) for seed in split_seeds("test", most)]
    questions = [clip.qa[0].question for clip in clips]
    prompts = [vllm_check.text_prompt(processor, question)[0] for question in questions]
    # One adapter per video, each internalized on its own as `video2lora internalize` does, then stacked into the
    # batch `answer()` takes (row i = video i).
    singles = [model.internalize(clip.frames) for clip in clips]
    adapters = dataclasses.replace(
        singles[0], lora_A={k: torch.cat([a.lora_A[k] for a in singles]) for k in singles[0].lora_A},
        lora_B={k: torch.cat([a.lora_B[k] for a in singles]) for k in singles[0].lora_B})

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        names = [f"video-{clip.seed}" for clip in clips]
        for name, adapter in zip(names, singles, strict=True):
            adapter.save_pretrained(Path(scratch) / name, dtype="float32")
        flags = vllm_check.server_flags(max_loras=most)
        base = vllm_check.adapter_base(Path(scratch) / names[0])
        with vllm_check.VLLMServer(vllm_check.venv_python(args.venv), base, flags=flags,
                                   served_name=vllm_check.SERVED_BASE_NAME, log_path=Path(scratch) / "server.log",
                                   startup_timeout=900) as server:
            for name in names:
                server.load_adapter(name, Path(scratch) / name)
            points = []
            for videos in args.videos:
                options = {"new_tokens": args.new_tokens}
                cases = {
                    "vllm_lora": vllm_batch(server.port, names[:videos], prompts[:videos],
                                            timeout=args.request_timeout, **options),
                    "project": project_batch(model, adapters[:videos], questions[:videos], **options),
                    "vllm_base": vllm_batch(server.port, [vllm_check.SERVED_BASE_NAME] * videos, prompts[:videos],
                                            timeout=args.request_timeout, **options),
                }
                try:
                    with torch.inference_mode():
                        samples = run_interleaved(cases, args.repeats)
                finally:
                    for case in cases.values():
                        getattr(case, "close", lambda: None)()
                point = {"videos": videos, **{name: summarize(samples[name], videos, args.new_tokens)
                                              for name in CONTENDERS}}
                lora, project, bare = (point[name] for name in CONTENDERS)
                runs = {name: samples[name] for name in CONTENDERS}

                # Throughput ratio A/B = B's wall time / A's, per round; TTFT ratio A/B = A's TTFT / B's.
                point["ratios"] = {
                    "throughput_vllm_lora_over_project": paired(runs["project"], runs["vllm_lora"], wall),
                    "throughput_vllm_lora_over_vllm_base": paired(runs["vllm_base"], runs["vllm_lora"], wall),
                    "throughput_project_over_vllm_base": paired(runs["vllm_base"], runs["project"], wall),
                    "ttft_vllm_lora_over_project": paired(runs["vllm_lora"], runs["project"], first_token),
                    "ttft_vllm_lora_over_vllm_base": paired(runs["vllm_lora"], runs["vllm_base"], first_token),
                    "throughput_vllm_lora_over_project_of_medians": ratio(lora["questions_per_s"],
                                                                          project["questions_per_s"]),
                }
                points.append(point)
                print(f"  V = {videos}: questions/s vLLM+LoRA {lora['questions_per_s']:.1f}, project "
                      f"{project['questions_per_s']:.1f}, vLLM bare {bare['questions_per_s']:.1f}", flush=True)
            server_startup_s = server.startup_seconds

    result = {
        "benchmark": "serving", "model": "embedded default (video2lora-world on smolvlm-world, fp32, 4 layers)",
        "machine": machine_info(), "vllm": versions, "server_flags": flags, "server_startup_s": server_startup_s,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "adapter_rank": singles[0].rank,
        "contenders": {"vllm_lora": "vLLM OpenAI server, V concurrent streaming requests, one adapter each",
                       "project": "one batched model.answer() call in this process, one adapter per row",
                       "vllm_base": "vLLM OpenAI server, V concurrent streaming requests, bare base"},
        "points": points,
    }
    print(f"\nServing, tiny embedded default, {args.new_tokens} new tokens per answer (medians of {args.repeats})")
    rows = [[p["videos"], *(p[name]["questions_per_s"] for name in CONTENDERS),
             *(1e3 * p[name]["ttft_s_median"] for name in CONTENDERS),
             p["ratios"]["throughput_vllm_lora_over_project"], p["ratios"]["throughput_vllm_lora_over_vllm_base"]]
            for p in points]
    print(format_table(["V", "vLLM+LoRA q/s", "project q/s", "vLLM bare q/s", "vLLM+LoRA TTFT ms",
                        "project TTFT ms", "vLLM bare TTFT ms", "LoRA/project", "LoRA/bare"], rows))
    write_json(args.output_dir / "serving_tiny.json", result)
    plot(result, args.output_dir / "serving_tiny.png")
    return result


if __name__ == "__main__":
    main()

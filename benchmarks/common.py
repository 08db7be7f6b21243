"""Shared helpers of the benchmarks: the models they time, the prompts they build, and interleaved timing.

The CPU these benchmarks run on is shared with other jobs, so absolute times drift by tens of percent from minute to
minute. Every comparison is therefore measured **side by side in one process**: the contenders run interleaved (one
call of each per round, the order rotated every round so no contender always follows the same one), after a warm-up,
and the medians of the rounds are compared. The ratios are what the benchmarks report; absolute times are printed for
scale only.

The benchmarks run torch on **one thread** by default. On this 2-core machine, with another job keeping a core busy,
two OpenMP threads wait on each other at every operator's barrier: the same tiny-model query measured 4 ms on one
thread and 500-800 ms on two. One thread gives stable, comparable ratios; `--threads 2` is there for an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a Hub lookup would hang for minutes before failing

import numpy as np
import torch
import transformers
from transformers import StaticCache

from benchmarks.architectures import (
    QUICK_HYPERNETWORK,
    TINY_WORLD_HYPERNETWORK,
    TINY_WORLD_VISION,
    benchmark_tokenizer,
    real_smolvlm_config,
)
from configuration_video2lora import Video2LoRAConfig
from modeling_video2lora import Video2LoRAModel
from processing_video2lora import VIDEO_PLACEHOLDER, Video2LoRAProcessor
from video2lora.tiny import build_processor, tiny_smolvlm_config, tokens_per_frame

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
TINY_CHECKPOINT = REPO_ROOT / "video2lora" / "checkpoints" / "video2lora-world"
MODEL_CHOICES = ("tiny", "500m", "quick")
QUESTION = "What colour is the circle that moves left?"

RANDOM_WEIGHTS_NOTE = ("random weights: time and memory depend on the architecture's shapes, not on the weight values, "
                       "so the numbers hold for the trained weights of the same shape")


# ---- models ---------------------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A Video2LoRA model (frozen base + hypernetwork) prepared for timing, and what it is."""

    name: str
    model: Video2LoRAModel
    processor: Video2LoRAProcessor
    weights: str  # where the weights came from, printed with every result

    @property
    def vlm(self):
        return self.model.vlm

    @property
    def image_size(self) -> int:
        return self.vlm.config.vision_config.image_size

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.vlm.config)

    def describe(self) -> dict[str, Any]:
        """The architecture facts every result file carries next to its numbers."""
        text = self.vlm.config.text_config
        return {
            "name": self.name, "weights": self.weights, "image_size": self.image_size,
            "tokens_per_frame": self.tokens_per_frame, "text_layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size,
            "kv_heads": text.num_key_value_heads, "head_dim": _head_dim(text),
            "lora_rank_effective": self.model.config.effective_rank,
            "target_modules": list(self.model.config.target_modules),
            "base_parameters": sum(p.numel() for p in self.vlm.parameters()),
            "hypernetwork_parameters": sum(p.numel() for p in self.model.hypernetwork.parameters()),
            "dtype": str(self.vlm.dtype).replace("torch.", ""),
        }


def _head_dim(text_config) -> int:
    return getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads


def load_model(name: str, image_size: int | None = None, seed: int = 0) -> BenchModel:
    """
    Build one of the benchmarked models, in float32 and eval mode.

    Args:
        name: `"tiny"` (the embedded default from `video2lora/checkpoints/video2lora-world/` when it exists, else a random model
            of the same shape), `"500m"` (SmolVLM2-500M's architecture with random weights and the published
            hypernetwork configuration) or `"quick"` (the tests' tiny random model, for `--quick` runs).
        image_size: frame resolution; changes the tokens per frame. A trained checkpoint only runs at its own
            resolution, so another size gets the same architecture with random weights.
        seed: seed of the random weights.
    """
    torch.manual_seed(seed)
    if name == "tiny" and (TINY_CHECKPOINT / "config.json").is_file():
        model = Video2LoRAModel.from_pretrained(TINY_CHECKPOINT, dtype=torch.float32)
        native = model.vlm.config.vision_config.image_size
        if image_size in (None, native) and model.processor is not None:
            return BenchModel(name, model.eval(), model.processor, f"trained checkpoint {TINY_CHECKPOINT.name}")
        # Same architecture at another resolution: the position grid differs, so the trained weights do not apply.
        base_config = copy.deepcopy(model.vlm.config)
        base_config.vision_config.image_size = image_size
        hyper = {key: getattr(model.config, key) for key in (*TINY_WORLD_HYPERNETWORK, "input_projection_size",
                                                             "head_type", "use_bias_block", "target_modules")}
        tokenizer = model.processor.tokenizer if model.processor is not None else benchmark_tokenizer()
        return _random_model(name, base_config, tokenizer, hyper,
                             f"{RANDOM_WEIGHTS_NOTE} (architecture of {TINY_CHECKPOINT.name} at {image_size} px)")
    tokenizer = benchmark_tokenizer()
    if name == "tiny":
        vision = {**TINY_WORLD_VISION, **({"image_size": image_size} if image_size else {})}
        config = tiny_smolvlm_config(tokenizer, **vision)
        return _random_model(name, config, tokenizer, TINY_WORLD_HYPERNETWORK,
                             f"{RANDOM_WEIGHTS_NOTE} ({TINY_CHECKPOINT} not found; same shape as docs/design.md §8)")
    if name == "500m":
        config = real_smolvlm_config("500m", tokenizer, image_size=image_size)
        return _random_model(name, config, tokenizer, {}, f"{RANDOM_WEIGHTS_NOTE} (SmolVLM2-500M architecture)")
    if name == "quick":
        config = tiny_smolvlm_config(tokenizer, **({"image_size": image_size} if image_size else {}))
        return _random_model(name, config, tokenizer, QUICK_HYPERNETWORK, f"{RANDOM_WEIGHTS_NOTE} (test-size model)")
    raise ValueError(f"Unknown model {name!r}; choose from {MODEL_CHOICES}.")


@torch.inference_mode()
def warm_up(bench: BenchModel) -> None:
    """
    One adapter generation and one video query on a single frame: the process's first forward pays one-off costs
    (lazy kernel and thread-pool set-up, allocator growth) that would otherwise land on whichever contender runs first.
    Costs a few seconds even at 500M, against a minute for a warm-up round at the real shapes.
    """
    inputs = query_inputs(bench, 1)
    adapter = bench.model.generate_adapter(**inputs.context)
    bench.vlm(input_ids=inputs.base_ids, pixel_values=inputs.pixel_values,
              pixel_attention_mask=inputs.pixel_attention_mask, logits_to_keep=1)
    with bench.model.apply_adapter(adapter):
        bench.vlm(input_ids=inputs.text_ids, logits_to_keep=1)


def _random_model(name: str, base_config, tokenizer, hypernetwork: dict, weights: str) -> BenchModel:
    config = Video2LoRAConfig(base_config=base_config, **hypernetwork)
    processor = build_processor(tokenizer, base_config)
    with torch.no_grad():
        model = Video2LoRAModel(config, processor=processor).eval()
    return BenchModel(name, model, processor, weights)


# ---- inputs ---------------------------------------------------------------------------------------------------------


def make_frames(num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """Random frames `[N, size, size, 3]` at the model's resolution (no resize). Never all-black: SmolVLM drops
    all-zero frames as padding."""
    return np.random.default_rng(seed).integers(1, 256, (num_frames, size, size, 3), dtype=np.uint8)


@dataclass
class QueryInputs:
    """One question about one video, laid out for the three contenders of docs/design.md §7."""

    prefix_ids: torch.Tensor  # `[1, P]`: chat header + the video's frames (what KV-prefix reuse caches)
    question_ids: torch.Tensor  # `[1, Q]`: the question and `Assistant:` (what KV-prefix reuse prefills per query)
    text_ids: torch.Tensor  # `[1, S]`: the text-only chat prompt V2L answers from (no visual tokens)
    pixel_values: torch.Tensor  # `[1, F, 3, H, W]`
    pixel_attention_mask: torch.Tensor
    context: dict[str, torch.Tensor]  # frames + instruction, the adapter generator's input

    @property
    def base_ids(self) -> torch.Tensor:
        """The Base prompt: exactly the prefix followed by the question, so Base and KV reuse see the same tokens."""
        return torch.cat([self.prefix_ids, self.question_ids], dim=1)


def query_inputs(bench: BenchModel, num_frames: int, question: str = QUESTION, seed: int = 0) -> QueryInputs:
    """Tokenize one video question three ways (Base, KV reuse, V2L) plus the adapter generator's context."""
    processor = bench.processor
    frames = make_frames(num_frames, bench.image_size, seed)
    stamps = [float(i) for i in range(num_frames)]
    context = processor.encode_videos([frames], bench.model.config.instruction, timestamps=[stamps])
    chat = processor.chat_prompt(question, with_video=True)
    head, tail = chat.split(VIDEO_PLACEHOLDER, 1)
    # Tokenized apart, so the prefix cached by KV reuse is byte-for-byte the start of the Base prompt.
    prefix = head + processor.video_prompt(num_frames, stamps)
    tokenize = processor.tokenizer
    prefix_ids = tokenize(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"]
    question_ids = tokenize(tail, return_tensors="pt", add_special_tokens=False)["input_ids"]
    text_ids = processor.encode_text(question)["input_ids"]
    return QueryInputs(prefix_ids, question_ids, text_ids, context["pixel_values"], context["pixel_attention_mask"],
                       dict(context))


def visual_tokens(bench: BenchModel, input_ids: torch.Tensor) -> int:
    return int((input_ids == bench.vlm.config.image_token_id).sum())


class StaticPrefix:
    """
    KV-prefix reuse in the fastest correct form a user would write: the prefix's keys and values are prefilled once
    into a `transformers.StaticCache` that also has room for a question after them, and every query writes its own
    tokens into the slots after the prefix, in place. A query copies nothing and concatenates nothing: a copied
    `DynamicCache` would concatenate the whole prefix with the question at every layer of every query, a cost that
    grows with the prefix and that no server pays.

    Why a query after another is still exact: `query` first rewinds the cache's write position to the end of the
    prefix, so the new question's keys and values overwrite the previous question's slots, and its positions (hence
    its rotary phases and causal mask) start right after the prefix again. Slots the previous, longer question wrote
    beyond this one's last position stay stale but are never read: the causal mask lets a query at position `p`
    attend to slots `<= p` only. `tests/test_benchmarks.py` checks two successive different questions against the
    full prompt.
    """

    def __init__(self, decoder, config, prefix_ids: torch.Tensor, room: int, **inputs):
        """
        Args:
            decoder: what prefills the prefix: the inner model (`vlm.model`), since a prefix needs keys and values, not
                logits.
            config: the model config the cache's layers are shaped from.
            prefix_ids: `[1, P]`, the prefix tokens.
            room: the most question tokens a later query may write after the prefix.
            **inputs: passed to the prefill (the frames' `pixel_values` and `pixel_attention_mask`).
        """
        self.length = prefix_ids.shape[1]
        self.capacity = self.length + room
        self.cache = StaticCache(config=config, max_cache_len=self.capacity)
        decoder(input_ids=prefix_ids, cache=self.cache, use_cache=True, **inputs)

    def query(self, model, input_ids: torch.Tensor, **kwargs):
        """`model(input_ids)` continuing the prefix; the cache afterwards holds the prefix and this query's tokens."""
        written = int(self.cache.get_seq_length())
        if self.length + input_ids.shape[1] > self.capacity:
            raise ValueError(f"{input_ids.shape[1]} query tokens do not fit the {self.capacity - self.length} slots "
                             "after the prefix.")
        # A static layer crops by a negative count: it only moves the write position back, the tensors stay put.
        self.cache.crop(self.length - written)
        return model(input_ids=input_ids, cache=self.cache, use_cache=True, **kwargs)


# ---- timing ---------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """
    One contender: `run(state)` is timed; `prepare()` (untimed) makes `state` fresh before every call. `warmup=False`
    skips the warm-up round for a case whose code path something else just ran (a slow Base query right after the KV
    prefix build, which runs the same vision tower and decoder at the same shapes).
    """

    run: Callable[[Any], Any]
    prepare: Callable[[], Any] | None = None
    warmup: bool = True


@dataclass
class Timing:
    """The timed samples of one case, and what its last call returned (so a costly result need not be recomputed)."""

    samples: list[float] = field(default_factory=list)
    last: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "samples_s": [round(s, 6) for s in self.samples]}


@torch.inference_mode()
def time_interleaved(cases: dict[str, Case], repeats: int, warmup: int = 1, *, budget_s: float | None = None,
                     min_repeats: int = 3) -> dict[str, Timing]:
    """
    Time the cases side by side: `warmup` untimed rounds, then up to `repeats` rounds of one call per case.

    The order is rotated every round, so drift in the machine's load (other jobs on a shared CPU) spreads evenly over
    the contenders instead of biasing the one that always runs first. The garbage collector is paused during each call,
    so a collection triggered by one contender's garbage is never charged to another. With
    `budget_s`, rounds stop once the timed rounds have used the budget and at least `min_repeats` are done: the
    slowest points of a sweep (a 1,024-frame Base query) get fewer rounds instead of minutes each.
    """
    names = list(cases)
    timings = {name: Timing() for name in names}
    spent, round_index = 0.0, 0
    gc.collect()  # once: a full collection takes ~0.5 s with transformers imported; tensors are freed by refcount
    while round_index < warmup + repeats:
        timed = round_index >= warmup
        if timed and budget_s is not None and spent >= budget_s and round_index - warmup >= min(min_repeats, repeats):
            break
        shift = round_index % len(names)
        round_index += 1
        for name in names[shift:] + names[:shift]:
            case = cases[name]
            if not timed and not case.warmup:
                continue
            state = case.prepare() if case.prepare is not None else None
            gc.disable()
            try:
                start = time.perf_counter()
                result = case.run(state)
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            timings[name].last = result
            if timed:
                timings[name].samples.append(elapsed)
                spent += elapsed
            del state, result
    return timings


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """
    Median over rounds of the per-round ratio. The two calls of a round run seconds apart, so a slow drift in the
    machine's load cancels in each round's ratio: steadier than the ratio of the two medians when the effect sought
    (a few percent) is smaller than the drift.
    """
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples, strict=True))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def break_even(one_time: float, per_query: float, other_one_time: float, other_per_query: float) -> int | None:
    """
    Smallest number of questions `n >= 1` at which `one_time + n * per_query` is no more than the other approach's
    total; `None` when it never pays off (it is slower per query and costs more up front).
    """
    for n in (1, 2):  # the common cases, exactly
        if one_time + n * per_query <= other_one_time + n * other_per_query:
            return n
    saving = other_per_query - per_query
    if saving <= 0:
        return None
    return max(1, int(np.ceil((one_time - other_one_time) / saving)))


# ---- memory ---------------------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux `clear_refs` 5), so a later peak reading covers only what follows.
    Returns False where that is unsupported; the peak then dates from the process start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last `reset_peak_rss` (`VmHWM`), else since the process started."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


# ---- reporting ------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; printed and stored with every result."""
    model_name = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model_name = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                          if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    return {
        "cpu": model_name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "device": "cpu", "note": "shared CPU: ratios are measured side by side; absolute times are noisy",
    }


def base_parser(description: str, default_models: Sequence[str]) -> argparse.ArgumentParser:
    """The flags every benchmark shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", nargs="+", choices=MODEL_CHOICES, default=list(default_models),
                        help="models to run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a few-second run on the tests' tiny random model (smoke test; numbers mean little)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: 1; see benchmarks/common.py for why)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="where JSON and PNG files go")
    return parser


def setup_run(args: argparse.Namespace) -> list[str]:
    """Apply the shared flags; returns the models to run (`--quick` means the test-size model only)."""
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return ["quick"] if args.quick else list(args.model)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {_relative(path)}")


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table (also valid Markdown)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == float("inf"):
            return "inf"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num_bytes) < 1024 or unit == "GiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")

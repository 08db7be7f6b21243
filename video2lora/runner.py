"""The model-running half of the command line: loading a model, sampling a row's frames, and answering the same
questions three ways (docs/design.md §6):

- **base**: the frozen VLM with the video in context (it pays `frames x tokens-per-frame` visual tokens per query);
- **v2l**: the frozen VLM plus the adapter generated from the video, with zero visual tokens;
- **blind**: the frozen VLM with neither, from the question alone.

All three use the same frames and the same greedy decoding, so their differences come from what each one sees.
[`evaluate`] turns manifest rows into the records that [`video2lora.evaluation.summarize`] reads; the statistics
themselves stay model-free in `evaluation.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from modeling_video2lora import AdapterMismatchError, Video2LoRAAdapter, Video2LoRAModel

from .data import question_type
from .evaluation import exact_match, judge_prompt, parse_judge_score, token_f1
from .video import SampledVideo

__all__ = [
    "DEFAULT_MODEL_PATH",
    "Judge",
    "ModelLoadError",
    "check_question_lengths",
    "answer_with_adapter",
    "answer_with_video",
    "evaluate",
    "group_by_video",
    "load_model",
    "read_row_video",
]

# The embedded default: the hypernetwork trained on the generated world, whose config names its frozen base
# `../smolvlm-world`. Package data, so it is found from any working directory, installed editable or not.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "checkpoints" / "video2lora-world"

# Greedy decoding with at most 64 new tokens is the protocol's (docs/design.md §5-6); every system uses the same.
DEFAULT_MAX_NEW_TOKENS = 64


class ModelLoadError(RuntimeError):
    """A model or judge that cannot be loaded (missing default checkpoint, unknown id, not a Video2LoRA folder)."""


def _one_line(error: BaseException) -> str:
    # Loader errors from transformers span several lines; the command line reports one.
    return " ".join(str(error).split()) or type(error).__name__


def load_model(name_or_path: str | os.PathLike | None = None, *, dtype: torch.dtype | str | None = None,
               device: str | torch.device | None = None) -> Video2LoRAModel:
    """
    Load a Video2LoRA hypernetwork with its frozen base and processor.

    Args:
        name_or_path: Hub id or local folder; `None` loads the embedded default ([`DEFAULT_MODEL_PATH`]).
        dtype: dtype of the base (default: as saved).
        device: where to put the model (default: CPU).

    Raises:
        [`ModelLoadError`]: the default checkpoint is missing, or the model cannot be loaded or has no processor.
    """
    if name_or_path is None:
        if not (DEFAULT_MODEL_PATH / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded default model is not installed: '{DEFAULT_MODEL_PATH}' has no config.json; pass "
                "--model with a Hub id or a local folder, or train the default checkpoint first"
            )
        name_or_path = DEFAULT_MODEL_PATH
    source = os.fspath(name_or_path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = Video2LoRAModel.from_pretrained(source, **kwargs)
    except AdapterMismatchError:
        raise  # a base that does not fit the hypernetwork: its message already says what to do
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot load model '{source}': {_one_line(error)}") from error
    if model.processor is None:
        raise ModelLoadError(f"model '{source}' has no processor files (tokenizer, preprocessor_config.json)")
    if device is not None:
        model.to(device)
    return model.eval()


def check_question_lengths(model: Video2LoRAModel, questions: Sequence[str], *, max_new_tokens: int,
                           visual_tokens: int = 0) -> None:
    """
    Refuse a question that, with the answer's budget (and `visual_tokens` when the video is in context too), does
    not fit the base's positions: past them a model answers nothing useful, after minutes of work.

    Raises:
        `UsageError`: one line naming the question, its length and the limit.
    """
    from .checks import UsageError

    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if not limit:
        return
    tokenizer = model.processor.tokenizer
    for index, question in enumerate(questions, 1):
        length = len(tokenizer(model.processor.chat_prompt(question, with_video=False))["input_ids"])
        if length + visual_tokens + max_new_tokens > limit:
            raise UsageError(
                f"question {index} is {length:,} tokens; with {visual_tokens:,} visual tokens and --max_new_tokens "
                f"{max_new_tokens} it does not fit the base's {limit:,} positions; shorten it"
            )


def read_row_video(model: Video2LoRAModel, row: Mapping[str, Any], *, num_frames: int | None = None) -> SampledVideo:
    """Sample a manifest row's video with the model's processor, restricted to the row's `span` when it has one."""
    start, end = row.get("span") or (None, None)
    return model.processor.sample_video(row["video_path"], start=start, end=end, num_frames=num_frames)


def group_by_video(rows: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[str, tuple | None], list[Mapping]]]:
    """
    Rows grouped by `(video_path, span)`, in first-seen order.

    One group is one video (or one segment of it): it is decoded once and internalized into one adapter, which then
    serves every question of the group. Re-encoding per question is what the published code does and what the
    method exists to avoid.
    """
    groups: dict[tuple[str, tuple | None], list[Mapping]] = {}
    for row in rows:
        span = row.get("span")
        key = (row["video_path"], tuple(float(x) for x in span) if span else None)
        groups.setdefault(key, []).append(row)
    return list(groups.items())


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _generate_kwargs(max_new_tokens: int) -> dict[str, Any]:
    # Spelled out (rather than left to each generation_config) so that all three systems decode identically.
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}


@contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    """Batched generation needs left padding; `encode_videos` pads on the tokenizer's side, so switch it briefly."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def encode_with_video(model: Video2LoRAModel, video: SampledVideo, questions: Sequence[str]):
    """Processor inputs for `questions`, each preceded by the whole video (Base's view), left-padded."""
    processor = model.processor
    count = len(questions)
    with _left_padding(processor.tokenizer):
        inputs = processor.encode_videos([video.frames] * count, list(questions), timestamps=[video.timestamps] * count,
                                         durations=[video.duration] * count)
    inputs = inputs.to(model.vlm.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.vlm.dtype)
    return inputs


def visual_tokens_per_query(model: Video2LoRAModel, video: SampledVideo, question: str = "?") -> int:
    """`<image>` tokens Base reads for one question about `video` (V2L reads none)."""
    return model.processor.visual_token_count(encode_with_video(model, video, [question])["input_ids"])


@torch.no_grad()
def answer_with_video(model: Video2LoRAModel, video: SampledVideo, questions: Sequence[str], *,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16) -> list[str]:
    """Base: the frozen VLM answers each question with the video in its context, in batches."""
    answers: list[str] = []
    for chunk in _chunks(list(questions), batch_size):
        inputs = encode_with_video(model, video, chunk)
        output = model.vlm.generate(**inputs, **_generate_kwargs(max_new_tokens))
        texts = model.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.extend(text.strip() for text in texts)
    return answers


def answer_with_adapter(model: Video2LoRAModel, adapter: Video2LoRAAdapter | None, questions: Sequence[str], *,
                        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16) -> list[str]:
    """V2L (an adapter of one video) or Blind (`adapter=None`): no visual tokens, one adapter for every question."""
    answers: list[str] = []
    for chunk in _chunks(list(questions), batch_size):
        answers.extend(model.answer(adapter, list(chunk), **_generate_kwargs(max_new_tokens)))
    return answers


class Judge:
    """
    An optional LLM judge: any local causal LM, prompted with [`video2lora.evaluation.judge_prompt`] and read with
    [`video2lora.evaluation.parse_judge_score`] (a 1-5 score rescaled to 0-1; unreadable replies score `None`).

    The prompt ends with "Score:", so it is fed as plain text (no chat template): a base LM continues it directly,
    and an instruction-tuned one does too in practice.
    """

    def __init__(self, name_or_path: str | os.PathLike, *, batch_size: int = 8, max_new_tokens: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = os.fspath(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source).eval()
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelLoadError(f"cannot load judge '{source}': {_one_line(error)}") from error
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    @torch.no_grad()
    def replies(self, items: Sequence[tuple[str, str, str]], *, progress: bool = True) -> list[str]:
        """The judge's raw reply for each `(question, reference, prediction)`."""
        prompts = [judge_prompt(*item) for item in items]
        replies: list[str] = []
        bar = tqdm(total=len(prompts), desc="judge", unit="answer", disable=not progress)
        for chunk in _chunks(prompts, self.batch_size):
            inputs = self.tokenizer(list(chunk), return_tensors="pt", padding=True, padding_side="left")
            inputs = inputs.to(self.model.device)
            output = self.model.generate(**inputs, **_generate_kwargs(self.max_new_tokens),
                                         pad_token_id=self.tokenizer.pad_token_id)
            replies.extend(self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :],
                                                       skip_special_tokens=True))
            bar.update(len(chunk))
        bar.close()
        return replies

    def score(self, items: Sequence[tuple[str, str, str]], *, progress: bool = True) -> list[float | None]:
        """Scores in [0, 1] (or `None` for an unreadable reply) for each `(question, reference, prediction)`."""
        return [parse_judge_score(reply) for reply in self.replies(items, progress=progress)]


SYSTEM_ORDER = ("base", "v2l", "blind")


def _scores(row: Mapping[str, Any], answer: str) -> dict[str, float]:
    reference = row["target_text"]
    scores = {"token_f1": token_f1(answer, reference)}
    if row["task_type"] == "qa":  # exact match is meaningful for short answers only (docs/design.md §6)
        scores["exact_match"] = exact_match(answer, reference)
    return scores


def evaluate(model: Video2LoRAModel, rows: Sequence[Mapping[str, Any]], *, num_frames: int | None = None,
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16, judge: Judge | None = None,
             segments: int = 1, compose: str | None = None, max_rank: int | None = None, segment_overlap: int = 0,
             segment_layout: str = "contiguous", progress: bool = True, done: Mapping[str, dict[str, Any]] | None = None,
             on_scored: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """
    Answer every row with Base, V2L and Blind and score the answers: one record per row, in the format
    [`video2lora.evaluation.summarize`] reads, plus the answers themselves.

    Each video (or span) is decoded once and internalized into one adapter that serves all of its rows; questions
    are batched per video. Blind answers depend on the question alone, so each distinct prompt is answered once.

    Args:
        model: the Video2LoRA model (hypernetwork, frozen base, processor).
        rows: manifest rows (`read_manifest(...).rows`): `id`, absolute `video_path`, `task_type`, `prompt`,
            `target_text`, optional `span` and `metadata.question_type`.
        num_frames: frames per video; defaults to the processor's `video_sampling["max_frames"]`.
        max_new_tokens: greedy decoding budget, the same for every system.
        batch_size: questions per `generate` call.
        judge: optional [`Judge`]; adds a `judge` score per system.
        segments: with more than one, V2L's adapter is the composition of one adapter per equal segment of the video,
            each made from `num_frames` frames, while Base sees `num_frames x segments` frames of the whole: the
            same frame budget, in one context against in separate adapters.
        compose: how segments combine: `"latents"`, `"concat"` or `"average"` (`Video2LoRAModel.internalize`);
            defaults to the model's `config.segment_composition`.
        max_rank: compress composed adapters to at most this rank ([`Video2LoRAAdapter.compress`]).
        segment_overlap: frames each segment takes over from the one before (`model.internalize`).
        segment_layout: `"contiguous"` or `"interleaved"` segments (`model.internalize`).
        progress: show progress bars.
        done: records already scored by an interrupted run, by row id; their videos are not evaluated again.
        on_scored: called with each video's new records as soon as they are scored (before any judge), so that a
            caller can keep them on disk.

    Returns:
        One record per row, in `rows` order (records from `done` included).
    """
    if segments < 1:
        raise ValueError(f"segments must be at least 1, got {segments}.")
    num_frames = num_frames or model.processor.video_sampling["max_frames"]
    options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    blind_cache: dict[str, str] = {}
    done = dict(done or {})
    pending = [(key, group) for key, group in group_by_video(rows) if not all(row["id"] in done for row in group)]
    for (_, span), group in tqdm(pending, desc="videos", unit="video", disable=not progress):
        video = read_row_video(model, group[0], num_frames=num_frames * segments)
        if segments == 1:
            adapter = model.internalize(video)
        else:  # the same segment path as `internalize --segments`; Base reads the whole with as many frames
            start, end = group[0].get("span") or (None, None)
            adapter = model.internalize(group[0]["video_path"], start=start, end=end, num_frames=num_frames,
                                        segments=segments, compose=compose, max_rank=max_rank,
                                        segment_overlap=segment_overlap, segment_layout=segment_layout)
        prompts = [row["prompt"] for row in group]
        unseen = list(dict.fromkeys(prompt for prompt in prompts if prompt not in blind_cache))
        blind_cache.update(zip(unseen, answer_with_adapter(model, None, unseen, **options), strict=True))
        answers = {
            "base": answer_with_video(model, video, prompts, **options),
            "v2l": answer_with_adapter(model, adapter, prompts, **options),
            "blind": [blind_cache[prompt] for prompt in prompts],
        }
        base_tokens = visual_tokens_per_query(model, video)
        scored = []
        for index, row in enumerate(group):
            scored.append({
                "id": row["id"],
                "video_path": row["video_path"],
                "span": list(span) if span else None,
                "task_type": row["task_type"],
                "question_type": question_type(row),
                "prompt": row["prompt"],
                "reference": row["target_text"],
                "answers": {system: answers[system][index] for system in SYSTEM_ORDER},
                "visual_tokens": {"base": base_tokens, "v2l": 0, "blind": 0},
                "scores": {system: _scores(row, answers[system][index]) for system in SYSTEM_ORDER},
            })
        if on_scored is not None:
            on_scored(scored)
        done.update((record["id"], record) for record in scored)
    records = [done[row["id"]] for row in rows]
    if judge is not None:
        unjudged = [record for record in records if "judge" not in record["scores"]["base"]]
        items = [(r["prompt"], r["reference"], r["answers"][s]) for r in unjudged for s in SYSTEM_ORDER]
        scores = iter(judge.score(items, progress=progress))
        for record in unjudged:
            for system in SYSTEM_ORDER:
                record["scores"][system]["judge"] = next(scores)
    return records

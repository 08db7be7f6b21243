"""Video2LoRA as an lmms-eval model: score a checkpoint on lmms-eval's video benchmarks.

Registered through lmms-eval's `lmms_eval.models` entry-point group (pyproject.toml), the way lmms-eval's model guide
says external packages register, so that an installed project answers `--model video2lora`:

    python -m lmms_eval --model video2lora --model_args pretrained=PATH,mode=v2l --tasks videomme

`mode` picks what answers, with the same three systems and the same code as `video2lora eval` (docs/design.md §6):

- `v2l`: each video is internalized once into an adapter ([`Video2LoRAModel.internalize`]), which then answers every
  question about it with **zero visual tokens** in the context ([`runner.answer_with_adapter`]);
- `base`: the frozen base with the video in its context ([`runner.answer_with_video`]);
- `blind`: the frozen base with neither (the question alone).

Questions are grouped by video, so one video is decoded (and internalized) once however many questions it has.
Decoding is greedy, as in the project's protocol; a task's sampling settings are ignored with a warning.

lmms-eval is an optional dependency (docs/training.md, "Scoring with lmms-eval"); this module imports it at the top
and is only ever imported by lmms-eval itself or by code that has it installed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm.auto import tqdm

__all__ = ["MODEL_ID", "MODES", "TASKS_DIR", "Video2LoRA", "Video2LoRASimple", "model_manifest"]

MODEL_ID = "video2lora"
MODES = ("v2l", "base", "blind")

# The project's own lmms-eval tasks (`--include_path`): package data, found wherever the package is installed.
TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lmms_eval_tasks")


def model_manifest():
    """The `lmms_eval.models` entry point: `--model video2lora` resolves to the chat class (lmms-eval's default
    for a model that has one) and, with `--force_simple`, to the simple one (needed by loglikelihood tasks, which
    lmms-eval only builds for simple models).

    Returns:
        lmms-eval's `ModelManifest` for `video2lora`.
    """
    # Imported here, not at the top: importing `lmms_eval.models` loads every entry point, this module's included, so
    # a top-level import would make `import video2lora.lmms_eval` circular.
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=f"{__name__}.Video2LoRA",
                         simple_class_path=f"{__name__}.Video2LoRASimple")


def _as_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def _truncate(text: str, until: Sequence[str]) -> str:
    """Cut `text` at the first stop sequence. The project's answer path has no stop strings, but decoding is greedy,
    so the text before a stop sequence is exactly what stopping there would have produced."""
    cut = len(text)
    for stop in until:
        if stop:
            index = text.find(stop)
            if index != -1:
                cut = min(cut, index)
    return text[:cut].strip()


class _Query:
    """One request, reduced to what the project's answer path takes: a question and at most one video."""

    __slots__ = ("index", "question", "video", "span", "frames_key", "max_new_tokens", "until")

    def __init__(self, index: int, question: str, video: Any, span: tuple[float | None, float | None],
                 frames_key: tuple | None, max_new_tokens: int, until: list[str]):
        self.index, self.question, self.video, self.span = index, question, video, span
        self.frames_key, self.max_new_tokens, self.until = frames_key, max_new_tokens, until

    @property
    def video_key(self) -> tuple | None:
        """What identifies the video across requests: its file and span (frames in memory: the document)."""
        if self.video is None:
            return None
        if self.frames_key is not None:
            return self.frames_key
        return (os.path.abspath(os.fspath(self.video)), *self.span)


class Video2LoRA(lmms):
    """
    A Video2LoRA checkpoint as an lmms-eval chat model (`--model video2lora`).

    Args:
        pretrained: Hub id or local folder of a Video2LoRA checkpoint; empty for the embedded default
            (`video2lora/checkpoints/video2lora-world`).
        mode: `v2l` (adapter alone, zero visual tokens), `base` (the video in context) or `blind` (neither).
        num_frames: frames sampled per video (default: the processor's `video_sampling["max_frames"]`, as
            `video2lora eval`).
        max_new_tokens: the answer budget when a task names none (`max_new_tokens` or `max_gen_toks`).
        batch_size: questions per `generate` call (lmms-eval's `--batch_size`; `video2lora eval` uses 16).
        device: where to run (default: CPU); lmms-eval's `--device`.
        dtype: dtype of the base (default: as saved), e.g. `bfloat16`.
        adapter_cache_size: adapters kept between calls (one per video), so that a later request type (say
            loglikelihood after generation) about the same videos does not internalize them again.
        **kwargs: other lmms-eval settings (`max_batch_size`, ...), ignored.
    """

    is_simple = False

    def __init__(self, pretrained: str | None = None, mode: str = "v2l", num_frames: int | str | None = None,
                 max_new_tokens: int | str = 64, batch_size: int | str = 1, device: str | None = None,
                 dtype: str | None = None, adapter_cache_size: int | str = 16, **kwargs: Any):
        super().__init__()
        from .runner import load_model

        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if kwargs:
            logger.debug(f"video2lora: ignoring lmms-eval settings {sorted(kwargs)}")
        self.mode = mode
        self.batch_size = _as_int(1 if batch_size in (None, "auto") else batch_size, "batch_size")
        self.max_new_tokens = _as_int(max_new_tokens, "max_new_tokens")
        self.adapter_cache_size = _as_int(adapter_cache_size, "adapter_cache_size")
        self.model = load_model(pretrained or None, dtype=None if dtype in (None, "", "auto") else dtype,
                                device=device or None)
        self.num_frames = (_as_int(num_frames, "num_frames") if num_frames not in (None, "")
                           else self.model.processor.video_sampling["max_frames"])
        self._adapters: OrderedDict[tuple, Any] = OrderedDict()
        self._warned_sampling = False

    # ---- requests -> queries ----------------------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict | None) -> tuple[int, list[str]]:
        gen_kwargs = dict(gen_kwargs or {})
        budget = gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks", self.max_new_tokens))
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sampling = gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0 \
            or int(gen_kwargs.get("num_beams") or 1) > 1
        if sampling and not self._warned_sampling:
            logger.warning("video2lora: the task asks for sampling or beam search; answering greedily, as "
                           "`video2lora eval` does")
            self._warned_sampling = True
        return _as_int(budget, "max_new_tokens"), until

    def _query(self, index: int, text: str, videos: list, images: list, gen_kwargs: dict | None,
               doc_key: tuple) -> _Query:
        max_new_tokens, until = self._generation_settings(gen_kwargs)
        video, span, frames_key = None, (None, None), None
        if len(videos) > 1 or (videos and images):
            raise NotImplementedError(f"video2lora reads one video per question; request {index} ({doc_key}) has "
                                      f"{len(videos)} videos and {len(images)} images")
        if videos:
            video = videos[0]
            if isinstance(video, dict):  # lmms-eval's media dict: a path plus an optional span
                span = (video.get("video_start"), video.get("video_end"))
                video = video.get("path") or video.get("url") or video.get("video")
            if not isinstance(video, (str, os.PathLike)):
                raise NotImplementedError(f"video2lora reads videos from files; request {index} gave a "
                                          f"{type(video).__name__}")
        elif images:
            # Frames handed over as images (tasks that sample frames themselves): one clip, at 1 frame per second.
            video, frames_key = list(images), ("frames", *doc_key)
        return _Query(index, text, video, span, frames_key, max_new_tokens, until)

    def _chat_queries(self, requests: Sequence[Instance]) -> list[_Query]:
        from lmms_eval.protocol import ChatMessages

        queries = []
        for index, request in enumerate(requests):
            _, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            messages = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
            roles = {message.role for message in messages.messages}
            if roles != {"user"}:
                # The project's prompt is one user turn; a system prompt or earlier turns would be silently dropped.
                raise NotImplementedError(f"video2lora answers one user turn; request {index} ({task}) has "
                                          f"{sorted(roles)} turns")
            text = "\n".join(content.text for message in messages.messages for content in message.content
                             if content.type == "text")
            images, videos, audios = messages.extract_media()
            if audios:
                raise NotImplementedError(f"video2lora has no audio input; request {index} ({task}) has audio")
            # A span given on the content (rather than in the media dict) applies to its video.
            spans = [(content.start_time, content.end_time) for message in messages.messages
                     for content in message.content if content.type == "video"]
            query = self._query(index, text, videos, images, gen_kwargs, (task, split, doc_id))
            if spans and spans[0] != (None, None):
                query.span = spans[0]
            queries.append(query)
        return queries

    def _simple_queries(self, requests: Sequence[Instance]) -> list[_Query]:
        queries = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            images = [visual for visual in visuals if not isinstance(visual, (str, os.PathLike, dict))]
            videos = [visual for visual in visuals if isinstance(visual, (str, os.PathLike, dict))]
            queries.append(self._query(index, context, videos, images, gen_kwargs, (task, split, doc_id)))
        return queries

    def _visuals(self, doc_to_visual: Callable | None, task: str, split: str, doc_id: int) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        return list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]

    # ---- videos and adapters ----------------------------------------------------------------------------------

    def _sampled(self, query: _Query):
        """The frames every system reads, sampled exactly as `video2lora eval` samples a manifest row."""
        from .runner import read_row_video

        start, end = query.span
        row = {"video_path": query.video, "span": None if start is None and end is None else (start, end)}
        return read_row_video(self.model, row, num_frames=self.num_frames)

    def _adapter(self, key: tuple, video):
        """The video's adapter, made once and kept in a small LRU cache."""
        if key in self._adapters:
            self._adapters.move_to_end(key)
            return self._adapters[key]
        adapter = self.model.internalize(video)
        self._adapters[key] = adapter
        while len(self._adapters) > self.adapter_cache_size:
            self._adapters.popitem(last=False)
        return adapter

    def _groups(self, queries: list[_Query]) -> list[tuple[tuple | None, list[_Query]]]:
        """Queries by video, in first-seen order: one video is decoded (and internalized) once for all of them."""
        groups: dict[tuple | None, list[_Query]] = {}
        for query in queries:
            groups.setdefault(query.video_key, []).append(query)
        return list(groups.items())

    # ---- lmms-eval's interface --------------------------------------------------------------------------------

    def _requests_to_queries(self, requests: Sequence[Instance]) -> list[_Query]:
        return self._simple_queries(requests) if self.is_simple else self._chat_queries(requests)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """
        Answer every request greedily with the configured mode, through the project's answer path.

        `max_new_tokens` (or `max_gen_toks`) bounds each answer; `until` cuts it at the first stop sequence (exact
        under greedy decoding, see [`_truncate`]). Each result reports its input tokens: for `v2l` and `blind` the
        text-only prompt (no visual token at all), for `base` that prompt plus the video block.

        Args:
            requests: lmms-eval instances (chat: `(context, doc_to_messages, gen_kwargs, doc_id, task, split)`;
                simple: `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`).

        Returns:
            One `GenerationResult` per request, in request order.
        """
        from .runner import answer_with_adapter, answer_with_video, encode_with_video

        queries = self._requests_to_queries(requests)
        results: list[GenerationResult | None] = [None] * len(queries)
        for key, group in tqdm(self._groups(queries), desc=f"video2lora {self.mode}", unit="video"):
            # Blind never reads the video; a question without one is answered blind in every mode.
            video = None if key is None or self.mode == "blind" else self._sampled(group[0])
            mode = "blind" if video is None else self.mode
            adapter = self._adapter(key, video) if mode == "v2l" else None
            video_block = 0
            if mode == "base":
                # Counted once per video: the prompt with the video minus the same prompt without it.
                probe = group[0].question
                with_video = int(encode_with_video(self.model, video, [probe])["attention_mask"].sum())
                video_block = with_video - self._text_prompt_length(probe)
            for budget in dict.fromkeys(query.max_new_tokens for query in group):
                batch = [query for query in group if query.max_new_tokens == budget]
                questions = [query.question for query in batch]
                options = {"max_new_tokens": budget, "batch_size": self.batch_size}
                if mode == "base":
                    answers = answer_with_video(self.model, video, questions, **options)
                else:
                    answers = answer_with_adapter(self.model, adapter, questions, **options)
                for query, answer in zip(batch, answers, strict=True):
                    tokens = TokenCounts(input_tokens=self._text_prompt_length(query.question) + video_block)
                    results[query.index] = GenerationResult(text=_truncate(answer, query.until), token_counts=tokens)
        return results

    def _text_prompt_length(self, question: str) -> int:
        processor = self.model.processor
        return len(processor.tokenizer(processor.chat_prompt(question, with_video=False))["input_ids"])

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """
        Log-probability of each continuation after its context, with the configured mode, and whether greedy
        decoding would produce it: the student's forward pass (`Video2LoRAModel.forward` with the video's adapter)
        for `v2l`, the base over the video-in-context prompt of [`runner.encode_with_video`] for `base`, the bare
        base for `blind`. The context is the user turn and the continuation follows `Assistant:`, as an answer does.

        lmms-eval builds loglikelihood requests for simple models only: run with `--force_simple`.

        Args:
            requests: lmms-eval instances `(context, continuation or doc_to_target, doc_to_visual, doc_id, task,
                split)`.

        Returns:
            `(log_prob, is_greedy)` per request, in request order.
        """
        import torch

        from .runner import encode_with_video

        if not self.is_simple:
            raise NotImplementedError("lmms-eval sends loglikelihood requests to simple models; run with "
                                      "--force_simple")
        model, tokenizer = self.model, self.model.processor.tokenizer
        queries, continuations = [], []
        for index, request in enumerate(requests):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            continuations.append(str(continuation))
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            images = [visual for visual in visuals if not isinstance(visual, (str, os.PathLike, dict))]
            videos = [visual for visual in visuals if isinstance(visual, (str, os.PathLike, dict))]
            queries.append(self._query(index, context, videos, images, None, (task, split, doc_id)))
        results: list[tuple[float, bool] | None] = [None] * len(queries)
        device = model.vlm.device
        for key, group in self._groups(queries):
            # Blind never reads the video; a question without one is answered blind in every mode.
            video = None if key is None or self.mode == "blind" else self._sampled(group[0])
            mode = "blind" if video is None else self.mode
            adapter = self._adapter(key, video) if mode == "v2l" else None
            for query in group:
                target = tokenizer(continuations[query.index], add_special_tokens=False)["input_ids"]
                if not target:
                    results[query.index] = (0.0, True)
                    continue
                target_ids = torch.tensor([target], device=device)
                if mode == "base":
                    inputs = encode_with_video(model, video, [query.question])
                    inputs["input_ids"] = torch.cat([inputs["input_ids"], target_ids], dim=1)
                    inputs["attention_mask"] = torch.cat(
                        [inputs["attention_mask"], torch.ones_like(target_ids)], dim=1)
                else:
                    prompt = tokenizer(model.processor.chat_prompt(query.question, with_video=False))["input_ids"]
                    ids = torch.cat([torch.tensor([prompt], device=device), target_ids], dim=1)
                    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                with torch.no_grad():
                    if adapter is not None:
                        logits = model(**inputs, adapter=adapter.to(device)).logits
                    else:
                        logits = model.vlm(**inputs, use_cache=False).logits
                # Position t predicts token t + 1: the continuation's tokens are predicted by the positions before.
                predicted = logits[0, -len(target) - 1 : -1].float().log_softmax(-1)
                log_prob = predicted.gather(-1, target_ids[0, :, None]).sum().item()
                greedy = bool((predicted.argmax(-1) == target_ids[0]).all())
                results[query.index] = (log_prob, greedy)
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not supported: the project answers one question per adapter call, with no dialogue history.

        Args:
            requests: lmms-eval instances.
        """
        raise NotImplementedError("video2lora answers single-turn questions; multi-round generation is not "
                                  "supported")


class Video2LoRASimple(Video2LoRA):
    """The same model as an lmms-eval simple model (`--model video2lora --force_simple`): requests carry the
    task's `doc_to_text` and `doc_to_visual`; the only kind lmms-eval sends loglikelihood requests to.

    Args:
        **kwargs: as [`Video2LoRA`].
    """

    is_simple = True

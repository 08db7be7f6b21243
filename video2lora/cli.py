"""The `video2lora` command line.

    video2lora internalize clip.mp4 -o clip-adapter/          # video -> PEFT adapter folder (+ video2lora.json)
    video2lora ask clip.mp4 "what colour is the square?"      # answer with zero visual tokens
    video2lora ask clip-adapter/ "what shape is the red object?" --compare
    video2lora demo                                           # a generated world clip, end to end
    video2lora store list                                     # adapters `ask VIDEO` stored for reuse
    video2lora serve a.mp4 b.mp4                              # vLLM's OpenAI API, one adapter (model) per video
    video2lora eval --manifest data/world/test.jsonl          # Base vs V2L vs Blind (docs/design.md §6)

`--model` takes a Hub id or a local folder and defaults to the embedded checkpoint (`video2lora/checkpoints/video2lora-world`).
User errors (a missing or unreadable file, a bad manifest row, an adapter made for another base, a missing model)
print one line to stderr and exit with status 2. The model-running code lives in [`video2lora.runner`]; this
module parses arguments, formats output and imports the heavy libraries only once a command runs, so that
`HF_HUB_OFFLINE` can still be set before `huggingface_hub` reads it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checks import (
    UsageError,
    check_output_folder,
    check_questions,
    check_video_file,
    check_writable_folder,
    non_negative_int,
    positive_int,
)
from .data import ManifestError, read_manifest, resolve_data_root, write_text_atomically
from .store import AdapterStore, sha256_file
from .video import SEGMENT_LAYOUTS, SampledVideo, VideoDecodeError

if TYPE_CHECKING:
    from modeling_video2lora import Video2LoRAAdapter, Video2LoRAModel

__all__ = ["build_parser", "main"]

PROG = "video2lora"
METADATA_NAME = "video2lora.json"
CARD_NAME = "README.md"
# Exit status of every user error, as argparse uses for bad arguments.
USAGE_ERROR = 2


# Exit status after Ctrl-C, as shells report a process ended by SIGINT.
INTERRUPTED = 130
EMBEDDED_DEFAULT_NOTE = (
    f"{PROG}: note: the embedded default model only knows the generated shape world (coloured shapes that move); "
    "for real videos pass --model with a Video2LoRA checkpoint (Hub id or folder) trained on them"
)


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line (`video2lora ask: error: ...`) and exit status 2, like every other user error."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "video2lora ask" -> "ask"
        where = f"{command}: " if command else ""
        self.exit(USAGE_ERROR, f"{PROG}: error: {where}{' '.join(message.split())} (see --help)\n")


# ---- arguments ------------------------------------------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser, *, answers: bool = True) -> None:
    parser.add_argument("--model", default=None,
                        help="Video2LoRA model: Hub id or local folder (default: the embedded checkpoint)")
    if answers:
        parser.add_argument("--max_new_tokens", type=positive_int, default=64,
                            help="greedy decoding budget per answer")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _add_frame_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_frames", type=positive_int, default=None,
                        help="most frames sampled from the video, per segment (default: the processor's "
                             "video_sampling max_frames)")
    parser.add_argument("--start", type=float, default=None, help="span start, in seconds")
    parser.add_argument("--end", type=float, default=None, help="span end, in seconds (exclusive)")
    segments = parser.add_mutually_exclusive_group()
    segments.add_argument("--segments", type=positive_int, default=None,
                          help="read a long video as K equal segments, composed into one adapter the model's way")
    segments.add_argument("--segment_seconds", type=_positive_float, default=None,
                          help="or as segments of S seconds")
    parser.add_argument("--max_rank", type=positive_int, default=None,
                        help="keep a segmented video's adapter at most this rank (truncated SVD after each segment, "
                             "exact while it fits), e.g. a server's --max-lora-rank")
    parser.add_argument("--segment_batch_size", type=positive_int, default=1,
                        help="segments the base reads in one batch: more keeps a GPU busy, memory grows with it "
                             "(the same adapter up to rounding)")
    parser.add_argument("--segment_overlap", type=non_negative_int, default=0,
                        help="each segment also reads the previous one's last N sampled frames, so a change between "
                             "two segments is seen (default: 0)")
    parser.add_argument("--segment_layout", choices=SEGMENT_LAYOUTS, default="contiguous",
                        help="contiguous: segment i is the i-th stretch of the video; interleaved: segment i is every "
                             "K-th sampled frame from the i-th, so each covers the whole video (default: contiguous)")


def _key_value(text: str, usage: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected {usage}, got {text!r}")
    return key, value


def _margin(text: str) -> tuple[str, float]:
    usage = "METRIC=VALUE (e.g. token_f1=0.05)"
    metric, value = _key_value(text, usage)
    try:
        return metric, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {usage}, got {text!r}") from None


def _condition(text: str) -> tuple[str, str]:
    return _key_value(text, "FIELD=VALUE")


def _matches(row: dict[str, Any], conditions: Sequence[tuple[str, str]]) -> bool:
    metadata = row.get("metadata") or {}
    return all(str(row.get(field, metadata.get(field))) == value for field, value in conditions)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `video2lora` command and its subcommands."""
    parser = _Parser(
        prog=PROG, description="Internalize a video into a LoRA adapter and answer questions about it with zero "
                               "visual tokens.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    internalize = commands.add_parser("internalize", help="read a video into a PEFT adapter folder",
                                      description="Read a video once and write the generated LoRA as a PEFT adapter "
                                                  f"folder, with {METADATA_NAME} (provenance) and a model card.")
    internalize.add_argument("video", metavar="VIDEO", help="video file (any format FFmpeg reads)")
    internalize.add_argument("-o", "--output", required=True, metavar="ADAPTER_DIR", help="adapter folder to write")
    internalize.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                             help="dtype of the saved weights (default: the base's, bf16 for SmolVLM2)")
    internalize.add_argument("--overwrite", action="store_true",
                             help="replace ADAPTER_DIR if it exists and is not empty (default: refuse)")
    _add_model_arguments(internalize, answers=False)
    _add_frame_arguments(internalize)

    ask = commands.add_parser("ask", help="answer questions about a video or an adapter, with zero visual tokens",
                              description="Answer questions from the adapter alone (no visual tokens). A video is "
                                          "internalized first; an adapter folder is used as it is.")
    ask.add_argument("source", metavar="VIDEO|ADAPTER_DIR", help="video file, or adapter folder from `internalize`")
    ask.add_argument("questions", metavar="QUESTION", nargs="+", help="one or more questions")
    ask.add_argument("--compare", action="store_true",
                     help="also answer with the video in context (Base), with timings and visual-token counts")
    ask.add_argument("--store", default=None, metavar="DIR",
                     help="adapter store to reuse and fill (default: $VIDEO2LORA_STORE, else the Hugging Face cache's "
                          "video2lora/adapters)")
    ask.add_argument("--no_store", action="store_true", help="internalize the video again and store nothing")
    _add_model_arguments(ask)
    _add_frame_arguments(ask)

    demo = commands.add_parser("demo", help="end to end on a generated world clip from the test split",
                               description="Generate a held-out world clip, internalize it and answer its questions.")
    demo.add_argument("--seed", type=int, default=0,
                      help="which test clip: index N inside the test split's seed range (seed 2,000,000 + N)")
    demo.add_argument("--compare", action="store_true", help="also answer with the video in context (Base)")
    _add_model_arguments(demo)

    store = commands.add_parser("store", help="list or clear the adapter store that `ask VIDEO` fills",
                                description="The adapter store: one PEFT adapter folder per (video content, model, "
                                            "sampling settings), reused by `ask VIDEO` instead of internalizing again.")
    store.add_argument("action", choices=("list", "clear"), help="list the stored adapters, or delete them all")
    store.add_argument("--store", default=None, metavar="DIR",
                       help="the store (default: $VIDEO2LORA_STORE, else the Hugging Face cache's video2lora/adapters)")

    serve = commands.add_parser("serve", help="internalize videos and serve their adapters with vLLM's OpenAI API",
                                description="Internalize each video into the adapter store, start vLLM's "
                                            "OpenAI-compatible server on 127.0.0.1 for the model's frozen base, "
                                            "register each adapter under its own model name (and `blind`, for "
                                            "questions without a video), and serve until Ctrl-C. See docs/serving.md.")
    serve.add_argument("videos", metavar="VIDEO", nargs="+", help="video files to serve, one adapter each")
    serve.add_argument("--store", default=None, metavar="DIR",
                       help="adapter store to reuse and fill (default: $VIDEO2LORA_STORE, else the Hugging Face cache's "
                            "video2lora/adapters)")
    serve.add_argument("--port", type=_port, default=8000, help="port on 127.0.0.1 (default: 8000; 0: any free port)")
    serve.add_argument("--vllm_env", default=None, metavar="DIR",
                       help="virtual environment holding vLLM (default: $VIDEO2LORA_VLLM_ENV, else .venv-vllm/ in the "
                            "repository, which `python scripts/vllm_check.py` builds)")
    serve.add_argument("--max_loras", type=positive_int, default=None,
                       help="adapters one batch may mix, vLLM's --max-loras (default: every adapter served, at most 16)")
    serve.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                       help="dtype vLLM runs the base in (default: the base's, as the project runs it)")
    serve.add_argument("--attach", default=None, metavar="URL",
                       help="add the videos to a server `video2lora serve` already runs (http://127.0.0.1:PORT), "
                            "then exit")
    serve.add_argument("--startup_timeout", type=_positive_float, default=900, help="seconds vLLM may take to start")
    _add_model_arguments(serve)
    _add_frame_arguments(serve)

    evaluate = commands.add_parser("eval", help="Base vs V2L vs Blind over a manifest (docs/design.md §6)",
                                   description="Answer every manifest row with Base (video in context), V2L (adapter "
                                               "alone) and Blind (neither); score, summarize and report.")
    evaluate.add_argument("--manifest", required=True, help="JSONL manifest of rows to evaluate")
    evaluate.add_argument("--data_root", default=None,
                          help="root of relative video paths (default: $VIDEO2LORA_DATA_ROOT or the manifest's folder)")
    evaluate.add_argument("--where", nargs="+", type=_condition, default=[], metavar="FIELD=VALUE",
                          help="evaluate only rows whose FIELD (top level or under `metadata`) equals VALUE, e.g. "
                               "segment=whole")
    evaluate.add_argument("--max_rows", type=positive_int, default=None, help="evaluate only the first N rows")
    evaluate.add_argument("--num_frames", type=positive_int, default=None,
                          help="most frames sampled per video (default: the processor's video_sampling max_frames)")
    evaluate.add_argument("--segments", type=positive_int, default=1,
                          help="V2L composes one adapter per equal segment of each video (each from --num_frames "
                               "frames); Base then sees num_frames x segments frames of the whole video")
    evaluate.add_argument("--compose", choices=("latents", "concat", "average"), default=None,
                          help="how segments combine with --segments > 1 (default: the model's segment_composition)")
    evaluate.add_argument("--max_rank", type=positive_int, default=None,
                          help="compress composed adapters to at most this rank (truncated SVD)")
    evaluate.add_argument("--segment_overlap", type=non_negative_int, default=0,
                          help="with --segments > 1, each segment also reads the previous one's last N frames")
    evaluate.add_argument("--segment_layout", choices=SEGMENT_LAYOUTS, default="contiguous",
                          help="with --segments > 1: contiguous stretches, or interleaved parts that each cover the "
                               "whole video (model.internalize)")
    evaluate.add_argument("--batch_size", type=positive_int, default=16, help="questions per generate call")
    evaluate.add_argument("--judge", default=None, metavar="PATH", help="local causal LM to use as an LLM judge")
    evaluate.add_argument("--margins", nargs="+", type=_margin, default=[], metavar="METRIC=VALUE",
                          help="non-inferiority/equivalence margins (defaults: judge=0.15 token_f1=0.05 "
                               "exact_match=0.05)")
    evaluate.add_argument("--num_resamples", type=positive_int, default=10_000, help="paired-bootstrap resamples")
    evaluate.add_argument("--output_dir", default="video2lora-eval",
                          help="where summary.json, records.jsonl and report.md go; records.jsonl grows as rows "
                               "are scored")
    resume = evaluate.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue an interrupted evaluation in --output_dir, scoring only the rows it lacks")
    resume.add_argument("--overwrite", action="store_true",
                        help="start over even if --output_dir holds an earlier evaluation")
    _add_model_arguments(evaluate)
    return parser


# ---- shared helpers -------------------------------------------------------------------------------------------------


def _prefer_offline(model: str | None) -> None:
    """Local models never need the Hub; without the flag a Hub lookup can hang for minutes before failing."""
    if model is None or os.path.isdir(model):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load_model(name_or_path: str | None, *, note_default: bool = True) -> Video2LoRAModel:
    from transformers.utils import logging as transformers_logging

    from .runner import load_model

    # Library warnings (e.g. generation defaults) and weight-loading bars would bury the answers; errors still show.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if name_or_path is None and note_default:
        print(EMBEDDED_DEFAULT_NOTE, file=sys.stderr)
    return load_model(name_or_path)


def _frames_for(model: Video2LoRAModel, args: argparse.Namespace, path: str | os.PathLike) -> SampledVideo:
    """The video's frames through the model's processor: the same sampler every other door uses."""
    try:
        video = model.processor.sample_video(path, start=getattr(args, "start", None),
                                             end=getattr(args, "end", None), num_frames=getattr(args, "num_frames", None))
    except VideoDecodeError:
        raise
    except ValueError as error:  # a bad span or frame count: the user's arguments, not the file
        raise UsageError(str(error)) from None
    if video.damaged_frames:
        print(f"{PROG}: note: '{path}' has damaged packets: {video.damaged_frames} of {video.num_frames} sampled "
              "frames were taken from the nearest frame that decodes", file=sys.stderr)
    return video


def _printable(text: str) -> str:
    # Answers are model output: a control character (an untrained model emits any byte) must not garble the terminal.
    return "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, with columns padded so that it also reads well as plain text."""
    cells = [[_printable(str(cell)).replace("|", "\\|") for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (width + 2) for width in widths) + "|",
                      *(line(row) for row in cells[1:])])


def _model_reference(name_or_path: str | None) -> str:
    from .runner import DEFAULT_MODEL_PATH

    if name_or_path is None:
        return str(DEFAULT_MODEL_PATH)
    # A local folder is recorded absolutely so that the record stays valid from any working directory.
    return os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path


# ---- internalize ----------------------------------------------------------------------------------------------------


def _provenance(args: argparse.Namespace, video_path: str, model: Video2LoRAModel, adapter: Video2LoRAAdapter,
                video: SampledVideo) -> dict[str, Any]:
    model_reference = _model_reference(args.model)
    return {
        # The file's name and content hash, never its machine path: adapter folders get shared and served.
        "video": {"name": os.path.basename(video_path), "sha256": sha256_file(video_path),
                  "size_bytes": os.path.getsize(video_path)},
        "frames": {"count": video.num_frames, "timestamps": video.timestamps, "duration": video.duration,
                   "span": [args.start, args.end], "max_edge": model.processor.frame_size,
                   "sampling": model.processor.sampling_kwargs(args.num_frames),
                   # Sampled frames taken from the nearest decodable one because their own packets were damaged.
                   "damaged": video.damaged_frames,
                   # Each segment's [start, end) seconds when the video was read in segments.
                   "segments": adapter.metadata.get("segments")},
        # `_commit_hash` is the Hub commit a model was loaded from; local folders have none.
        "model": {"name_or_path": model_reference, "revision": getattr(model.config, "_commit_hash", None)},
        "base": {"name_or_path": model.base_model_reference,
                 "revision": model.config.base_model_revision, "fingerprint": model.fingerprint},
        "adapter": {"rank": adapter.rank, "num_layers": adapter.num_layers,
                    "target_modules": sorted(adapter.lora_A), "instruction": model.config.instruction},
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _hub_url(reference: str | None) -> str:
    if reference is None:
        return ""
    return reference if os.path.exists(reference) else f"https://huggingface.co/{reference}"


def _render_adapter_card(folder_name: str, provenance: dict[str, Any]) -> tuple[str | None, str | None]:
    """The adapter's model card, or `None` and why not."""
    try:
        from .cards import render_card
    except ImportError:
        return None, "no card renderer (video2lora.cards) installed"
    base, model = provenance["base"]["name_or_path"], provenance["model"]["name_or_path"]
    video_name = provenance["video"]["name"]
    try:
        card = render_card(
            "adapter", library_name="peft", tags=["video2lora", "lora", "video"],
            # The Hub's base_model field takes Hub ids only; a local base path would fail its validation.
            base_model=base if base and not os.path.exists(base) else None,
            model_name=f"Video2LoRA adapter for {video_name}", hypernetwork_reference=model,
            hypernetwork_url=_hub_url(model), base_model_reference=base or model, base_model_url=_hub_url(base or model),
            video_name=video_name, video_sha256=provenance["video"]["sha256"],
            num_frames=provenance["frames"]["count"], timestamps=provenance["frames"]["timestamps"],
            rank=provenance["adapter"]["rank"], target_modules=", ".join(provenance["adapter"]["target_modules"]),
            repo_id=folder_name, created_at=provenance["created_at"],
        )
    except (FileNotFoundError, ValueError, ImportError) as error:
        return None, " ".join(str(error).split())
    return card, None


def _adapter_files(args: argparse.Namespace, video_path: str, model: Video2LoRAModel, adapter: Video2LoRAAdapter,
                   video: SampledVideo, folder_name: str) -> dict[str, str]:
    """The side files of an adapter folder (provenance, model card); also marks the weights with the video's hash
    and frame times, so the safetensors file alone still says which video it came from."""
    provenance = _provenance(args, video_path, model, adapter, video)
    adapter.metadata = {**adapter.metadata, "video_sha256": provenance["video"]["sha256"],
                        "frame_timestamps": video.timestamps}
    card, skipped = _render_adapter_card(folder_name, provenance)
    if skipped is not None:
        print(f"{PROG}: note: no model card written ({skipped})", file=sys.stderr)
    return {METADATA_NAME: json.dumps(provenance, indent=2) + "\n", **({CARD_NAME: card} if card else {})}


def _internalize(model: Video2LoRAModel, args: argparse.Namespace, path: str, video: SampledVideo):
    """The adapter of `path`: of the frames already sampled, or segment by segment with --segments."""
    if args.segments is None and args.segment_seconds is None:
        return model.internalize(video)
    try:
        return model.internalize(path, start=args.start, end=args.end, num_frames=args.num_frames,
                                 segments=args.segments, segment_seconds=args.segment_seconds, max_rank=args.max_rank,
                                 segment_batch_size=args.segment_batch_size, segment_overlap=args.segment_overlap,
                                 segment_layout=args.segment_layout)
    except VideoDecodeError:
        raise
    except ValueError as error:
        raise UsageError(str(error)) from None


def _cmd_internalize(args: argparse.Namespace) -> int:
    check_video_file(args.video)
    check_output_folder(args.output, "-o", overwrite=args.overwrite)
    model = _load_model(args.model)
    started = time.perf_counter()
    video = _frames_for(model, args, args.video)
    adapter = _internalize(model, args, args.video, video)
    elapsed = time.perf_counter() - started
    output = Path(args.output)
    extra_files = _adapter_files(args, args.video, model, adapter, video, output.name)
    adapter.save_pretrained(output, dtype=None if args.dtype == "auto" else args.dtype, extra_files=extra_files)
    print(f"internalized {video.num_frames} frames of '{args.video}' in {elapsed:.2f} s (decoding included) -> "
          f"{output}/ (rank {adapter.rank}, {adapter.num_layers} layers)")
    return 0


# ---- ask ------------------------------------------------------------------------------------------------------------


def _is_adapter_dir(path: str) -> bool:
    return os.path.isdir(path)


def _load_adapter(model: Video2LoRAModel, directory: str) -> Video2LoRAAdapter:
    from modeling_video2lora import Video2LoRAAdapter

    adapter = Video2LoRAAdapter.from_pretrained(directory)
    model.check_adapter(adapter)  # fail before any answering, with the mismatch spelled out
    return adapter


def _timed(function, *args, **kwargs) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def _cmd_ask(args: argparse.Namespace) -> int:
    from .runner import answer_with_adapter, answer_with_video, check_question_lengths, visual_tokens_per_query

    if args.compare and _is_adapter_dir(args.source):
        raise UsageError("--compare needs the video itself (Base reads it); pass the video file, not an adapter folder")
    check_questions(args.questions)
    if not _is_adapter_dir(args.source):
        check_video_file(args.source)
    model = _load_model(args.model)
    check_question_lengths(model, args.questions, max_new_tokens=args.max_new_tokens)
    video = None
    if _is_adapter_dir(args.source):
        adapter = _load_adapter(model, args.source)
        print(f"adapter: {args.source}")
    elif args.no_store:
        started = time.perf_counter()
        video = _frames_for(model, args, args.source)
        adapter = _internalize(model, args, args.source, video)
        elapsed = time.perf_counter() - started
        print(f"internalized {video.num_frames} frames of '{args.source}' in {elapsed:.2f} s, decoding included")
    else:
        store = AdapterStore(args.store)
        started = time.perf_counter()
        try:
            adapter, stored = store.internalize(
                model, args.source, reference=_model_reference(args.model), start=args.start, end=args.end,
                num_frames=args.num_frames, segments=args.segments, segment_seconds=args.segment_seconds,
                max_rank=args.max_rank, segment_batch_size=args.segment_batch_size,
                segment_overlap=args.segment_overlap, segment_layout=args.segment_layout, extra_files=lambda made, frames: _adapter_files(args, args.source, model, made, frames, "adapter"))
        except ValueError as error:  # a span or frame count the video cannot meet
            if isinstance(error, VideoDecodeError):
                raise
            raise UsageError(str(error)) from None
        elapsed = time.perf_counter() - started
        print(f"adapter from the store, {store.root}: internalized before, read in {elapsed:.2f} s" if stored else
              f"internalized '{args.source}' in {elapsed:.2f} s, decoding included; stored in {store.root}, so the "
              "next question about this video skips it")
        if args.compare:
            video = _frames_for(model, args, args.source)
    options = {"max_new_tokens": args.max_new_tokens}
    base_tokens = visual_tokens_per_query(model, video) if args.compare else None
    for question in args.questions:
        # One question at a time, so that each timing is the time to answer that question.
        (answer,), seconds = _timed(answer_with_adapter, model, adapter, [question], **options)
        print(f"\nQ: {_printable(question)}")
        print(f"  V2L  ({0:>5} visual tokens, {seconds:6.3f} s): {_printable(answer)}")
        if args.compare:
            (base_answer,), base_seconds = _timed(answer_with_video, model, video, [question], **options)
            print(f"  Base ({base_tokens:>5} visual tokens, {base_seconds:6.3f} s): {_printable(base_answer)}")
    return 0


# ---- demo -----------------------------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation import exact_match
    from .runner import answer_with_adapter, answer_with_video, visual_tokens_per_query
    from .video import write_video
    from .world import CAPTION_PROMPT, generate_clip, split_seeds

    try:
        seed = split_seeds("test", 1, offset=args.seed)[0]
    except ValueError as error:
        raise UsageError(f"--seed: {error}") from None
    model = _load_model(args.model, note_default=False)  # the demo's clip is from the world the default knows
    clip = generate_clip(seed)
    with tempfile.TemporaryDirectory(prefix="video2lora-demo-") as directory:
        # Through a real MP4 file, so the demo exercises the same decode path as a user's video.
        path = Path(directory) / f"world-{seed}.mp4"
        write_video(path, clip.frames, fps=clip.fps)
        video = _frames_for(model, args, path)
    adapter, elapsed = _timed(model.internalize, video)
    questions = [CAPTION_PROMPT, *(item.question for item in clip.qa)]
    truths = [clip.caption, *(item.answer for item in clip.qa)]
    options = {"max_new_tokens": args.max_new_tokens}
    v2l = answer_with_adapter(model, adapter, questions, **options)
    base = answer_with_video(model, video, questions, **options) if args.compare else None
    base_tokens = visual_tokens_per_query(model, video) if args.compare else None

    print(f"world test clip, seed {seed}: {video.num_frames} frames, internalized in {elapsed:.2f} s\n")
    headers = ["question", "ground truth", "V2L (0 visual tokens)"]
    if base is not None:
        headers.append(f"Base ({base_tokens} visual tokens)")
    rows = [[questions[i], truths[i], v2l[i], *([base[i]] if base is not None else [])] for i in range(len(questions))]
    print(_table(headers, rows))
    # Exact match is scored on the short QA answers only; the caption row is there to read.
    qa = range(1, len(questions))
    summary = f"\nexact match on {len(qa)} questions: V2L {sum(exact_match(v2l[i], truths[i]) for i in qa):.0f}"
    if base is None:
        print(summary + " (V2L reads 0 visual tokens per question; --compare also answers with the video in context)")
    else:
        summary += f", Base {sum(exact_match(base[i], truths[i]) for i in qa):.0f}"
        print(summary + f" (V2L reads 0 visual tokens per question, Base {base_tokens})")
    return 0


# ---- store ----------------------------------------------------------------------------------------------------------


def _cmd_store(args: argparse.Namespace) -> int:
    store = AdapterStore(args.store)
    if args.action == "clear":
        print(f"removed {store.clear()} adapters from {store.root}")
        return 0
    entries = store.entries()
    rows = [[entry.key, entry.video_name or "?", f"{entry.size_bytes / 2**20:.1f} MiB",
             datetime.datetime.fromtimestamp(entry.last_used).isoformat(timespec="seconds")]
            for entry in reversed(entries)]  # most recently used first
    print(f"{len(entries)} adapters in {store.root} ({sum(e.size_bytes for e in entries) / 2**20:.1f} MiB of at most "
          f"{store.max_bytes / 2**30:.0f} GiB)")
    if rows:
        print(_table(["key (= folder)", "video", "size", "last used"], rows))
    return 0


# ---- serve ----------------------------------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return value


def _attached_port(url: str) -> int:
    """The port of a server URL; only 127.0.0.1 (or localhost) is accepted: adapters are read from this machine."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if host not in ("127.0.0.1", "localhost") or port is None:
        raise UsageError(f"--attach '{url}': expected http://127.0.0.1:PORT, the server `video2lora serve` started "
                         "on this machine")
    return port


def _serve_example(port: int, name: str, prompt: str, max_tokens: int, stop_token_ids: list[int]) -> str:
    """A `curl` command that asks the server one question with the adapter `name`, ready to paste."""
    import shlex

    from .serving import local_url

    body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stop_token_ids": stop_token_ids}
    return (f"curl -s {local_url(port, '/v1/completions')} -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(body))}")


def _cmd_serve(args: argparse.Namespace) -> int:
    import shutil
    import signal

    from . import serving
    from .world import CAPTION_PROMPT

    # Everything the user passed is checked before the model loads or vLLM starts.
    for video in args.videos:
        check_video_file(video)
    store = AdapterStore(args.store)
    check_writable_folder(store.root, "--store")
    if args.attach is not None:
        port = _attached_port(args.attach)
        try:
            serving.served_models(port, timeout=10)
        except (OSError, RuntimeError, ValueError) as error:
            raise UsageError(f"--attach '{args.attach}': no vLLM server answers there ({error})") from None
    else:
        if args.port and not serving.port_is_free(args.port):
            raise UsageError(f"--port {args.port}: 127.0.0.1:{args.port} is in use; choose another port, or --port 0 "
                             "for any free one")
        try:
            python, versions = serving.find_vllm(args.vllm_env)
        except serving.VLLMEnvironmentError as error:
            raise UsageError(str(error)) from None
        port = args.port or serving.free_port()

    model = _load_model(args.model)
    reference = _model_reference(args.model)
    identity = store.model_identity(model, reference)  # what store.internalize keys on, computed once for the names
    sampling = model.processor.sampling_kwargs(args.num_frames)
    served: dict[str, str] = {}  # model name -> video
    folders: dict[str, Path] = {}
    for video in args.videos:
        started = time.perf_counter()
        try:
            adapter, stored = store.internalize(
                model, video, reference=reference, start=args.start, end=args.end, num_frames=args.num_frames,
                segments=args.segments, segment_seconds=args.segment_seconds, max_rank=args.max_rank,
                segment_batch_size=args.segment_batch_size, segment_overlap=args.segment_overlap,
                segment_layout=args.segment_layout, extra_files=lambda made, frames, video=video: _adapter_files(args, video, model, made, frames,
                                                                              "adapter"))
        except ValueError as error:  # a span or frame count the video cannot meet
            if isinstance(error, VideoDecodeError):
                raise
            raise UsageError(str(error)) from None
        key = store.key(sha256_file(video), identity, sampling, start=args.start, end=args.end,
                        segments=args.segments, segment_seconds=args.segment_seconds, max_rank=args.max_rank,
                        segment_overlap=args.segment_overlap, segment_layout=args.segment_layout)
        if not (store.path(key) / "adapter_config.json").is_file():
            raise UsageError(f"the adapter of '{video}' is not in the store at {store.path(key)} (evicted at once? "
                             "raise the store's size bound)")
        name = serving.adapter_name(video, key)
        served.setdefault(name, video)  # the same content twice is one adapter
        folders[name] = store.path(key)
        print(f"{'read from the store' if stored else 'internalized'} '{video}' in {time.perf_counter() - started:.2f} "
              f"s (rank {adapter.rank}) -> {store.path(key)}", file=sys.stderr)
    try:
        max_lora_rank = serving.max_lora_rank_for(max(serving.adapter_rank(folder) for folder in folders.values()))
    except ValueError as error:
        raise UsageError(str(error)) from None

    tokenizer = model.processor.tokenizer
    stop = tokenizer.convert_tokens_to_ids(serving.STOP_TOKEN)
    stop_token_ids = [stop if stop is not None and stop != tokenizer.unk_token_id else tokenizer.eos_token_id]
    prompt = serving.text_prompt(model.processor, CAPTION_PROMPT)[0]

    def announce(names: Sequence[str]) -> None:
        for name in names:
            what = f"'{served[name]}'" if name in served else "no video (the base alone)"
            print(f"ready: {what} as model '{name}': "
                  f"{_serve_example(port, name, prompt, args.max_new_tokens, stop_token_ids)}")

    if args.attach is not None:
        for name, folder in folders.items():
            try:
                serving.load_adapter(port, name, folder)
            except RuntimeError as error:
                raise UsageError(f"--attach: {error}") from None
        announce(list(folders))
        return 0

    dtype = str(model.vlm.dtype).removeprefix("torch.") if args.dtype == "auto" else args.dtype
    max_loras = args.max_loras or min(len(folders) + 1, 16)
    flags = serving.server_flags(max_loras=max_loras, max_lora_rank=max_lora_rank, dtype=dtype,
                                 enforce_eager=versions["torch"].endswith("+cpu"))  # graph capture: GPUs only
    base = model.base_model_reference
    scratch = Path(tempfile.mkdtemp(prefix="video2lora-serve-"))
    server = serving.VLLMServer(python, base, flags=flags, served_name=os.path.basename(os.path.normpath(base)),
                                log_path=scratch / "vllm-server.log", port=port,
                                startup_timeout=args.startup_timeout)
    previous_sigint = signal.getsignal(signal.SIGINT)
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops the server on the way out
    try:
        print(f"starting vLLM {versions['vllm']} on 127.0.0.1:{port} for base {base} (log: {server.log_path})",
              file=sys.stderr)
        try:
            server.start()
        except (RuntimeError, TimeoutError) as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        try:
            for name, folder in folders.items():
                server.load_adapter(name, folder)
            server.load_adapter(serving.BLIND_ADAPTER_NAME,
                                serving.write_zero_adapter(next(iter(folders.values())), scratch / "blind"))
        except RuntimeError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        announce([*folders, serving.BLIND_ADAPTER_NAME])
        print(f"serving {len(folders)} videos at {server.url} (vLLM pid {server.pid}, base '{server.served_name}', "
              f"--max-lora-rank {max_lora_rank} --max-loras {max_loras} --dtype {dtype}); Ctrl-C stops it", flush=True)
        try:
            while server.running():
                time.sleep(1)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
            server.stop()
            print(f"{PROG}: interrupted; the vLLM server on 127.0.0.1:{port} is stopped", file=sys.stderr)
            return INTERRUPTED
        print(f"{PROG}: error: the vLLM server exited with status {server.process.returncode}:\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
        shutil.rmtree(scratch, ignore_errors=True)


# ---- eval -----------------------------------------------------------------------------------------------------------


RECORDS_NAME, SUMMARY_NAME, REPORT_NAME, RUN_NAME = "records.jsonl", "summary.json", "report.md", "run.json"


def _eval_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the records of an evaluation depend on; a resumed run must have the same."""
    return {"manifest": args.manifest, "data_root": args.data_root, "where": dict(args.where),
            "max_rows": args.max_rows, "num_frames": args.num_frames, "segments": args.segments,
            "compose": args.compose, "max_rank": args.max_rank, "max_new_tokens": args.max_new_tokens,
            **({"segment_overlap": args.segment_overlap} if args.segment_overlap else {}),
            **({"segment_layout": args.segment_layout} if args.segment_layout != "contiguous" else {}),
            "model": args.model}


def _read_scored(path: Path, data_root: Path) -> dict[str, dict[str, Any]]:
    """Records an interrupted run kept, by id; a line torn by the interruption is dropped (its video is redone)."""
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        record["video_path"] = str(data_root / record["video_path"])
        done[record["id"]] = record
    return done


def _prepare_eval_output(args: argparse.Namespace, data_root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Check --output_dir before the model loads, and read what a resumed run already scored."""
    check_writable_folder(args.output_dir, "--output_dir")
    output = Path(args.output_dir)
    records, run = output / RECORDS_NAME, output / RUN_NAME
    if args.resume:
        if not run.is_file():
            raise UsageError(f"--resume: '{output}' holds no evaluation to continue ({RUN_NAME} is missing)")
        earlier = json.loads(run.read_text(encoding="utf-8"))
        if earlier != _eval_settings(args):
            changed = sorted(key for key in {*earlier, *_eval_settings(args)}
                             if earlier.get(key) != _eval_settings(args).get(key))
            raise UsageError(f"--resume: the evaluation in '{output}' ran with other settings ({', '.join(changed)}); "
                             "rerun it with the same ones, or pass --overwrite to start over")
        return output, _read_scored(records, data_root) if records.is_file() else {}
    if (records.exists() or run.exists()) and not args.overwrite:
        raise UsageError(f"--output_dir '{output}' holds an earlier evaluation; pass --resume to continue it or "
                         "--overwrite to start over")
    output.mkdir(parents=True, exist_ok=True)
    records.unlink(missing_ok=True)
    write_text_atomically(run, json.dumps(_eval_settings(args), indent=2) + "\n")
    return output, {}


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import markdown_report, summarize
    from .runner import Judge, evaluate

    rows = read_manifest(args.manifest, data_root=args.data_root).rows
    rows = [row for row in rows if _matches(row, args.where)]
    if args.max_rows is not None:
        rows = rows[: args.max_rows]
    if not rows:
        matching = " matching --where " + " ".join(f"{k}={v}" for k, v in args.where) if args.where else ""
        raise UsageError(f"manifest '{args.manifest}' has no rows{matching} to evaluate")
    for row in rows:  # checked up front: a missing file should not surface after an hour of evaluation
        try:
            check_video_file(row["video_path"])
        except VideoDecodeError as error:
            raise VideoDecodeError(error.path, f"{error.reason} (row '{row['id']}')",
                                   f"{error.hint}; relative paths resolve against --data_root") from None
    if args.judge is not None and not os.path.isdir(args.judge):
        raise UsageError(f"--judge '{args.judge}' is not a folder; give a local transformers causal LM")
    data_root = resolve_data_root(args.data_root, args.manifest)
    output, done = _prepare_eval_output(args, data_root)
    if done:
        print(f"resuming: {len(done)} rows already scored in {output / RECORDS_NAME}", file=sys.stderr)
    model = _load_model(args.model)
    compose = args.compose or model.config.segment_composition
    judge = Judge(args.judge) if args.judge else None

    def shareable(record: dict[str, Any]) -> dict[str, Any]:
        # Videos relative to the data root: reports get committed and shared, and a machine's paths mean nothing
        # elsewhere.
        return {**record, "video_path": os.path.relpath(record["video_path"], data_root)}

    with open(output / RECORDS_NAME, "a", encoding="utf-8") as kept:
        def keep(scored: list[dict[str, Any]]) -> None:
            kept.writelines(json.dumps(shareable(record), ensure_ascii=False) + "\n" for record in scored)
            kept.flush()
            os.fsync(kept.fileno())

        try:
            records = evaluate(model, rows, num_frames=args.num_frames, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, judge=judge, segments=args.segments,
                               compose=args.compose, max_rank=args.max_rank, segment_overlap=args.segment_overlap,
                               segment_layout=args.segment_layout, done=done, on_scored=keep)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; the rows scored so far are kept in {output / RECORDS_NAME}: rerun with "
                  "--resume to continue", file=sys.stderr)
            return INTERRUPTED
    records = [shareable(record) for record in records]
    summary = summarize(records, margins=dict(args.margins), num_resamples=args.num_resamples)
    summary["model"] = args.model or "embedded default (video2lora-world)"
    summary["manifest"] = args.manifest
    if args.where:
        summary["where"] = dict(args.where)
    if args.segments > 1:
        summary["composition"] = {"segments": args.segments, "mode": compose}
        if args.max_rank is not None:
            summary["composition"]["max_rank"] = args.max_rank
        if args.segment_overlap:
            summary["composition"]["overlap_frames"] = args.segment_overlap
        summary["composition"]["layout"] = args.segment_layout
    base_tokens = sum(record["visual_tokens"]["base"] for record in records) / len(records)
    summary["visual_tokens_per_query"] = {"base": base_tokens, "v2l": 0, "blind": 0}
    if judge is not None:
        judged = [record["scores"][system]["judge"] for record in records for system in record["scores"]]
        unreadable = sum(score is None for score in judged)
        summary["judge"] = {"model": args.judge, "answers": len(judged), "unreadable": unreadable}
        if unreadable:
            # Unreadable replies drop out of the judge metric; say so, or a small judge could silently score nothing.
            print(f"{PROG}: warning: the judge's reply was unreadable for {unreadable} of {len(judged)} answers",
                  file=sys.stderr)
    report = markdown_report(summary) + (
        f"\nVisual tokens per query: Base {base_tokens:g}, V2L 0, Blind 0.\n"
    )
    if args.segments > 1:
        report += (f"\nV2L: {args.segments} segment adapters per video, composed by {compose}; Base: the whole "
                   f"video in context, {args.segments} x the frames of one segment.\n")

    # The records in manifest order (judge scores included) replace the ones kept as they were scored.
    write_text_atomically(output / RECORDS_NAME,
                          "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    write_text_atomically(output / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    write_text_atomically(output / REPORT_NAME, report)
    print(report)
    print(f"wrote {output}/{SUMMARY_NAME}, {RECORDS_NAME} and {REPORT_NAME} ({len(records)} rows)")
    return 0


# ---- entry point ----------------------------------------------------------------------------------------------------

_COMMANDS = {"internalize": _cmd_internalize, "ask": _cmd_ask, "demo": _cmd_demo, "eval": _cmd_eval,
             "store": _cmd_store, "serve": _cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the `video2lora` command.

    Returns:
        `int`: 0 on success, 2 on a user error (reported as one line on stderr; invalid arguments too), 130 after
        Ctrl-C (one line, no traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "segment_layout", None) == "interleaved" and getattr(args, "segment_overlap", 0):
        parser.error(f"{args.command}: --segment_overlap carries the end of the segment before; interleaved "
                     "segments each cover the whole video, so there is none to carry")
    _prefer_offline(getattr(args, "model", None))
    # Imported only now: they import transformers, which must see HF_HUB_OFFLINE as just set.
    from modeling_video2lora import AdapterMismatchError, AdapterReadError

    from .runner import ModelLoadError

    try:
        return _COMMANDS[args.command](args)
    except (UsageError, ModelLoadError, VideoDecodeError, ManifestError, AdapterMismatchError, AdapterReadError,
            FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as error:
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        # Nothing half-written survives an interruption: adapters and reports are renamed into place whole.
        print(f"{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The Video2LoRA demo: internalize a video into a LoRA adapter, then chat with it with zero visual tokens.

A Gradio app in the Hugging Face Space layout (`space/README.md` holds the Space's front matter). Each question is
answered twice, side by side: by the frozen base plus the video's adapter, which reads no visual tokens, and by the
frozen base with the whole video in its context (Base), with each one's time to first token and visual tokens. The
adapter downloads as a zipped PEFT folder.

```bash
pip install -e ".[app]"
python app.py                                   # the embedded default, offline, on http://127.0.0.1:7860
python app.py --model org/video2lora-checkpoint --host 0.0.0.0 --port 8080
```

Every model call goes through `video2lora.runner` and `Video2LoRAModel`, like the command line's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from modeling_video2lora import AdapterMismatchError, Video2LoRAAdapter, Video2LoRAModel
from video2lora.checks import UsageError, positive_int
from video2lora.runner import (
    DEFAULT_MAX_NEW_TOKENS,
    ModelLoadError,
    answer_with_adapter,
    answer_with_video,
    check_question_lengths,
    load_model,
    visual_tokens_per_query,
)
from video2lora.store import sha256_file
from video2lora.video import SampledVideo, VideoDecodeError, write_video
from video2lora.world import Clip, generate_clip, split_seeds

# Held-out world clips offered as examples: the first seeds of the test split, which training never saw.
NUM_EXAMPLES = 4
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "video2lora-app"
FIGURE_HEADERS = ["", "Video2LoRA (adapter)", "Base (video in context)"]


@dataclass
class Timing:
    """Seconds from a question to its first generated token and to its whole answer."""

    first_token_s: float | None = None
    answer_s: float | None = None


@contextmanager
def timed_generation(model: Video2LoRAModel) -> Iterator[Timing]:
    """
    Time the answer generated inside the block, from its start (prompt and video encoding included).

    The first token is ready when the base's first forward pass (the prefill, which reads the prompt and, for Base,
    the video) returns, so a forward hook on the base marks it, whichever runner function drives `generate`.
    """
    timing = Timing()
    start = time.perf_counter()

    def mark_first_token(*_: Any) -> None:
        if timing.first_token_s is None:
            timing.first_token_s = time.perf_counter() - start

    handle = model.vlm.register_forward_hook(mark_first_token)
    try:
        yield timing
    finally:
        handle.remove()
        timing.answer_s = time.perf_counter() - start


@dataclass
class Session:
    """One browser session's video: its frames (for Base), its adapter and both chats."""

    name: str
    video: SampledVideo
    adapter: Video2LoRAAdapter
    visual_tokens: int
    adapter_chat: list[dict[str, str]] = field(default_factory=list)
    base_chat: list[dict[str, str]] = field(default_factory=list)


def render_examples(cache_dir: Path, count: int = NUM_EXAMPLES) -> dict[str, Clip]:
    """Write `count` held-out world clips as mp4 files under `cache_dir` (once) and return their clips by path."""
    folder = cache_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for seed in split_seeds("test", count):
        clip = generate_clip(seed)
        path = folder / f"world-test-{seed}.mp4"
        if not path.is_file():
            write_video(path, clip.frames, fps=clip.fps)
        clips[str(path)] = clip
    return clips


class Video2LoRADemo:
    """
    The app's handlers, around one loaded model.

    Args:
        model: a loaded Video2LoRA model (`video2lora.runner.load_model`).
        cache_dir: where the example clips and the adapter downloads are written.
        max_new_tokens: greedy decoding budget of every answer, the same for both systems.
    """

    def __init__(self, model: Video2LoRAModel, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.max_new_tokens = max_new_tokens
        self.examples = render_examples(self.cache_dir)
        # By content: Gradio hands a handler a copy of the file it was given.
        self.clips_by_sha256 = {sha256_file(path): clip for path, clip in self.examples.items()}
        self.downloads = self.cache_dir / "adapters"
        shutil.rmtree(self.downloads, ignore_errors=True)  # the previous run's zips

    def internalize(self, video_path: str | None,
                    progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008 (Gradio's progress idiom)
        """Read the video and make its adapter; returns the new session, a status line and two empty chats."""
        if not video_path:
            raise gr.Error("Upload a video or pick one of the examples first.", print_exception=False)
        name = Path(video_path).name
        progress(0.0, desc="Reading the video")
        started = time.perf_counter()
        try:
            video = self.model.processor.sample_video(video_path)
        except VideoDecodeError as error:  # the project's one-line message, naming the upload rather than its temp path
            raise gr.Error(str(VideoDecodeError(name, error.reason, error.hint)), print_exception=False) from None
        progress(0.3, desc="Internalizing")
        adapter = self.model.internalize(video)
        elapsed = time.perf_counter() - started
        progress(0.9, desc="Counting Base's visual tokens")
        session = Session(name, video, adapter, visual_tokens_per_query(self.model, video))
        status = (f"**{name}**: {video.num_frames} frames internalized in {elapsed:.2f} s (decoding included) into a "
                  f"rank-{adapter.rank} adapter over {adapter.num_layers} layers. Video2LoRA answers with **0** visual "
                  f"tokens; Base reads **{session.visual_tokens:,}** per question.")
        clip = self.clips_by_sha256.get(sha256_file(video_path))
        if clip is not None:  # an example: show its ground truth, so that answers can be checked
            status += (f"\n\nGround truth: *{clip.caption}* Try: "
                       + " · ".join(f"“{item.question}” ({item.answer})" for item in clip.qa))
        return session, status, [], [], None, None

    def ask(self, question: str, session: Session | None) -> tuple[Any, ...]:
        """Answer `question` with the adapter (no visual tokens) and with the video in context (Base)."""
        if session is None:
            raise gr.Error("Internalize a video first.", print_exception=False)
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question.", print_exception=False)
        try:
            check_question_lengths(self.model, [question], max_new_tokens=self.max_new_tokens,
                                   visual_tokens=session.visual_tokens)
        except UsageError as error:
            raise gr.Error(str(error), print_exception=False) from None  # it names app.py's --max_new_tokens
        with timed_generation(self.model) as adapter_timing:
            adapter_answer = answer_with_adapter(self.model, session.adapter, [question],
                                                 max_new_tokens=self.max_new_tokens)[0]
        with timed_generation(self.model) as base_timing:
            base_answer = answer_with_video(self.model, session.video, [question],
                                            max_new_tokens=self.max_new_tokens)[0]
        for chat, answer in ((session.adapter_chat, adapter_answer), (session.base_chat, base_answer)):
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer or "(empty)"}]
        figures = [
            ["visual tokens", 0, session.visual_tokens],
            ["time to first token (s)", round(adapter_timing.first_token_s, 3), round(base_timing.first_token_s, 3)],
            ["time to answer (s)", round(adapter_timing.answer_s, 3), round(base_timing.answer_s, 3)],
        ]
        return session, list(session.adapter_chat), list(session.base_chat), figures, ""

    def download(self, session: Session | None) -> str:
        """The adapter as a zip of its PEFT folder (`adapter_config.json`, `adapter_model.safetensors`)."""
        if session is None:
            raise gr.Error("Internalize a video first.", print_exception=False)
        self.downloads.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.downloads)) / f"{Path(session.name).stem}-adapter"
        session.adapter.save_pretrained(folder)
        return shutil.make_archive(str(folder), "zip", root_dir=folder.parent, base_dir=folder.name)

    def build(self) -> gr.Blocks:
        """The page: video and examples on the left, the two chats and their figures on the right."""
        base = self.model.base_model_reference
        base = Path(base).name if os.path.isdir(base) else base  # a local folder: its name, not this machine's path
        with gr.Blocks(title="Video2LoRA", analytics_enabled=False) as demo:
            session = gr.State(None, time_to_live=3600)  # a tab left open an hour gives its adapter back
            gr.Markdown("# Video2LoRA\nA hypernetwork turns a video into a LoRA adapter for a frozen "
                        f"`{base}`; the base plus the adapter then answers questions "
                        "about the video with **zero visual tokens**. Base answers the same question with the whole "
                        "video in its context.")
            with gr.Row():
                with gr.Column(scale=2):
                    video = gr.Video(label="Video", sources=["upload"], height=240, elem_id="video")
                    gr.Examples([[path] for path in self.examples], inputs=video,
                                label="Held-out clips of the generated world")
                    internalize = gr.Button("Internalize", variant="primary")
                    status = gr.Markdown(elem_id="status")
                    download = gr.Button("Download adapter (PEFT folder, zip)")
                    adapter_file = gr.File(label="Adapter", height=80, elem_id="adapter-file")
                with gr.Column(scale=3):
                    with gr.Row():
                        adapter_chat = gr.Chatbot(label="Video2LoRA: base + adapter, 0 visual tokens", height=320,
                                                  buttons=["copy_all"], elem_id="adapter-chat")
                        base_chat = gr.Chatbot(label="Base: video in context", height=320, buttons=["copy_all"],
                                               elem_id="base-chat")
                    with gr.Row():
                        question = gr.Textbox(placeholder="Ask about the video, e.g. how many objects are there?",
                                              show_label=False, scale=4, elem_id="question")
                        ask = gr.Button("Ask", variant="primary", scale=1)
                    figures = gr.Dataframe(headers=FIGURE_HEADERS, label="Per question", interactive=False,
                                           elem_id="figures")
            # One model serves every session: its events run one at a time.
            options = {"concurrency_id": "model", "concurrency_limit": 1}
            internalize.click(self.internalize, video, [session, status, adapter_chat, base_chat, figures,
                                                        adapter_file], api_name="internalize", **options)
            ask_io = ([question, session], [session, adapter_chat, base_chat, figures, question])
            ask.click(self.ask, *ask_io, api_name="ask", **options)
            question.submit(self.ask, *ask_io, api_visibility="private", **options)  # Enter asks too
            download.click(self.download, session, adapter_file, api_name="download", **options)
        return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="Video2LoRA checkpoint: Hub id or local folder (default: the embedded default, offline)")
    # A Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; elsewhere the app listens on this machine only.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default: 7860)")
    parser.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help=f"where example clips and adapter downloads are written (default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--max_new_tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"answer budget of both systems (default: {DEFAULT_MAX_NEW_TOKENS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry or version check: nothing leaves
    try:
        model = load_model(args.model)
    except (ModelLoadError, AdapterMismatchError) as error:
        sys.exit(f"app.py: error: {error}")
    demo = Video2LoRADemo(model, args.cache_dir, max_new_tokens=args.max_new_tokens).build()
    demo.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(args.cache_dir)])


if __name__ == "__main__":
    main()

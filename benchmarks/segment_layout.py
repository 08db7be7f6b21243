"""Long videos read from a file: the time of contiguous against interleaved segments, side by side in one process.

A contiguous segment decodes only its own stretch of the file. An interleaved segment keeps every k-th of the frames
sampled over the whole video, so each of the k segments decodes through the whole file to reach its frames (the
sampler decodes strictly forward and keeps a segment's frames only, which keeps memory flat): decoding costs k
passes over the file instead of one. This measures what that costs on top of the model's own work.

For each source resolution, one MP4 of N random, never-black frames is written; then for each segment count k, both
layouts internalize it (`model.internalize(path, segments=k, num_frames=W, segment_layout=...)`, W frames per
segment) in alternating rounds, and the best round of each is kept. Reported: seconds per layout and their ratio.
Results go to `benchmarks/results/segment_layout_<model>.json`.

Run: `python -m benchmarks.segment_layout --model tiny` (the embedded default; 1,024 frames at 64 and 256 px, 4 and
16 segments of 64 frames).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import base_parser, load_model, machine_info, make_frames, setup_run, write_json
from video2lora.video import write_video

SETTINGS = {
    "tiny": dict(frames=1024, fps=32.0, sizes=[64, 256], segments=[4, 16], window=64),
    # The tests' model samples 1 frame a second: a 32-second file holds enough for every segment.
    "quick": dict(frames=32, fps=1.0, sizes=[32], segments=[2, 4], window=4),
}
LAYOUTS = ("contiguous", "interleaved")


@torch.inference_mode()
def measure(name: str, repeats: int) -> dict[str, Any]:
    settings = SETTINGS[name]
    bench = load_model(name)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in settings["sizes"]:
            path = Path(folder) / f"video-{size}.mp4"
            write_video(path, make_frames(settings["frames"], size, seed=size), fps=settings["fps"])
            bench.model.internalize(path, num_frames=settings["window"])  # the first decode and forward pay set-up
            for segments in settings["segments"]:
                best = {layout: float("inf") for layout in LAYOUTS}
                for _ in range(repeats):
                    for layout in LAYOUTS:  # alternating, so a slower stretch of the machine hits both
                        start = time.perf_counter()
                        adapter = bench.model.internalize(path, segments=segments, num_frames=settings["window"],
                                                          segment_layout=layout)
                        best[layout] = min(best[layout], time.perf_counter() - start)
                        assert adapter.metadata["composed"]["layout"] == layout
                row = {"video_px": size, "frames": settings["frames"], "segments": segments,
                       "frames_per_segment": settings["window"], "seconds": best,
                       "interleaved_over_contiguous": best["interleaved"] / best["contiguous"]}
                rows.append(row)
                print(f"  {name} {size:>4} px, {segments:>3} segments: contiguous {best['contiguous']:.2f} s, "
                      f"interleaved {best['interleaved']:.2f} s ({row['interleaved_over_contiguous']:.2f}x)",
                      flush=True)
    return {"model": bench.describe(), "rows": rows, "repeats": repeats, "machine": machine_info()}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0], default_models=("tiny",))
    args = parser.parse_args(argv)
    if any(name not in SETTINGS for name in args.model):
        parser.error(f"--model: this benchmark runs {', '.join(name for name in SETTINGS if name != 'quick')}")
    for name in setup_run(args):
        result = measure(name, args.repeats or (1 if name == "quick" else 2))
        write_json(args.output_dir / f"segment_layout_{name}.json", result)


if __name__ == "__main__":
    main()

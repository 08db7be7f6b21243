"""Long videos: peak memory and time of internalizing N frames in one context against segment by segment.

For each frame count, two fresh worker processes (peak RSS is per process) internalize N random, never-black frames:

- `whole`: one context of N frames (what `model.internalize(video, num_frames=N)` does): the decoder reads the whole
  sequence, so memory grows with N and attention time faster than N;
- `segmented`: `model.internalize(video, num_frames=W, segments=N // W, max_rank=64)`: W-frame segments read one after
  another and composed the model's way (`segment_composition`): the embedded default keeps each segment's latents
  (`L x n x d`, 32 KB here) and decodes them once at the end; a rank-space model sums the segment adapters, compressed
  to rank 64 (a truncated SVD) after each segment. Either way at most one segment's frames and states, and a bounded
  adapter or the latents, are held at a time.

Reported per point: peak RSS above the RSS after loading the model and a warm-up, and the wall time of the call; then
the ratios the long-video issue sets targets for (memory at the largest count over the smallest, time at the largest
over a quarter of it). Results go to `benchmarks/results/long_video_<model>.json` with a plot beside it.

Run: `python -m benchmarks.long_video --model tiny` (W = 64; 64 to 1,024 frames) and
`python -m benchmarks.long_video --model 500m [--compose latents]` (W = 8, 128 px; 8 to 32 frames).

On a GPU, `--device cuda [--dtype bfloat16]` measures in one process instead, since CUDA's allocator can reset its
peak between points: the peak of `torch.cuda.max_memory_allocated()` above what is allocated before the call. There
the 500M architecture runs at its real 512 px (64 tokens per frame), W = 16, 16 to 1,024 frames; results get a
`_cuda` suffix (and the dtype's, when not float32). `--segment-batch-size B` reads B segments per batch of the base.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks.common import (
    REPO_ROOT,
    base_parser,
    current_rss_bytes,
    format_bytes,
    load_model,
    machine_info,
    make_frames,
    peak_rss_bytes,
    reset_peak_rss,
    setup_run,
    write_json,
)

SETTINGS = {
    "tiny": dict(frames=[64, 128, 256, 512, 1024], window=64, image_size=None),
    "500m": dict(frames=[8, 16, 32], window=8, image_size=128),
    "quick": dict(frames=[4, 8], window=4, image_size=None),
}
# A GPU runs the 500M shape at the resolution it is used at; the CPU cannot (minutes per point).
CUDA_SETTINGS = {**SETTINGS, "500m": dict(frames=[16, 64, 256, 1024], window=16, image_size=None)}
MODES = ("whole", "segmented")
MAX_RANK = 64  # what a server's --max-lora-rank would allow


def internalize_frames(model, frames, count: int, mode: str, window: int, compose: str | None,
                       segment_batch_size: int = 1) -> None:
    """One internalization of the first `count` frames: in one context, or in `window`-frame segments."""
    video = frames[:count]
    with torch.inference_mode():
        if mode == "whole" or count <= window:
            model.internalize(video, num_frames=count)
        else:
            model.internalize(video, num_frames=window, segments=count // window, max_rank=MAX_RANK, compose=compose,
                              segment_batch_size=segment_batch_size)


def worker(name: str, num_frames: int, mode: str, window: int, image_size: int | None, threads: int,
           compose: str | None = None) -> dict:
    """In a fresh process: peak RSS and time of one internalization above the loaded model."""
    torch.set_num_threads(threads)
    bench = load_model(name, image_size=image_size)
    frames = make_frames(num_frames, bench.image_size)
    # Lazy initialization stays out of the measurement.
    internalize_frames(bench.model, frames, min(2, num_frames), mode, window, compose)
    gc.collect()
    baseline = current_rss_bytes()
    resettable = reset_peak_rss()
    started = time.perf_counter()
    internalize_frames(bench.model, frames, num_frames, mode, window, compose)
    elapsed = time.perf_counter() - started
    return {"frames": num_frames, "mode": mode, "seconds": elapsed, "peak_above_baseline_bytes":
            peak_rss_bytes() - baseline, "peak_reset": resettable}


def measure_cuda(name: str, dtype: torch.dtype, compose: str | None = None, segment_batch_size: int = 1
                 ) -> dict[str, Any]:
    """Every point in this process on the GPU: the allocator's peak is reset before each call."""
    settings = CUDA_SETTINGS[name]
    bench = load_model(name, image_size=settings["image_size"])
    bench.model.to(device="cuda", dtype=dtype)
    frames = make_frames(max(settings["frames"]), bench.image_size)
    rows = []
    for mode in MODES:
        internalize_frames(bench.model, frames, 2 * settings["window"], mode, settings["window"], compose,
                           segment_batch_size)  # warm-up
        for num_frames in settings["frames"]:
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
            started = time.perf_counter()
            internalize_frames(bench.model, frames, num_frames, mode, settings["window"], compose, segment_batch_size)
            torch.cuda.synchronize()
            rows.append({"frames": num_frames, "mode": mode, "seconds": time.perf_counter() - started,
                         "peak_above_baseline_bytes": torch.cuda.max_memory_allocated() - baseline})
            print_row(name, rows[-1], " (CUDA)")
    machine = {**machine_info(), "device": torch.cuda.get_device_name(), "dtype": str(dtype).removeprefix("torch."),
               "segment_batch_size": segment_batch_size,
               "memory": "torch.cuda.max_memory_allocated() above the allocation before the call",
               "note": "one process on the GPU; the processor's CPU work runs on torch_threads threads"}
    return summarize(name, settings, rows, compose, machine, bench.image_size)


def measure(name: str, threads: int, compose: str | None = None) -> dict[str, Any]:
    settings = SETTINGS[name]
    rows = []
    for num_frames in settings["frames"]:
        for mode in MODES:
            command = [sys.executable, "-m", "benchmarks.long_video", "--worker", mode, "--model", name,
                       "--frames", str(num_frames), "--threads", str(threads),
                       *(["--compose", compose] if compose else [])]
            result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                raise RuntimeError(f"worker failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print_row(name, rows[-1])
    return summarize(name, settings, rows, compose, machine_info(), settings["image_size"])


def print_row(name: str, row: dict, memory: str = "") -> None:
    print(f"  {name} {row['mode']:>9} {row['frames']:>5} frames: peak +{format_bytes(row['peak_above_baseline_bytes'])}"
          f"{memory}, {row['seconds']:.2f} s", flush=True)


def summarize(name: str, settings: dict, rows: list[dict], compose: str | None, machine: dict,
              image_size: int | None) -> dict[str, Any]:
    """The targets' ratios: memory at the largest count over the smallest, time at the largest over a quarter."""
    first, last = settings["frames"][0], settings["frames"][-1]
    quarter = last // 4 if last // 4 in settings["frames"] else first
    summary = {}
    for mode in MODES:
        by_frames = {row["frames"]: row for row in rows if row["mode"] == mode}
        summary[mode] = {
            f"memory_{last}_over_{first}": by_frames[last]["peak_above_baseline_bytes"]
            / max(by_frames[first]["peak_above_baseline_bytes"], 1),
            f"time_{last}_over_{quarter}": by_frames[last]["seconds"] / by_frames[quarter]["seconds"],
        }
    return {"model": name, "compose": compose or "the model's", "window": settings["window"],
            "image_size": image_size, "rows": rows, "ratios": summary, "machine": machine}


def plot(result: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        rows = [row for row in result["rows"] if row["mode"] == mode]
        frames = [row["frames"] for row in rows]
        memory.plot(frames, [row["peak_above_baseline_bytes"] / 2**20 for row in rows], marker="o", label=mode)
        seconds.plot(frames, [row["seconds"] for row in rows], marker="o", label=mode)
    on_gpu = "memory" in result["machine"]  # measure_cuda's
    memory_label = "peak CUDA memory above the loaded model (MiB)" if on_gpu else "peak RSS above the loaded model (MiB)"
    for axis, label in ((memory, memory_label), (seconds, "internalize time (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("frames")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    where = f" on {result['machine']['device']}, {result['machine']['dtype']}" if on_gpu else ""
    size = f", {result['image_size']} px" if result["image_size"] else ""
    figure.suptitle(f"{result['model']}{size}: one context vs {result['window']}-frame segments{where}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0], ["tiny"])
    parser.add_argument("--worker", choices=MODES, help="internal: one measurement in this process")
    parser.add_argument("--frames", type=int, default=None, help="internal: the worker's frame count")
    parser.add_argument("--compose", choices=("latents", "concat"), default=None,
                        help="how segments combine (default: the model's segment_composition; the random 500m "
                             "model's is concat); results get a _COMPOSE suffix")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: every point in one process, CUDA memory instead of RSS (see above)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="on cuda: the weights' dtype")
    parser.add_argument("--segment-batch-size", type=int, default=1,
                        help="on cuda: segments read in one batch (`internalize(segment_batch_size=)`); results get a "
                             "_batchN suffix when above 1")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.worker:
        name = args.model[0]
        settings = SETTINGS[name]
        print(json.dumps(worker(name, args.frames, args.worker, settings["window"], settings["image_size"],
                                args.threads, args.compose)))
        return
    for name in setup_run(args):
        if args.device == "cuda":
            result = measure_cuda(name, getattr(torch, args.dtype), args.compose, args.segment_batch_size)
        else:
            result = measure(name, args.threads, args.compose)
        print(json.dumps(result["ratios"], indent=2))
        stem = f"long_video_{name}" + (f"_{args.compose}" if args.compose else "")
        if args.device == "cuda":
            stem += "_cuda" + ("" if args.dtype == "float32" else f"_{args.dtype}")
            stem += f"_batch{args.segment_batch_size}" if args.segment_batch_size > 1 else ""
        write_json(args.output_dir / f"{stem}.json", result)
        plot(result, args.output_dir / f"{stem}.png")


if __name__ == "__main__":
    main()

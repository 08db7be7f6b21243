"""The frame-length sweep and the harder scenes (docs/design.md §6): does Video2LoRA keep its quality on videos longer
and busier than the clips it was trained on?

Held-out world clips are rendered 1x, 2x, 4x, 8x and 16x as long as a training clip (4, 8, ..., 64 key steps, with
up to one appear / disappear / colour-change event per training-clip length, so more happens in a longer clip), plus
three harder kinds of training-length scene: 4 objects, 2 events, and 8 steps. For each, `video2lora eval` scores
Base reading the whole clip with one frame per key step (every step shown; 64 frames of 16 tokens plus their
timestamps fit the tiny base's 4,096 positions at 16x) against V2L internalizing it in segments of a training clip's
length (4 frames each), composed by `--compose` (default: the way the model was trained to compose, its
`segment_composition`), and Blind. Every evaluation resumes when rerun; `--jobs 2` runs two at a time.

The clips are held out, but not every kind is new to every model: the embedded default's last training stage
(scripts/compose_finetune.sh) adds clips of the three harder kinds, on other seeds, to its training clips, and its
8-step clips have up to two events, as the 2x clips do.

    python scripts/long_video_sweep.py --model video2lora/checkpoints/video2lora-world --out runs/sweep \\
        --results docs/long_video_sweep --harder-clips 200

writes `docs/long_video_sweep.json` (every number), `.md` (the tables) and `.png` (exact match against length).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from video2lora.checks import non_negative_int
from video2lora.video import SEGMENT_LAYOUTS

STEPS_PER_TRAINING_CLIP = 4  # the embedded default's clips: 4 key steps, read at 4 frames
LENGTHS = (1, 2, 4, 8, 16)
# name -> (key steps, world options, segments for V2L)
HARDER = {
    "4 objects": (4, ["--max-objects", "4"], 1),
    "2 events": (4, ["--max-events", "2"], 1),
    "8 steps": (8, [], 2),
}
QUESTION_TYPES = ("count", "shape", "colour", "colour_change", "direction", "order")


def variants(one_segment: bool = False) -> list[dict]:
    """Every kind of clip; `one_segment` reads each as one segment of a training clip's frame count (Base too)."""
    rows = [{"name": f"{length}x", "length": length, "steps": STEPS_PER_TRAINING_CLIP * length,
             "world": ["--max-events", str(length)], "segments": length} for length in LENGTHS]
    rows += [{"name": name, "length": steps / STEPS_PER_TRAINING_CLIP, "steps": steps, "world": options,
              "segments": segments} for name, (steps, options, segments) in HARDER.items()]
    return [{**row, "segments": 1} for row in rows] if one_segment else rows


def run(command: list[str], threads: int | None = None) -> None:
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run(command, check=True, env=env)


def evaluate(variant: dict, args: argparse.Namespace) -> dict:
    clips = args.harder_clips if variant["name"] in HARDER else args.clips
    stem = f"{variant['name'].replace(' ', '_')}-{clips}" + (f"-{args.question_type}" if args.question_type else "")
    # One folder per kind (and count): every kind uses the same seeds, so their video files share names.
    manifest = args.out / "clips" / stem / f"{stem}.jsonl"
    if not manifest.is_file():
        # Seeds past the test clips the README's tables use, so these clips are new to every evaluation.
        run([sys.executable, "-m", "video2lora.world", "--out", str(manifest.parent), "--split", "test",
             "--num-clips", str(clips), "--seed-offset", str(args.seed_offset), "--num-steps",
             str(variant["steps"]), *variant["world"], "--manifest-name", manifest.name, "--no-progress",
             *(["--require-question-type", args.question_type] if args.question_type else [])],
            args.threads)
    composition = ("one-segment" if args.one_segment else
                   (args.compose or "default") + (f"-overlap{args.segment_overlap}" if args.segment_overlap else "")
                   + ("-interleaved" if args.segment_layout == "interleaved" else ""))
    output = args.out / (args.name or Path(args.model).name) / composition / stem
    command = [sys.executable, "-m", "video2lora.cli", "eval", "--manifest", str(manifest), "--model", args.model,
               "--num_frames", str(STEPS_PER_TRAINING_CLIP), "--segments", str(variant["segments"]),
               *(["--compose", args.compose] if args.compose else []),
               *(["--segment_overlap", str(args.segment_overlap)] if args.segment_overlap else []),
               *(["--segment_layout", args.segment_layout] if args.segment_layout != "contiguous" else []),
               *(["--where", f"question_type={args.question_type}"] if args.question_type else []),
               "--output_dir", str(output)]
    if not (output / "summary.json").is_file():
        run(command + (["--resume"] if (output / "records.jsonl").is_file() else []), args.threads)
    summary = json.loads((output / "summary.json").read_text())
    groups = summary["groups"]
    scores = {"all QA": groups["qa"]}
    scores.update({kind: groups[f"qa/{kind}"] for kind in QUESTION_TYPES if f"qa/{kind}" in groups})
    return {**variant, "clips": clips, "output_dir": str(output), "scores": {
        kind: {"n": group["num_items"], **group["metrics"]["exact_match"]["means"],
               "delta": group["metrics"]["exact_match"]["delta"], "ci": [group["metrics"]["exact_match"]["ci_low"],
                                                                        group["metrics"]["exact_match"]["ci_high"]],
               "equivalent": group["metrics"]["exact_match"]["equivalent"]}
        for kind, group in scores.items()}}


def table(results: list[dict]) -> str:
    lines = ["| clips | videos | key steps | Base frames | V2L segments | n | Blind | Base | V2L | Δ [95% CI] | equivalent |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for result in results:
        s = result["scores"]["all QA"]
        lines.append(f"| {result['name']} | {result['clips']} | {result['steps']} | "
                     f"{STEPS_PER_TRAINING_CLIP * result['segments']} | "
                     f"{result['segments']} | {s['n']} | "
                     f"{s['blind']:.3f} | {s['base']:.3f} | {s['v2l']:.3f} | {s['delta']:+.3f} "
                     f"[{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] | {'yes' if s['equivalent'] else 'no'} |")
    lines += ["", "Per question type (Base / V2L, n, and whether the 95% CI of V2L − Base lies inside ±0.05):", "",
              "| clips | " + " | ".join(QUESTION_TYPES) + " |", "|---|" + "---|" * len(QUESTION_TYPES)]
    for result in results:
        cells = []
        for kind in QUESTION_TYPES:
            s = result["scores"].get(kind)
            cells.append(f"{s['base']:.2f} / {s['v2l']:.2f} ({s['n']}, {'yes' if s['equivalent'] else 'no'})"
                         if s else "–")
        lines.append(f"| {result['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _exact_matches(output_dir: str, system: str) -> dict[str, tuple[str, float]]:
    """Question id -> (question type, `system`'s exact match) from an evaluation's records."""
    records = (json.loads(line) for line in (Path(output_dir) / "records.jsonl").read_text().splitlines() if line)
    return {r["id"]: (r["question_type"], r["scores"][system]["exact_match"]) for r in records if r["task_type"] == "qa"}


def against(results: list[dict], other: list[dict], label: str) -> tuple[list[dict], str]:
    """V2L of these results against the Base of another sweep's (`other`), question by question on the clips both
    read (the same seeds): a paired bootstrap per kind, on all QA and per type. Returns the rows and their table."""
    from video2lora.evaluation import DEFAULT_MARGINS, paired_bootstrap

    margin = DEFAULT_MARGINS["exact_match"]

    theirs = {result["name"]: result for result in other}
    rows, lines = [], [f"V2L against Base ({label}), paired on the same questions (Base / V2L, n, Δ [95% CI], "
                       f"equivalent within ±{margin}):", "", "| clips | " + " | ".join(("all QA",) + QUESTION_TYPES) + " |",
                       "|---|" + "---|" * (len(QUESTION_TYPES) + 1)]
    for result in results:
        if result["name"] not in theirs:
            continue
        ours, base = _exact_matches(result["output_dir"], "v2l"), _exact_matches(theirs[result["name"]]["output_dir"],
                                                                               "base")
        common = sorted(ours.keys() & base.keys())
        row, cells = {"name": result["name"], "scores": {}}, []
        for kind in ("all QA",) + QUESTION_TYPES:
            ids = [i for i in common if kind == "all QA" or ours[i][0] == kind]
            if not ids:
                cells.append("–")
                continue
            v2l, reference = [ours[i][1] for i in ids], [base[i][1] for i in ids]
            boot = paired_bootstrap(v2l, reference)
            row["scores"][kind] = {"n": len(ids), "base": sum(reference) / len(ids), "v2l": sum(v2l) / len(ids),
                                   "delta": boot.delta, "ci": [boot.ci_low, boot.ci_high],
                                   "equivalent": boot.equivalent(margin)}
            score = row["scores"][kind]
            cells.append(f"{score['base']:.3f} / {score['v2l']:.3f} ({len(ids)}, {boot.delta:+.3f} "
                         f"[{boot.ci_low:+.3f}, {boot.ci_high:+.3f}], {'yes' if score['equivalent'] else 'no'})")
        rows.append(row)
        lines.append(f"| {result['name']} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, reading: str = "segments composed",
         compare: dict[str, list[dict]] | None = None, base_reading: str = "whole clip in context",
         other_base: tuple[str, list[dict]] | None = None) -> None:
    """Exact match against length; `reading` and `base_reading` say how V2L and Base read the clips, `compare` adds
    the V2L line of other sweeps (label -> their results), `other_base` the Base line of another (label, results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def by_length(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r["name"].endswith("x")]

    sweep = by_length(results)
    if not sweep:  # only harder scenes were asked for: nothing to draw against length
        return
    lengths = [r["length"] for r in sweep]
    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("base", f"Base ({base_reading})"), ("v2l", f"V2L ({reading})"),
                       ("blind", "Blind")):
        axis.plot(lengths, [r["scores"]["all QA"][key] for r in sweep], marker="o", label=label)
    if other_base is not None:
        rows = by_length(other_base[1])
        axis.plot([r["length"] for r in rows], [r["scores"]["all QA"]["base"] for r in rows], marker="s",
                  linestyle=":", label=f"Base, {other_base[0]}")
    for label, rows in (compare or {}).items():
        rows = by_length(rows)
        axis.plot([r["length"] for r in rows], [r["scores"]["all QA"]["v2l"] for r in rows], marker="o",
                  linestyle="--", label=f"V2L, {label}")
    axis.set_xscale("log", base=2)
    axis.set_xticks(lengths, [f"{length}x" for length in lengths])
    axis.set_xlabel("clip length / training clip length")
    axis.set_ylabel("exact match, all QA")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _sweep_record(parser: argparse.ArgumentParser, item: str, flag: str) -> tuple[str, list[dict]]:
    """`LABEL=JSON` -> (label, that sweep record's results); a usage error (exit 2) when it is not one."""
    label, _, source = item.partition("=")
    if not label or not Path(source).is_file():
        parser.error(f"{flag} takes LABEL=JSON with an existing sweep record, got {item!r}")
    return label, json.loads(Path(source).read_text())["results"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="video2lora/checkpoints/video2lora-world")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="clips and evaluations (resumable)")
    parser.add_argument("--results", type=Path, default=Path("docs/long_video_sweep"),
                        help="prefix of the .json, .md and .png written")
    parser.add_argument("--clips", type=int, default=40, help="held-out clips per kind")
    parser.add_argument("--harder-clips", type=int, default=None,
                        help="held-out clips per harder scene, for intervals per question type (default: --clips)")
    parser.add_argument("--seed-offset", type=int, default=1000)
    parser.add_argument("--segment-overlap", type=non_negative_int, default=0,
                        help="frames each V2L segment takes over from the one before (`--segment_overlap`)")
    parser.add_argument("--segment-layout", choices=SEGMENT_LAYOUTS, default="contiguous",
                        help="V2L's segments: contiguous stretches or interleaved parts (`--segment_layout`)")
    parser.add_argument("--compose", choices=("latents", "concat", "average"), default=None,
                        help="how V2L's segments combine (default: the model's segment_composition)")
    parser.add_argument("--name", default=None, help="folder of this model's evaluations under --out "
                                                       "(default: the model folder's name)")
    parser.add_argument("--jobs", type=int, default=1, help="evaluations run at once, each on its own thread budget")
    parser.add_argument("--kinds", nargs="+", choices=[v["name"] for v in variants()], default=None, metavar="KIND",
                        help="evaluate these kinds only (default: all); a kind read as one segment scores the same "
                             "under any --segment-layout or --segment-overlap")
    parser.add_argument("--question-type", choices=QUESTION_TYPES, default=None,
                        help="clips that ask this type only, scored on it only: an interval per type for a rare one")
    parser.add_argument("--one-segment", action="store_true",
                        help=f"read every clip as one segment of {STEPS_PER_TRAINING_CLIP} frames spread over it, "
                             "Base those same frames: what a training clip's frame count shows of a long clip")
    parser.add_argument("--against", default=None, metavar="LABEL=JSON",
                        help="also score V2L against the Base of an earlier sweep (its .json; paired per question on "
                             "the clips both read), e.g. the Base of a --one-segment sweep")
    parser.add_argument("--compare", nargs="+", default=[], metavar="LABEL=JSON",
                        help="also draw the V2L line of earlier sweeps (their .json) on the plot")
    args = parser.parse_args(argv)
    if args.one_segment and (args.segment_overlap or args.segment_layout != "contiguous" or args.compose):
        parser.error("--one-segment reads one segment: --segment-overlap, --segment-layout and --compose do not apply")
    compare = dict(_sweep_record(parser, item, "--compare") for item in args.compare)
    if args.against is not None:
        args.against = _sweep_record(parser, args.against, "--against")
    args.harder_clips = args.harder_clips or args.clips
    config = Path(args.model) / "config.json"
    # A Hub id leaves it to the model (`video2lora eval`'s default); one segment composes nothing.
    if args.compose is None and config.is_file() and not args.one_segment:
        args.compose = json.loads(config.read_text()).get("segment_composition", "concat")
    # Jobs split the machine's cores between them rather than each taking all of them.
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        chosen = [variant for variant in variants(args.one_segment)
                  if args.kinds is None or variant["name"] in args.kinds]
        results = list(pool.map(lambda variant: evaluate(variant, args), chosen))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "clips_per_kind": args.clips, "clips_per_harder_scene": args.harder_clips,
              "seed_offset": args.seed_offset,
              "compose": args.compose, "segment_overlap": args.segment_overlap,
              "segment_layout": args.segment_layout, "one_segment": args.one_segment, "kinds": args.kinds,
              "question_type": args.question_type,
              "results": results}
    for result in results:  # folders under --out are the reader's own; keep the record free of machine paths
        result["output_dir"] = os.path.relpath(result["output_dir"], Path.cwd())
    text = table(results)
    if args.against is not None:
        label, other = args.against
        rows, against_table = against(results, other, label)
        record["against"] = {"label": label, "results": rows}
        text += "\n" + against_table
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(text)
    reading = " ".join([args.segment_layout, "segments"] + ([f"overlapping by {args.segment_overlap}"]
                                                           if args.segment_overlap else []))
    base_reading = "whole clip in context"
    if args.one_segment:
        reading = base_reading = f"{STEPS_PER_TRAINING_CLIP} frames over the whole clip"
    plot(results, args.results.with_suffix(".png"), reading, compare, base_reading, args.against)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

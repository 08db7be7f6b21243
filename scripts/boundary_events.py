"""Colour changes at a segment boundary: the sweep's colour-change questions (scripts/long_video_sweep.py), split by
whether the change first shows on the first step of a segment. Such a change is seen by no segment: the one before
ends with the old colour, the one after opens with the new. Base reads the whole clip either way.

    python scripts/boundary_events.py --results docs/long_video_sweep.json [--out runs/sweep]

It reads the sweep's records (the `output_dir` of each kind in its results) and its clips' manifests, and rebuilds
each clip's events from its seed with the world's generator (deterministic), so it needs the sweep run first.
"""

import argparse
import collections
import json
from pathlib import Path

from video2lora.world.clip import generate_clip

# The sweep's world options (`python -m video2lora.world` flags) as `generate_clip` keywords.
WORLD_OPTIONS = {"--max-events": "max_events", "--max-objects": "max_objects"}


def clip_options(variant: dict) -> dict:
    flags = variant["world"]
    options = {WORLD_OPTIONS[flag]: int(value) for flag, value in zip(flags[::2], flags[1::2], strict=True)}
    return {"num_steps": variant["steps"], **options}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("docs/long_video_sweep.json"))
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="the sweep's --out (its clips)")
    args = parser.parse_args()

    print("| clips | segments | colour change inside a segment: n, Base, V2L | at a segment boundary: n, Base, V2L |")
    print("|---|---:|---|---|")
    for variant in json.loads(args.results.read_text())["results"]:
        if variant["segments"] < 2:
            continue  # one segment: no boundary
        stem = Path(variant["output_dir"]).name
        rows = {row["id"]: row for row in map(json.loads, (args.out / "clips" / stem / f"{stem}.jsonl").open())}
        steps_per_segment = variant["steps"] // variant["segments"]
        options, events = clip_options(variant), {}
        tally = collections.defaultdict(lambda: [0, 0, 0])  # where -> [n, Base right, V2L right]
        for record in map(json.loads, (Path(variant["output_dir"]) / "records.jsonl").open()):
            if record["question_type"] != "colour_change":
                continue
            metadata = rows[record["id"]]["metadata"]
            if metadata["seed"] not in events:
                events[metadata["seed"]] = generate_clip(metadata["seed"], **options).events
            changed = metadata["objects"][0]
            first_steps = [event.step for event in events[metadata["seed"]]
                           if event.kind == "colour_change" and event.object_index == changed]
            where = "boundary" if any(step % steps_per_segment == 0 for step in first_steps) else "inside"
            counts = tally[where]
            counts[0] += 1
            counts[1] += record["scores"]["base"]["exact_match"]
            counts[2] += record["scores"]["v2l"]["exact_match"]
        print(f"| {variant['name']} | {variant['segments']} | {cell(tally['inside'])} | {cell(tally['boundary'])} |")


def cell(counts: list[int]) -> str:
    n, base, v2l = counts
    return f"{n}, {base / n:.2f}, {v2l / n:.2f}" if n else "0"


if __name__ == "__main__":
    main()

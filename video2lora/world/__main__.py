"""Command line: write clips of the generated world as MP4 files plus a JSONL manifest.

```bash
python -m video2lora.world --out data/world --split train --num-clips 100
python -m video2lora.world --out data/world --split test --num-clips 50 --two-segment --num-steps 8
python -m video2lora.world --out data/world --split train --num-clips 100 --seed-offset 100 --require-question-type order \\
    --manifest-name train_order.jsonl
```
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .export import write_world
from .language import QUESTION_TYPES
from .splits import SPLIT_SEED_RANGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m video2lora.world",
        description="Write clips of the generated video world (MP4) and their manifest (<split>.jsonl).",
    )
    parser.add_argument("--out", required=True, help="data root; videos go to OUT/videos/<split>/")
    parser.add_argument("--split", required=True, choices=list(SPLIT_SEED_RANGES), help="picks the seed range")
    parser.add_argument("--num-clips", type=int, required=True, help="number of clips")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed's offset inside the split's range")
    parser.add_argument("--two-segment", action="store_true", help="two-half clips for adapter composition")
    parser.add_argument("--num-steps", type=int, default=4, help="key steps per clip (per half with --two-segment)")
    parser.add_argument("--frames-per-step", type=int, default=2, help="video frames rendered per step")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--fps", type=float, default=4.0, help="frame rate of the written videos")
    parser.add_argument("--radius", type=float, default=None, help="shape radius in pixels (default: size / 8)")
    parser.add_argument("--max-objects", type=int, default=None, help="most objects per clip (default 3; 2 per half)")
    parser.add_argument("--max-events", type=int, default=1, help="most appear/disappear/colour-change events")
    parser.add_argument("--codec", default=None, help="video encoder (default libx264)")
    parser.add_argument("--manifest-name", default=None, help="manifest file name inside OUT")
    parser.add_argument(
        "--require-question-type",
        choices=QUESTION_TYPES,
        default=None,
        help="keep only clips with a question of this type, scanning seeds until --num-clips are kept",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Only forward --max-objects when given, so each generator keeps its own default.
    options = {} if args.max_objects is None else {"max_objects": args.max_objects}
    try:
        manifest = write_world(
            args.out,
            split=args.split,
            num_clips=args.num_clips,
            two_segment=args.two_segment,
            seed_offset=args.seed_offset,
            codec=args.codec,
            manifest_name=args.manifest_name,
            progress=not args.no_progress,
            require_question_type=args.require_question_type,
            num_steps=args.num_steps,
            frames_per_step=args.frames_per_step,
            size=args.size,
            fps=args.fps,
            radius=args.radius,
            max_events=args.max_events,
            **options,
        )
    except ValueError as error:  # a request the split cannot meet: one line, exit code 2
        build_parser().error(str(error))
    print(manifest)


if __name__ == "__main__":
    main()

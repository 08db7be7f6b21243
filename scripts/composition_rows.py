"""Rows of a two-segment clip manifest for composition training (JSONL on stdout).

`--whole` prints its whole-clip rows, the ones the teacher answers reading the whole clip. Otherwise, given the
teacher's answers to those, it prints every row read as 2 segments, and the rows of every other clip also as 4
segments (ids suffixed `-s4`); `--halves` prints the 2-segment rows only; `--segments K` prints every row read as K
segments (`--interleaved`: as K interleaved parts of the whole clip). Used by scripts/train_embedded_default.sh and scripts/compose_finetune.sh.

    python scripts/composition_rows.py --whole data/world/train_two_segment.jsonl > data/world/train_two_segment_whole.jsonl
    python scripts/composition_rows.py data/world/train_two_segment_teacher.jsonl >> data/world/train_compose_teacher.jsonl
"""

import argparse
import json

from video2lora.checks import positive_int

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("manifest")
parser.add_argument("--whole", action="store_true", help="print the whole-clip rows only")
parser.add_argument("--halves", action="store_true", help="read the rows as 2 segments only, never 4")
parser.add_argument("--segments", type=positive_int, help="read every row as this many segments")
parser.add_argument("--interleaved", action="store_true",
                    help="with --segments: read them as interleaved parts (`segment_layout: interleaved`)")
parser.add_argument("--id-suffix", default="", help="appended to every printed row's id (a second copy of the rows)")
args = parser.parse_args()
rows = [json.loads(line) for line in open(args.manifest, encoding="utf-8")]
rows = [{**row, "id": row["id"] + args.id_suffix} for row in rows]
if args.whole:
    for row in rows:
        if row["metadata"]["segment"] == "whole":
            print(json.dumps(row))
elif args.segments:
    for row in rows:
        print(json.dumps({**row, "segments": args.segments,
                          **({"segment_layout": "interleaved"} if args.interleaved else {})}))
else:
    four = set() if args.halves else set(sorted({row["video_path"] for row in rows})[::2])
    for row in rows:
        print(json.dumps({**row, "segments": 2}))
        if row["video_path"] in four:
            print(json.dumps({**row, "id": row["id"] + "-s4", "segments": 4}))

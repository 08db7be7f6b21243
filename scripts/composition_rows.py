"""Print the composition rows of a two-segment clip teacher manifest (JSONL on stdout): every whole-clip row read as
2 segments, and the rows of every other clip also as 4 segments (ids suffixed `-s4`). Used by
scripts/train_embedded_default.sh and scripts/compose_finetune.sh.

    python scripts/composition_rows.py data/world/train_two_segment_teacher.jsonl >> data/world/train_compose_teacher.jsonl
"""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
four = set(sorted({row["video_path"] for row in rows})[::2])
for row in rows:
    print(json.dumps({**row, "segments": 2}))
    if row["video_path"] in four:
        print(json.dumps({**row, "id": row["id"] + "-s4", "segments": 4}))

"""Writing the generated world to disk: MP4 videos plus a JSONL manifest (docs/design.md §5).

Layout of a data root written by [`write_world`]:

    out_dir/
        train.jsonl                           # single clips
        train_two_segment.jsonl               # two-segment clips (--two-segment)
        videos/train/train-0000000.mp4
        videos/train/train-two-segment-0000000.mp4

`video_path` in the manifest is relative to `out_dir`, which is the manifest's own directory, so the manifest works
wherever the folder is moved.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from ..data import question_type, write_manifest
from ..video import write_video
from .clip import Clip, generate_clip, generate_two_segment_clip
from .language import CAPTION_PROMPT, QUESTION_TYPES, QAItem
from .splits import SPLIT_SEED_RANGES, split_seeds

__all__ = ["DATASET_NAME", "clip_rows", "write_world"]

DATASET_NAME = "world"


def _rows(
    id_prefix: str,
    video_path: str,
    split: str,
    caption: str,
    qa: tuple[QAItem, ...],
    metadata: dict[str, Any],
    span: tuple[float, float] | None,
) -> list[dict[str, Any]]:
    """One caption row and one row per question, sharing everything but prompt, target and question metadata."""

    def row(suffix: str, task_type: str, prompt: str, target: str, extra: dict[str, Any]) -> dict[str, Any]:
        entry = {
            "id": f"{id_prefix}-{suffix}",
            "video_path": video_path,
            "task_type": task_type,
            "prompt": prompt,
            "target_text": target,
            "dataset": DATASET_NAME,
            "split": split,
            "metadata": {**metadata, **extra},
        }
        if span is not None:
            entry["span"] = [float(span[0]), float(span[1])]
        return entry

    rows = [row("caption", "caption", CAPTION_PROMPT, caption, {"question_type": "caption"})]
    for index, item in enumerate(qa):
        extra = {"question_type": item.question_type, "objects": list(item.objects)}
        rows.append(row(f"qa{index}", "qa", item.question, item.answer, extra))
    return rows


def clip_rows(clip: Clip, video_path: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Manifest rows for a clip: one caption row and one row per question.

    A two-segment clip gets these rows three times: for the whole clip and for each half, with `span` set to the
    seconds covered and `metadata.segment` set to "whole", "first" or "second".

    Row ids are `<video file stem>[-<segment>]-caption` and `...-qa<i>`, unique as long as video files are.
    `metadata` holds `seed`, `question_type` ("caption" for captions), `objects` (indices of the objects a question
    is about), and the timing of the span: `num_steps`, `frames_per_step`, `fps`, `size`.

    Args:
        clip (`Clip`): From [`generate_clip`] or [`generate_two_segment_clip`].
        video_path (`str` or `os.PathLike`): Where the clip's video is, relative to the data root.
        split (`str`): The split name stored in every row.

    Returns:
        `list[dict]`: Rows in the docs/design.md §5 format.
    """
    # Manifests are shared across machines, so paths use forward slashes whatever the OS.
    video_path = PurePosixPath(Path(video_path).as_posix())
    stem = video_path.stem
    config = clip.config
    timing = {"frames_per_step": config.frames_per_step, "fps": config.fps, "size": config.size}
    if not clip.segments:
        metadata = {"seed": clip.seed, "num_steps": config.num_steps, **timing}
        return _rows(stem, str(video_path), split, clip.caption, clip.qa, metadata, span=None)

    whole_metadata = {"seed": clip.seed, "segment": "whole", "num_steps": config.num_steps, **timing}
    rows = _rows(f"{stem}-whole", str(video_path), split, clip.caption, clip.qa, whole_metadata, (0.0, clip.duration))
    for segment in clip.segments:
        start, end = segment.steps
        metadata = {"seed": clip.seed, "segment": segment.name, "num_steps": end - start, **timing}
        rows += _rows(
            f"{stem}-{segment.name}", str(video_path), split, segment.caption, segment.qa, metadata, segment.span
        )
    return rows


def write_world(
    out_dir: str | os.PathLike,
    *,
    split: str,
    num_clips: int,
    two_segment: bool = False,
    seed_offset: int = 0,
    codec: str | None = None,
    manifest_name: str | None = None,
    progress: bool = True,
    require_question_type: str | None = None,
    **clip_options: Any,
) -> Path:
    """Generate clips of a split, write each as an MP4 and all their rows as one manifest.

    Args:
        out_dir (`str` or `os.PathLike`): The data root; created if missing.
        split (`str`): `train`, `validation` or `test`; picks the seed range (see [`split_seeds`]).
        num_clips (`int`): Number of clips.
        two_segment (`bool`, *optional*, defaults to `False`): Write two-segment clips (for composition) instead of
            single clips.
        seed_offset (`int`, *optional*, defaults to 0): Offset of the first seed inside the split's range, to add
            clips to a split without repeating earlier ones.
        codec (`str`, *optional*): Video encoder; libx264 by default (see [`write_video`]).
        manifest_name (`str`, *optional*): File name of the manifest inside `out_dir`; defaults to `<split>.jsonl`,
            or `<split>_two_segment.jsonl` for two-segment clips so that both kinds can share a data root.
        progress (`bool`, *optional*, defaults to `True`): Show a progress bar.
        require_question_type (`str`, *optional*): Keep only clips asked at least one question of this type (one of
            [`QUESTION_TYPES`]), to add training data for a rare type: `order` is asked of about a third of the
            clips. Seeds are then scanned in order from `seed_offset` until `num_clips` clips are kept; the others
            are not written.
        clip_options: Forwarded to [`generate_clip`] or [`generate_two_segment_clip`] (`num_steps`,
            `frames_per_step`, `size`, `fps`, ...).

    Returns:
        `Path`: The manifest written.
    """
    out_dir = Path(out_dir)
    if require_question_type is not None and require_question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {require_question_type!r}; use one of {', '.join(QUESTION_TYPES)}")
    # Without a filter every seed is kept; with one, the scan may run on to the end of the split's range.
    seeds = split_seeds(split, num_clips, offset=seed_offset)
    if require_question_type is not None:
        seeds = SPLIT_SEED_RANGES[split][seed_offset:]
    generate = generate_two_segment_clip if two_segment else generate_clip
    kind = f"{split}-two-segment" if two_segment else split
    if manifest_name is None:
        manifest_name = f"{split}_two_segment.jsonl" if two_segment else f"{split}.jsonl"

    rows: list[dict[str, Any]] = []
    kept = 0
    with tqdm(total=num_clips, desc=f"world {kind}", unit="clip", disable=not progress) as bar:
        for seed in seeds:
            if kept == num_clips:
                break
            clip = generate(seed, **clip_options)
            relative_path = f"videos/{split}/{kind}-{seed:07d}.mp4"
            clip_manifest_rows = clip_rows(clip, relative_path, split)
            asked = {question_type(row) for row in clip_manifest_rows}
            if require_question_type is not None and require_question_type not in asked:
                continue
            write_video(out_dir / relative_path, clip.frames, fps=clip.fps, codec=codec)
            rows.extend(clip_manifest_rows)
            kept += 1
            bar.update()
    manifest_path = out_dir / manifest_name
    write_manifest(manifest_path, rows)
    if kept < num_clips:
        # The clips found are kept (their manifest is written); the request itself cannot be met.
        raise ValueError(
            f"only {kept} clips of split {split!r} from offset {seed_offset} on have a question of type "
            f"{require_question_type!r} ({manifest_path} lists them); ask for fewer clips or a smaller --seed-offset"
        )
    return manifest_path

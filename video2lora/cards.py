"""Model cards for Hub uploads: a trained hypernetwork (`video2lora/hub_cards/hypernetwork.md`), an emitted adapter
(`video2lora/hub_cards/adapter.md`) and the embedded default's tiny base (`video2lora/hub_cards/base.md`).

Templates are Jinja files whose front matter is the single placeholder `{{ card_data }}`; [`render_card`] fills it
with `huggingface_hub.ModelCardData`, so the YAML metadata (`library_name`, `base_model`, `pipeline_tag`, `tags`,
`license`, `datasets`) is written by the Hub's own serializer and validated the same way the Hub validates it.

A hypernetwork trained by `train_hf.py` gets a card that reports only what its run did and measured:
[`training_data_statistics`] counts the training rows it read, [`find_eval_summaries`] picks up the
`video2lora eval` summaries in its output folder, and [`evaluation_fields`] turns those into the card's evaluation
tables and its list of what was *not* measured.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CARD_METADATA_FIELDS", "HUB_CARDS_DIR", "NOT_MEASURED", "evaluation_fields", "find_eval_summaries",
           "render_card", "training_data_statistics"]

# Package data: installed with the package, editable or not.
HUB_CARDS_DIR = Path(__file__).resolve().parent / "hub_cards"
# Fields that go to the YAML front matter; every other field is a template variable of the card body.
CARD_METADATA_FIELDS = ("library_name", "base_model", "pipeline_tag", "tags", "license", "datasets", "language",
                        "metrics", "model_name")
# What a hypernetwork card lists under "Not measured" unless an evaluation of the checkpoint covers it. `qa`,
# `caption` and `summary` are covered by a `video2lora eval` summary with that group, `composition` by a summary of
# composed segment adapters (`--segments k`); the others cannot be read from a summary, so they are always listed.
NOT_MEASURED = {
    "qa": "Question answering on held-out videos against Base (the frozen model with the video in context) and "
          "Blind (no video, no adapter): `video2lora eval --manifest HELD_OUT.jsonl --model CHECKPOINT "
          "--output_dir CHECKPOINT/eval`.",
    "caption": "Captions of held-out videos against Base and Blind (the same command, on caption rows).",
    "summary": "Summaries of held-out videos against Base and Blind (the same command, on summary rows).",
    "composition": "Composition: adapters of a video's segments composed into one (`video2lora eval --segments 2 "
                   "--compose concat`) against Base reading the whole video.",
    "long_videos": "Long videos: more frames or segments per video than in training.",
    "benchmarks": "Published video benchmarks (the Video2LoRA paper's or any other): the paper's numbers are for its "
                  "own checkpoints, not this one.",
    "speed": "Speed and memory on a GPU (time to internalize a video, time per answer, peak memory).",
}
# The groups of a `video2lora eval` summary that are NOT_MEASURED entries of their own.
_GROUP_EVALUATIONS = ("qa", "caption", "summary")


def render_card(template_name: str, *, template_dir: str | os.PathLike | None = None, **fields: Any) -> str:
    """
    Render a model-card template to Markdown with YAML front matter.

    Args:
        template_name (`str`):
            File name in `template_dir`, with or without the `.md` suffix (e.g. `"hypernetwork"`, `"adapter.md"`).
        template_dir (`str` or `os.PathLike`, *optional*):
            Folder of the templates; defaults to the repository's `video2lora/hub_cards/`.
        fields:
            Metadata fields (`library_name`, `base_model`, `pipeline_tag`, `tags`, `license`, `datasets`, ...) become
            the front matter; `None` values are left out. All other fields are variables of the card's body. A
            variable the template uses but that is not given is an error, so a card never ships with a blank.

    Returns:
        `str`: the card, starting with `---`.
    """
    import jinja2
    from huggingface_hub import ModelCardData

    directory = Path(template_dir) if template_dir is not None else HUB_CARDS_DIR
    path = directory / (template_name if template_name.endswith(".md") else f"{template_name}.md")
    if not path.is_file():
        raise FileNotFoundError(f"No card template '{path}'; templates available: "
                                f"{sorted(p.name for p in directory.glob('*.md')) if directory.is_dir() else []}.")
    metadata = {k: v for k, v in fields.items() if k in CARD_METADATA_FIELDS and v is not None}
    body_fields = {k: v for k, v in fields.items() if k not in CARD_METADATA_FIELDS}
    # StrictUndefined: a missing field fails loudly instead of rendering as an empty string.
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        template = environment.from_string(path.read_text(encoding="utf-8"))
        text = template.render(card_data=ModelCardData(**metadata).to_yaml(), **metadata, **body_fields)
    except jinja2.UndefinedError as error:
        raise ValueError(f"Card template '{path.name}' needs a field that was not given: {error.message}.") from error
    return text


def training_data_statistics(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """
    What a card says about the rows a hypernetwork was trained on.

    Args:
        rows (`Iterable[Mapping[str, Any]]`):
            Valid manifest rows (`video2lora.data.read_manifest`), e.g. those a training run kept.

    Returns:
        `dict`: `rows`, `videos` (distinct video files), `clips` (distinct (video, span) pairs), `task_types` and
        `question_types` (`task_type/metadata.question_type`) as row counts, `datasets` as row counts,
        `segmented_rows` (rows read as k segments, by k), and `span_kinds`: distinct spans per
        `metadata.span_kind` (the FineVideo builder's `scene`, `adjacent`, `whole`), with `span_rows` the rows that
        carry one. Counts are sorted by name.
    """
    from .data import question_type

    rows = list(rows)

    def clip(row: Mapping[str, Any]) -> tuple[str, tuple[float, ...] | None]:
        return row["video_path"], tuple(row["span"]) if row.get("span") else None

    span_rows = [row for row in rows if isinstance(row.get("metadata"), Mapping) and row["metadata"].get("span_kind")]
    spans = {clip(row): str(row["metadata"]["span_kind"]) for row in span_rows}

    def counts(values: Iterable[Any]) -> dict[Any, int]:
        return dict(sorted(Counter(values).items()))

    return {
        "rows": len(rows),
        "videos": len({row["video_path"] for row in rows}),
        "clips": len({clip(row) for row in rows}),
        "task_types": counts(row["task_type"] for row in rows),
        "question_types": counts(f"{row['task_type']}/{kind}" for row in rows if (kind := question_type(row))),
        "datasets": counts(str(row["dataset"]) for row in rows),
        "segmented_rows": counts(int(row["segments"]) for row in rows if int(row.get("segments") or 1) > 1),
        "span_kinds": counts(spans.values()),
        "span_rows": len(span_rows),
    }


def find_eval_summaries(folder: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """
    The `video2lora eval` summaries of a checkpoint: `summary.json` in `folder` or in one of its sub-folders (e.g.
    `folder/eval/`, `folder/eval-compose-concat/`), recognized by their `groups` and `metrics`.

    Args:
        folder (`str` or `os.PathLike`): The checkpoint or training output folder; a missing folder has none.

    Returns:
        `list[tuple[str, dict]]`: `(sub-folder relative to folder, or ".", summary)`, sorted by sub-folder.
    """
    folder = Path(folder)
    found = []
    for path in sorted([folder / "summary.json", *folder.glob("*/summary.json")]):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and isinstance(summary.get("groups"), dict) and "metrics" in summary:
            found.append((path.parent.relative_to(folder).as_posix(), summary))
    return found


def evaluation_fields(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """
    The card's evaluation: one entry per summary, and the [`NOT_MEASURED`] items no summary covers.

    Args:
        summaries (`Sequence[tuple[str, Mapping]]`): `(folder name, summary)` pairs, as [`find_eval_summaries`]
            returns them.

    Returns:
        `dict`: `evaluations` (each with `folder`, `manifest` (its file name), `num_items`, `composition` (text or
        `None`), `where` (text or `None`), `visual_tokens` (Base's visual tokens per query or `None`) and `report`,
        the summary's tables from `video2lora.evaluation.markdown_report`) and `not_measured` (sentences).
    """
    from .evaluation import markdown_report

    covered: set[str] = set()
    evaluations = []
    for folder, summary in summaries:
        composition = summary.get("composition")
        # A summary of composed adapters measures composition, not the plain adapters of its groups.
        covered.update(["composition"] if composition else
                       [group for group in _GROUP_EVALUATIONS if group in summary["groups"]])
        where = summary.get("where") or {}
        tokens = (summary.get("visual_tokens_per_query") or {}).get("base")
        # Subsections of the card's "Evaluation" section.
        report = ("\n" + markdown_report(summary)).replace("\n### ", "\n#### ").lstrip("\n")
        evaluations.append({
            "folder": folder,
            "manifest": Path(str(summary.get("manifest") or "?")).name,
            "num_items": summary.get("num_items"),
            "composition": (f"{composition.get('segments')} segment adapters per video, composed by "
                            f"{composition.get('mode')}" if composition else None),
            "where": ", ".join(f"{key}={value}" for key, value in where.items()) or None,
            "visual_tokens": f"{tokens:g}" if isinstance(tokens, (int, float)) else None,
            "report": report,
        })
    return {"evaluations": evaluations,
            "not_measured": [text for key, text in NOT_MEASURED.items() if key not in covered]}

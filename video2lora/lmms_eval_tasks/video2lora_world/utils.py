"""Document functions of the `video2lora_world` lmms-eval task (video2lora_world.yaml)."""

from __future__ import annotations

import os

from video2lora.data import resolve_data_root
from video2lora.evaluation import exact_match, token_f1


def process_docs(dataset):
    """Keep the question rows: exact match means something for short answers only (docs/design.md §6).

    Args:
        dataset: the manifest's rows as a `datasets.Dataset`.
    """
    return dataset.filter(lambda row: row["task_type"] == "qa")


def doc_to_visual(doc: dict) -> list[str]:
    """The row's video, as an absolute path (relative paths resolve against the data root, as in `video2lora eval`).

    Args:
        doc: one manifest row.
    """
    path = doc["video_path"]
    if not os.path.isabs(path):
        # `test.jsonl` is read from the working directory, so the manifest's folder is the working directory.
        path = os.path.join(resolve_data_root(None, "test.jsonl"), path)
    return [path]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question exactly as the manifest has it: no pre- or post-prompt, so the answer matches `video2lora eval`.

    Args:
        doc: one manifest row.
        lmms_eval_specific_kwargs: unused; the task has no per-model prompts.
    """
    return doc["prompt"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Exact match and token F1 of the answer against the row's `target_text`.

    Args:
        doc: one manifest row.
        results: the model's answer (one).
    """
    answer = results[0]
    return {"exact_match": exact_match(answer, doc["target_text"]), "token_f1": token_f1(answer, doc["target_text"])}

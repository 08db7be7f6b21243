"""Model cards for Hub uploads: a trained hypernetwork (`video2lora/hub_cards/hypernetwork.md`), an emitted adapter
(`video2lora/hub_cards/adapter.md`) and the embedded default's tiny base (`video2lora/hub_cards/base.md`).

Templates are Jinja files whose front matter is the single placeholder `{{ card_data }}`; [`render_card`] fills it
with `huggingface_hub.ModelCardData`, so the YAML metadata (`library_name`, `base_model`, `pipeline_tag`, `tags`,
`license`, `datasets`) is written by the Hub's own serializer and validated the same way the Hub validates it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["CARD_METADATA_FIELDS", "HUB_CARDS_DIR", "render_card"]

# Package data: installed with the package, editable or not.
HUB_CARDS_DIR = Path(__file__).resolve().parent / "hub_cards"
# Fields that go to the YAML front matter; every other field is a template variable of the card body.
CARD_METADATA_FIELDS = ("library_name", "base_model", "pipeline_tag", "tags", "license", "datasets", "language",
                        "metrics", "model_name")


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

"""Command line: train the embedded default's base, export it as a Hugging Face folder and score it.

```bash
python -m video2lora.base_training --output_dir runs/base --minutes 35 --export video2lora/checkpoints/smolvlm-world --eval_test
python -m video2lora.base_training --eval_only --export video2lora/checkpoints/smolvlm-world --eval_test
```
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import asdict

from .export import evaluate_folder, export_base
from .loop import train_base
from .recipe import BaseTrainingArguments


def _field_help() -> dict[str, str]:
    """Each field's description from the `Args:` section of [`BaseTrainingArguments`]'s docstring."""
    args = BaseTrainingArguments.__doc__.split("Args:", 1)[1]
    entries = re.findall(r"^\s{8}(\w+) \(`[^`]*`\): (.*?)(?=^\s{8}\w+ \(`|\Z)", args, flags=re.M | re.S)
    helps = {}
    for name, text in entries:
        # Cross-references ([`~video2lora.base_training.sample_turns`]) read as plain names on a terminal; a bare
        # `%` would be taken for an argparse format.
        text = re.sub(r"\[`~?(?:[\w.]*\.)?(\w+)`\]", r"\1", " ".join(text.split()))
        helps[name] = text.replace("%", "%%")
    return helps


def build_parser() -> argparse.ArgumentParser:
    """One flag per [`BaseTrainingArguments`] field (its default and docstring), plus the run's actions."""
    parser = argparse.ArgumentParser(
        prog="python -m video2lora.base_training",
        description="Train the embedded default's tiny SmolVLM base on the generated world, export it and score it.",
    )
    helps = _field_help()
    for name, value in asdict(BaseTrainingArguments()).items():
        if isinstance(value, dict):
            continue  # the architecture: a recipe constant, overridden only from Python (tests)
        if isinstance(value, bool):
            parser.add_argument(f"--{name}", action="store_true", help=helps.get(name))
        else:
            parser.add_argument(f"--{name}", type=type(value), default=value,
                                help=f"{helps.get(name, '')} Default: %(default)s.".strip())
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last-checkpoint")
    parser.add_argument("--export", default=None, help="write the trained base here as a Hugging Face folder")
    parser.add_argument("--eval_test", action="store_true", help="score the exported base on the test split")
    parser.add_argument("--num_test_clips", type=int, default=400,
                        help="test clips scored by --eval_test (400 hold over 100 of each question type)")
    parser.add_argument("--eval_only", action="store_true", help="skip training; evaluate --export as it is")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line on `argv` (default: `sys.argv[1:]`)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.eval_only:
        if not options.export:
            parser.error("--eval_only needs --export")
    else:
        names = [name for name, value in asdict(BaseTrainingArguments()).items() if not isinstance(value, dict)]
        args = BaseTrainingArguments(**{name: getattr(options, name) for name in names})
        model, processor, _ = train_base(args, resume=options.resume)
        if options.export:
            export_base(model, processor, options.export)
    if options.export and (options.eval_test or options.eval_only):
        result = evaluate_folder(options.export, options.num_test_clips, options.threads, options.device)
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

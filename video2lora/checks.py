"""Checks of what a user passed, made before anything expensive runs (loading a model, decoding a video, an hour of
evaluation): every failure here is one line that says what is wrong and what to do, and costs nothing.

The command line reports [`UsageError`] and `VideoDecodeError` as `video2lora: error: <message>` with exit status 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from .video import VideoDecodeError

__all__ = ["UsageError", "check_output_folder", "check_questions", "check_video_file", "check_writable_folder",
           "positive_int"]


class UsageError(Exception):
    """An error the user can fix (a bad argument, an unwritable output, a bad span); one line, exit status 2."""


def positive_int(text: str) -> int:
    """`argparse` type of counts that must be at least 1 (`--num_frames`, `--max_new_tokens`, ...)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """`argparse` type of counts that may be 0 (`--segment_overlap`)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
    return value


def check_video_file(path: str | os.PathLike) -> None:
    """A video path must name a readable file; the reason says which of the three it is not."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise VideoDecodeError(path, "file does not exist", "check the path")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "path is a directory, not a file", "point to the video file itself")
    if not os.access(path, os.R_OK):
        raise VideoDecodeError(path, "permission denied: this user cannot read it",
                               "check the file's permissions (e.g. `chmod a+r FILE`)")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """`path` is, or can be created as, a folder this user can write into."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UsageError(f"{flag} '{path}': '{existing}' is a file, so no folder can be written there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} '{path}': permission denied, this user cannot write into '{existing}'")


def check_output_folder(path: str | os.PathLike, flag: str, *, overwrite: bool) -> None:
    """An output folder must be writable and new or empty, unless `overwrite` says its contents may go."""
    check_writable_folder(path, flag)
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"{flag} '{path}' already exists and is not empty; pass --overwrite to replace it, or "
                         "choose another folder")


def check_questions(questions: Sequence[str]) -> None:
    """Questions must say something."""
    for index, question in enumerate(questions, 1):
        if not question.strip():
            raise UsageError(f"question {index} is empty; ask something, e.g. \"what colour is the square?\"")

"""JSONL manifests: one row per (video, prompt, target), as described in docs/design.md §5.

A manifest row is a JSON object with these fields:

| field         | type               | notes                                                                     |
|---------------|--------------------|---------------------------------------------------------------------------|
| `id`          | str                | non-empty, unique within the manifest                                     |
| `video_path`  | str                | relative paths resolve against the data root (see [`resolve_data_root`])  |
| `task_type`   | str                | one of `caption`, `summary`, `qa`                                         |
| `prompt`      | str                |                                                                           |
| `target_text` | str                | non-empty, unless `require_target=False` (before teacher generation)      |
| `dataset`     | str                | source dataset name                                                       |
| `split`       | str                | e.g. `train`, `validation`, `test`                                        |
| `metadata`    | dict, optional     | defaults to `{}`                                                          |
| `span`        | [start, end], opt. | seconds, `0 <= start < end`, or null for the whole video                  |
| `segments`    | int, optional      | >= 1: the student reads the video (or span) as that many equal segments,  |
|               |                    | composed into one adapter (training; docs/design.md §5); default 1        |
| `segment_layout` | str, optional   | `contiguous` (default) or `interleaved`: how those segments divide the    |
|               |                    | video (`Video2LoRAModel.internalize(segment_layout=...)`)                 |

Any other key (e.g. `teacher_target`, `teacher_logprobs`) is passed through untouched. Blank lines are ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DATA_ROOT_ENV_VAR",
    "REQUIRED_FIELDS",
    "TASK_TYPES",
    "ManifestError",
    "ManifestReport",
    "load_manifest_dataset",
    "question_type",
    "read_manifest",
    "resolve_data_root",
    "write_manifest",
    "write_text_atomically",
]

logger = logging.getLogger(__name__)

DATA_ROOT_ENV_VAR = "VIDEO2LORA_DATA_ROOT"
TASK_TYPES = ("caption", "summary", "qa")
# Fields every row must carry as strings, in the column order of the dataset.
REQUIRED_FIELDS = ("id", "video_path", "task_type", "prompt", "target_text", "dataset", "split")
# How many bad rows a log message lists before summarizing the rest as a count.
_MAX_LOGGED_BAD_ROWS = 10


def _one_line(text: str) -> str:
    """`text` with line breaks escaped: a reason may quote a value from the file (a video path, say) holding one, and
    reasons must stay one line so that logs and the command line show them whole."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class ManifestError(ValueError):
    """A manifest that cannot be read, naming the file, the 1-based line number and the reason.

    The message is one line: `<path>:<line>: <reason>` (or `<path>: <reason>` for errors about the whole file).

    Args:
        path (`str` or `os.PathLike`): The manifest file.
        line (`int`, *optional*): The 1-based line number of the bad row; `None` for errors about the whole file.
        reason (`str`): What is wrong and what to do about it.
    """

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        location = self.path if line is None else f"{self.path}:{line}"
        super().__init__(_one_line(f"{location}: {reason}"))

    def __reduce__(self):
        # Keeps the exception picklable across processes (the default would call __init__ with the message alone).
        return type(self), (self.path, self.line, self.reason)


@dataclass
class ManifestReport:
    """The outcome of reading a manifest.

    Args:
        rows (`list[dict]`): The valid rows, in file order, with `video_path` resolved to an absolute path and
            `metadata` defaulted to `{}`.
        bad_rows (`list[tuple[int, str]]`): `(1-based line number, reason)` for each skipped row; empty in strict mode.
    """

    rows: list[dict] = field(default_factory=list)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


def resolve_data_root(data_root: str | os.PathLike | None, manifest_path: str | os.PathLike) -> Path:
    """The directory that relative `video_path` values resolve against.

    Precedence: the explicit `data_root` (a command-line flag), else the `VIDEO2LORA_DATA_ROOT` environment variable,
    else the manifest's own directory (so a manifest next to its videos works with no configuration).

    Args:
        data_root (`str` or `os.PathLike`, *optional*): Explicit root; wins when given.
        manifest_path (`str` or `os.PathLike`): The manifest file, whose directory is the fallback.

    Returns:
        `Path`: An absolute path (not required to exist; missing videos are reported per row).
    """
    if data_root is not None and os.fspath(data_root) != "":
        root = Path(data_root)
    elif os.environ.get(DATA_ROOT_ENV_VAR):
        root = Path(os.environ[DATA_ROOT_ENV_VAR])
    else:
        root = Path(manifest_path).parent
    return Path(os.path.abspath(root.expanduser()))


def question_type(row: dict) -> str | None:
    """A row's `metadata.question_type` when it names a sub-type of its `task_type` (`order` in `qa`), else `None`."""
    kind = (row.get("metadata") or {}).get("question_type")
    # The world labels caption rows "caption/caption": a sub-type identical to its task adds nothing.
    return None if kind in (None, row["task_type"]) else str(kind)


def _preview(value: Any, limit: int = 40) -> str:
    """`value` as JSON, cut to `limit` characters, for a reason; never fails (a deeply nested value is named)."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (RecursionError, ValueError):
        return f"a deeply nested JSON {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _NonFiniteNumber(ValueError):
    """Raised while parsing a row for NaN, Infinity or a number too large for a float (1e999)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def _reject_constant(text: str):
    raise _NonFiniteNumber(text)


def _parse_row(text: str) -> tuple[Any, str | None]:
    """The JSON value on one line, or the reason it is not valid JSON that `write_manifest` could write back.

    Python's `json` accepts more than JSON: NaN, Infinity, numbers that overflow to infinity and unpaired UTF-16
    surrogate escapes (`"\\ud800"`). Rows holding them would be accepted here and fail later, far from the manifest,
    when a stage writes the rows back, so they are reported as bad rows instead.
    """
    try:
        row = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
    except _NonFiniteNumber as error:
        number = str(error)[:40]
        return None, f"invalid number {number} (JSON numbers must be finite); each line must be one JSON object"
    except json.JSONDecodeError as error:
        return None, f"invalid JSON ({error.msg} at column {error.colno}); each line must be one JSON object"
    except RecursionError:
        return None, "invalid JSON (nested too deeply); each line must be one JSON object"
    except ValueError:  # what remains: an integer with more digits than Python converts (4300 by default)
        return None, "invalid JSON (an integer with thousands of digits); each line must be one JSON object"
    if "\\ud" in text.lower():  # decoded UTF-8 never holds surrogates: only an escape can bring one in
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "invalid JSON string (an unpaired UTF-16 surrogate escape such as \\ud800, which UTF-8 lacks)"
        except RecursionError:
            return None, "invalid JSON (nested too deeply); each line must be one JSON object"
    return row, None


def _is_file(path: Path) -> bool:
    # `Path.is_file` raises for some unusable names (ENAMETOOLONG, EACCES on a parent); none of them is a video file.
    try:
        return path.is_file()
    except OSError:
        return False


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `true` is never a meaningful timestamp.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_row(row: Any, *, require_target: bool) -> str | None:
    """The reason `row` is invalid, or `None` when it is valid. Fills `metadata`/`target_text` defaults in place."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got a JSON {type(row).__name__}"
    if not require_target and "target_text" not in row:
        # Rows awaiting teacher generation may omit the target altogether.
        row["target_text"] = ""
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        return f"missing required field(s) {', '.join(missing)}; every row needs {', '.join(REQUIRED_FIELDS)}"
    for name in REQUIRED_FIELDS:
        if not isinstance(row[name], str):
            return f"field '{name}' must be a string, got {type(row[name]).__name__} {_preview(row[name])}"
    for name in ("id", "video_path"):
        if not row[name].strip():
            return f"field '{name}' must not be empty"
    if "\0" in row["video_path"]:
        return "field 'video_path' contains a NUL character, which no file name can hold"
    if row["task_type"] not in TASK_TYPES:
        return f"unknown task_type {row['task_type']!r}; use one of {', '.join(TASK_TYPES)}"
    if require_target and not row["target_text"].strip():
        return (
            "target_text is empty; generate teacher targets first, or read with require_target=False "
            "to accept rows without targets"
        )
    metadata = row.get("metadata")
    if metadata is None:
        row["metadata"] = {}
    elif not isinstance(metadata, dict):
        return f"field 'metadata' must be a JSON object, got {type(metadata).__name__}"
    span = row.get("span")
    if span is not None and not (
        isinstance(span, list) and len(span) == 2 and all(_is_number(x) for x in span) and 0 <= span[0] < span[1]
    ):
        return f"field 'span' must be null or [start, end] seconds with 0 <= start < end, got {_preview(span)}"
    segments = row.get("segments", 1)
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        return f"field 'segments' must be an integer >= 1, got {_preview(segments)}"
    layout = row.get("segment_layout", "contiguous")
    if layout not in ("contiguous", "interleaved"):
        return f"field 'segment_layout' must be 'contiguous' or 'interleaved', got {_preview(layout)}"
    return None


def read_manifest(
    path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    strict: bool = True,
    require_target: bool = True,
    check_files: bool = False,
) -> ManifestReport:
    """Read and validate a JSONL manifest.

    Args:
        path (`str` or `os.PathLike`): The manifest, one JSON object per line (UTF-8; blank lines are ignored).
        data_root (`str` or `os.PathLike`, *optional*): Root for relative video paths; see [`resolve_data_root`].
        strict (`bool`, *optional*, defaults to `True`): Raise on the first bad row. When `False`, skip bad rows
            and list them in [`ManifestReport.bad_rows`].
        require_target (`bool`, *optional*, defaults to `True`): Require a non-empty `target_text`. Set to `False`
            before teacher generation; a missing `target_text` then defaults to `""`.
        check_files (`bool`, *optional*, defaults to `False`): Also require every video file to exist.

    Returns:
        [`ManifestReport`]: The valid rows (with absolute `video_path`) and the bad rows' line numbers and reasons.

    Raises:
        [`ManifestError`]: The file is missing, or (in strict mode) a row is invalid JSON, misses a field, has a field
            of the wrong type, an unknown `task_type`, a duplicate `id`, or (with `check_files`) a missing video.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, None, "manifest file does not exist; check the path")
    root = resolve_data_root(data_root, path)
    report = ManifestReport()
    first_line_of_id: dict[str, int] = {}

    # Binary mode so one line with broken UTF-8 is reported as a bad row instead of failing the whole file.
    with path.open("rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            reason = None
            row = None
            try:
                # utf-8-sig on the first line drops the byte-order mark some editors write.
                text = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                reason = f"line is not valid UTF-8 ({error.reason} at byte {error.start}); re-save the file as UTF-8"
            else:
                if not text.strip():
                    continue
                row, reason = _parse_row(text)
            if reason is None:
                reason = _validate_row(row, require_target=require_target)
            if reason is None:
                row_id = row["id"]
                if row_id in first_line_of_id:
                    reason = (
                        f"duplicate id {row_id!r} (first used on line {first_line_of_id[row_id]}); ids must be unique"
                    )
            if reason is None:
                try:
                    video_path = Path(row["video_path"]).expanduser()
                except RuntimeError:  # `~name/...` for a user this machine does not have
                    video_path = None
                    reason = f"cannot expand the home directory in video_path {_preview(row['video_path'], 80)}"
            if reason is None:
                resolved = Path(os.path.abspath(video_path if video_path.is_absolute() else root / video_path))
                if check_files and not _is_file(resolved):
                    reason = (
                        f"video file not found: {resolved} (relative paths resolve against {root}; pass data_root "
                        f"or set {DATA_ROOT_ENV_VAR})"
                    )
            if reason is not None:
                reason = _one_line(reason)
                if strict:
                    raise ManifestError(path, line_number, reason)
                report.bad_rows.append((line_number, reason))
                continue
            first_line_of_id[row_id] = line_number
            row["video_path"] = str(resolved)
            report.rows.append(row)
    return report


def _describe_bad_rows(bad_rows: list[tuple[int, str]]) -> str:
    described = "; ".join(f"line {line}: {reason}" for line, reason in bad_rows[:_MAX_LOGGED_BAD_ROWS])
    if len(bad_rows) > _MAX_LOGGED_BAD_ROWS:
        described += f"; and {len(bad_rows) - _MAX_LOGGED_BAD_ROWS} more"
    return described


def load_manifest_dataset(
    path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    strict: bool = False,
    require_target: bool = True,
    check_files: bool = False,
) -> datasets.Dataset:
    """Read a manifest into a `datasets.Dataset`, skipping (and logging) bad rows unless `strict`.

    Columns are the required fields in a fixed order, then `metadata` as a JSON string (its keys vary between rows
    and datasets, and a JSON string keeps the Arrow schema the same for every manifest; decode with `json.loads`),
    then `span` (`[start, end]` or null) and any pass-through fields in first-seen order. Rows lacking a pass-through
    field get null there.

    Args:
        path (`str` or `os.PathLike`): The JSONL manifest.
        data_root (`str` or `os.PathLike`, *optional*): Root for relative video paths; see [`resolve_data_root`].
        strict (`bool`, *optional*, defaults to `False`): Raise [`ManifestError`] on the first bad row.
        require_target (`bool`, *optional*, defaults to `True`): See [`read_manifest`].
        check_files (`bool`, *optional*, defaults to `False`): See [`read_manifest`].

    Returns:
        `datasets.Dataset`: One example per valid row.

    Raises:
        [`ManifestError`]: See [`read_manifest`]; also when a pass-through field has incompatible types across rows.
    """
    # Imported here: `datasets` is slow to import and only this function needs it.
    import datasets
    import pyarrow

    report = read_manifest(
        path, data_root=data_root, strict=strict, require_target=require_target, check_files=check_files
    )
    if report.bad_rows:
        logger.warning(
            "Skipped %d bad row(s) of %d in manifest %s: %s",
            len(report.bad_rows),
            len(report.bad_rows) + len(report.rows),
            os.fspath(path),
            _describe_bad_rows(report.bad_rows),
        )

    # `datasets.List` replaced `Sequence` in datasets 4; the project still allows datasets 3.
    list_feature = getattr(datasets, "List", None) or datasets.Sequence
    features = datasets.Features(
        {name: datasets.Value("string") for name in REQUIRED_FIELDS}
        | {"metadata": datasets.Value("string"), "span": list_feature(datasets.Value("float64"))}
    )
    extra_names: list[str] = []
    for row in report.rows:
        extra_names.extend(name for name in row if name not in features and name not in extra_names)
    columns: dict[str, list] = {name: [row.get(name) for row in report.rows] for name in (*features, *extra_names)}
    columns["metadata"] = [
        json.dumps(metadata, ensure_ascii=False, sort_keys=True) for metadata in columns["metadata"]
    ]
    columns["span"] = [None if span is None else [float(x) for x in span] for span in columns["span"]]
    try:
        if extra_names:
            # Pass-through fields keep whatever type Arrow infers for them.
            inferred = datasets.Dataset.from_dict({name: columns[name] for name in extra_names}).features
            features = datasets.Features({**features, **inferred})
        return datasets.Dataset.from_dict(columns, features=features)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError, TypeError, ValueError) as error:
        raise ManifestError(
            path, None, f"pass-through fields {extra_names} have incompatible types across rows ({error})"
        ) from error


@contextlib.contextmanager
def _atomic_text_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text handle whose content replaces `path` in one `os.replace` when the block ends without an error: readers
    see the old file or the new one, never half of one, and a failure mid-write leaves no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            # Make the content durable before the rename publishes it.
            os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); give it the replaced file's mode, or the usual 0644.
        os.chmod(temporary_name, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `write_manifest`); parent folders are created."""
    with _atomic_text_file(path) as handle:
        handle.write(text)


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write rows as JSONL (one JSON object per line, UTF-8), atomically.

    The rows go to a temporary file in the same directory, which then replaces `path` in one `os.replace`, so a
    crash or an exception mid-write leaves the previous manifest intact and no partial file behind.

    Args:
        path (`str` or `os.PathLike`): Destination; parent directories are created.
        rows (`Iterable[dict]`): The rows; each must be JSON-serializable (NaN and infinity are rejected, as JSON has
            no spelling for them).
    """
    with _atomic_text_file(path) as handle:
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(f"manifest rows must be dicts, got {type(row).__name__}")
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

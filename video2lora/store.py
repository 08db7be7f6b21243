"""The adapter store: internalize a video once, reuse its adapter from then on.

A store is a plain folder of PEFT adapter folders, one per key, so a serving engine (vLLM's `--lora-modules` or
`/v1/load_lora_adapter`) can read it directly. A key is a hash of everything an adapter depends on: the video's
content (SHA-256 of the file, not its name or path), the hypernetwork (its reference, Hub revision and a fingerprint
of its weights, so a checkpoint retrained in place misses), the base's fingerprint, the sampling settings and the
span and segments. Writes are atomic (`Video2LoRAAdapter.save_pretrained` renames a finished folder into place), so
several processes may fill one store at once; the last writer of a key wins with a complete adapter. The store keeps
at most `max_bytes`, evicting the least recently used adapters first.

```python
store = AdapterStore()                        # $VIDEO2LORA_STORE, else ~/.cache/huggingface/video2lora/adapters
adapter = store.internalize(model, "clip.mp4")  # internalizes the first time, reads the folder after that
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modeling_video2lora import Video2LoRAAdapter, Video2LoRAModel
    from video_processing_video2lora import SampledVideo

__all__ = ["DEFAULT_MAX_BYTES", "AdapterStore", "StoreEntry", "default_store_root", "sha256_file"]

DEFAULT_MAX_BYTES = 10 * 2**30
# Bumped when what a key covers changes, so old entries simply stop matching.
_KEY_VERSION = 2  # 2: segments are read in their place in the video (`place_segment`)


def default_store_root() -> Path:
    """`$VIDEO2LORA_STORE`, else `video2lora/adapters` under the Hugging Face cache home (`$HF_HOME`)."""
    if os.environ.get("VIDEO2LORA_STORE"):
        return Path(os.environ["VIDEO2LORA_STORE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "video2lora" / "adapters"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so that long videos never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreEntry:
    """One stored adapter.

    Args:
        key (`str`): Its key, which is also its folder's name (and a fine LoRA name for a server).
        path (`Path`): The PEFT adapter folder.
        size_bytes (`int`): Bytes on disk.
        last_used (`float`): When it was last written or read (seconds since the epoch).
        video_name (`str`, *optional*): The video's file name when it was stored, from its provenance.
    """

    key: str
    path: Path
    size_bytes: int
    last_used: float
    video_name: str | None


class AdapterStore:
    """
    A folder of adapters keyed by what made them (see the module docstring).

    Args:
        root (`str` or `os.PathLike`, *optional*): The store's folder; [`default_store_root`] when `None`.
        max_bytes (`int`, *optional*, defaults to 10 GiB): Size bound; least recently used adapters go first.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root) if root is not None else default_store_root()
        self.max_bytes = max_bytes

    # ---- keys -----------------------------------------------------------------------------------------------------

    @staticmethod
    def model_identity(model: Video2LoRAModel, reference: str | None = None) -> dict[str, Any]:
        """What identifies a hypernetwork and its base, whatever folder it was loaded from."""
        from .teacher import weights_fingerprint

        return {"reference": reference, "revision": getattr(model.config, "_commit_hash", None),
                "weights": weights_fingerprint(model.hypernetwork), "base": model.fingerprint,
                "instruction": model.config.instruction, "segment_composition": model.config.segment_composition}

    @staticmethod
    def key(video_sha256: str, model_identity: dict[str, Any], sampling: dict[str, Any], *,
            start: float | None = None, end: float | None = None, segments: int | None = None,
            segment_seconds: float | None = None, max_rank: int | None = None, segment_overlap: int = 0,
            segment_layout: str = "contiguous") -> str:
        """The key of an adapter: a hash of the video's content, the model and every setting that shapes the
        adapter."""
        # An overlap or a layout joins the key only when not the default, so the keys of adapters stored before they
        # existed still match.
        segmenting = [segments, segment_seconds, max_rank] + ([segment_overlap] if segment_overlap else [])
        if segment_layout != "contiguous" and (segments is not None or segment_seconds is not None):
            segmenting.append(segment_layout)
        material = {"version": _KEY_VERSION, "video": video_sha256, "model": model_identity, "sampling": sampling,
                    "span": [start, end], "segments": segmenting}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / key

    # ---- reading and writing --------------------------------------------------------------------------------------

    def get(self, key: str) -> Video2LoRAAdapter | None:
        """The stored adapter of `key`, or `None`; a read counts as a use (it moves to the back of eviction)."""
        from modeling_video2lora import AdapterMismatchError, AdapterReadError, Video2LoRAAdapter

        folder = self.path(key)
        try:
            adapter = Video2LoRAAdapter.from_pretrained(folder)
            os.utime(folder)
        except FileNotFoundError:  # never stored, or evicted by another process a moment ago
            return None
        except (AdapterReadError, AdapterMismatchError):  # damaged on disk: make it again rather than fail
            self.remove(key)
            return None
        return adapter

    def put(self, key: str, adapter: Video2LoRAAdapter, *, extra_files: dict[str, str] | None = None,
            dtype=None) -> Path:
        """Store `adapter` under `key` (atomically, replacing any earlier one), then keep the store within its
        bound."""
        self.root.mkdir(parents=True, exist_ok=True)
        adapter.save_pretrained(self.path(key), dtype=dtype, extra_files=extra_files)
        self.evict(keep=key)
        return self.path(key)

    def internalize(self, model: Video2LoRAModel, video: str | os.PathLike, *, reference: str | None = None,
                    start: float | None = None, end: float | None = None, num_frames: int | None = None,
                    segments: int | None = None, segment_seconds: float | None = None, max_rank: int | None = None,
                    segment_batch_size: int = 1, segment_overlap: int = 0, segment_layout: str = "contiguous",
                    extra_files: Callable[[Video2LoRAAdapter, SampledVideo], dict[str, str]] | None = None,
                    ) -> tuple[Video2LoRAAdapter, bool]:
        """
        The adapter of a video file: from the store when it holds one for this video, model and settings, else
        internalized now and stored.

        Args:
            model: the Video2LoRA model.
            video: a video file (its content, not its path, is part of the key).
            reference: how the model was named (Hub id or folder), recorded in the key.
            start / end / num_frames / segments / segment_seconds / max_rank: as for `model.internalize`.
            segment_batch_size: as for `model.internalize`; not part of the key (the same adapter up to rounding).
            segment_overlap / segment_layout: as for `model.internalize`.
            extra_files: makes the side files (provenance, card) of a new adapter from it and its frames.

        Returns:
            `(adapter, from_store)`.
        """
        sampling = model.processor.sampling_kwargs(num_frames)
        key = self.key(sha256_file(video), self.model_identity(model, reference), sampling, start=start, end=end,
                       segments=segments, segment_seconds=segment_seconds, max_rank=max_rank,
                       segment_overlap=segment_overlap, segment_layout=segment_layout)
        stored = self.get(key)
        if stored is not None:
            return stored, True
        frames = model.processor.sample_video(video, start=start, end=end, num_frames=num_frames)
        if segments is None and segment_seconds is None:
            adapter = model.internalize(frames)
        else:
            adapter = model.internalize(video, start=start, end=end, num_frames=num_frames, segments=segments,
                                        segment_seconds=segment_seconds, max_rank=max_rank,
                                        segment_batch_size=segment_batch_size, segment_overlap=segment_overlap,
                                        segment_layout=segment_layout)
        self.put(key, adapter, extra_files=extra_files(adapter, frames) if extra_files else None)
        # What was stored (in the base's dtype), so that this answer and every later one use the same weights.
        return self.get(key) or adapter, False

    # ---- housekeeping ---------------------------------------------------------------------------------------------

    def entries(self) -> list[StoreEntry]:
        """Every stored adapter, least recently used first."""
        found = []
        for folder in self._folders():
            try:
                size = sum(path.stat().st_size for path in folder.iterdir())
                last_used = folder.stat().st_mtime
                provenance = folder / "video2lora.json"
                name = json.loads(provenance.read_text())["video"]["name"] if provenance.is_file() else None
            except (OSError, ValueError, KeyError, TypeError):  # being replaced or evicted right now
                continue
            found.append(StoreEntry(folder.name, folder, size, last_used, name))
        return sorted(found, key=lambda entry: entry.last_used)

    def remove(self, key: str) -> bool:
        """Delete one adapter; `False` when it was not there. It disappears at once (renamed away, then deleted)."""
        folder = self.path(key)
        try:
            aside = Path(tempfile.mkdtemp(dir=self.root, prefix=".evicted-"))
            os.rename(folder, aside / key)
        except FileNotFoundError:
            shutil.rmtree(aside, ignore_errors=True)
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def clear(self) -> int:
        """Delete every adapter; returns how many."""
        return sum(self.remove(entry.key) for entry in self.entries())

    def evict(self, *, keep: str | None = None) -> list[str]:
        """Remove least recently used adapters until the store fits `max_bytes` (never `keep`, the one just
        written); returns the evicted keys."""
        entries = self.entries()
        total = sum(entry.size_bytes for entry in entries)
        evicted = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.key == keep:
                continue
            if self.remove(entry.key):
                evicted.append(entry.key)
            total -= entry.size_bytes
        return evicted

    def _folders(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return iter(())
        return (path for path in self.root.iterdir() if path.is_dir() and not path.name.startswith("."))


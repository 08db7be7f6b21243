"""Video2LoRA: a frozen SmolVLM2 reads a video once, a perceiver hypernetwork turns what it read into a LoRA, and the
same frozen SmolVLM2 plus that LoRA answers later questions with zero visual tokens in its context.

This is a Hub file: it imports only torch, transformers, peft, its sibling Hub files and the standard library, so
`AutoModel.from_pretrained(..., trust_remote_code=True)` works where this project was never installed.
"""

from __future__ import annotations

import copy
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.utils import logging

try:  # loaded as a Hub module (a package) by trust_remote_code, or as installed top-level modules
    from .configuration_video2lora import Video2LoRAConfig
    from .families_video2lora import FAMILIES, SMOLVLM, VLMFamily, family_of
    from .perceiver_video2lora import LoraHead, PerceiverHypernetwork
    from .pipeline_video2lora import TASK, Video2LoRAPipeline
    from .processing_video2lora import Video2LoRAProcessor
    from .video_processing_video2lora import (
        SEGMENT_LAYOUTS,
        SampledVideo,
        open_with_previous,
        place_segment,
        segment_fraction,
        segment_spans,
        video_duration,
    )
except ImportError:
    from configuration_video2lora import Video2LoRAConfig
    from families_video2lora import FAMILIES, SMOLVLM, VLMFamily, family_of
    from perceiver_video2lora import LoraHead, PerceiverHypernetwork
    from pipeline_video2lora import TASK, Video2LoRAPipeline
    from processing_video2lora import Video2LoRAProcessor
    from video_processing_video2lora import (
        SEGMENT_LAYOUTS,
        SampledVideo,
        open_with_previous,
        place_segment,
        segment_fraction,
        segment_spans,
        video_duration,
    )

logger = logging.get_logger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
# `base_model.model.<decoder layers path>.<i>.<module>.lora_<A|B>.weight`; the path must be a known family's.
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w.-]+)?")
_PEFT_KEY = re.compile(r"^base_model\.model\.(.+)\.(\d+)\.((?:mlp|self_attn)\.\w+)\.lora_([AB])\.weight$")


class AdapterMismatchError(ValueError):
    """An adapter was made for another base model (or another layout) than the one asked to use it."""


class AdapterReadError(ValueError):
    """An adapter folder whose files cannot be read: missing permissions, an empty, truncated or foreign weights file,
    or a malformed `adapter_config.json`. The message is one line."""


def base_fingerprint(base_config) -> str:
    """Short hash of the text decoder's shape: adapters only fit bases that agree on it."""
    text = base_config.text_config
    shape = {k: getattr(text, k, None) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                  "num_attention_heads", "num_key_value_heads", "vocab_size")}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Video2LoRAAdapter:
    """
    A batch of generated LoRA adapters, one per video, for the text decoder of the frozen base.

    Attributes:
        lora_A: per target module (name relative to a decoder layer), `[B, L, r, in_features]`.
        lora_B: per target module, `[B, L, out_features, r]`.
        scale: multiplier of the update `scale * B (A x)`.
        base_model_name_or_path / base_model_revision: the base the adapter was made for: a Hub id or an absolute
            folder, what `PeftModel.from_pretrained` and a server resolve from anywhere.
        fingerprint: `base_fingerprint` of that base; checked before the adapter is applied.
        base_dtype: the base's dtype (e.g. `"bfloat16"`); what `save_pretrained` writes by default.
        decoder_layers_path: where the base's decoder layers are (its family's); PEFT keys are built from it.
        shared_rank: how many trailing rank slots are the video-independent bias block, which composition keeps once.
    """

    lora_A: dict[str, torch.Tensor]
    lora_B: dict[str, torch.Tensor]
    scale: float
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    fingerprint: str | None = None
    metadata: dict = field(default_factory=dict)
    base_dtype: str | None = None
    decoder_layers_path: str = SMOLVLM.decoder_layers_path
    shared_rank: int = 0

    def __len__(self) -> int:
        return next(iter(self.lora_A.values())).shape[0]

    def __getitem__(self, index) -> Video2LoRAAdapter:
        """Select videos: an int keeps the batch axis (size 1); a slice, list or tensor gathers rows."""
        index = [index] if isinstance(index, int) else index
        return self._map(lambda t: t[index])

    @property
    def rank(self) -> int:
        return next(iter(self.lora_A.values())).shape[2]

    @property
    def num_layers(self) -> int:
        return next(iter(self.lora_A.values())).shape[1]

    def to(self, *args, **kwargs) -> Video2LoRAAdapter:
        """`Tensor.to` on every tensor (device and/or dtype); like `Tensor.to`, returns `self` when nothing moves, so
        per-adapter caches keyed on the object stay valid."""
        moved = self._map(lambda t: t.to(*args, **kwargs))
        unchanged = all(moved.lora_A[k] is v for k, v in self.lora_A.items()) and all(
            moved.lora_B[k] is v for k, v in self.lora_B.items())
        return self if unchanged else moved

    def detach(self) -> Video2LoRAAdapter:
        return self._map(torch.Tensor.detach)

    def _map(self, fn) -> Video2LoRAAdapter:
        return replace(self, lora_A={k: fn(v) for k, v in self.lora_A.items()},
                       lora_B={k: fn(v) for k, v in self.lora_B.items()})

    def scaled_B(self) -> dict[str, torch.Tensor]:
        """B with the scale folded in, so that the update is plain `B (A x)`."""
        return {name: b * self.scale for name, b in self.lora_B.items()}

    @classmethod
    def compose(cls, adapters: Sequence[Video2LoRAAdapter], mode: str = "concat") -> Video2LoRAAdapter:
        """
        Compose adapters made from non-overlapping segments of one video, in rank space.

        `concat` stacks the video-dependent ranks, `A = [A_1; A_2]`, `B = [B_1, B_2]`, which sums those updates;
        `average` scales each by `1/k`. The video-independent bias block (the trailing `shared_rank` slots, the same
        in every adapter of one hypernetwork) is kept once, whatever the number of parts: stacking it too would count
        it k times, and averaging would divide it by k. Each input may be a batch; they must agree in batch size and
        base.
        """
        if mode not in ("concat", "average"):
            raise ValueError(f"mode must be 'concat' or 'average', got {mode!r}.")
        if not adapters:
            raise ValueError("compose needs at least one adapter.")
        first = adapters[0]
        for other in adapters[1:]:
            if other.fingerprint != first.fingerprint or other.lora_A.keys() != first.lora_A.keys():
                raise AdapterMismatchError("Only adapters for the same base and target modules can be composed.")
            if len(other) != len(first):
                raise ValueError(f"Adapters hold different batch sizes: {len(first)} and {len(other)}.")
            if other.shared_rank != first.shared_rank:
                raise AdapterMismatchError("Adapters with bias blocks of different ranks cannot be composed.")
        shared, weight = first.shared_rank, 1.0 / len(adapters) if mode == "average" else 1.0
        lora_a, lora_b = {}, {}
        for name in first.lora_A:
            a_parts = [adapter.lora_A[name] for adapter in adapters]  # [B, L, r, in]
            b_parts = [adapter.scaled_B()[name] for adapter in adapters]  # [B, L, out, r]
            # Each part's own slots come first and its bias block last; a composed part has more own slots.
            own = [part.shape[2] - shared for part in a_parts]
            blocks_a = [part[:, :, :count] for part, count in zip(a_parts, own, strict=True)]
            blocks_b = [part[..., :count] * weight for part, count in zip(b_parts, own, strict=True)]
            if shared:
                bias_a = a_parts[0][:, :, own[0]:]
                if any(not torch.equal(part[:, :, count:], bias_a) for part, count in zip(a_parts, own, strict=True)):
                    raise AdapterMismatchError("The adapters' bias blocks differ: they come from different "
                                               "hypernetworks and cannot be composed.")
                blocks_a.append(bias_a)
                blocks_b.append(b_parts[0][..., own[0]:])
            lora_a[name], lora_b[name] = torch.cat(blocks_a, dim=2), torch.cat(blocks_b, dim=3)
        parts = sum(adapter.metadata.get("composed", {}).get("parts", 1) for adapter in adapters)
        return replace(first, lora_A=lora_a, lora_B=lora_b, scale=1.0,
                       metadata={**first.metadata, "composed": {"mode": mode, "parts": parts}})

    def compose_groups(self, groups: torch.Tensor | Sequence[int]) -> Video2LoRAAdapter:
        """
        Compose the rows of this batch group by group: row `g` of the result is `compose` (`concat`, the bias block
        once) of the rows `i` with `groups[i] == g`, in their order. Groups of fewer parts get zero slots, which add
        nothing to the update, so one batch can hold videos cut into different numbers of segments. Differentiable:
        the trainer composes segment adapters exactly as `Video2LoRAModel.internalize(segments=k)` does.

        Args:
            groups: `[C]` the group of each row, every value of `0..G-1` present.
        """
        index = group_index(groups, len(self))  # [G, most]; row len(self) is an all-zero part, the padding
        most, own = index.shape[1], self.rank - self.shared_rank
        first = index[:, 0]
        lora_a, lora_b = {}, {}
        for name, scaled_b in self.scaled_B().items():
            a, b = self.lora_A[name], scaled_b  # [C, L, r, in], [C, L, out, r]
            a_own = torch.cat([a[:, :, :own], a.new_zeros(1, *a.shape[1:2], own, a.shape[3])])
            b_own = torch.cat([b[..., :own], b.new_zeros(1, *b.shape[1:3], own)])
            parts_a = a_own[index].permute(0, 2, 1, 3, 4).flatten(2, 3)  # [G, most, L, own, in] -> [G, L, most*own, in]
            parts_b = b_own[index].permute(0, 2, 3, 1, 4).flatten(3, 4)  # [G, most, L, out, own] -> [G, L, out, most*own]
            lora_a[name] = torch.cat([parts_a, a[first, :, own:]], dim=2)
            lora_b[name] = torch.cat([parts_b, b[first, ..., own:]], dim=3)
        return replace(self, lora_A=lora_a, lora_B=lora_b, scale=1.0,
                       metadata={**self.metadata, "composed": {"mode": "concat", "parts": most}})

    def compress(self, rank: int) -> Video2LoRAAdapter:
        """
        A rank-`rank` adapter whose update is as close as possible to this one's (a truncated SVD), so that a composed
        adapter fits a server's maximum LoRA rank. The bias block is kept exactly while it fits (`rank` above
        `shared_rank`) and the video-dependent part gets the remaining `rank - shared_rank` directions, the best ones
        for that part; otherwise the whole update is compressed. Exact when `rank` is at least the current rank (the
        adapter is returned unchanged). The update is never materialized: with `B = Q_b R_b` and `A^T = Q_a R_a`,
        `B A = Q_b (R_b R_a^T) Q_a^T`, and only the small `[r, r]` core is decomposed.
        """
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}.")
        if rank >= self.rank:
            return self
        shared = self.shared_rank if rank > self.shared_rank else 0
        own, kept = self.rank - shared, rank - shared
        lora_a, lora_b = {}, {}
        for name, scaled_b in self.scaled_B().items():
            lora = self.lora_A[name]
            new_a = lora.new_empty(*lora.shape[:2], rank, lora.shape[3])  # [B, L, rank, in]
            new_b = scaled_b.new_empty(*scaled_b.shape[:3], rank)  # [B, L, out, rank]
            for layer in range(lora.shape[1]):  # one layer at a time: the float64 work stays one layer's size
                a, b = lora[:, layer, :own].double(), scaled_b[:, layer, :, :own].double()  # [B, r, in], [B, out, r]
                q_b, r_b = torch.linalg.qr(b)  # [B, out, r], [B, r, r]
                q_a, r_a = torch.linalg.qr(a.transpose(-1, -2))  # [B, in, r], [B, r, r]
                u, singular, v_h = torch.linalg.svd(r_b @ r_a.transpose(-1, -2))
                root = singular[..., :kept].sqrt()
                new_b[:, layer, :, :kept] = (q_b @ u[..., :kept]) * root[..., None, :]
                new_a[:, layer, :kept] = root[..., :, None] * (v_h[..., :kept, :] @ q_a.transpose(-1, -2))
            new_a[:, :, kept:] = lora[:, :, own:]
            new_b[..., kept:] = scaled_b[..., own:]
            lora_a[name], lora_b[name] = new_a, new_b
        return replace(self, lora_A=lora_a, lora_B=lora_b, scale=1.0, shared_rank=shared,
                       metadata={**self.metadata, "compressed_from_rank": self.rank})

    # ---- PEFT export ----------------------------------------------------------------------------------------------

    def to_peft(self):
        """
        Export as PEFT: returns `(peft.LoraConfig, state_dict)` in PEFT's on-disk key format.

        The scale is folded into B and `r = lora_alpha = rank`, so PEFT's own `lora_alpha / r` factor is 1 and
        `PeftModel` reproduces our runtime output exactly. `target_modules` is a regex anchored to the text decoder,
        because the vision tower has linear layers of the same names.
        """
        from peft import LoraConfig

        if len(self) != 1:
            raise ValueError(f"to_peft exports one adapter; this batch holds {len(self)}. Select one: adapter[i].")
        state_dict = {}
        for name, lora_b in self.scaled_B().items():
            for layer in range(self.num_layers):
                prefix = f"base_model.model.{self.decoder_layers_path}.{layer}.{name}"
                state_dict[f"{prefix}.lora_A.weight"] = self.lora_A[name][0, layer].contiguous()
                state_dict[f"{prefix}.lora_B.weight"] = lora_b[0, layer].contiguous()
        names = "|".join(re.escape(name) for name in self.lora_A)
        config = LoraConfig(
            r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, bias="none",
            target_modules=rf"{re.escape(self.decoder_layers_path)}\.\d+\.({names})",
            base_model_name_or_path=self.base_model_name_or_path, revision=self.base_model_revision,
        )
        return config, state_dict

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | str | None = None, *,
                        extra_files: dict[str, str] | None = None) -> None:
        """
        Write a standard PEFT folder (`adapter_config.json`, `adapter_model.safetensors`) for one adapter.

        The folder appears whole or not at all: everything is written into a temporary sibling, which then replaces
        `save_directory`. Files are world-readable (0644), like every file PEFT writes, so that a server running as
        another user can load them.

        Args:
            save_directory: the adapter folder.
            dtype: dtype of the saved weights; defaults to the base's (`base_dtype`, bf16 for SmolVLM2).
            extra_files: more text files to write into the folder, by name (provenance, a model card).
        """
        from safetensors.torch import save_file

        config, state_dict = self.to_peft()
        dtype = dtype if dtype is not None else self.base_dtype or "float32"
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        state_dict = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
        metadata = {"format": "pt", "video2lora_fingerprint": self.fingerprint or "",
                    "video2lora_shared_rank": str(self.shared_rank),
                    "video2lora_metadata": json.dumps(self.metadata)}
        target = Path(save_directory).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            config.save_pretrained(staging)
            save_file(state_dict, str(staging / ADAPTER_WEIGHTS_NAME), metadata=metadata)
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text, encoding="utf-8")
            for path in staging.iterdir():
                path.chmod(0o644)
            staging.chmod(0o755)  # mkdtemp makes it private
            _replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Video2LoRAAdapter:
        """
        Read a PEFT adapter folder written by `save_pretrained` (or any PEFT LoRA on the same modules).

        Only safetensors weights are read: a pickle under the weights' name is refused, never unpickled.

        Args:
            directory: the adapter folder, holding `adapter_config.json` and `adapter_model.safetensors`.

        Raises:
            `FileNotFoundError`: `directory` lacks one of the two files.
            [`AdapterReadError`]: A file cannot be read (permission denied), `adapter_config.json` is not a JSON
                object with sensible LoRA fields, or the weights are empty, not a safetensors file, truncated or
                otherwise corrupt (malformed tensors, non-finite values, an A without its B).
            [`AdapterMismatchError`]: A readable adapter of another kind, base model or layout.
        """
        from safetensors import SafetensorError, safe_open

        directory = Path(directory)
        weights, config_file = directory / ADAPTER_WEIGHTS_NAME, directory / ADAPTER_CONFIG_NAME
        if not weights.is_file() or not config_file.is_file():
            raise FileNotFoundError(f"'{directory}' is not an adapter folder: it needs {ADAPTER_CONFIG_NAME} and "
                                    f"{ADAPTER_WEIGHTS_NAME}.")

        def unreadable(path: Path, reason: str, hint: str = "internalize the video again") -> AdapterReadError:
            # Library messages may span lines; the error must stay one line for logs and the command line.
            shown_path = str(path).replace("\r", "\\r").replace("\n", "\\n")
            reason = " ".join(str(reason).split())
            return AdapterReadError(f"Cannot read adapter file '{shown_path}': {reason}; {hint}.")

        def read(path: Path, size: int = -1) -> bytes:
            """The first `size` bytes of `path` (all of it by default)."""
            try:
                with path.open("rb") as handle:
                    return handle.read(size)
            except PermissionError:
                error = unreadable(path, "permission denied", "make the file readable (chmod a+r)")
            except OSError as os_error:
                reason = f"the file cannot be read ({os_error.strerror or os_error})"
                error = unreadable(path, reason, "check the disk")
            raise error

        def shown(value) -> str:
            if isinstance(value, (str, int, float, type(None))):
                return json.dumps(value)[:40]
            return f"a JSON {'object' if isinstance(value, dict) else 'array'}"

        config_bytes = read(config_file)
        try:
            # From bytes, so that json detects the encoding and bad UTF-8 is reported like any other malformed JSON.
            peft_config = json.loads(config_bytes)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, absurd integers
            raise unreadable(config_file, f"it is not valid JSON ({getattr(error, 'msg', error)})") from None
        if not isinstance(peft_config, dict):
            raise unreadable(config_file, f"it holds a JSON {type(peft_config).__name__}, not an object")
        if peft_config.get("peft_type", "LORA") != "LORA":
            raise AdapterMismatchError(f"'{directory}' holds a {shown(peft_config['peft_type'])} adapter, not a LoRA.")
        alpha, rank = peft_config.get("lora_alpha", 1), peft_config.get("r", 1)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise unreadable(config_file, f"'r' must be a positive integer, got {shown(rank)}")
        # `not abs(x) < inf` is true for NaN and the infinities alike.
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not abs(alpha) < float("inf"):
            raise unreadable(config_file, f"'lora_alpha' must be a finite number, got {shown(alpha)}")
        for name in ("base_model_name_or_path", "revision"):
            if not isinstance(peft_config.get(name), (str, type(None))):
                raise unreadable(config_file, f"'{name}' must be a string or null, got {shown(peft_config[name])}")

        def damage(message: str) -> str:
            """What is wrong with a weights file safetensors refused, in words (its own message is terse)."""
            size = weights.stat().st_size
            head = read(weights, 9)
            if size == 0:
                return "the file is empty (0 bytes)"
            if head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a bare pickle
                return "it is not a safetensors file but a pickle (e.g. torch.save output), which is never loaded"
            if len(head) < 9 or head[8:9] != b"{":  # 8 bytes of header length, then the JSON header
                return "it is not a safetensors file"
            header_end = 8 + int.from_bytes(head[:8], "little")
            if header_end > size:
                return f"the file is truncated: its header alone needs {header_end} bytes but the file holds {size}"
            try:
                header = json.loads(read(weights, header_end)[8:])
                data_end = header_end + max(end for key, info in header.items() if key != "__metadata__"
                                            for end in info["data_offsets"])
            except Exception:  # a header too broken to measure: safetensors' own message is all there is
                data_end = None
            if isinstance(data_end, int) and data_end > size:
                return f"the file is truncated: its tensors need {data_end} bytes but the file holds {size}"
            return f"the file is corrupt ({message})"

        read(weights, 0)  # permission problems are reported as such, not as damage
        pieces: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
        known_paths = {family.decoder_layers_path for family in FAMILIES.values()}
        paths = set()
        try:
            with safe_open(str(weights), framework="pt") as handle:
                metadata = handle.metadata() or {}
                for key in handle.keys():
                    match = _PEFT_KEY.match(key)
                    if match is None or match[1] not in known_paths:
                        raise AdapterMismatchError(
                            f"'{directory}' has key '{key}', which is not a LoRA on the text decoder of a known VLM "
                            f"family ({sorted(FAMILIES)}); it was made for another base model."
                        )
                    paths.add(match[1])
                    layer, name, which = int(match[2]), match[3], match[4]
                    pieces.setdefault((name, which), {})[layer] = handle.get_tensor(key)
        except SafetensorError as error:
            raise unreadable(weights, damage(str(error))) from None
        if len(paths) > 1:
            raise AdapterMismatchError(f"'{directory}' mixes LoRAs of several decoders: {sorted(paths)}.")
        if not pieces:
            raise unreadable(weights, "it holds no LoRA weights")
        lora_a, lora_b = {}, {}
        for (name, which), by_layer in pieces.items():
            if sorted(by_layer) != list(range(len(by_layer))):
                raise AdapterMismatchError(f"'{directory}' covers layers {sorted(by_layer)} of '{name}'; "
                                           "Video2LoRA adapters cover every decoder layer.")
            layers = [by_layer[i] for i in range(len(by_layer))]
            # Damage that keeps the safetensors structure valid (a flipped byte in a shape or dtype, in the data)
            # would otherwise surface later, far from the file, as a shape error or NaN answers.
            first = layers[0]
            if first.ndim != 2 or not first.is_floating_point() or any(
                    t.shape != first.shape or t.dtype != first.dtype for t in layers):
                raise unreadable(weights, f"its '{name}' lora_{which} weights are malformed (shapes "
                                          f"{sorted({tuple(t.shape) for t in layers})}, dtypes "
                                          f"{sorted({str(t.dtype) for t in layers})}): the file is corrupt")
            if not all(torch.isfinite(t).all() for t in layers):
                raise unreadable(weights, f"its '{name}' lora_{which} weights hold NaN or infinite values: the file "
                                          "is corrupt")
            (lora_a if which == "A" else lora_b)[name] = torch.stack(layers)[None]
        for name in lora_a.keys() | lora_b.keys():
            a, b = lora_a.get(name), lora_b.get(name)
            if a is None or b is None or a.shape[1] != b.shape[1] or a.shape[2] != b.shape[3] or a.dtype != b.dtype:
                raise unreadable(weights, f"its '{name}' LoRA has A {None if a is None else tuple(a.shape)} and B "
                                          f"{None if b is None else tuple(b.shape)}, which do not pair up: the file "
                                          "is corrupt")
        ranks = {a.shape[2] for a in lora_a.values()}
        if len(ranks) > 1:
            raise AdapterMismatchError(f"'{directory}' has LoRAs of ranks {sorted(ranks)}; a Video2LoRA adapter has "
                                       "one rank.")
        if ranks != {rank}:
            raise unreadable(config_file, f"'r' is {rank} but the weights have rank {ranks.pop()}")
        try:
            extra = json.loads(metadata.get("video2lora_metadata") or "{}")
        except (ValueError, RecursionError) as error:
            reason = f"its video2lora_metadata is not valid JSON ({getattr(error, 'msg', error)})"
            raise unreadable(weights, reason) from None
        if not isinstance(extra, dict):
            raise unreadable(weights, f"its video2lora_metadata holds a JSON {type(extra).__name__}, not an object")
        try:
            shared_rank = _shared_rank(metadata.get("video2lora_shared_rank"))
        except ValueError:  # digits `int` does not read, such as "²"
            shared_rank = None
        if shared_rank is None or shared_rank > rank:
            reason = f"its video2lora_shared_rank {shown(metadata['video2lora_shared_rank'])} is not a rank <= {rank}"
            raise unreadable(weights, reason)
        stored_dtype = str(next(iter(lora_a.values())).dtype).removeprefix("torch.")
        return cls(lora_A=lora_a, lora_B=lora_b, scale=alpha / rank, base_dtype=stored_dtype,
                   decoder_layers_path=paths.pop(),
                   base_model_name_or_path=peft_config.get("base_model_name_or_path"),
                   base_model_revision=peft_config.get("revision"),
                   fingerprint=metadata.get("video2lora_fingerprint") or None, metadata=extra,
                   shared_rank=shared_rank)


@dataclass
class Video2LoRAOutput(ModelOutput):
    """
    Args:
        loss: the student's loss (base + generated LoRA, no video) on the labels, see [`student_loss`]; only when
            `labels` are given.
        logits: `[B, S, vocab]` student logits.
        adapter: the adapters generated for the batch.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    adapter: Video2LoRAAdapter | None = None


def group_index(groups: torch.Tensor | Sequence[int], count: int) -> torch.Tensor:
    """
    The rows of each group, in their order: `groups[i]` is the group (the video) of row `i` of `count` ->
    `[G, most]` row indices, groups of fewer rows padded with `count` (one past the last row, for an all-zero part).
    Composing adapters and stacking latents both gather with it, so they pair the same segments of the same video.
    """
    groups = [int(g) for g in groups]
    members = [[row for row, group in enumerate(groups) if group == g] for g in range(max(groups, default=-1) + 1)]
    if len(groups) != count or not members or not all(members):
        raise ValueError(f"groups must give each of the {count} rows a group 0..G-1, none empty; got {groups}.")
    most = max(map(len, members))
    return torch.tensor([rows + [count] * (most - len(rows)) for rows in members])


def stack_segment_latents(latents: torch.Tensor,
                          groups: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Put each video's segment latents side by side: `[C, L, n, d]` with `groups[c]` the video of context `c` ->
    `[G, L, most * n, d]` (segments in their order, videos with fewer segments padded) and the padding mask
    `[G, most * n]` (True = real; `None` when no video is padded), for `PerceiverHypernetwork.decode`.
    """
    # Context index per (video, segment); index C is an all-zero segment, the padding, which the mask hides.
    index = group_index(groups, len(latents)).to(latents.device)  # [G, most]
    padded = torch.cat([latents, latents.new_zeros(1, *latents.shape[1:])])
    stacked = padded[index].permute(0, 2, 1, 3, 4).flatten(2, 3)  # [G, most, L, n, d] -> [G, L, most * n, d]
    real = index < len(latents)  # [G, most]
    if bool(real.all()):
        return stacked, None
    return stacked, real.repeat_interleave(latents.shape[2], dim=1)  # [G, most * n]


def student_loss(logits: torch.Tensor, labels: torch.Tensor, *, teacher_top_ids: torch.Tensor | None = None,
                 teacher_top_logprobs: torch.Tensor | None = None, teacher_mask: torch.Tensor | None = None,
                 answer_weights: torch.Tensor | None = None, kl_weight: float = 0.0,
                 num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """
    The student's training loss: next-token cross-entropy on the labelled tokens plus `kl_weight` times
    `KL(teacher || student)` over the teacher's cached top-k, every token weighted by its row's `answer_weights`:

        loss = sum over labelled tokens t of  w_row(t) * (CE_t + kl_weight * KL_t)  /  N

    `N` is `num_items_in_batch` when given, else the number of labelled tokens of this batch. `N` counts tokens, not
    weights, so weighting some rows up raises their share of the gradient without shrinking everyone else's.

    Args:
        logits (`torch.Tensor` of shape `[B, S, V]`):
            Student logits; position `t` predicts token `t + 1`.
        labels (`torch.Tensor` of shape `[B, S]`):
            Target ids aligned with the input ids (they are shifted here, as in every causal LM), -100 where ignored.
            Position 0 is never a target.
        teacher_top_ids (`torch.Tensor` of shape `[B, S, k]`, *optional*):
            The teacher's top-k token ids for the label at each position.
        teacher_top_logprobs (`torch.Tensor` of shape `[B, S, k]`, *optional*):
            Their log-probs, `-inf` in padded slots; renormalized over the top-k here.
        teacher_mask (`torch.Tensor` of shape `[B, S]`, *optional*):
            Positions that have a teacher distribution; the KL is summed over those only.
        answer_weights (`torch.Tensor` of shape `[B]`, *optional*):
            Multiplier of every token's loss in each row (both terms).
        kl_weight (`float`, *optional*, defaults to 0):
            Weight of the KL term; 0 (or no `teacher_mask`) leaves the plain cross-entropy.
        num_items_in_batch (`torch.Tensor` or `int`, *optional*):
            Labelled tokens of every micro-batch (and, with `average_tokens_across_devices`, every process) of one
            optimizer step, as `Trainer` counts them: the summed loss divided by it accumulates to the gradient of one
            big batch.

    Returns:
        `torch.Tensor`: the scalar loss.
    """
    # Position t predicts token t + 1.
    targets = labels[:, 1:]  # [B, S-1]
    selected = targets != -100  # [B, S-1]
    logits = logits[:, :-1][selected].float()  # [T, V]: only labelled positions, never a full [B, S, V] float copy
    token_losses = nn.functional.cross_entropy(logits, targets[selected], reduction="none")  # [T]
    token_weights = None  # [T]
    if answer_weights is not None:
        token_weights = answer_weights.to(logits)[:, None].expand_as(targets)[selected]
        token_losses = token_losses * token_weights
    loss_sum = token_losses.sum()
    if kl_weight > 0 and teacher_mask is not None:
        has_teacher = teacher_mask[:, 1:][selected]  # [T]
        student = logits[has_teacher].log_softmax(-1)  # [T', V]
        ids = teacher_top_ids[:, 1:][selected][has_teacher]  # [T', k]
        teacher = teacher_top_logprobs[:, 1:][selected][has_teacher].float().log_softmax(-1)  # [T', k]
        probabilities = teacher.exp()
        # Padded top-k slots have probability 0; where() keeps 0 * (-inf) from turning into NaN.
        kl = torch.where(probabilities > 0, probabilities * (teacher - student.gather(-1, ids)), 0.0).sum(-1)  # [T']
        if token_weights is not None:
            kl = kl * token_weights[has_teacher]
        loss_sum = loss_sum + kl_weight * kl.sum()
    if num_items_in_batch is None:
        return loss_sum / selected.sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


class _ContextCaptured(Exception):
    """Raised by the last layer's hook: every needed state is read, so the rest of the VLM forward is skipped."""


class Video2LoRAPreTrainedModel(PreTrainedModel):
    config_class = Video2LoRAConfig
    base_model_prefix = "video2lora"
    main_input_name = "input_ids"
    # Activation checkpointing of the frozen base's student pass and of the perceiver's context encoding; see
    # `Video2LoRAModel._set_gradient_checkpointing`.
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, PerceiverHypernetwork):
            init.normal_(module.latents, std=std)
            init.normal_(module.output_queries, std=std)
            if module.layer_embedding is not None:
                init.normal_(module.layer_embedding, std=std)
            if module.position_projection is not None:
                init.zeros_(module.position_projection)
            if module.place_projection is not None:
                init.zeros_(module.place_projection)
        elif isinstance(module, LoraHead):
            # The features reaching the head are unit vectors, so a fan-in scale keeps rows of A near unit size.
            init.normal_(module.weight, std=module.weight.shape[-2] ** -0.5)
            init.zeros_(module.bias)
            init.ones_(module.a_scale)
            init.zeros_(module.b_scale)  # an untrained hypernetwork must leave the VLM unchanged
            if module.bias_a is not None:
                init.normal_(module.bias_a, std=module.in_features**-0.5)
                init.zeros_(module.bias_b)


class Video2LoRAModel(Video2LoRAPreTrainedModel):
    """
    The frozen base VLM (`self.vlm`, a SmolVLM2 or another registered family's model, see `families_video2lora.py`)
    plus the trainable perceiver hypernetwork (`self.hypernetwork`).

    The base is referenced, not copied: with `config.base_model_name_or_path` set, checkpoints hold only the
    hypernetwork and `from_pretrained` loads the base by id or folder. With it unset, the base is built from
    `config.base_config` with random weights and saved alongside (tests and tiny models).
    """

    # The vision tower reads at most this many frames per batch when a video is read (memory, not results: frames
    # are encoded independently).
    vision_chunk_frames: int = 16

    def __init__(self, config: Video2LoRAConfig, vlm: PreTrainedModel | None = None,
                 processor: Video2LoRAProcessor | None = None):
        if config.base_config is None and vlm is not None:
            # A copy: model init sets attention settings on its config, which must not leak into the live base.
            config.base_config = copy.deepcopy(vlm.config)
        super().__init__(config)
        self.hypernetwork = PerceiverHypernetwork(config)
        self.post_init()
        # Attached after post_init: the hypernetwork's initialization must never touch the base's weights.
        self.vlm = None
        if vlm is None and config.base_model_name_or_path is None:
            vlm = config.family.model_class(config.base_config)
        if vlm is not None:
            self.attach_base(vlm)
        self.processor = processor
        # Where the base really is, as emitted adapters name it: a Hub id, or an absolute folder (a relative one in
        # the config resolves against the checkpoint, which means nothing beside an adapter). Set by the loaders.
        self.base_model_reference = config.base_model_name_or_path

    # ---- loading and saving ---------------------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base_model_name_or_path: str, *, revision: str | None = None,
                  dtype: torch.dtype | str | None = None, **config_kwargs) -> Video2LoRAModel:
        """A fresh (untrained) hypernetwork for a base given by Hub id or folder."""
        config = Video2LoRAConfig(base_model_name_or_path=str(base_model_name_or_path),
                                  base_model_revision=revision, **config_kwargs)
        vlm, processor, reference = cls._load_base(config, dtype=dtype)
        model = cls(config, vlm=vlm, processor=processor)
        model.base_model_reference = reference
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, base_model=None, processor=None,
                        **kwargs) -> Video2LoRAModel:
        """
        Load the hypernetwork, then its frozen base (by id or folder) unless the base was saved alongside.

        Args:
            base_model (`PreTrainedModel`, *optional*): use this base (of the hypernetwork's family) instead of
                loading one.
            processor (`Video2LoRAProcessor`, *optional*): use this processor instead of loading one.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        source = pretrained_model_name_or_path
        if model.vlm is None:
            if base_model is None:
                base_model, loaded_processor, model.base_model_reference = cls._load_base(
                    model.config, relative_to=source, dtype=kwargs.get("dtype"),
                    device_map=kwargs.get("device_map"),
                )
                processor = processor or loaded_processor
            model.attach_base(base_model)
        if processor is None:
            # The tokenizer lookup reads this folder's config.json, whose custom code the caller already trusts.
            processor = _try_load_processor(source, model.config.family, trust_remote_code=True)
        model.processor = processor
        return model

    @staticmethod
    def _load_base(config: Video2LoRAConfig, relative_to=None, dtype=None, device_map=None):
        path = config.base_model_name_or_path
        if path.startswith(("./", "../")):
            if relative_to is None or not os.path.isdir(relative_to):
                raise ValueError(f"The base path '{path}' is relative to the hypernetwork folder, which is unknown.")
            path = os.path.join(relative_to, path)
            if not os.path.isdir(path):
                # Otherwise the Hub client reports a malformed repo id, which hides what is missing.
                raise ValueError(f"The base folder '{config.base_model_name_or_path}' (relative to the hypernetwork "
                                 f"folder) does not exist: expected it at '{os.path.normpath(path)}'.")
        if os.path.isdir(path):
            path = os.path.abspath(path)
        return (*load_base(path, revision=config.base_model_revision, dtype=dtype, device_map=device_map), path)

    def attach_base(self, vlm: PreTrainedModel) -> None:
        """Attach and freeze the base. It must match the architecture the hypernetwork was built for."""
        expected = base_fingerprint(self.config.base_config)
        if base_fingerprint(vlm.config) != expected:
            text = vlm.config.text_config
            raise AdapterMismatchError(
                f"This hypernetwork was built for a base with text config {self.config.text_config.to_dict()} "
                f"but got one with {text.num_hidden_layers} layers, hidden size {text.hidden_size} and intermediate "
                f"size {text.intermediate_size}. Load the base it was trained on."
            )
        vlm.requires_grad_(False)
        vlm.eval()
        self.vlm = vlm  # a referenced base stays out of checkpoints: see `save_pretrained`

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Save the hypernetwork (and the base only when it is a random one that cannot be loaded by id)."""
        if self.config.base_model_name_or_path is not None:
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("vlm.")}
        # `pipeline("video-to-lora", model=<this folder>, trust_remote_code=True)` finds its class through the config;
        # its file is copied with this one's relative imports.
        self.config.custom_pipelines = {TASK: {"impl": f"pipeline_video2lora.{Video2LoRAPipeline.__name__}",
                                               "pt": ["AutoModel"], "type": "multimodal"}}
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        if kwargs.get("is_main_process", True):
            if self.processor is not None:
                self.processor.save_pretrained(save_directory)
            # safetensors writes its files 0600 (a private temporary renamed into place); a checkpoint is for a server
            # or a colleague running as another user too, as an adapter folder is.
            for path in Path(save_directory).glob("*.safetensors"):
                path.chmod(path.stat().st_mode | 0o444)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vlm is not None:
            self.vlm.eval()  # frozen: never dropout, whatever the trainer asks
            if self.gradient_checkpointing:
                # A decoder layer checkpoints only in training mode. Only the layers' own flag follows `mode`
                # (their forward reads it for nothing else); everything inside them stays in eval mode.
                for layer in self._decoder_layers():
                    layer.training = mode
        return self

    # ---- activation checkpointing ---------------------------------------------------------------------------------

    gradient_checkpointing = False
    _gradient_checkpointing_func: Callable | None = None
    _checkpoint_every_n_layers = 1

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint,
                                    every_n_layers: int = 1) -> None:
        """
        Checkpoint what keeps activations for the backward pass (`activation_checkpointing_enable()` or
        `--gradient_checkpointing true` call this):

        - **the student pass**: each decoder layer of the frozen base, run on the question and answer tokens with the
          generated LoRA, keeps only its input; its activations are recomputed in the backward pass, with the same
          LoRA (the hooks of [`apply_adapter`] are put back for the recomputation, see `_checkpoint_decoder_layer`).
        - **the context encoding**: the perceiver's summary of each decoder layer's states over the video's context
          (`encode_layer`) keeps only those states. The base's own context pass runs without gradient and keeps
          nothing either way.

        The gradients are those of the plain forward (tested); `every_n_layers` checkpoints every n-th layer only.
        Only non-reentrant checkpointing applies: the student's gradient reaches the hypernetwork through the LoRA
        tensors the hooks hold, which are not inputs of the checkpointed function.
        """
        keywords = getattr(gradient_checkpointing_func, "keywords", {})
        if enable and keywords.get("use_reentrant", False):
            raise ValueError("Video2LoRAModel supports only non-reentrant activation checkpointing (use_reentrant=False):"
                             " the LoRA the student is trained through is not an input of the checkpointed layers.")
        if enable and "context_fn" in keywords:
            raise ValueError("Video2LoRAModel sets the checkpoint's `context_fn` itself (to put the LoRA back for the "
                             "recomputation); do not pass one.")
        self.gradient_checkpointing = enable
        self._gradient_checkpointing_func = gradient_checkpointing_func if enable else None
        self._checkpoint_every_n_layers = every_n_layers
        if self.vlm is None:
            return
        for index, layer in enumerate(self._decoder_layers()):
            layer.gradient_checkpointing = enable and index % every_n_layers == 0
            layer._gradient_checkpointing_func = (
                functools.partial(_checkpoint_decoder_layer, layer, gradient_checkpointing_func) if enable else None)
            layer.training = enable and self.training

    def enable_input_require_grads(self) -> None:
        """
        Does nothing. `activation_checkpointing_enable` calls it so that reentrant checkpointing of a frozen model
        trained through adapters sees an input that requires grad; here checkpointing is non-reentrant and the
        student's gradient starts at the generated LoRA, so making the frozen base's embeddings require grad would only
        add a backward pass into them.
        """

    @property
    def fingerprint(self) -> str:
        return base_fingerprint(self.config.base_config)

    def _decoder_layers(self) -> nn.ModuleList:
        if self.vlm is None:
            raise RuntimeError("No base model is attached; load the model with from_pretrained or from_base.")
        return self.config.family.decoder_layers(self.vlm)

    # ---- reading a video into an adapter --------------------------------------------------------------------------

    def encode_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       segment_place: torch.Tensor | None = None, **vision_inputs: torch.Tensor | None) -> torch.Tensor:
        """
        Run the frozen base over the context and summarize every decoder layer's input: latents `[B, L, n, d]`.

        `vision_inputs` are the family's frame inputs (`pixel_values [B, F, 3, H, W]` and `pixel_attention_mask`
        for SmolVLM and Idefics3); others are ignored. `segment_place` `[B, 2]`: where each context starts and ends,
        as fractions of its whole video (`None`: each is a whole video); read when `config.use_segment_place` is on.

        Each layer's input `[B, T, h]` is handed to the perceiver encoder from a forward pre-hook as soon as it
        exists and then dropped, so memory stays flat in the number of layers (docs/design.md §2). The base runs without
        gradient; the perceiver keeps whatever grad mode the caller is in.
        """
        layers = self._decoder_layers()
        mask = attention_mask.bool() if attention_mask is not None else None
        position_term = self.hypernetwork.position_term(mask, input_ids.shape[1])  # one per context, not per layer
        place_term = self.hypernetwork.place_term(segment_place, input_ids.shape[0])
        grad_enabled = torch.is_grad_enabled()
        latents: list[torch.Tensor | None] = [None] * len(layers)

        def capture(index: int):
            def hook(module, args, kwargs):
                hidden_states = args[0] if args else kwargs["hidden_states"]
                with torch.set_grad_enabled(grad_enabled):
                    encode = self.hypernetwork.encode_layer
                    if (grad_enabled and self.gradient_checkpointing
                            and index % self._checkpoint_every_n_layers == 0):
                        # Keeps only this layer's states; the summary is recomputed in the backward pass.
                        latents[index] = self._gradient_checkpointing_func(encode, hidden_states, mask, index,
                                                                           position_term, place_term)
                    else:
                        latents[index] = encode(hidden_states, mask, index, position_term, place_term)
                if index == len(layers) - 1:
                    raise _ContextCaptured
            return hook

        handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                # The inner model, not the LM: the logits over every context position are never needed.
                names = self.config.family.vision_inputs
                vision_inputs = {name: value for name, value in vision_inputs.items() if name in names}
                pixel_values = vision_inputs.get("pixel_values")
                if pixel_values is not None and pixel_values.shape[1] > self.vision_chunk_frames:
                    # The vision tower over a few frames at a time, not all of them in one batch.
                    vision_inputs = {"mm_encoder_outputs": {"image": self._image_features_in_chunks(**vision_inputs)}}
                self.vlm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **vision_inputs)
        except _ContextCaptured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack(latents, dim=1)

    def _image_features_in_chunks(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None):
        """The vision tower's and connector's output for `[B, F, 3, H, W]` frames, `vision_chunk_frames` at a time:
        what the base's forward computes from `pixel_values`, with the tower's activations bounded by the chunk."""
        per_video = [[] for _ in range(pixel_values.shape[0])]
        for first in range(0, pixel_values.shape[1], self.vision_chunk_frames):
            frames = slice(first, first + self.vision_chunk_frames)
            mask = None if pixel_attention_mask is None else pixel_attention_mask[:, frames].contiguous()
            chunk = self.vlm.model.get_image_features(pixel_values[:, frames].contiguous(), mask, return_dict=True)
            for video, features in enumerate(chunk.pooler_output):  # one entry per video: its real frames
                per_video[video].append(features)
        return BaseModelOutputWithPooling(pooler_output=[torch.cat(parts) for parts in per_video])

    def generate_adapter(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         context_video_index: torch.Tensor | Sequence[int] | None = None,
                         segment_place: torch.Tensor | None = None,
                         **vision_inputs: torch.Tensor | None) -> Video2LoRAAdapter:
        """
        One adapter per video of the batch; the inputs are what the processor returns for frames + instruction.

        With `context_video_index` (`[C]`, which video each context is a segment of), the contexts are segments and
        one adapter per video comes back, composed as `config.segment_composition` says, exactly as
        `internalize(segments=k)` composes them; `segment_place` `[C, 2]` says where each lies ([`encode_context`]).
        """
        latents = self.encode_context(input_ids, attention_mask, segment_place, **vision_inputs)  # [C, L, n, d]
        if context_video_index is None:
            return self._decode(latents)
        if self.config.segment_composition == "latents":
            return self._decode(*stack_segment_latents(latents, context_video_index))
        return self._decode(latents).compose_groups(context_video_index)

    def _decode(self, latents: torch.Tensor, latents_mask: torch.Tensor | None = None) -> Video2LoRAAdapter:
        lora = self.hypernetwork.decode(latents, latents_mask)
        return Video2LoRAAdapter(
            lora_A={name: a for name, (a, _) in lora.items()}, lora_B={name: b for name, (_, b) in lora.items()},
            scale=float(self.config.lora_scale), base_model_name_or_path=self.base_model_reference,
            base_model_revision=self.config.base_model_revision, fingerprint=self.fingerprint,
            base_dtype=str(self.vlm.dtype).removeprefix("torch."),
            decoder_layers_path=self.config.family.decoder_layers_path,
            shared_rank=self.config.lora_r if self.config.use_bias_block else 0,
        )

    @torch.no_grad()
    def internalize(self, video, *, start: float | None = None, end: float | None = None,
                    frame_rate: float | None = None, num_frames: int | None = None, segments: int | None = None,
                    segment_seconds: float | None = None, compose: str | None = None, max_rank: int | None = None,
                    segment_batch_size: int = 1, segment_overlap: int = 0, segment_layout: str = "contiguous",
                    keep_place: bool = False, instruction: str | None = None) -> Video2LoRAAdapter:
        """
        The one-call path: a video file, a uint8 array `[T, H, W, 3]`, a list of PIL images or a `SampledVideo` -> one
        adapter.

        Frames are sampled by `self.processor.sample_video`, with the settings saved in the processor (the same
        sampler the command line, the teacher, the trainer and the evaluation use, so one file gives one adapter).
        A long video is read in segments: each equal, non-overlapping segment is sampled and read by the base on its
        own (`segment_batch_size` at a time, so memory is that of a few segments whatever the video's length), with
        its frames' times and the duration stated as in the whole video's prompt (`place_segment`); `segment_overlap`
        lets each also read the end of the one before. The segments then become one adapter:
        their perceiver latents decoded together (`"latents"`), or their adapters composed in rank space
        ([`Video2LoRAAdapter.compose`]). One segment gives exactly the unsegmented adapter.

        Args:
            video: what to read; a `SampledVideo` is used as it is (and cannot be segmented).
            start / end: a span of a file, in seconds.
            frame_rate: the rate of frames in memory (1 per second when `None`).
            num_frames: overrides the processor's `video_sampling["max_frames"]` (per segment).
            segments: cut the video (or span) into this many equal segments.
            segment_seconds: or into segments of about this length (the last one may be shorter).
            compose: how segments combine: `"latents"` (one decode over every segment's latents; the rank stays),
                `"concat"` (their adapters' ranks stacked) or `"average"` (stacked, each scaled by 1/k). Defaults to
                `config.segment_composition`, the way the hypernetwork was trained to compose.
            max_rank: keep the composed adapter at most this rank ([`Video2LoRAAdapter.compress`]; exact while the
                rank fits), e.g. a serving engine's maximum LoRA rank.
            segment_batch_size: segments the base reads in one batch (each still its own context): more keeps a
                GPU busy, memory grows with it. The adapter is the same up to floating-point rounding.
            segment_overlap: each segment after the first also reads the previous segment's last this many sampled
                frames (at their own times), so a change between two segments is seen by the later one.
            segment_layout: `"contiguous"`: segment i is the i-th stretch of the video; `"interleaved"`: segment i
                is frames i, i + k, i + 2k, ... of the k segments' frames sampled over the whole video, so each
                covers the whole at 1/k of the rate (motion across the video stays visible in every segment; the
                segments together read the same frames as contiguous ones). Memory is the same: a segment decodes
                only its own frames.
            keep_place: read the `start`-`end` span of a file as one segment of the whole file, in its place: the
                adapter that `segments=` makes for that span before composing it (what a segment knows on its own).
            instruction: overrides `config.instruction`.
        """
        processor = self._require_processor()
        if keep_place:
            if not isinstance(video, (str, os.PathLike)) or segments is not None or segment_seconds is not None:
                raise ValueError("keep_place reads one span of a video file in its place; give a file and start/end, "
                                 "without segments.")
            whole = (0.0, video_duration(video))
            span = (float(start or 0.0), min(float(end), whole[1]) if end is not None else whole[1])
            if not whole[0] <= span[0] < span[1]:
                raise ValueError(f"keep_place: the span {span} is not inside the video (0 to {whole[1]:.3g} s).")
            latents, _ = self._read_segments(video, [(span, None)], whole, frame_rate, num_frames, instruction)
            return self._decode(latents).detach()
        spans = self._segment_spans(video, start, end, frame_rate, segments, segment_seconds)
        if spans is None:
            sampled = processor.sample_video(video, start=start, end=end, frame_rate=frame_rate,
                                             num_frames=num_frames)
            return self._decode(self._encode_frames([sampled], instruction)).detach()
        compose = compose or self.config.segment_composition
        if compose not in ("latents", "concat", "average"):
            raise ValueError(f"compose must be 'latents', 'concat' or 'average', got {compose!r}.")
        for name, value, least in (("segment_batch_size", segment_batch_size, 1), ("segment_overlap", segment_overlap, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        if segment_layout not in SEGMENT_LAYOUTS:
            raise ValueError(f"segment_layout must be one of {', '.join(map(repr, SEGMENT_LAYOUTS))}, "
                             f"got {segment_layout!r}.")
        whole = (spans[0][0], spans[-1][1])
        if segment_layout == "interleaved":
            if segment_overlap:
                raise ValueError("segment_overlap carries the end of the segment before; interleaved segments each "
                                 "cover the whole video, so there is none to carry.")
            parts = [(whole, (index, len(spans))) for index in range(len(spans))]
        else:
            parts = [(span, None) for span in spans]
        adapter, latents, previous = None, [], None
        for first in range(0, len(parts), segment_batch_size):
            batch, previous = self._read_segments(video, parts[first:first + segment_batch_size], whole, frame_rate,
                                                  num_frames, instruction, segment_overlap, previous)  # [b, L, n, d]
            for segment_latents in batch.split(1):  # [1, L, n, d]
                if compose == "latents":  # a segment's latents are small (L x n x d), its hidden states are not kept
                    latents.append(segment_latents)
                    continue
                # A running sum: no more than one segment's adapter is held besides it, and with `max_rank` the sum
                # itself stays bounded, whatever the number of segments.
                part = self._decode(segment_latents)
                adapter = part if adapter is None else Video2LoRAAdapter.compose([adapter, part])
                if max_rank is not None:
                    adapter = adapter.compress(max_rank)
        if compose == "latents":
            adapter = self._decode(torch.cat(latents, dim=2))  # [1, L, k n, d]: every segment, decoded at once
            if max_rank is not None:
                adapter = adapter.compress(max_rank)
        elif compose == "average":  # the sum's video-dependent part, divided by the number of segments
            own = adapter.rank - adapter.shared_rank
            adapter = replace(adapter, lora_A=dict(adapter.lora_A), scale=1.0, lora_B={
                name: torch.cat([b[..., :own] / len(spans), b[..., own:]], dim=3)
                for name, b in adapter.scaled_B().items()})
        adapter.metadata = {**adapter.metadata, "segments": [[begin, finish] for (begin, finish), _ in parts],
                            "composed": {"mode": compose, "parts": len(spans), "layout": segment_layout}}
        return adapter.detach()

    def _read_segments(self, video, parts: list[tuple[tuple[float, float], tuple[int, int] | None]],
                       whole: tuple[float, float], frame_rate: float | None, num_frames: int | None,
                       instruction: str | None, overlap: int = 0,
                       previous: SampledVideo | None = None) -> tuple[torch.Tensor, SampledVideo]:
        """The segments `parts` of `video` (a file, or frames in memory at `frame_rate`), each a span (seconds) and
        its interleaved part (`None`: all of the span's frames), read in its place in `whole`: the frames' times and
        the duration are the whole video's. With `overlap`, each segment opens with the last `overlap` frames of the
        one before (`previous`: the placed segment before the first span).
        One batch -> (latents `[b, L, n, d]`, its last placed segment)."""
        processor = self._require_processor()
        placed = []
        for (begin, finish), interleave in parts:
            if isinstance(video, (str, os.PathLike)):
                sampled = processor.sample_video(video, start=begin, end=finish, num_frames=num_frames,
                                                 interleave=interleave)
            else:  # frames in memory: the segment's frames, at their own rate
                rate = frame_rate or 1.0
                sampled = processor.sample_video(video[round(begin * rate):round(finish * rate)], frame_rate=rate,
                                                 num_frames=num_frames, interleave=interleave)
            timestamps, duration = place_segment(sampled.timestamps, begin, whole)
            own = replace(sampled, timestamps=timestamps, duration=duration)
            if overlap and previous is not None:  # the previous segment's own last frames, not its overlap
                frames, times = open_with_previous(own.frames, own.timestamps, previous.frames, previous.timestamps,
                                                   overlap)
                placed.append(replace(own, frames=frames, timestamps=times))
            else:
                placed.append(own)
            previous = own
        return self._encode_frames(placed, instruction, [segment_fraction(span, whole) for span, _ in parts]), previous

    def _encode_frames(self, sampled: list[SampledVideo], instruction: str | None,
                       places: list[tuple[float, float]] | None = None) -> torch.Tensor:
        """Sampled videos (at `places` in their whole videos, fractions; `None`: whole videos) -> the perceiver's
        latents `[b, L, n, d]` for them, one batch."""
        processor = self._require_processor()
        inputs = processor.encode_videos([video.frames for video in sampled], instruction or self.config.instruction,
                                         timestamps=[video.timestamps for video in sampled],
                                         durations=[video.duration for video in sampled])
        inputs = inputs.to(self.vlm.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.vlm.dtype)
        segment_place = None if places is None else torch.tensor(places, device=self.vlm.device)
        return self.encode_context(**inputs, segment_place=segment_place)

    def _segment_spans(self, video, start, end, frame_rate, segments, segment_seconds):
        """`(start, end)` seconds of each segment, or `None` for one unsegmented read."""
        if segments is not None and segment_seconds is not None:
            raise ValueError("Give segments or segment_seconds, not both.")
        if segments is None and segment_seconds is None:
            return None
        if segments == 1 and not isinstance(segments, bool):
            return None  # exactly today's adapter (other values are checked by `segment_spans`)
        if isinstance(video, (str, os.PathLike)):
            total = video_duration(video)
        elif isinstance(video, (list, tuple)) or hasattr(video, "shape"):
            if start is not None or end is not None:
                raise ValueError("start/end cut a video file; slice frames in memory before passing them.")
            total = len(video) / (frame_rate or 1.0)
        else:
            raise ValueError("Segments need a video file or frames in memory, not frames already sampled.")
        begin, finish = float(start or 0.0), min(float(end), total) if end is not None else total
        spans = segment_spans(begin, finish, segments=segments, segment_seconds=segment_seconds)
        return None if len(spans) == 1 else spans

    # ---- using an adapter -----------------------------------------------------------------------------------------

    def check_adapter(self, adapter: Video2LoRAAdapter) -> None:
        """Raise `AdapterMismatchError` with what to do when `adapter` does not fit this base."""
        if adapter.fingerprint is not None and adapter.fingerprint != self.fingerprint:
            raise AdapterMismatchError(
                f"The adapter was made for base '{adapter.base_model_name_or_path}' (fingerprint "
                f"{adapter.fingerprint}), but this model's base is '{self.config.base_model_name_or_path}' "
                f"({self.fingerprint}). Internalize the video again with this model."
            )
        theirs, ours = adapter.base_model_name_or_path, self.base_model_reference
        if theirs and ours and not _same_base(theirs, ours):
            raise AdapterMismatchError(
                f"The adapter was made for base '{theirs}', but this model's base is '{ours}' (their shapes agree, "
                "which is not enough: the weights differ). Internalize the video again with this model, or correct "
                "base_model_name_or_path in the adapter's adapter_config.json if it names the same base."
            )
        if adapter.decoder_layers_path != self.config.family.decoder_layers_path:
            raise AdapterMismatchError(
                f"The adapter targets decoder layers at '{adapter.decoder_layers_path}', but this base "
                f"({self.config.family.model_class_name}) has them at '{self.config.family.decoder_layers_path}'."
            )
        dims = self.config.target_module_dims()
        for name, lora_a in adapter.lora_A.items():
            in_features, out_features = dims.get(name, (None, None))
            lora_b = adapter.lora_B.get(name)
            if (in_features is None or lora_b is None or lora_a.shape[1] != self.config.num_target_layers
                    or lora_a.shape[3] != in_features or lora_b.shape[2] != out_features):
                raise AdapterMismatchError(
                    f"The adapter's '{name}' LoRA has shapes A {tuple(lora_a.shape)} / B "
                    f"{None if lora_b is None else tuple(lora_b.shape)}, which do not fit this base "
                    f"({self.config.num_target_layers} layers, target modules {dims})."
                )

    @contextmanager
    def apply_adapter(self, adapter: Video2LoRAAdapter) -> Iterator[None]:
        """
        Within the block, every forward of the base adds `B (A x)` to each target module; row `i` of the batch uses
        adapter `i` (an adapter batch of one is shared by every row). Functional: the base's weights never change.
        """
        self.check_adapter(adapter)
        layers = self._decoder_layers()
        scaled_b = adapter.scaled_B()
        handles = []
        try:
            for name, lora_a in adapter.lora_A.items():
                for index, layer in enumerate(layers):
                    hook = _LoraDelta(lora_a[:, index], scaled_b[name][:, index])
                    handles.append(layer.get_submodule(name).register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # `forward` takes `num_items_in_batch`: Trainer then counts the labelled tokens of each optimizer step, passes the
    # count in and uses the returned loss as already scaled for gradient accumulation.
    accepts_loss_kwargs = True

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, context_input_ids: torch.Tensor | None = None,
                context_attention_mask: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_attention_mask: torch.Tensor | None = None, adapter: Video2LoRAAdapter | None = None,
                adapter_index: torch.Tensor | None = None, context_video_index: torch.Tensor | None = None,
                context_segment_place: torch.Tensor | None = None, teacher_top_ids: torch.Tensor | None = None,
                teacher_top_logprobs: torch.Tensor | None = None, teacher_mask: torch.Tensor | None = None,
                answer_weights: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | int | None = None) -> Video2LoRAOutput:
        """
        Training forward: generate one adapter per context (video + instruction), then run the student (the base
        plus each row's adapter, no video) on `input_ids` in one batched pass. With `labels`, the loss is
        [`student_loss`], with `config.kl_weight` as the weight of its KL term.

        Args:
            input_ids, attention_mask, labels: the student's text `[B, S]`; labels use -100 for ignored positions.
            context_*: the processor's output for the videos, `[V, T]` plus pixels `[V, F, 3, H, W]`.
            adapter: adapters already generated (skips the context inputs).
            adapter_index: `[B]` which video each text row belongs to, so one video can serve many questions.
            context_video_index: `[C]` which video each context is a segment of, when videos come in segments: the
                segments become one adapter per video as `internalize(segments=k)` makes it (`generate_adapter`),
                and `adapter_index` then counts videos, not contexts.
            context_segment_place: `[C, 2]` where each context starts and ends in its video, as fractions
                (`segment_fraction`); `None` when every context is a whole video.
            teacher_top_ids, teacher_top_logprobs: `[B, S, k]` the teacher's top-k at each labelled position.
            teacher_mask: `[B, S]` positions that have a teacher distribution.
            answer_weights: `[B]` loss weight of every token of each row; the normalizer stays the token count.
            num_items_in_batch: labelled tokens of the whole optimizer step (gradient accumulation, processes);
                without it the loss is the mean over this batch's labelled tokens.
        """
        if adapter is None:
            if context_input_ids is None:
                raise ValueError("forward needs the video context (`context_input_ids`, ...) or an `adapter`.")
            if pixel_values is not None:
                pixel_values = pixel_values.to(self.vlm.dtype)  # collators build float32 pixels; the base may be bf16
            adapter = self.generate_adapter(context_input_ids, context_attention_mask, context_video_index,
                                            context_segment_place, pixel_values=pixel_values,
                                            pixel_attention_mask=pixel_attention_mask)
        rows = adapter if adapter_index is None else adapter[adapter_index]
        with self.apply_adapter(rows):
            # No cache: a training pass never reuses one (and a checkpointed layer must not write one).
            logits = self.vlm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, S, V]
        loss = None
        if labels is not None:
            loss = student_loss(logits, labels, teacher_top_ids=teacher_top_ids,
                                teacher_top_logprobs=teacher_top_logprobs, teacher_mask=teacher_mask,
                                answer_weights=answer_weights, kl_weight=self.config.kl_weight,
                                num_items_in_batch=num_items_in_batch)
        return Video2LoRAOutput(loss=loss, logits=logits, adapter=adapter)

    @torch.no_grad()
    def answer(self, adapter: Video2LoRAAdapter | None, question: str | Sequence[str],
               **generate_kwargs) -> str | list[str]:
        """
        Answer with the base plus `adapter` and **no visual tokens** in the context (greedy, 64 new tokens unless
        `generate_kwargs` say otherwise). `adapter=None` answers blind. One adapter serves every question; an adapter
        batch pairs row `i` with question `i`.

        The chat header every question starts with (`<|im_start|>User:`) is prefilled once per adapter and its keys and
        values reused, so a question prefills only its own tokens: exactly what KV-prefix reuse prefills, over a
        context of a few tokens instead of the whole video.
        """
        processor = self._require_processor()
        questions = [question] if isinstance(question, str) else list(question)
        generate_kwargs = {"max_new_tokens": 64, "do_sample": False, **generate_kwargs}
        if adapter is not None:
            adapter = adapter.to(self.vlm.device)
            self.check_adapter(adapter)
            if len(adapter) not in (1, len(questions)):
                raise ValueError(f"{len(adapter)} adapters cannot answer {len(questions)} questions; give one adapter "
                                 "or one per question.")
        inputs = self._header_cached_inputs(adapter, questions, generate_kwargs)
        if inputs is None:  # beam search / several samples expand the batch inside generate(): no shared cache
            inputs = processor.encode_text(questions, padding_side="left").to(self.vlm.device)
        prompt_length = inputs["input_ids"].shape[1]
        if adapter is None:
            output = self.vlm.generate(**inputs, **generate_kwargs)
        else:
            with self.apply_adapter(adapter):
                output = self.vlm.generate(**inputs, **generate_kwargs)
        texts = processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        texts = [text.strip() for text in texts]
        return texts[0] if isinstance(question, str) else texts

    def _chat_header_ids(self) -> list[int]:
        """The token ids every text-only prompt starts with, whatever the question (the prompts of two different
        one-letter questions agree exactly on them)."""
        processor = self._require_processor()
        prompts = [processor.tokenizer(processor.chat_prompt(text, with_video=False))["input_ids"] for text in "ab"]
        return os.path.commonprefix(prompts)  # element-wise on any sequences, token lists included

    def _header_cache(self, adapter: Video2LoRAAdapter | None, header_ids: list[int]):
        """The header's keys and values under `adapter` (one row per adapter), kept for the last adapter asked: a
        video's questions usually come one after another."""
        key = (tuple(header_ids), self.vlm.device, self.vlm.dtype, adapter is None)
        cached = getattr(self, "_last_header_cache", None)
        if cached is not None and cached[0] == key and (adapter is None or cached[1]() is adapter):
            return cached[2]  # matched by identity: adapters hold tensors, so `==` is no test
        rows = 1 if adapter is None else len(adapter)
        ids = torch.tensor([header_ids] * rows, device=self.vlm.device)
        with nullcontext() if adapter is None else self.apply_adapter(adapter):
            cache = self.vlm.model(input_ids=ids, use_cache=True).cache
        # A weak reference: the model must not keep a finished video's adapter alive.
        self._last_header_cache = (key, None if adapter is None else weakref.ref(adapter), cache)
        return cache

    def _header_cached_inputs(self, adapter: Video2LoRAAdapter | None, questions: list[str],
                              generate_kwargs: dict) -> dict | None:
        """`generate()` inputs that start with the cached chat header: `[header | left padding | question]`, the
        padding masked out, and a copy of the header cache widened to the batch. `None` where it does not apply."""
        if generate_kwargs.get("num_beams", 1) != 1 or generate_kwargs.get("num_return_sequences", 1) != 1:
            return None
        processor = self._require_processor()
        header = self._chat_header_ids()
        prompts = processor.tokenizer([processor.chat_prompt(q, with_video=False) for q in questions])["input_ids"]
        if not header or any(row[: len(header)] != header for row in prompts):
            return None
        tails = [row[len(header):] for row in prompts]
        width = max(len(tail) for tail in tails)
        pad = processor.tokenizer.pad_token_id
        input_ids = [header + [pad] * (width - len(tail)) + tail for tail in tails]
        attention_mask = [[1] * len(header) + [0] * (width - len(tail)) + [1] * len(tail) for tail in tails]
        # generate() appends to the cache it is given, so each call gets its own copy.
        cache = copy.deepcopy(self._header_cache(adapter, header))
        if cache.layers[0].keys.shape[0] == 1 and len(questions) > 1:
            cache.batch_repeat_interleave(len(questions))
        device = self.vlm.device
        return {"input_ids": torch.tensor(input_ids, device=device),
                "attention_mask": torch.tensor(attention_mask, device=device), "cache": cache}

    def _require_processor(self) -> Video2LoRAProcessor:
        if self.processor is None:
            raise RuntimeError("This model has no processor; set `model.processor` (a Video2LoRAProcessor).")
        return self.processor


def _shared_rank(text: str | None) -> int:
    """The stored bias-block rank; 0 (every slot video-dependent) for adapters from before it was stored.

    Raises:
        `ValueError`: the stored value is not a count.
    """
    if not text:
        return 0
    if not (text.isascii() and text.isdecimal()):
        raise ValueError(f"not a rank: {text!r}")
    return int(text)


def _same_base(theirs: str, ours: str) -> bool:
    """Whether an adapter's base reference names this model's base. A local path that does not exist here (an
    adapter made on another machine, or by an older version that wrote the checkpoint-relative path) cannot be
    checked by name, so its fingerprint alone decides."""
    if theirs == ours:
        return True
    if os.path.exists(theirs):
        return os.path.exists(ours) and os.path.samefile(theirs, ours)
    return _HUB_ID.fullmatch(theirs) is None  # a path from elsewhere; a Hub id that differs is another base


def _replace_directory(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`. Renames are atomic, so a reader sees the old folder or the new one,
    never a mix; a folder already at `target` is moved aside first (POSIX cannot rename over a non-empty one)."""
    taken = (errno.ENOTEMPTY, errno.EEXIST)
    try:
        os.rename(new, target)
        return
    except OSError as error:
        if error.errno not in taken:
            raise
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    try:
        try:
            os.rename(target, aside / target.name)
        except FileNotFoundError:  # another writer moved it aside between our two renames
            pass
        try:
            os.rename(new, target)
        except OSError as error:
            if error.errno not in taken:
                raise
            shutil.rmtree(new, ignore_errors=True)  # another writer's complete folder got there first: it stays
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _checkpoint_decoder_layer(layer: nn.Module, checkpoint_function: Callable, function: Callable, *args):
    """
    A base decoder layer's `_gradient_checkpointing_func` (see `Video2LoRAModel._set_gradient_checkpointing`):
    `checkpoint_function(function, *args)` with the LoRA hooks that [`Video2LoRAModel.apply_adapter`] put on this
    layer's modules registered again while the backward pass recomputes the layer, which happens after
    `apply_adapter` has removed them. Without them the recomputation would run the plain base.
    """
    lora_hooks = [(module, hook) for module in layer.modules() for hook in module._forward_hooks.values()
                  if isinstance(hook, _LoraDelta)]

    @contextmanager
    def hooks_back() -> Iterator[None]:
        # Only the hooks no longer there: a backward inside `apply_adapter` finds them still registered.
        handles = [module.register_forward_hook(hook) for module, hook in lora_hooks
                   if not any(other is hook for other in module._forward_hooks.values())]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    return checkpoint_function(function, *args, context_fn=lambda: (nullcontext(), hooks_back()))


class _LoraDelta:
    """Forward hook adding `B (A x)` per batch row to a linear layer's output."""

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor):
        # Transposed once here, so that each call is two batched matmuls fused into the add: [b, in, r], [b, r, out].
        self.lora_a_t, self.lora_b_t = lora_a.transpose(1, 2), lora_b.transpose(1, 2)

    def __call__(self, module, inputs, output):
        x = inputs[0]  # [rows, S, in]
        lora_a_t, lora_b_t = self.lora_a_t, self.lora_b_t
        if lora_a_t.dtype != x.dtype:
            lora_a_t, lora_b_t = lora_a_t.to(x.dtype), lora_b_t.to(x.dtype)
        rows = x.shape[0]
        if lora_a_t.shape[0] != rows:
            if lora_a_t.shape[0] != 1 and rows % lora_a_t.shape[0]:
                raise ValueError(f"{rows} rows cannot share {lora_a_t.shape[0]} adapters.")
            if lora_a_t.shape[0] == 1:  # one adapter serves every row: a stride-0 view, no copies
                lora_a_t, lora_b_t = lora_a_t.expand(rows, -1, -1), lora_b_t.expand(rows, -1, -1)
            else:  # generate() expanded each prompt into beams / samples side by side
                repeats = rows // lora_a_t.shape[0]
                lora_a_t, lora_b_t = lora_a_t.repeat_interleave(repeats, 0), lora_b_t.repeat_interleave(repeats, 0)
        return torch.baddbmm(output, torch.bmm(x, lora_a_t), lora_b_t)  # output + (x A^T) B^T


def load_base(name_or_path: str | os.PathLike, *, revision: str | None = None, dtype: torch.dtype | str | None = None,
              device_map=None) -> tuple[PreTrainedModel, Video2LoRAProcessor | None]:
    """
    Load a frozen base by Hub id or folder through its family (`families_video2lora.py`): the family's model class
    and processor, picked by the folder's `model_type`.

    Returns:
        `(model, processor)`; the processor is `None` when the folder has no tokenizer and image processor files.

    Raises:
        `ValueError`: the folder's `model_type` is not a registered family.
    """
    path = os.fspath(name_or_path)
    logger.info(f"Loading the frozen base from {path}")
    base_config = AutoConfig.from_pretrained(path, revision=revision)
    family = family_of(base_config)
    vlm = family.model_class.from_pretrained(path, config=base_config, revision=revision,
                                             dtype=dtype if dtype is not None else "auto", device_map=device_map)
    return vlm, _try_load_processor(path, family, revision=revision)


def _try_load_processor(path, family: VLMFamily, revision: str | None = None, trust_remote_code: bool = False):
    """The family's processor saved with a checkpoint or base, if there is one (tokenizer plus image processor)."""
    # Processors live beside Video2LoRAProcessor, so a family names its class there.
    processor_class = getattr(sys.modules[Video2LoRAProcessor.__module__], family.processor_class_name)
    try:
        return processor_class.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        logger.info(f"No processor loaded from {path}: {error}")
        return None


Video2LoRAConfig.register_for_auto_class()
Video2LoRAModel.register_for_auto_class("AutoModel")

__all__ = ["Video2LoRAAdapter", "Video2LoRAModel", "Video2LoRAPreTrainedModel", "Video2LoRAOutput",
           "AdapterMismatchError", "AdapterReadError", "load_base"]

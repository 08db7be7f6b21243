"""What the repository ships: Hub-file copies in checkpoints equal their sources, and no shipped file names a path on
the machine that made it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HUB_FILES = ("configuration_video2lora.py", "modeling_video2lora.py", "perceiver_video2lora.py",
             "processing_video2lora.py", "video_processing_video2lora.py", "families_video2lora.py",
             "pipeline_video2lora.py")
# An absolute path on a developer's or CI's machine: nothing shipped may depend on where it was made.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users|tmp|private|mnt|opt/conda)/[\w.-]")


def _checkpoint_folders() -> list[Path]:
    return sorted(path.parent for path in (REPO / "video2lora" / "checkpoints").glob("*/config.json"))


def _shipped_files() -> list[Path]:
    """Tracked files, tests excepted (their fixtures may name temporary paths on purpose)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the shipped files are the tracked ones")
    names = [name for name in listed.decode().split("\0") if name and not name.startswith("tests/")]
    return [REPO / name for name in names if (REPO / name).is_file()]


@pytest.mark.parametrize("folder", _checkpoint_folders(), ids=lambda path: path.name)
def test_hub_file_copies_in_checkpoints_equal_the_sources(folder):
    """A checkpoint carries the Hub files that `trust_remote_code` runs; they must be today's, not a stale copy.
    Resync with `cp <file> <checkpoint>/` after changing one."""
    copies = [name for name in HUB_FILES if (folder / name).exists()]
    assert copies, f"{folder} carries no Hub files"
    stale = [name for name in copies if (folder / name).read_bytes() != (REPO / name).read_bytes()]
    assert not stale, f"stale Hub-file copies in {folder.relative_to(REPO)}: {stale}"


def test_checkpoints_carry_every_hub_file_their_code_imports():
    for folder in _checkpoint_folders():
        if (folder / "processing_video2lora.py").exists():
            assert (folder / "video_processing_video2lora.py").exists(), folder


def test_no_shipped_file_names_a_machine_path():
    offenders = []
    for path in _shipped_files():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue  # weights and pictures
        hits = [number for number, line in enumerate(lines, 1) if MACHINE_PATH.search(line)]
        if hits:
            match = MACHINE_PATH.search(lines[hits[0] - 1])
            offenders.append(f"{path.relative_to(REPO)}:{hits[0]} ({len(hits)} lines): "
                             f"...{lines[hits[0] - 1][match.start():][:80]}")
    assert not offenders, "machine paths in shipped files:\n" + "\n".join(offenders)


def test_the_machine_path_check_can_fail():
    assert MACHINE_PATH.search('"video_path": "/work/main/data/world/videos/test-1.mp4"')
    assert MACHINE_PATH.search("_name_or_path: /root/.cache/huggingface/x")
    assert not MACHINE_PATH.search("see docs/design.md and https://example.org/work/page")
    assert not MACHINE_PATH.search("../smolvlm-world")


def test_a_wheel_ships_the_embedded_default_cards_and_hub_files(tmp_path):
    """A non-editable `pip install .` gets everything the demo needs from the package itself."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # the tracked files alone: a checkout's build/ may hold stale copies
    for path in _shipped_files() + [REPO / "tests" / "__init__.py"]:
        if path.exists():
            target = source / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("video2lora-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("video2lora-world", "smolvlm-world"):
        assert f"video2lora/checkpoints/{folder}/model.safetensors" in names
        assert f"video2lora/checkpoints/{folder}/processor_config.json" in names
    assert {"video2lora/hub_cards/adapter.md", "video2lora/hub_cards/hypernetwork.md",
            "video2lora/hub_cards/base.md"} <= names
    assert {*HUB_FILES, "train_hf.py"} <= names
    assert not any(name.startswith("video2lora/checkpoints/smolvlm-world-training/") for name in names)

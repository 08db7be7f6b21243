"""Every command the README shows runs as written, in order, from an empty folder (as a newcomer would type them
after installing), so the README cannot drift from the code. The install and test commands are what CI itself runs;
commands of other tools (`torchrun`, `accelerate`) must at least name files and flags that exist."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from video2lora.cli import main as video2lora_main

REPO = Path(__file__).resolve().parent.parent
# What CI runs itself, on every submission (`.ci/run` installs exactly as the README says, then runs the tests).
RUN_BY_CI = (("pip", "install"), ("python", "-m", "pytest"),
             ("python", "app.py"),  # a server: tests/test_app.py drives it
             ("python", "scripts/vllm_check.py"))  # minutes, and a separate environment: tests/test_vllm.py runs it


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's ```bash blocks: continuation lines joined, comments dropped, `&&` split."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


def test_the_readme_shows_the_commands_this_test_checks():
    commands = readme_commands()
    assert ["python", "-m", "pytest", "-q"] in commands and ["video2lora", "demo", "--compare"] in commands
    assert any(command[:2] == ["video2lora", "eval"] for command in commands)


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        if any(tuple(command[: len(prefix)]) == prefix for prefix in RUN_BY_CI):
            continue
        if command[0] == "video2lora":
            capsys.readouterr()
            code = video2lora_main(command[1:])
            out, err = capsys.readouterr()
            assert code == 0, f"{shlex.join(command)} exited {code}: {err[-2000:]}"
        elif command[0] == "cp":
            shutil.copy(command[1], command[2])
        elif command[:2] == ["python", "-m"]:
            result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr[-2000:]}"
        else:
            pytest.fail(f"the README shows a command this test does not know how to run: {shlex.join(command)}")
        ran.append(command[0])
    assert ran.count("video2lora") >= 6

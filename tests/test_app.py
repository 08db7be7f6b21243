"""The Gradio app (`app.py`) end to end: its API through `gradio_client`, and its page in headless Chromium.

Both tests share one `python app.py` served on a free 127.0.0.1 port from a subprocess (the embedded default,
offline), which is always killed at the end. Each is skipped, with the reason, where its packages are missing:
`pip install -e ".[test]"` brings gradio, gradio_client and Playwright; the browser is Debian's
(`apt-get install -y chromium`), never one that Playwright downloads. Chromium is kept on this machine: every
request to another host is aborted, and its proxy is a closed local port.

`VIDEO2LORA_APP_SCREENSHOT=docs/app.png python -m pytest tests/test_app.py -k browser` refreshes the README's
screenshot.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # loading the model and rendering the examples, on a loaded 2-core machine
CALL_TIMEOUT_S = 60  # one internalization or answer of the embedded default takes well under a second
QUESTION = "what colour is the square at first?"  # the first held-out clip shows a red square turning white
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Nothing leaves the machine: no Hub lookups, no telemetry or version checks (gradio's and gradio_client's), no proxy.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _chromium() -> str | None:
    """Debian's Chromium (`$CHROMIUM` overrides), or `None`."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and os.access(found, os.X_OK) else None


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with status {process.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not serve {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    """`python app.py` on a free local port; its URL. The process is killed whatever happens."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
    folder = tmp_path_factory.mktemp("app")
    port = _free_port()
    env = {**os.environ, **QUIET_ENV, "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "OMP_NUM_THREADS": "1"}  # a tiny model on a shared machine: threads cost more than they give
    log = folder / "app.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--cache_dir", str(folder / "cache")],
                                   cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_space_requirements_match_the_package():
    """The Space installs from `space/requirements.txt`: the package's own dependencies, plus the app's."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["app"])
    lines = (REPO / "space" / "requirements.txt").read_text().splitlines()
    listed = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert listed == wanted
    front_matter = (REPO / "space" / "README.md").read_text().split("---")[1]
    try:
        installed = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    pinned = re.search(r"^sdk_version:\s*(\S+)", front_matter, re.MULTILINE).group(1)
    assert re.search(r"^app_file:\s*app\.py$", front_matter, re.MULTILINE)
    if installed is not None:
        assert pinned == installed, "space/README.md's sdk_version should be the gradio the tests ran with"


def test_client_internalizes_asks_and_downloads(request, tmp_path, monkeypatch):
    """The API a Space exposes: `/internalize`, `/ask` (zero visual tokens against Base's), `/download`."""
    gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed")
    for name, value in QUIET_ENV.items():
        monkeypatch.setenv(name, value)
    app_url = request.getfixturevalue("app_url")  # started only once the test can run
    from video2lora.video import write_video
    from video2lora.world import generate_clip, split_seeds

    clip = generate_clip(split_seeds("test", 1)[0])  # the app's first example
    video = tmp_path / "clip.mp4"
    write_video(video, clip.frames, fps=clip.fps)
    client = gradio_client.Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"),
                                  analytics_enabled=False, httpx_kwargs={"timeout": CALL_TIMEOUT_S})

    job = client.submit(gradio_client.handle_file(video), api_name="/internalize")
    status, adapter_chat, base_chat, _, _ = job.result(timeout=CALL_TIMEOUT_S)
    assert "internalized" in status and adapter_chat == [] and base_chat == []

    adapter_chat, base_chat, figures, question_box = client.submit(QUESTION, api_name="/ask").result(
        timeout=CALL_TIMEOUT_S)
    for chat in (adapter_chat, base_chat):
        assert [message["role"] for message in chat] == ["user", "assistant"]
        assert chat[1]["content"][0]["text"].strip()
    rows = {row[0]: row[1:] for row in figures["data"]}
    assert rows["visual tokens"][0] == 0 and rows["visual tokens"][1] > 0
    assert all(value > 0 for value in rows["time to first token (s)"] + rows["time to answer (s)"])
    assert question_box == ""

    archive = client.submit(api_name="/download").result(timeout=CALL_TIMEOUT_S)
    with zipfile.ZipFile(archive) as opened:
        names = {Path(name).name for name in opened.namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names

    with pytest.raises(gradio_client.exceptions.AppError, match="cannot read video 'not-a-video.mp4'"):
        bad = tmp_path / "not-a-video.mp4"
        bad.write_text("not a video")
        client.submit(gradio_client.handle_file(bad), api_name="/internalize").result(timeout=CALL_TIMEOUT_S)


def test_browser_internalizes_and_answers(request, tmp_path):
    """A person's path in headless Chromium: an example, Internalize, questions, the download, a bad upload."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    app_url = request.getfixturevalue("app_url")
    expect, timeout_ms = sync_api.expect, CALL_TIMEOUT_S * 1000
    bad = tmp_path / "not-a-video.mp4"
    bad.write_text("not a video")
    blocked: list[str] = []

    def keep_local(route) -> None:
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, timeout=timeout_ms,
            args=["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_ms)
            page.route("**/*", keep_local)
            page.goto(app_url)

            page.locator(".gallery-item").first.click()  # the first held-out clip
            expect(page.locator("#video video")).to_have_attribute("src", re.compile(r"\.mp4"))
            page.get_by_role("button", name="Internalize").click()
            expect(page.locator("#status")).to_contain_text("internalized")
            expect(page.locator("#status")).to_contain_text("Base reads")

            for count, question in enumerate((QUESTION, "how many objects are there?"), 1):
                page.locator("#question textarea").fill(question)
                page.get_by_role("button", name="Ask", exact=True).click()
                for chat in ("#adapter-chat", "#base-chat"):
                    answers = page.locator(f"{chat} [data-testid=bot]")
                    expect(answers).to_have_count(count)
                    assert answers.last.inner_text().strip()
            expect(page.locator("#figures")).to_contain_text("visual tokens")

            page.get_by_role("button", name="Download adapter (PEFT folder, zip)").click()
            expect(page.locator("#adapter-file")).to_contain_text(re.compile(r"adapter\s*\.zip"))
            page.wait_for_timeout(1000)  # the last outputs fade in
            screenshot = Path(os.environ.get("VIDEO2LORA_APP_SCREENSHOT") or tmp_path / "app.png")
            page.screenshot(path=str(screenshot), full_page=True)

            page.locator("#video button[aria-label=Clear]").click()  # then a file that is not a video
            page.locator("#video input[type=file]").set_input_files(bad)
            page.get_by_role("button", name="Internalize").click()
            expect(page.get_by_text("cannot read video 'not-a-video.mp4'")).to_be_visible()
        finally:
            browser.close()
    assert not blocked, f"the page asked for other hosts: {blocked}"

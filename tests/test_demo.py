"""demo.py on the trained smoke model: through gradio_client, and in a real headless Chromium (Playwright).

The browser test needs Debian's chromium (apt-get install -y chromium); Playwright's own browser download is not
used. The docs' screenshot is taken by the same browser steps, on a real run (see docs/serving.md):
    python tests/test_demo.py OUTPUT_DIR IMAGE docs/demo.png
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
START_LIMIT_S = 600  # only catches a hang: the app is polled, so a fast start is not waited for


@contextlib.contextmanager
def running_demo(output_dir: Path, log: Path, *extra: str):
    """`python demo.py output_dir` on a free port, until it answers; its URL. Stopped on leaving."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(ROOT / "demo.py"), str(output_dir), "--port", str(port), *extra]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + START_LIMIT_S
    try:
        while True:
            assert process.poll() is None, f"demo.py exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer in {START_LIMIT_S} s:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=10).close()
                break
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def classify_in_browser(url: str, image: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Open the page in headless Chromium, upload `image`, press Classify: the top label the page shows, and the
    requests that would have left 127.0.0.1 (refused, so the page has to work without them)."""
    from playwright.sync_api import expect, sync_playwright

    outside: list[str] = []

    def local_only(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.route("**/*", local_only)
            page.goto(url)
            page.locator("#image input[type=file]").set_input_files(str(image))
            page.locator("#image img").wait_for(timeout=120_000)  # uploaded: the button would send nothing before
            page.get_by_role("button", name="Classify").click()
            top = page.locator('#prediction [data-testid="label-output-value"]')
            expect(top).not_to_be_empty(timeout=120_000)
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
            return top.inner_text(), outside
        finally:
            browser.close()


@pytest.fixture(scope="module")
def image(digits_validation) -> Path:
    return sorted(digits_validation.rglob("*.png"))[0]


@pytest.fixture(scope="module")
def pipeline_top(model_dir, image) -> str:
    from transformers import pipeline

    return pipeline("image-classification", model=str(model_dir), device="cpu")(str(image))[0]["label"]


@pytest.fixture(scope="module")
def app(model_dir, tmp_path_factory):
    """One running app for every test here."""
    with running_demo(model_dir, tmp_path_factory.mktemp("demo") / "demo.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app, verbose=False)


def test_the_running_app_answers_with_the_pipelines_top_label(client, image, pipeline_top):
    from gradio_client import handle_file

    result = client.predict(handle_file(str(image)), api_name="/predict")
    assert result["label"] == pipeline_top
    assert len(result["confidences"]) == 5  # the top 5 of the 10 classes


def test_the_app_listens_on_this_machine_only(app):
    """Bound to 127.0.0.1, not to every interface (0.0.0.0): requests to 127.0.0.1 would not notice the difference."""
    import psutil

    port = urllib.parse.urlsplit(app).port
    listening = psutil.net_connections(kind="inet")
    assert {c.laddr.ip for c in listening if c.status == psutil.CONN_LISTEN and c.laddr.port == port} == {"127.0.0.1"}


def test_nothing_is_shared_without_share(model_dir, monkeypatch):
    """gradio.live cannot be reached from here, so launch() is recorded instead of run (`app` runs the real one)."""
    import gradio

    import demo as demo_script

    launches = []
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launches.append(options))
    assert demo_script.main([str(model_dir)]) == 0 and demo_script.main([str(model_dir), "--share"]) == 0
    assert [(options.get("server_name"), options.get("share")) for options in launches] == [
        ("127.0.0.1", False), ("127.0.0.1", True)
    ]  # fmt: skip


def test_a_real_browser_uploads_an_image_and_shows_the_pipelines_top_label(app, image, pipeline_top):
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        pytest.skip(f"playwright is not importable ({error}): pip install -r requirements-serve.txt")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: install Debian's with apt-get update && apt-get install -y chromium")
    label, outside = classify_in_browser(app, image)
    assert label == pipeline_top
    assert outside == []  # works offline: nothing fetched from a CDN


def test_bad_input_gets_one_paragraph(client, tmp_path, model_dir, monkeypatch, capsys):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    import demo as demo_script  # here, not at the top: `python tests/test_demo.py` (the screenshot) runs without it

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(AppError, match=r"notes\.txt could not be read as an image \(UnidentifiedImageError"):
        client.predict(handle_file(str(notes)), api_name="/predict")
    big = tmp_path / "big.png"
    Image.new("1", (10_000, 9_000)).save(big)  # above training's pixel limit: refused from its header, as in predict
    with pytest.raises(AppError, match=r"big\.png could not be read as an image \(DecompressionBombError: 10000x9000"):
        client.predict(handle_file(str(big)), api_name="/predict")

    assert demo_script.main([str(tmp_path)]) == 2
    assert f"OUTPUT_DIR: {tmp_path} holds no saved model (config.json)" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert demo_script.main([str(model_dir)]) == 2
    assert "pip install -r requirements-serve.txt" in capsys.readouterr().err


if __name__ == "__main__":  # the docs' screenshot: python tests/test_demo.py OUTPUT_DIR IMAGE PNG
    folder, photo, png = map(Path, sys.argv[1:4])
    log = Path(tempfile.gettempdir()) / "demo-screenshot.log"
    with running_demo(folder, log) as url:
        print(classify_in_browser(url, photo, png))

"""The try-it page of ``adaptune serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
pick an adapter, type a text, click Run, read the label and probabilities the server returned."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from adaptune.serve import ServeOptions, build_server, start_background

from .serve_fixtures import LABELS, make_adapters

CHROMIUM = os.environ.get("ADAPTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs Debian's 'chromium'; apt needs root)"
)
def test_page_classifies_in_chromium(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    _, folders = make_adapters(tmp_path)
    server = build_server([(None, folders["emo"]), (None, folders["sent"])], ServeOptions(), precision="fp32")
    uv, port = start_background(server)
    url = f"http://127.0.0.1:{port}"
    text = "what a boring plot really"
    try:
        expected = httpx.post(f"{url}/v1/classify", json={"adapter": "sent", "texts": [text]}).json()["results"][0]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 900, "height": 560})
                page.goto(url + "/", timeout=30_000)
                page.wait_for_function("document.querySelectorAll('#adapter option').length === 2", timeout=30_000)
                assert "classification" in page.inner_text("#info")
                page.select_option("#adapter", "sent")
                page.fill("#text", text)
                page.click("#run")
                page.wait_for_selector("#result .row.top", timeout=30_000)
                rows = page.locator("#result .row").all_inner_texts()
                page.screenshot(path=str(tmp_path / "page.png"))
            finally:
                browser.close()
    finally:
        uv.should_exit = True
        uv.adaptune_thread.join(30)
    assert len(rows) == len(LABELS["sent"])
    top = rows[0].split()
    assert top[0] == expected["label"] and float(top[-1]) == pytest.approx(expected["score"], abs=5e-4)
    assert (tmp_path / "page.png").stat().st_size > 5_000

"""Screenshot of the `adaptune serve` page on a real adapter (docs/serve_page.png):

    .venv/bin/python bench/serve_screenshot.py runs/demo/adapter "a gorgeous, witty, seductive movie."

Starts the server in-process on a free loopback port, opens the page in Debian's headless Chromium (Playwright),
picks the adapter, types the text, clicks Run and waits for the answer before the shot.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from adaptune.serve import ServeOptions, build_server, start_background

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    folder, text = Path(sys.argv[1]), sys.argv[2]
    out = ROOT / "docs" / "serve_page.png"
    server = build_server([(None, folder)], ServeOptions())
    uv, port = start_background(server)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 820, "height": 520})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#adapter option').length > 0")
            page.fill("#text", text)
            page.click("#run")
            page.wait_for_selector("#result .row.top")
            page.screenshot(path=str(out))
            print(page.inner_text("#result"))
            browser.close()
    finally:
        uv.should_exit = True
        uv.adaptune_thread.join(30)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

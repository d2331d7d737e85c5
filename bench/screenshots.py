"""Screenshots of the web page over a real index: a text, a photo and a combined query (for docs/).

    python bench/screenshots.py --index runs/demo/index --out docs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from enclip.data.degrade import degrade
from enclip.data.split import split_indices
from enclip.search import load_searcher
from enclip.serve.app import ServeCfg, create_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_server(searcher, port: int) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(searcher, ServeCfg()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)


def wait_for_results(page, after: int) -> int:
    page.wait_for_function("seq => { const r = document.getElementById('results');"
                           " return r.dataset.state === 'done' && Number(r.dataset.seq) > seq; }", arg=after)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=result-image]')]"
                           ".every(img => img.complete)")
    return int(page.get_attribute("#results", "data-seq"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", required=True)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    searcher = load_searcher(args.index)
    start_server(searcher, args.port)
    test_item = int(split_indices(searcher.catalogue.ids)["test"][7])
    photo = Path(tempfile.mkdtemp()) / "query.jpg"
    degrade(searcher.catalogue.image(test_item), "blur", 2, seed=0).save(photo)
    out = Path(args.out)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"http://127.0.0.1:{args.port}/")
        page.fill("[data-testid=query]", "navy check shirt for men")
        page.click("[data-testid=search-button]")
        seq = wait_for_results(page, 0)
        page.screenshot(path=str(out / "screenshot-text.png"))
        page.fill("[data-testid=query]", "")
        page.set_input_files("[data-testid=photo-input]", str(photo))
        seq = wait_for_results(page, seq)
        page.screenshot(path=str(out / "screenshot-image.png"))
        page.fill("[data-testid=query]", "women")
        page.click("[data-testid=search-button]")
        wait_for_results(page, seq)
        page.screenshot(path=str(out / "screenshot-both.png"))
        browser.close()
    print(f"screenshots written to {out}/screenshot-{{text,image,both}}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

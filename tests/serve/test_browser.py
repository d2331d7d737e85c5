"""The web page in headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against a live server.

Screenshots land in the test's tmp folder and, when ENCLIP_SCREENSHOT_DIR is set, are copied there too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import image_bytes
from tests.serve.fake_searcher import COLOURS, FakeSearcher

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path):
    """Save a screenshot under tmp_path (and ENCLIP_SCREENSHOT_DIR when set); returns the saver."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    extra = os.environ.get("ENCLIP_SCREENSHOT_DIR")

    def save(page, name: str, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return save


def open_page(browser, url: str, **context_options):
    page = browser.new_context(**context_options).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("[data-testid=filter-gender]", state="attached")
    return page, errors


def wait_for_results(page, after_seq: int) -> int:
    """Wait until a search newer than `after_seq` has rendered; returns its number."""
    page.wait_for_function(
        "seq => { const r = document.getElementById('results');"
        " return r.dataset.state === 'done' && Number(r.dataset.seq) > seq; }", arg=after_seq)
    return int(page.get_attribute("#results", "data-seq"))


def images_rendered(page) -> list[int]:
    """naturalWidth of every result image, once each has finished loading."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=result-image]')].every(img => img.complete)")
    return page.eval_on_selector_all("[data-testid=result-image]", "imgs => imgs.map(img => img.naturalWidth)")


def card_values(page, attribute: str) -> list[str]:
    return page.eval_on_selector_all("[data-testid=result-card]",
                                     f"cards => cards.map(c => c.getAttribute('{attribute}'))")


def test_search_photo_filter_and_similar(browser, live_server, served_searcher, shots, tmp_path):
    # Colour-exact expectations hold for the FakeSearcher only; the rest holds for any searcher (e.g. a real index).
    exact = isinstance(served_searcher, FakeSearcher)
    page, errors = open_page(browser, live_server, viewport={"width": 1280, "height": 900})

    page.fill("[data-testid=query]", "red")
    page.click("[data-testid=search-button]")
    seq = wait_for_results(page, 0)
    widths = images_rendered(page)
    assert widths and all(width > 0 for width in widths)
    assert not exact or set(card_values(page, "data-attr-basecolour")[:3]) == {"Red"}
    shots(page, "01-text-search")

    photo = tmp_path / "blue.png"
    photo.write_bytes(image_bytes(COLOURS["Blue"], size=(60, 80)))
    page.fill("[data-testid=query]", "")
    page.set_input_files("[data-testid=photo-input]", str(photo))
    seq = wait_for_results(page, seq)
    assert page.get_attribute("#results", "data-kind") == "image"
    assert page.is_visible("[data-testid=photo-preview]")
    assert not exact or set(card_values(page, "data-attr-basecolour")[:3]) == {"Blue"}
    assert all(width > 0 for width in images_rendered(page))
    shots(page, "02-photo-search")

    page.select_option("[data-testid=filter-gender]", "Women")
    seq = wait_for_results(page, seq)
    genders = card_values(page, "data-attr-gender")
    assert genders and set(genders) == {"Women"}
    shots(page, "03-filtered")

    clicked = card_values(page, "data-id")[1]
    page.click(f"[data-testid=result-card][data-id='{clicked}']")
    seq = wait_for_results(page, seq)
    assert page.get_attribute("#results", "data-kind") == "similar"
    assert page.is_visible("[data-testid=similar-banner]")
    assert clicked in card_values(page, "data-id")  # an item is among its own nearest neighbours
    if exact:
        assert served_searcher.calls[-1]["image"] == "bytes"  # the catalogue image of the clicked item
        clicked_colour = served_searcher.item(clicked)["attributes"]["baseColour"]
        assert card_values(page, "data-attr-basecolour")[0] == clicked_colour
    assert all(width > 0 for width in images_rendered(page))
    shots(page, "04-similar")
    assert errors == []


def test_phone_layout_and_low_confidence_notice(browser, live_server, served_searcher, shots):
    exact = isinstance(served_searcher, FakeSearcher)
    page, errors = open_page(browser, live_server, viewport={"width": 390, "height": 844}, is_mobile=True,
                             has_touch=True, device_scale_factor=2)
    page.fill("[data-testid=query]", "qwerty")
    page.click("[data-testid=search-button]")
    wait_for_results(page, 0)
    assert not exact or page.is_visible("[data-testid=low-confidence]")

    page.fill("[data-testid=query]", "women shirts")
    page.press("[data-testid=query]", "Enter")
    wait_for_results(page, 1)
    assert not exact or not page.is_visible("[data-testid=low-confidence]")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    columns = page.eval_on_selector_all("[data-testid=result-card]",
                                        "cards => new Set(cards.map(c => c.getBoundingClientRect().left)).size")
    assert columns == 2
    shots(page, "05-phone", full_page=False)
    assert errors == []


def test_a_brand_name_finds_that_brands_products_with_a_keyword_badge(browser, tiny_index_dir, tmp_path, shots):
    from enclip.search import load_searcher
    from enclip.serve.app import ServeCfg, create_app
    from tests.serve.conftest import running_server

    searcher = load_searcher(tiny_index_dir)
    brand_title = next(title for title in searcher.catalogue.titles if title.startswith("Brand7 "))
    with running_server(create_app(searcher, ServeCfg(changelog_path=tmp_path / "log.jsonl"))) as url:
        page, errors = open_page(browser, url, viewport={"width": 1280, "height": 900})
        assert page.is_checked("[data-testid=product-text]")  # product text is searched by default
        page.fill("[data-testid=query]", "Brand7")
        page.click("[data-testid=search-button]")
        seq = wait_for_results(page, 0)
        # the tiny model is untrained, so its photo and text channels may rank another item first; the keyword
        # channel must rank the brand's item first and say so on its card
        cards = page.locator("[data-testid=result-card]")
        titles = [cards.nth(i).locator(".title").inner_text() for i in range(cards.count())]
        assert brand_title in titles
        badge = cards.nth(titles.index(brand_title)).locator("[data-testid=channel-badge][data-channel=keyword]")
        assert badge.inner_text() == "keyword #1"
        shots(page, "05-brand-keyword-badge")

        page.uncheck("[data-testid=product-text]")  # photos only: no keyword channel, no badges
        wait_for_results(page, seq)
        assert page.locator("[data-testid=channel-badge]").count() == 0
        assert errors == []

"""The built book as a reader sees it: served on localhost and opened in headless Chromium.

Every page of ``_toc.yml`` (and the landing page) must load without console errors or
failed requests, show every image with alt text, resolve every internal link, render its
math with MathJax, and, for a chapter, offer Colab and Binder launch buttons for the
repository set in ``_config.yml``; the search page must find pages. Screenshots of every
page, light and dark, go to ``build/screenshots/``.

Needs Debian's ``chromium`` and the ``playwright`` package (``pip install -e .[test]``);
Playwright drives the system browser and never downloads one. Skipped when either is
missing, except in CI (``CI=true``), where that is a failure.
"""
from __future__ import annotations

import functools
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest
import yaml

from booktools.paths import REPO

SCREENSHOTS = REPO / "build" / "screenshots"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1366, "height": 900}   # a laptop screen
TIMEOUT_MS = 60_000
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())


def toc_pages() -> list[str]:
    """Every document of ``_toc.yml``, root first, as paths without suffix (``book/01_iebn``)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return [str(Path(page).with_suffix("")) for page in pages]


def is_chapter(page: str) -> bool:
    return (REPO / f"{page}.ipynb").exists()


def _missing_browser() -> list[str]:
    missing = [] if shutil.which("chromium") else ["Debian's chromium (apt-get install chromium)"]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    return missing


@pytest.fixture(scope="module")
def site(built_book) -> Iterator[str]:
    """The built HTML book served on a free localhost port; yields its base URL."""
    assert built_book.result.returncode == 0, built_book.failure()
    print(f"\nbook built in {built_book.seconds:.0f} s")

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(built_book.html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium context with a fresh profile directory, driven by Playwright."""
    missing = _missing_browser()
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=shutil.which("chromium"),
            headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


class PageProblems:
    """Console errors, uncaught exceptions, failed and error responses seen while a page loads."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(
            f"console: {msg.text} ({msg.location.get('url') or 'no URL given'})"))
        page.on("pageerror", lambda exc: self.errors.append(f"exception: {exc}"))
        page.on("requestfailed", lambda req: self.errors.append(f"request failed: {req.url} ({req.failure})"))
        page.on("response", lambda res: res.status >= 400 and self.errors.append(f"HTTP {res.status}: {res.url}"))


def open_page(browser, url: str, color_scheme: str = "light", lands_on: str | None = None):
    """A new tab at ``url`` (which redirects to ``lands_on`` if given), loaded, with MathJax done and
    every image decoded; returns (page, problems)."""
    page = browser.new_page()
    page.emulate_media(color_scheme=color_scheme)
    problems = PageProblems(page)
    page.goto(url, wait_until="load")
    if lands_on is not None:
        page.wait_for_url(lands_on)
        page.wait_for_load_state("load")
    page.evaluate("() => document.querySelectorAll('img').forEach(img => { img.loading = 'eager'; })")
    page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
    if page.evaluate("() => document.querySelector('.math') !== null"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise")
    return page, problems


@functools.lru_cache(maxsize=None)
def fetch(url: str) -> tuple[int, str]:
    """Status and text of a local URL (cached: pages share most of their links)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, ""


def broken_links(page, base: str) -> list[str]:
    """Internal links of ``page`` whose target is not HTTP 200, or whose #fragment is not on the target."""
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    broken = []
    for href in sorted({h for h in hrefs if h.startswith(base)}):
        target, fragment = urldefrag(href)
        status, text = fetch(target)
        if status != 200:
            broken.append(f"{href}: HTTP {status}")
        elif fragment and target.endswith(".html") and f'id="{fragment}"' not in text:
            broken.append(f"{href}: no element with id {fragment!r}")
    return broken


def images_without_alt_or_pixels(page) -> list[str]:
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth, alt: i.getAttribute('alt')}))")
    bad = [f"{i['src']}: not loaded" for i in images if i["width"] == 0]
    return bad + [f"{i['src']}: alt text {i['alt']!r}" for i in images
                  if not (i["alt"] or "").strip() or i["alt"] == i["src"]]


def unrendered_math(page) -> list[str]:
    """Math elements MathJax left as TeX, and raw $$ in the visible text."""
    raw = page.eval_on_selector_all(".math", "els => els.filter(e => !e.querySelector('mjx-container'))"
                                              ".map(e => e.textContent.slice(0, 80))")
    text = page.inner_text("main") if page.query_selector("main") else page.inner_text("body")
    return raw + (["raw $$ in the page text"] if "$$" in text else [])


def raw_markdown_tables(page) -> list[str]:
    """Paragraphs that show a markdown table's source instead of a table."""
    return page.eval_on_selector_all("main p", "ps => ps.map(p => p.textContent).filter(t => t.includes('|---|'))"
                                                ".map(t => t.slice(0, 80))")


def save_screenshots(browser, url: str, name: str) -> list[Path]:
    """Full-page screenshots of ``url`` in the light and the dark theme."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for scheme in ("light", "dark"):
        page, _ = open_page(browser, url, color_scheme=scheme)
        path = SCREENSHOTS / f"{name}-{scheme}.png"
        page.screenshot(path=str(path), full_page=True)
        page.close()
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("name", ["index", *toc_pages()])
def test_page_reads_well_in_a_browser(name: str, site: str, browser):
    start = time.perf_counter()
    if name == "index":   # the landing page redirects to the root document of _toc.yml
        url = urljoin(site, f"{toc_pages()[0]}.html")
        page, problems = open_page(browser, site, lands_on=url)
    else:
        url = urljoin(site, f"{name}.html")
        page, problems = open_page(browser, url)
    assert page.title(), f"{url} has no title"
    assert not problems.errors, f"{url}:\n" + "\n".join(problems.errors)
    assert not (bad := images_without_alt_or_pixels(page)), f"{url}: images\n" + "\n".join(bad)
    assert not (bad := broken_links(page, site)), f"{url}: broken internal links\n" + "\n".join(bad)
    assert not (bad := unrendered_math(page)), f"{url}: math not rendered\n" + "\n".join(bad)
    assert not (bad := raw_markdown_tables(page)), f"{url}: tables shown as markdown source\n" + "\n".join(bad)
    if is_chapter(name):
        assert page.query_selector("mjx-container"), f"{url}: a chapter without rendered math"
        assert_launch_buttons(page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"), name)
    page.close()
    paths = save_screenshots(browser, url, name.replace("/", "-"))
    print(f"{name}: checked in {time.perf_counter() - start:.1f} s; screenshots " + ", ".join(map(str, paths)))


def assert_launch_buttons(hrefs: list[str], name: str) -> None:
    """Colab and Binder links to this chapter's notebook in the repository of ``_config.yml``."""
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    colab = f"{CONFIG['launch_buttons']['colab_url']}/github/{repo}/blob/{branch}/{name}.ipynb"
    binder = f"{CONFIG['launch_buttons']['binderhub_url']}/v2/gh/{repo}/{branch}?"
    assert colab in hrefs, f"no Colab launch link {colab} on {name}"
    assert any(h.startswith(binder) and f"{name}.ipynb" in h for h in hrefs), \
        f"no Binder launch link {binder}... for {name}.ipynb"


@pytest.mark.slow
def test_search_finds_pages(site: str, browser):
    page, problems = open_page(browser, urljoin(site, "search.html?q=attention"))
    page.wait_for_function("() => document.querySelectorAll('#search-results ul.search li').length > 0")
    hits = page.eval_on_selector_all("#search-results ul.search li a", "links => links.map(a => a.href)")
    chapters = [name for name in toc_pages() if is_chapter(name)]
    assert any(chapter in hit for hit in hits for chapter in chapters), \
        f"searching 'attention' finds no chapter: {hits}"
    assert not problems.errors, "\n".join(problems.errors)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "search-light.png"))
    print(f"search: {len(hits)} hits; screenshot {SCREENSHOTS / 'search-light.png'}")


def test_the_site_root_serves_a_favicon(site: str):
    """Browsers ask for /favicon.ico on a page without an icon link (the landing page's redirect),
    sometimes before the redirect: without the file that is a 404 console error, at random."""
    status, _ = fetch(urljoin(site, "favicon.ico"))
    assert status == 200

"""A browser for the tests that use the web UIs as a person does: Debian's Chromium driven by Playwright
(Playwright cannot download a browser of its own here). Its fixtures ``browser`` and ``page`` are every test's
(tests/conftest.py); screenshots go under FLIGHTPLAN_SCREENSHOTS (else ``<home>/screenshots``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engines import require

CHROMIUM = os.environ.get("FLIGHTPLAN_CHROMIUM", "/usr/bin/chromium")
# As root, without a sandbox; and none of the background connections that a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}


# One per module, closed with it: while Playwright runs, the main thread's event loop counts as running, and the
# tests that call asyncio.run() after a browser test in the same session would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    require("Chromium (apt-get install chromium, or `make chromium`)", None if Path(CHROMIUM).exists() else CHROMIUM)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (cookies of its own) at the size of a laptop screen; every wait and expectation fails after
    60 s (an API server writing to SQLite beside a scheduler and a task answers in seconds, not milliseconds)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def screenshots_folder(home: Path) -> Path:
    folder = Path(os.environ.get("FLIGHTPLAN_SCREENSHOTS", home / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(shooter: Any, folder: Path, name: str, full_page: bool = False) -> Path:
    """A screenshot of a page or of one element on it (``shooter``: a Playwright page or locator)."""
    path = folder / f"{name}.png"
    shooter.screenshot(path=path, **({"full_page": True} if full_page else {}))
    assert path.stat().st_size > 10_000, f"{path} is nearly empty"
    return path


def sign_in(page: Any, airflow_url: str, password: str) -> str:
    """Signs in to the Airflow UI as the admin; returns its base URL."""
    from playwright.sync_api import expect

    base = airflow_url.rstrip("/")
    page.goto(f"{base}/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Browse")).to_be_visible()
    return base

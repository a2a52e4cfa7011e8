"""Driving the MLflow UI (a React app) in Debian's headless Chromium with Playwright.

No downloaded browser builds: Playwright's Python package talks to `/usr/bin/chromium` (Debian's
`chromium` package). The flags keep Chromium off the network: on a closed machine its
background connections are refused, many at a time, and slow every page down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serving import mlflow_process

CHROMIUM = Path(os.environ.get("UMM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio",
]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "ci-artifacts" / "screenshots"
TIMEOUT_MS = 45_000  # per wait: a cold React bundle on 2 busy cores takes a few seconds


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: apt-get install chromium chromium-driver (Debian's build)"
        print(f"SKIP: {message}")
        pytest.skip(message)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the `playwright` Python package is missing (pip install playwright; never `playwright install`)")


@contextmanager
def mlflow_ui(backend_store_uri: str, cwd: Path, timeout: float = 120) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 (one worker, no job runners) for as long as the block runs."""
    with mlflow_process(["ui", "--backend-store-uri", backend_store_uri], cwd, "/health",
                        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, timeout_s=timeout) as (url, _):
        yield url


@contextmanager
def browser_page(width: int = 1440, height: int = 900):
    """A fresh headless Chromium (its own empty profile) and one page."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="umm-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def wait_for_text(page, text: str, timeout: int = TIMEOUT_MS) -> None:
    page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=timeout)


def open_page(page, url: str, until: str | None = None) -> None:
    """Go to `url` with the assistant panel closed, and wait for `until` to show, if given."""
    page.goto(url)
    close_assistant(page)
    if until is not None:
        wait_for_text(page, until)


def close_assistant(page) -> None:
    """MLflow 3.17 opens an "MLflow Assistant" side panel; close it so it does not cover the page."""
    button = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    try:
        button.first.wait_for(state="visible", timeout=5_000)
        button.first.click()
        button.first.wait_for(state="hidden", timeout=5_000)
    except Exception:  # noqa: BLE001 - the panel is optional UI; its absence is fine
        pass


def screenshot(page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


# The compare page lays its metrics out as two virtualised grids scrolled together: metric names
# on the left, one value column per run on the right, rows matched by their `top` offset.
_COMPARE_ROWS_JS = """
(metricName) => {
  const link = [...document.querySelectorAll('a[title="Plot chart"]')].find(a => a.textContent.trim() === metricName);
  if (!link) return null;
  const nameGrid = link.closest('.ReactVirtualized__Grid');
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const valueGrid = grids[grids.indexOf(nameGrid) + 1];
  const inner = 'ReactVirtualized__Grid__innerScrollContainer';
  const cellOf = el => {
    let c = el;
    while (c && c.parentElement && !c.parentElement.classList.contains(inner)) c = c.parentElement;
    return c;
  };
  const top = cellOf(link).style.top;
  const values = [...valueGrid.querySelector('.ReactVirtualized__Grid__innerScrollContainer').children]
      .filter(c => c.style.top === top)
      .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
      .map(c => c.textContent.trim());
  return values;
}
"""

_SCROLL_METRICS_JS = """
(metricName) => {
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const nameGrid = grids.find(g => g.querySelector('a[title="Plot chart"]'));
  if (!nameGrid) return false;
  const valueGrid = grids[grids.indexOf(nameGrid) + 1];
  const names = [...nameGrid.querySelectorAll('a[title="Plot chart"]')].map(a => a.textContent.trim());
  if (names.includes(metricName)) return true;
  const next = valueGrid.scrollTop + 120;
  valueGrid.scrollTop = next; nameGrid.scrollTop = next;  // both, as the page's own ScrollSync does
  return false;
}
"""

_SCROLL_METRICS_TO_JS = """
(where) => {
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const nameGrid = grids.find(g => g.querySelector('a[title="Plot chart"]'));
  const valueGrid = grids[grids.indexOf(nameGrid) + 1];
  const top = where === 'end' ? valueGrid.scrollHeight : 0;
  valueGrid.scrollTop = top; nameGrid.scrollTop = top;
}
"""


def compare_values(page, metric: str) -> list[str]:
    """The value cells in the row of `metric` on the compare-runs page, left to right."""
    page.get_by_text("Run details").first.wait_for()
    for _ in range(60):
        if page.evaluate(_SCROLL_METRICS_JS, metric):
            break
        page.wait_for_timeout(100)
    values = page.evaluate(_COMPARE_ROWS_JS, metric)
    assert values is not None, f"metric {metric} is not on the compare page"
    return values


def scroll_compare_metrics(page, where: str) -> None:
    """Scroll the compare page's metric rows (names and values together) to the 'top' or 'end'."""
    page.evaluate(_SCROLL_METRICS_TO_JS, where)
    page.wait_for_timeout(300)

"""A real headless browser for tests: Debian's chromium, driven through its chromium-driver by
Selenium (the `test` extra). Nothing is downloaded: without chromium, chromedriver or selenium
the test skips and says which is missing.

    with headless_chromium(tmp_path) as browser:
        browser.get(url)
        assert console_problems(browser) == []
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["artifacts_dir", "console_problems", "headless_chromium", "screenshot"]

ROOT = Path(__file__).resolve().parents[2]
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI and in containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a container's small /dev/shm
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the `test` extra of pyproject.toml)"
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        return "chromium is not installed (apt-get install chromium)"
    if not (shutil.which("chromedriver") or Path("/usr/bin/chromedriver").exists()):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def artifacts_dir() -> Path:
    """Where a test leaves screenshots: $RELAY_TEST_ARTIFACTS, or tests/artifacts/."""
    place = Path(os.environ.get("RELAY_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    place.mkdir(parents=True, exist_ok=True)
    return place


@contextmanager
def headless_chromium(tmp_path: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A Selenium WebDriver on a fresh profile that records the page's console; quits (and so
    ends chromedriver and chromium) on the way out."""
    why = _missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver",
        log_output=str(tmp_path / "chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def console_problems(driver: Any) -> list[str]:
    """What the page wrote to the browser console at warning level or above since the last call:
    script errors, CSP violations, failed loads."""
    return [
        f"{entry['level']}: {entry['message']}"
        for entry in driver.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING")
    ]


def screenshot(driver: Any, path: Path) -> None:
    """The whole page, also what lies below the window, as a PNG at `path`."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))

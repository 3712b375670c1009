"""The console in a real browser: `relay run` with the stand-ins, a known queue and one dead
letter, opened in headless Debian chromium. The page must show both, stay within a narrow
window, replay the dead letter with the token typed into it, and log nothing to the browser's
console (a CSP violation or a script error would). Screenshots go to tests/artifacts/ (or
$RELAY_TEST_ARTIFACTS)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import FAST_RETRY, RelayProcess, make_event, wait_until
from tests.helpers.browser import (
    artifacts_dir,
    console_problems,
    headless_chromium,
    screenshot,
)

TOKEN = "console-e2e-token-0f3a"


def _post(relay: RelayProcess, events: list[dict]) -> None:
    body = b"\n".join(orjson.dumps(e) for e in events)
    req = urllib.request.Request(
        relay.url + "/api/status",
        data=body,
        headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert orjson.loads(r.read())["accepted"] == len(events)


def _spool(relay: RelayProcess) -> dict:
    with urllib.request.urlopen(relay.url + "/status", timeout=5) as r:
        return orjson.loads(r.read())["spool"]


@pytest.mark.e2e
def test_the_console_shows_the_queue_and_replays_a_dead_letter(
    upstream_factory, relay_factory, tmp_path: Path
) -> None:
    token_file = tmp_path / "ingest-token"
    token_file.write_text(TOKEN + "\n")
    up = upstream_factory()
    env = {**FAST_RETRY, "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE": str(token_file)}
    relay = relay_factory(config=up.config, env=env).start()

    # known content: one dead letter (the service refuses FEIL as invalid, once it has accepted
    # others), then three events it keeps answering "not now", so they stay queued
    _post(relay, [make_event() for _ in range(3)])
    wait_until(lambda: up.stats()["total"] == 3, 20, "the first events upstream", relay.output)
    up.faults(reject_match={"status": "FEIL"}, reject_code="INVALID")
    bad = make_event(status="FEIL")
    _post(relay, [bad])
    wait_until(lambda: _spool(relay)["dead_letters"] == 1, 20, "a dead letter", relay.output)
    up.faults(reject_match={"status": "SENDT"}, reject_code="REJECTED")
    _post(relay, [make_event(status="SENDT") for _ in range(3)])
    wait_until(lambda: _spool(relay)["events"] == 3, 20, "three queued events", relay.output)

    shots = artifacts_dir()
    with headless_chromium(tmp_path) as browser:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By

        # the live part is replaced every few seconds: an element found a moment ago may be
        # gone, so every look and click finds its element afresh
        def text(css: str) -> str:
            try:
                found = browser.find_elements(By.CSS_SELECTOR, css)
                return found[0].text if found else ""
            except StaleElementReferenceException:
                return text(css)

        def click(css: str) -> None:
            def clicked() -> bool:
                try:
                    browser.find_element(By.CSS_SELECTOR, css).click()
                except StaleElementReferenceException:
                    return False
                return True

            wait_until(clicked, 5, f"a click on {css}")

        browser.get(relay.url + "/")
        assert text("#depth") == "3" and text("#dead-count") == "1"
        # the event itself is the producers' data: only for the token's holder
        assert bad["message_id"] not in text("article.letter") and not text("#actions-off")
        assert "token" in text("#events-hidden")
        letter_id = browser.execute_script(
            "return document.querySelector('article.letter').dataset.id"
        )
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")
        screenshot(browser, shots / "console-desktop.png")

        browser.set_window_size(380, 900)
        width = browser.execute_script("return window.innerWidth")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        screenshot(browser, shots / "console-narrow.png")
        assert width <= 400 and overflow <= 0, f"horizontal scroll at {width} px: {overflow} px"
        browser.set_window_size(1280, 900)

        # the token is asked for before anything is sent
        click(f'button.replay[data-id="{letter_id}"]')
        wait_until(lambda: "token" in text("#action-result"), 5, "the page to ask for the token")
        assert _spool(relay)["dead_letters"] == 1

        browser.find_element(By.ID, "token").send_keys(TOKEN)
        wait_until(
            lambda: bad["message_id"] in text("article.letter"),
            15,
            "the event shown once the token is typed (next refresh)",
        )
        click(f'button.replay[data-id="{letter_id}"]')
        wait_until(lambda: "Replayed 1" in text("#action-result"), 10, "the replay's answer")
        # back in the spool next to the three held ones (or, if a probe picked it, upstream)
        wait_until(
            lambda: _spool(relay)["events"] == 4 or up.stats()["by_status"].get("FEIL", 0),
            10,
            "the replayed event queued",
        )
        wait_until(
            lambda: text("#dead-count") == "0" and text("#no-dead-letters"),
            15,
            "the page to show no dead letters",
        )
        screenshot(browser, shots / "console-after-replay.png")
        # While the service answers "not now" to everything held, delivery probes with one
        # retry at a time (retries first), so the replayed event waits behind them: let the
        # service take everything, and the replayed event goes too.
        up.faults(reject_match={})
        wait_until(
            lambda: up.stats()["by_status"].get("FEIL", 0) == 1,
            20,
            "the replayed event upstream",
            relay.output,
        )
        wait_until(lambda: text("#depth") == "0", 15, "the page to show an empty queue")
        stored = browser.execute_script("return sessionStorage.getItem('relay-console-token')")
        assert stored == TOKEN and TOKEN not in browser.current_url
        assert console_problems(browser) == []
    assert TOKEN not in relay.output()

"""`/status` from a real spool: the reasons for "degraded" and the numbers behind them."""

from __future__ import annotations

from pathlib import Path

from relay.config import Config
from relay.ops.status import StatusReport
from relay.spool import Reject
from tests.helpers import inprocess_relay


async def test_a_fresh_spool_without_delivery_gives_one_reason(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path) as relay:
        report = StatusReport(Config(), relay.spool, None).report()
    assert report["status"] == "degraded"
    assert report["reasons"] == ["delivery is off: no Maskinporten credentials are configured"]
    assert report["spool"]["events"] == 0 and "delivery" not in report


async def test_dead_letters_are_a_reason_with_their_number(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path) as relay:
        rejects = [Reject(raw="{}", error="status is required", source="http")] * 2
        await relay.intake.submit("http", [], rejects)
        report = StatusReport(Config(), relay.spool, None).report()
    assert report["reasons"][0] == "2 dead letter(s): see `relay dlq list`"
    assert report["spool"]["dead_letters"] == 2

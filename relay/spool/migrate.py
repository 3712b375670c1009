"""Moving the waiting events of one spool into another (`relay spool migrate`): e.g. from the
SQLite spool of a relay that ran alone into the jetstream spool that several relays now share.

Through the `Spool` protocol only, so any two backends will do: lease a batch from the source,
append it to the target (which returns only once the batch is stored durably), then ack it in
the source. An event is therefore never in neither spool. Leases live in the migrating process
only: after a crash the events not yet acked are in the source again, and a rerun moves them;
the one batch that may be stored but not acked is absorbed by the target's duplicate detection
(`spool.dedup_window`; without one it would be stored twice).

Dead letters are not moved: they stay where they are, for `relay dlq` on that spool.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.spool.api import Incoming, Spool, SpoolError, SpoolRefused

# how long one lease waits for an event whose retry time has not come yet (see `migrate`)
DUE_WAIT = 1.0


class MigrationStopped(SpoolError):
    """The target refused a batch: what was moved stays moved, the rest stays in the source."""

    def __init__(self, moved: int, why: str) -> None:
        super().__init__(
            f"moved {moved} event(s), then the target refused more: {why}; the rest stay in "
            "the source: run the same command again to continue once the target has room"
        )
        self.moved = moved


async def migrate(
    source: Spool,
    target: Spool,
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
    waiting: Callable[[int], None] | None = None,
) -> int:
    """Move every event waiting in `source` to `target`, in the order `source` hands them out;
    returns how many moved. `progress(moved)` is called after each batch.

    Events that the source holds back for a retry (a not-before time, up to the upstream's
    longest backoff) are waited for, not left behind: `waiting(left)` is called each time the
    source has nothing ready while `left` events remain. Raises MigrationStopped when the
    target refuses a batch (full, unavailable); that batch stays leased in `source` until it is
    closed (a lease lives in the process that took it), so a rerun opens the source again."""
    moved = 0
    while True:
        items = await source.lease(batch)
        if not items:
            left = source.stats().events
            if left == 0:
                return moved
            if waiting is not None:
                waiting(left)
            items = await source.lease(batch, wait=DUE_WAIT)
            if not items:
                continue
        try:
            await target.append([Incoming(item.body, item.source) for item in items])
        except SpoolRefused as exc:
            raise MigrationStopped(moved, str(exc)) from None
        # only after the target stored them: until this ack they are in both, never in neither
        await source.ack([item.id for item in items])
        moved += len(items)
        if progress is not None:
            progress(moved)

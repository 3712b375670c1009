"""`spool.backend = "jetstream"`: the spool as a replicated stream on a NATS JetStream cluster,
shared by several relays. Nothing the promise depends on stays on the relay's own disk.

The design (read it before changing the layout below: every relay and `relay spool`/`relay dlq`
must agree on it, and so must relays of different versions sharing one cluster):

Streams and buckets, all created by the relay when missing, all with `spool.jetstream.replicas`
replicas and file storage. A stream that exists with other settings stops start-up with one line
naming the difference (`streams.py`).

- `<stream>` (e.g. RELAY_STATUS): the queue. Subject `<subject>`; work-queue retention (a message
  is gone once acked), `discard: new` (full means refuse, never drop old), `max_bytes` =
  `spool.max_bytes`, `duplicate_window` = `spool.dedup_window`.
  One message per event: data = the normalised event's bytes; headers
  - `Nats-Msg-Id`: the relay's digest of the body (`relay.spool.dedup.digest`, decimal), only when
    `dedup_window` > 0: two relays storing the same retried event store it once.
  - `Relay-Source`: the source it came from ("http", "syslog", ...).
  The message's stream time is the event's `received_at`; its stream sequence is the `Leased.id`.
- `<consumer>`: one durable pull consumer on `<stream>` shared by every relay: explicit ack,
  `ack_wait` = 2 x `upstream.request_timeout`, `max_deliver` unlimited, `max_ack_pending` =
  `options.max_ack_pending`. Ack after the upstream acknowledged. A retry with a delay shorter
  than `ack_wait` / 2 stays with the relay and is handed out again when due (the server's
  redelivery of a nak comes whenever its ack queue gets to it, not before new events); a longer
  one is a `nak` with the delay. The relay sends `in_progress` for every message it holds
  (leased, pulled and not yet handed out, or waiting for its retry) every `ack_wait` / 3, so a
  slow delivery is never handed to a second relay; closing, it naks them all for the others.
  Pull requests are the relay's own (`puller.py`), one open at a time.
- `<stream>_ATTEMPTS` (KV bucket): the delivery history of an event that was given back, under
  key = its stream sequence (decimal): JSON {"attempts", "rejections", "first_error",
  "last_error", "first_attempt_at"}. Written (and acknowledged) before the `nak`; deleted after
  the ack or the move to dead letters (a leftover expires with the bucket's max age, 8 days).
  A redelivered message with no key (its relay died before settling) counts 0 attempts.
- `<stream>_DLQ`: dead letters of events the upstream refused for good. Subject
  `<subject>.dead`; limits retention; `discard: new`; `max_bytes` = `spool.max_bytes`;
  `duplicate_window` = 1 h with `Nats-Msg-Id` = "<stream>:<seq>" so that a relay dying between
  the dead letter's PubAck and the ack of the event stores it once.
- `<stream>_INVALID`: input that was never a valid event, kept at ingest. Subject
  `<subject>.invalid`; `max_bytes` = `INVALID_SHARE` x `spool.max_bytes`, so the server itself
  keeps junk to its share; otherwise as the DLQ.
  Dead letters of both streams: data = the body (raw text for invalid input); headers
  `Relay-Source` and `Relay-Dead-Letter` = ASCII JSON {"event_id", "reason", "attempts",
  "first_error", "last_error", "received_at", "first_attempt_at"} (`dead_at` is the message's
  stream time).
- Dead-letter ids as `relay dlq` shows them: 2 x seq for `<stream>_DLQ`, 2 x seq + 1 for
  `<stream>_INVALID` (`ids.py`).

The ack contract: `append` returns only once JetStream's PubAck came back for every event of
the call; on servers with `sync_interval: always` (deploy/nats/) that means a quorum has fsynced
it. A call is checked against the room left before anything is published, so a full stream
refuses the whole call; when another relay fills the stream meanwhile, part of a call may be
stored when it is refused: the producer's retry then meets those as duplicates.
"""

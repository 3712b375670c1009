"""Delivery: take events from the spool and send them to the status service.

In the order an event goes: `loop` leases it and hands it to a worker; `settle` sends it through
a sink and settles what came of it (with `acks`, `breaker` and `suspects`); the sinks implement
`sink.Sink`: `rsocket/` (the real service's transport) and `http_sink`. `setup` builds it all
from the configuration.
"""

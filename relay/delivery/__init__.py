"""Delivery: take events from the spool and send them to the status service (the sinks)."""

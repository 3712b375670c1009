"""relay: a durable sidecar that delivers eFormidling message statuses upstream."""

__version__ = "0.1.0"

"""logsvc: store, search, count and live-tail HTTP proxy logs."""

__version__ = "0.1.0"

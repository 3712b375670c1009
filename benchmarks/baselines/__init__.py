"""Bare programs the relay is compared with, each run as its own process."""

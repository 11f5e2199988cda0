"""Helpers that tests in several folders share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on now; the kernel picks it from the ephemeral range."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]

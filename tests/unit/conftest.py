"""Fixtures shared across the unit tests.

``lab`` (from test_service) starts the real ``colo-xdp compare`` with its
sockets in a temporary directory and removes all of it on every path; the
control, metrics, pcap and log tests use it too.
"""
from test_service import lab

__all__ = ["lab"]

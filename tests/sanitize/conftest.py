"""The sanitized run, once per session: the C helper built with ASan + UBSan
(sanitize_kit.build) and the selected tests run against it in a subprocess
(sanitize_kit.run).  Without clang, its ASan runtime or (for the AF_XDP
part) BPF, the tests skip; under CI they fail instead: CI must not pass by
skipping.
"""
from __future__ import annotations

import os

import pytest

import sanitize_kit as kit
from sanitize_kit import need


@pytest.fixture(scope="session")
def bpf_problem() -> str | None:
    """Why the AF_XDP tests cannot run here, or None."""
    from colo_xdp.transport.xdp import classifier as xdp

    return xdp.unavailable()


@pytest.fixture(scope="session")
def sanitized_build():
    need(not os.environ.get("CX_SANITIZED_NATIVE"),
         "already inside a sanitized run: not starting another one")
    try:
        return kit.build()
    except kit.ToolMissing as err:
        need(False, str(err))


@pytest.fixture(scope="session")
def sanitized_run(sanitized_build, bpf_problem, tmp_path_factory) -> kit.Run:
    """The default selection, sanitized; without BPF the AF_XDP tests are left
    out (the engine's still run)."""
    return kit.run(kit.selection(xdp=bpf_problem is None),
                   tmp_path_factory.mktemp("sanitized"))

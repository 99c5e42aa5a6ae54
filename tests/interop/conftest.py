"""Fixtures that run the same scripts through Debian's QEMU and through colo-xdp.

``play`` is parametrised over both comparators, so a test written once asserts
the same released bytes and checkpoint requests for each. ``play_ours`` and
``play_qemu`` run one of them, for the places where QEMU 7.2 is known wrong
(``test_ours_*``) and for the measured QEMU facts that docs/qemu-behaviour.md
quotes (``test_qemu_*``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Sequence

import pytest

from tools import qemu_ref
from tools.harness import (QUIET_MS, CompareOptions, Comparator, HarnessError,
                              Run, Step, colo_xdp_ref, run_script)

REPO = Path(__file__).resolve().parents[2]
COLO_XDP_EXE = REPO / ".venv" / "bin" / "colo-xdp"

# Default options of every test: no frame of a short test can expire, so
# checkpoint counts come from compares alone even on a slow machine.
NO_EXPIRY = CompareOptions(compare_timeout=60_000)

Launcher = Callable[[CompareOptions], contextlib.AbstractContextManager[Comparator]]
Player = Callable[..., Run]


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    """qemu-system-x86_64; the session fails (not skips) without it."""
    try:
        return qemu_ref.qemu_binary()
    except HarnessError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def colo_xdp_exe() -> Path:
    """The colo-xdp built into .venv; missing fails under CI, else skips."""
    if COLO_XDP_EXE.exists():
        return COLO_XDP_EXE
    message = f"{COLO_XDP_EXE} is missing: run 'make setup' first."
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def qemu(qemu_binary: str) -> Launcher:
    """Starts QEMU colo-compare with given options."""
    return lambda options=NO_EXPIRY: qemu_ref.qemu_ref(options)


@pytest.fixture
def ours(colo_xdp_exe: Path) -> Launcher:
    """Starts colo-xdp compare with given options."""
    return lambda options=NO_EXPIRY: colo_xdp_ref(colo_xdp_exe, options)


@pytest.fixture(params=["qemu", "colo-xdp"])
def launch(request: pytest.FixtureRequest) -> Launcher:
    """Each comparator in turn."""
    return request.getfixturevalue("qemu" if request.param == "qemu" else "ours")


def _player(launcher: Launcher) -> Player:
    """A function that runs one script on a fresh comparator and returns the run."""
    def play(steps: Sequence[Step], options: CompareOptions = NO_EXPIRY,
             quiet_ms: float = QUIET_MS) -> Run:
        with launcher(options) as comparator:
            return run_script(comparator, steps, quiet_ms)
    return play


@pytest.fixture
def play(launch: Launcher) -> Player:
    """Run a script on each comparator in turn."""
    return _player(launch)


@pytest.fixture
def play_ours(ours: Launcher) -> Player:
    """Run a script on colo-xdp only."""
    return _player(ours)


@pytest.fixture
def play_qemu(qemu: Launcher) -> Player:
    """Run a script on QEMU only."""
    return _player(qemu)

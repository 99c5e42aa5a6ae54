"""Fault injection against the real `colo-xdp compare` (chardev mode).

The process, its sockets and its peers come from the unit tests' ServiceSandbox
(tests/unit/test_service.py), shared rather than copied: the ``lab``
fixture starts the CLI, fails the test on a traceback and undoes everything.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_service import lab  # noqa: E402,F401  (the fixture)

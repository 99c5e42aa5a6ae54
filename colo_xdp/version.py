"""colo-xdp's version, as installed (pyproject.toml's), in one place."""
from __future__ import annotations

import importlib.metadata

try:
    VERSION = importlib.metadata.version("colo-xdp")
except importlib.metadata.PackageNotFoundError:       # a tree that was never installed
    VERSION = "unknown"

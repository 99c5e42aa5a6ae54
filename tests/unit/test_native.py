"""colo_xdp.native is the one door to the C helper."""
import errno
import pathlib

import pytest

from colo_xdp import native

PACKAGE = pathlib.Path(native.__file__).parent


def test_only_native_imports_the_cffi_module():
    importers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "import ffi" in p.read_text() or "._native import" in p.read_text()
                 or "import _native" in p.read_text()]
    assert importers == ["native.py"]


def test_a_negative_return_raises_with_its_errno():
    with pytest.raises(native.NativeError) as info:
        native._check(-errno.EBADMSG, "cx_engine__feed_stream")
    assert info.value.errno == errno.EBADMSG
    assert "cx_engine__feed_stream" in str(info.value)
    assert native._check(3, "x") == 3

"""Everything colo_xdp raises on purpose derives from ColoXdpError."""
import importlib
import inspect
import pkgutil

import colo_xdp
from colo_xdp.errors import ColoXdpError, FramingError

NOT_ERRORS = {"colo_xdp.transport.xdp.classifier.Terminated"}   # a SystemExit: exit 143


def _product_exceptions():
    for info in pkgutil.walk_packages(colo_xdp.__path__, "colo_xdp."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                yield f"{info.name}.{cls.__name__}", cls


def test_every_product_exception_has_the_one_root():
    found = dict(_product_exceptions())
    assert len(found) > 15
    strays = [name for name, cls in found.items()
              if name not in NOT_ERRORS and not issubclass(cls, ColoXdpError)]
    assert strays == []


def test_one_framing_error():
    from colo_xdp.proto import framing, notify
    assert framing.FramingError is notify.FramingError is FramingError

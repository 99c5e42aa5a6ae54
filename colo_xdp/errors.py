"""One root for everything colo-xdp raises on purpose.

Every product exception derives from ``ColoXdpError``, through one of the
few kinds below, so that a caller (the CLI first of all) catches the root
once and prints the message, which is always one sentence saying what to
do.  Kinds keep the builtin base their callers already rely on
(``ValueError`` for a bad value, ``OSError`` with an errno for a resource)::

    ColoXdpError
    ├── ConfigError (ValueError)    an option, spec, address, rule or setting
    │     SpecError, AddressError, FlowError, ClassifyError
    ├── EndpointError (OSError)     a socket or interface that cannot be opened
    ├── NativeError (OSError)       a C helper call returned -errno (colo_xdp.native)
    ├── FramingError (ValueError)   a chardev stream broke QEMU's framing
    ├── EngineError                 the engine refused a setting or could not allocate
    ├── XdpError                    XDP: classifier, AF_XDP socket (XskError), port
    ├── ControlError                control socket: a refused command or change,
    │     CommandError, PassthroughError, ClientError; a QMP monitor that
    │     breaks the protocol (QmpError, also a ValueError)
    └── LabError                    the namespace lab or a demo (NetnsError, DemoError)

The more specific classes live with the code that raises them.
"""
from __future__ import annotations


class ColoXdpError(Exception):
    """Something colo-xdp refuses or cannot do; the message is one sentence."""


class ConfigError(ColoXdpError, ValueError):
    """A value the user gave (option, spec, address, rule, setting) is wrong."""


class EndpointError(ColoXdpError, OSError):
    """An endpoint that cannot be opened; the message is one sentence."""


class FramingError(ColoXdpError, ValueError):
    """A chardev byte stream broke QEMU's framing (a zero-length record or
    one over the limit): the stream must be closed.

    The Python decoder (colo_xdp.proto.framing) sets ``records``, the records
    completed before the bad one; the engine sets ``reason`` (a DropReason)
    and ``consumed``, the bytes in front of the bad record.
    """

    records: tuple = ()
    reason = None
    consumed = 0


class EngineError(ColoXdpError):
    """The engine could not be created or was fed something it refuses."""


class XdpError(ColoXdpError):
    """XDP could not be set up; the message is one sentence saying what to do."""


class ControlError(ColoXdpError):
    """The control socket refused a request, or cannot be used; or a monitor
    colo-xdp controls (QMP) broke its protocol."""


class LabError(ColoXdpError):
    """The namespace lab or a demo could not be built or run."""

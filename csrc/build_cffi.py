"""cffi build script for colo_xdp._native (out-of-line API mode).

The C lives in real .c/.h files beside this script; the declarations cffi
needs are the region of each header between the cdef markers, so they are
written once.  Registered in setup.py with ``cffi_modules``.  A new part of
the helper adds its .c to SOURCES and its .h to HEADERS.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# bpf/: the wire header the engine shares with the classifier (cx_wire.h).
BPF_DIR = os.path.join(os.path.dirname(HERE), "bpf")
SOURCES = ["cx_engine.c", "chardev_glue.c", "xsk.c", "segment.c", "xdp_glue.c"]
# (directory, header), in cdef order: a header's types before their users.
HEADERS = [(BPF_DIR, "cx_wire.h"), (HERE, "cx_engine.h"), (HERE, "chardev_glue.h"),
           (HERE, "xsk.h"), (HERE, "segment.h"), (HERE, "xdp_glue.h")]
# The kernel's fixed-width types cx_wire.h is written in (<linux/types.h>).
KERNEL_TYPES = """
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
"""
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]


def _cdef_region(directory, header):
    with open(os.path.join(directory, header)) as f:
        text = f.read()
    match = re.search(r"/\* cdef-begin \*/(.*)/\* cdef-end \*/", text, re.S)
    if not match:
        raise RuntimeError(f"{header} has no cdef-begin/cdef-end region")
    # cffi takes '#define NAME <integer>' but no trailing comments on them.
    return re.sub(r"(#define\s+\w+\s+\w+)\s*/\*.*?\*/", r"\1", match.group(1))


def make_ffibuilder(extra_compile_args=(), extra_link_args=()):
    """The FFI of colo_xdp._native; other builds of the same module (the
    sanitized one of tests/sanitize) add their compile and link flags.
    Sources are relative to the repository root: build from there."""
    builder = FFI()
    builder.cdef(KERNEL_TYPES + "\n".join(_cdef_region(d, h) for d, h in HEADERS))
    builder.set_source(
        "colo_xdp._native",
        "\n".join(f'#include "{h}"' for _, h in HEADERS),
        sources=[os.path.join("csrc", s) for s in SOURCES],
        include_dirs=[HERE, BPF_DIR],
        extra_compile_args=[*CFLAGS, *extra_compile_args],
        extra_link_args=list(extra_link_args),
    )
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

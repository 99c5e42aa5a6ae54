# The cffi helper is built out-of-line (API mode) at install time; the build
# script lives outside the package, as pyca/cryptography does.
from setuptools import setup

setup(cffi_modules=["csrc/build_cffi.py:ffibuilder"])

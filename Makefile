# colo-xdp: every target sets itself up first (idempotently).
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Debian's python, so that --system-site-packages sees python3-bpfcc later on.
SYSPY     := /usr/bin/python3
NATIVE_SRC := $(wildcard csrc/*.c csrc/*.h) bpf/cx_wire.h csrc/build_cffi.py

.PHONY: setup test demo bench fuzz soak clean

setup: $(STAMP)
	scripts/setup-bpf.sh
	scripts/build-qemu.sh

$(STAMP): pyproject.toml setup.py $(NATIVE_SRC) scripts/setup-host.sh
	scripts/setup-host.sh
	test -x $(PY) || $(SYSPY) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/colo-xdp demo

bench: setup
	$(PY) -m tools.bench

# Each fuzzer (the engine under libFuzzer+ASan+UBSan, the Python parsers under
# atheris) for FUZZ_SECONDS, then the property tests with many more examples.
FUZZ_SECONDS ?= 60
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) tests/fuzz/fuzzlib.py
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/property

# Minutes of mixed traffic through chardev and XDP mode at once; not part of `make test`.
SOAK_SECONDS ?= 600
soak: setup
	$(PY) -m tools.soak --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) build *.egg-info colo_xdp/_native*.so colo_xdp/_native.c

# kleened: common tasks. `make run` and `make test` work on a fresh Debian 12 as root.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := zfs-fuse nftables busybox-static iproute2 util-linux gcc libc6-dev \
                openssl curl procps zstd xz-utils tar

.PHONY: run test lint format deps venv openapi clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# System packages the tests use for real (zfs-fuse, nftables, busybox for
# test images, iproute2, a C compiler for the Linux jail reaper).
deps: venv
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

run: venv
	$(VENV)/bin/kleened serve

test: deps
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check kleened tests migrations benchmarks
	$(VENV)/bin/ruff format --check kleened tests benchmarks

format: venv
	$(VENV)/bin/ruff format kleened tests benchmarks
	$(VENV)/bin/ruff check --fix kleened tests benchmarks

openapi: venv
	$(VENV)/bin/kleened openapi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

-include mk/install.mk

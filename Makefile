# porch — see README.md. `make run` and `make test` start from a bare Debian 12 machine.
PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

# Debian packages: build headers for pyalsaaudio and systemd-python, then the
# real peers and tools the test suite drives.
APT_RUN  := libasound2-dev libsystemd-dev pkg-config python3-venv python3-dev gcc
APT_TEST := sip-tester kamailio baresip-core linphone-cli tshark nftables iproute2 \
            chromium espeak-ng sox alsa-utils coturn kamailio-tls-modules openssl

.PHONY: run test bench lint image deps-run deps-test clean

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq; \
		echo "wireshark-common wireshark-common/install-setuid boolean false" | $(SUDO) debconf-set-selections; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

$(VENV)/.run-stamp: pyproject.toml
	$(call apt_install,$(APT_RUN))
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<81" wheel
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.run-stamp pyproject.toml Makefile
	$(call apt_install,$(APT_RUN) $(APT_TEST))
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

deps-run: $(VENV)/.run-stamp
deps-test: $(VENV)/.test-stamp

run: deps-run
	$(VENV)/bin/porch run --sim

test: deps-test
	$(VENV)/bin/ruff check firmware provisioning tests hw
	$(PY) -m pytest -m "not fuzz" $(PYTEST_ARGS)

bench: deps-test
	$(VENV)/bin/porch bench

lint: deps-test
	$(VENV)/bin/ruff check firmware provisioning tests hw
	$(VENV)/bin/ruff format --check firmware provisioning tests hw

image:
	@echo "make image: the SD image build is not implemented yet (see image/README.md)"; exit 1

clean:
	rm -rf $(VENV) .porch-sim .pytest_cache bench-results.json

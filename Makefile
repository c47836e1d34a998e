# c8ysim: `make run` runs the agent on the sample config; `make test` runs every test.
# Both work as root on a fresh Debian 12: they install the system packages they need.

PYTHON ?= python3
VENV := .venv
VENV_OK := $(VENV)/.installed
CONFIG ?= etc/c8ysim.yaml
PYTEST_ARGS ?=

.PHONY: run test system-deps clean
.DEFAULT_GOAL := run

# Each area adds its targets and test prerequisites (TEST_DEPS) in a fragment of its own.
# mk/apt.mk first: $(call apt_install,...), how every fragment installs Debian packages.
TEST_DEPS :=
TEST_EXTRA :=
include mk/apt.mk
-include $(filter-out mk/apt.mk,$(wildcard mk/*.mk))

$(VENV_OK): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	$(VENV)/bin/python -m compileall -q c8ysim  # an editable install is not byte-compiled
	touch $@

# Debian packages: venv support for the Python in use (a pyenv Python has its own), and
# mosquitto for the tests (unless one is there already, packaged or not).
system-deps:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(call apt_install,python3-venv)
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	    $(call apt_install,mosquitto)

run: system-deps $(VENV_OK)
	@$(VENV)/bin/python -c 'import socket; socket.create_connection(("localhost", 1883), 1)' \
	    2>/dev/null || echo "note: no MQTT broker on localhost:1883 yet; readings are buffered until one is there"
	$(VENV)/bin/c8ysim run --config $(CONFIG)

test: system-deps $(TEST_DEPS) $(VENV_OK)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(if $(TEST_EXTRA),$(MAKE) --no-print-directory $(TEST_EXTRA))

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis build dist *.egg-info

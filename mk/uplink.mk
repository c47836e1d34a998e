# Uplink: the uplink tests once more under paho-mqtt 1.6.1, the version Debian 12 ships
# (python3-paho-mqtt), next to the main run under paho 2.x. The Debian 12 versions of bottle
# and PyYAML are pinned too. The Makefile's `test` rule runs $(TEST_EXTRA) after the main
# pytest run (TEST_DEPS run before it, so they are the wrong hook for a second test run).

PAHO16_VENV := .venv-paho16
PAHO16_OK := $(PAHO16_VENV)/.installed
PAHO16_PACKAGES := 'paho-mqtt==1.6.1' 'bottle==0.12.23' 'PyYAML==6.0.1' \
    pytest pytest-timeout hypothesis psycopg2-binary prometheus_client
# The tests that drive the agent's MQTT transport; the wildcards pick up later uplink suites.
# tests/test_fake_tenant.py is left out: it tests the fake tenant itself with a paho-2-only
# probe client, so under 1.6 it fails without saying anything about the agent.
PAHO16_TESTS ?= $(filter-out tests/test_fake_tenant.py,$(sort $(wildcard tests/test_e2e.py \
    tests/test_tls.py tests/test_auth.py tests/test_uplink*.py tests/test_fake_tenant*.py \
    tests/test_protocol.py tests/test_session.py tests/test_restart.py tests/test_bootstrap.py \
    tests/test_hostid.py)))

TEST_EXTRA += test-paho16

.PHONY: test-paho16 clean-paho16

$(PAHO16_OK): pyproject.toml mk/uplink.mk
	$(PYTHON) -m venv $(PAHO16_VENV)
	$(PAHO16_VENV)/bin/pip install --quiet --upgrade pip
	$(PAHO16_VENV)/bin/pip install --quiet -e . $(PAHO16_PACKAGES)
	touch $@

test-paho16: system-deps $(PAHO16_OK)
	@$(PAHO16_VENV)/bin/python -c 'import paho.mqtt; v = paho.mqtt.__version__; \
	    assert v == "1.6.1", f"expected paho-mqtt 1.6.1 in $(PAHO16_VENV), found {v}"'
	$(PAHO16_VENV)/bin/python -m pytest $(PYTEST_ARGS) $(PAHO16_TESTS)

clean: clean-paho16
clean-paho16:
	rm -rf $(PAHO16_VENV)

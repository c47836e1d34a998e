# systemd tests (tests/test_systemd.py): a real systemd in systemd-nspawn, on a Debian 12 root
# that debootstrap builds once into /var/cache/c8ysim-tests (see tests/nspawn.py).
# Never starts systemd on the host itself.

.PHONY: systemd-deps systemd-test

TEST_DEPS += systemd-deps

systemd-deps:
	@[ "$$(id -u)" != 0 ] || \
	    $(call apt_install,systemd-container debootstrap,--no-install-recommends)

systemd-test: systemd-deps $(VENV_OK)
	$(VENV)/bin/python -m pytest tests/test_systemd.py $(PYTEST_ARGS)

# Status page tests (tests/test_status_browser.py) drive Debian's headless chromium from the
# command line (no selenium, no driver). Installed when missing, as root (mk/apt.mk); without
# root the browser tests skip (with the reason shown).

.PHONY: status-deps

TEST_DEPS += status-deps

status-deps:
	@[ "$$(id -u)" != 0 ] || $(call apt_install,chromium fonts-dejavu-core,--no-install-recommends)

# Status page tests (tests/test_status_browser.py) drive Debian's headless chromium from the
# command line (no selenium, no driver). Install it when missing; waits for the dpkg lock,
# since other fragments may be installing packages at the same time. Without root the browser
# tests skip (with the reason shown).

.PHONY: status-deps

TEST_DEPS += status-deps

status-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
	    apt-get -o DPkg::Lock::Timeout=600 update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
	        --no-install-recommends chromium fonts-dejavu-core; \
	fi

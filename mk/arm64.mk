# The arm64 (Raspberry Pi OS 64-bit = Debian 12 arm64) package test: tests/test_arm64.py runs an
# arm64 bookworm root under qemu-user. arm64-deps installs what that needs, only if missing
# (waits for the dpkg lock: other areas install in parallel). The root itself is built and
# cached by the test under /var/cache/c8ysim-tests.

ARM64_PACKAGES := qemu-user-static binfmt-support debootstrap
ARM64_APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q

.PHONY: arm64-deps
TEST_DEPS += arm64-deps

arm64-deps:
	@missing=$$(for p in $(ARM64_PACKAGES); do \
	    dpkg-query -W -f '$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; \
	    done); \
	if [ -n "$$missing" ]; then \
	    $(ARM64_APT_GET) update && $(ARM64_APT_GET) install -y --no-install-recommends $$missing; fi

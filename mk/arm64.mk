# The arm64 (Raspberry Pi OS 64-bit = Debian 12 arm64) package test: tests/test_arm64.py runs an
# arm64 bookworm root under qemu-user. arm64-deps installs what that needs (mk/apt.mk) and
# registers qemu-aarch64 with binfmt_misc where no init did (containers: binfmt-support's
# service is not started there).
# The root itself is built and cached by the test under /var/cache/c8ysim-tests.

ARM64_PACKAGES := qemu-user-static binfmt-support debootstrap
ARM64_BINFMT := /proc/sys/fs/binfmt_misc

.PHONY: arm64-deps
TEST_DEPS += arm64-deps

arm64-deps:
	@$(call apt_install,$(ARM64_PACKAGES),--no-install-recommends)
	@test -e $(ARM64_BINFMT)/register || mount -t binfmt_misc binfmt_misc $(ARM64_BINFMT)
	@grep -qx enabled $(ARM64_BINFMT)/qemu-aarch64 2>/dev/null || \
	    /usr/sbin/update-binfmts --enable qemu-aarch64
	@grep -q '^flags: .*F' $(ARM64_BINFMT)/qemu-aarch64 || \
	    { echo "qemu-aarch64 is registered without the F flag: install qemu-user-static" >&2; exit 1; }

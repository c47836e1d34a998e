# Packaging: `make deb` (dist/c8ysim_VERSION_all.deb and the source package, .dsc and .tar.xz),
# `make lint` (lintian on both, so on debian/tests too; fails on any E: or W:), `make pyz`
# (dist/c8ysim.pyz, the agent as one file for Debian's python3). deb-deps installs the build
# tools and, for the package tests, Debian's own python3-* libraries.

DIST ?= dist
DEB_BUILD_DIR ?= build/deb
PYZ_BUILD_DIR ?= build/pyz
# A plain Debian PATH and Python: the machine's pyenv/venv python must not build the package.
DEB_PATH := /usr/sbin:/usr/bin:/sbin:/bin
DEB_PYTHON := /usr/bin/python3
DEB_VERSION = $(shell awk -F'[()]' 'NR == 1 {print $$2}' debian/changelog)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_FILES = c8ysim_$(DEB_VERSION)_all.deb c8ysim_$(DEB_VERSION)_$(DEB_ARCH).buildinfo \
    c8ysim_$(DEB_VERSION)_$(DEB_ARCH).changes c8ysim_$(DEB_VERSION).dsc c8ysim_$(DEB_VERSION).tar.xz
# What the package is built from (no venvs, caches or test output).
DEB_SOURCES := c8ysim debian docs/c8ysim.8 systemd README.md pyproject.toml
DEB_BUILD_PACKAGES := debhelper dh-python python3 lintian man-db
DEB_TEST_PACKAGES := python3-paho-mqtt python3-yaml python3-bottle python3-sdnotify tzdata \
    procps mosquitto systemd-container debootstrap

.PHONY: deb lint pyz deb-deps clean-deb
TEST_DEPS += deb-deps

# Built in a copy under $(DEB_BUILD_DIR): dpkg-buildpackage writes its results next to the
# source tree (that would be the clone's parent) and debian/rules clean must not touch
# the working tree.
deb:
	@test -n "$(DEB_VERSION)" || { echo "no version in debian/changelog" >&2; exit 1; }
	rm -rf "$(DEB_BUILD_DIR)"
	mkdir -p "$(DEB_BUILD_DIR)/c8ysim-$(DEB_VERSION)" "$(DIST)"
	tar -c --exclude=__pycache__ --exclude='*.pyc' $(DEB_SOURCES) | \
	    tar -x -C "$(DEB_BUILD_DIR)/c8ysim-$(DEB_VERSION)"
	cd "$(DEB_BUILD_DIR)/c8ysim-$(DEB_VERSION)" && \
	    env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PATH=$(DEB_PATH) \
	    dpkg-buildpackage -us -uc
	cd "$(DEB_BUILD_DIR)" && mv $(DEB_FILES) "$(abspath $(DIST))/"
	@ls -l "$(DIST)/c8ysim_$(DEB_VERSION)_all.deb"

lint: deb
	env PATH=$(DEB_PATH) lintian -I --pedantic --fail-on error,warning \
	    "$(DIST)/c8ysim_$(DEB_VERSION)_$(DEB_ARCH).changes"

# The agent only (not its libraries), run by Debian's python3 with the python3-* packages.
# Its own __main__ (zipapp's -m would drop main()'s exit status).
pyz:
	rm -rf "$(PYZ_BUILD_DIR)"
	mkdir -p "$(PYZ_BUILD_DIR)/src" "$(DIST)"
	tar -c --exclude=__pycache__ --exclude='*.pyc' c8ysim | tar -x -C "$(PYZ_BUILD_DIR)/src"
	printf 'import sys\n\nfrom c8ysim.main import main\n\nsys.exit(main())\n' \
	    > "$(PYZ_BUILD_DIR)/src/__main__.py"
	$(DEB_PYTHON) -m zipapp "$(PYZ_BUILD_DIR)/src" --compress \
	    --python=$(DEB_PYTHON) --output="$(DIST)/c8ysim.pyz"
	chmod 0755 "$(DIST)/c8ysim.pyz"

deb-deps:
	@$(call apt_install,$(DEB_BUILD_PACKAGES) $(DEB_TEST_PACKAGES),--no-install-recommends)

clean: clean-deb
clean-deb:
	rm -rf "$(DEB_BUILD_DIR)" "$(PYZ_BUILD_DIR)"

# Debian packages: the one way the Makefile and its fragments install them. In a recipe,
#
#     $(call apt_install,PACKAGES[,INSTALL-OPTIONS])   e.g. $(call apt_install,gcc,--no-install-recommends)
#
# installs those of PACKAGES that dpkg does not list as installed, and nothing (no apt-get at
# all) when none is missing. It runs `apt-get update` at most once per make run: the first
# fragment that has something to install updates and writes this run's id into APT_STAMP,
# later ones (and sub-makes, which inherit the id) see it there. An flock on APT_STAMP keeps
# parallel recipes (make -j) from updating twice; DPkg::Lock::Timeout waits for other dpkg
# users (e.g. another clone's make) instead of failing. Not root: names what is missing, fails.
# Defined first (mk/*.mk are included in alphabetical order), though recipes expand late anyway.

APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600
APT_STAMP ?= /tmp/c8ysim-apt-update.stamp

# This make run's id, set once (:=) and exported: a sub-make ($(MAKE) in a recipe) keeps it.
ifndef C8YSIM_MAKE_RUN
C8YSIM_MAKE_RUN := $(shell echo "$$(date +%s.%N)-$$PPID")
endif
export C8YSIM_MAKE_RUN

apt_install = ( set -e; \
    missing=$$(for p in $(1); do \
        dpkg-query -W -f '$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || echo $$p; \
    done); \
    [ -n "$$missing" ] || exit 0; \
    [ "$$(id -u)" = 0 ] || { echo "missing Debian packages:" $$missing \
        "(run make as root to install them)" >&2; exit 1; }; \
    exec 9>>$(APT_STAMP); flock 9; \
    [ "$$(cat $(APT_STAMP))" = "$(C8YSIM_MAKE_RUN)" ] || { \
        $(APT_GET) update && echo "$(C8YSIM_MAKE_RUN)" > $(APT_STAMP); }; \
    $(APT_GET) install -y $(2) $$missing )

# Chaos: the long fault runs (`make chaos`): three devices against the fake tenant through a
# fault proxy, every reading counted (tests/chaos_collector.py). Writes docs/reliability.md
# with the machine, date, commit and the table. The short runs of the same scenarios are in
# tests/test_chaos.py and so part of `make test`. Needs root (the disk-full run mounts a tmpfs).
# e.g. make chaos CHAOS_ARGS="-k outage"

CHAOS_ARGS ?=
CHAOS_REPORT ?= docs/reliability.md

.PHONY: chaos chaos-deps

TEST_DEPS += chaos-deps

# gcc and the C library headers build tests/clockshift.c, the LD_PRELOAD library the wall-clock
# scenario steps the agent's clock with (the host's clock is never touched).
chaos-deps:
	@$(call apt_install,gcc libc6-dev,--no-install-recommends)

chaos: system-deps chaos-deps $(VENV_OK)
	C8YSIM_CHAOS=long C8YSIM_CHAOS_REPORT=$(CHAOS_REPORT) \
	    $(VENV)/bin/python -m pytest -s -p no:cacheprovider tests/test_chaos.py $(CHAOS_ARGS)
	@cat $(CHAOS_REPORT)

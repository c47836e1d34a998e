# Benchmarks (`make bench`, as root: memory is read from /proc/<pid>/pagemap): footprint
# (distinct pages, CPU per delivered measurement, start, scale mode: 100 devices at 25 and
# at 1 per process), drain through the real agent and through Session alone, and the status
# page under load; regenerates docs/performance.md. Figures only, never part of `make test`.
# With mk/storage.mk's bench-storage (Session alone, SQLite and PostgreSQL) about 13 minutes
# (the scale cases ~85 s each).
# e.g. make bench-footprint FOOTPRINT_ARGS="--seconds 10 --settle 5 --devices 3,10 --scale ''"
# for a quick look; FOOTPRINT_ARGS="--only-scale" for the scale cases alone (printed only);
# make bench-agent-drain for the drain through the agent alone.
# make bench-ab BASE=HEAD~1: this checkout's agent against BASE's, side by side in one CPU
# window (printed only; the way to judge a change of CPU smaller than the run-to-run noise).

.PHONY: bench bench-footprint bench-status bench-agent-drain bench-ab

FOOTPRINT_ARGS ?=
AGENT_DRAIN_ARGS ?=
BASE ?= HEAD
AB_ARGS ?=

bench: bench-footprint bench-status

# Also runs bench_agent_drain.py and a short bench_drain.py for the note's drain section.
bench-footprint: system-deps $(VENV_OK)
	@[ "$$(id -u)" = 0 ] || { echo "make bench reads /proc/<pid>/pagemap: run it as root" >&2; exit 1; }
	$(VENV)/bin/python bench/bench_footprint.py --doc docs/performance.md $(FOOTPRINT_ARGS)

# The status page answered from the supervisor loop, alone and under concurrent clients.
bench-status: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_status.py --doc docs/performance.md

# A day of backlog of three devices drained by `c8ysim run`, loopback and +50 ms, against
# bare paho (printed only; bench-footprint puts it in the note).
bench-agent-drain: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_agent_drain.py $(AGENT_DRAIN_ARGS)

bench-ab: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_ab.py --base $(BASE) $(AB_ARGS)

# Footprint benchmark (`make bench`, next to the storage benchmarks of mk/storage.mk): PSS,
# CPU and start time of the real agent against a private mosquitto; regenerates
# docs/performance.md. Figures only, never part of `make test`. Takes about 6 minutes.
# e.g. make bench-footprint FOOTPRINT_ARGS="--seconds 10 --settle 5" for a quick look.

.PHONY: bench bench-footprint bench-status

FOOTPRINT_ARGS ?=

bench: bench-footprint bench-status

bench-footprint: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_footprint.py --doc docs/performance.md $(FOOTPRINT_ARGS)

# The status page answered from the supervisor loop, alone and under concurrent clients.
bench-status: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_status.py --doc docs/performance.md

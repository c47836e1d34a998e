# Footprint benchmark (`make bench`, next to the storage benchmarks of mk/storage.mk): PSS,
# CPU and start time of the real agent against a private mosquitto; regenerates
# docs/performance.md. Figures only, never part of `make test`. Takes about 6 minutes.
# e.g. make bench-footprint FOOTPRINT_ARGS="--seconds 10 --settle 5" for a quick look.

.PHONY: bench bench-footprint

FOOTPRINT_ARGS ?=

bench: bench-footprint

bench-footprint: system-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_footprint.py --doc docs/performance.md $(FOOTPRINT_ARGS)

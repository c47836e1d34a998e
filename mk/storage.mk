# Storage: PostgreSQL for the buffer contract tests (part of `make test`), and the storage
# benchmarks (`make bench`: run by hand, never part of `make test`).

.PHONY: storage-deps bench bench-storage

TEST_DEPS += storage-deps

# The tests start a throwaway cluster with initdb/pg_ctl from /usr/lib/postgresql/*/bin.
# Debian's server package brings them and the `postgres` user the cluster runs as when the
# tests run as root. (Set C8YSIM_TEST_PG_DSN to use an existing server instead.) Any
# version's initdb will do, whichever package brought it.
storage-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	    $(call apt_install,postgresql,--no-install-recommends)

# e.g. make bench BENCH_ARGS="--rows 100000 --repeat 3" or BENCH_ARGS="--rtt-ms 50"
BENCH_ARGS ?=

bench: bench-storage

bench-storage: system-deps storage-deps $(VENV_OK)
	$(VENV)/bin/python bench/bench_drain.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/bench_ingest.py

# Fuzzing (`make fuzz`): the hypothesis tests that take their settings from tests/fuzzing.py,
# with 10 000 examples each: the YAML loader, s/ds operation dispatch, the SmartREST parser
# and the status page's query strings. `make test` runs the same tests with a few hundred
# examples.
# About 5 minutes on 2 cores (operation dispatch alone ~3.5 min: a real SQLite buffer);
# hence the longer per-test timeout than pyproject.toml's 120 s.

.PHONY: fuzz

FUZZ_TESTS := tests/test_fuzz_config.py tests/test_fuzz_operations.py \
              tests/test_smartrest.py tests/test_status_page.py

fuzz: system-deps $(VENV_OK)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/python -m pytest -q --timeout 1800 $(PYTEST_ARGS) \
	    $(FUZZ_TESTS)

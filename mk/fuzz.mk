# Fuzzing (`make fuzz`): the hypothesis tests that take their settings from tests/fuzzing.py,
# with 10 000 examples each: the YAML loader, s/ds operation dispatch, the SmartREST parser,
# the status page's query strings, the raw-socket fuzzer of the status server inside the real
# supervisor loop (test_status_hostile.py, with its regression tests), broker text in the log
# stream (one line per record), the simulation models around sunrise and sunset
# (test_sim_edges.py) and diag's redaction of secrets. `make test` runs the same tests with
# a few hundred examples (a few thousand for the status server's requests).
# The first four took about 5 minutes on 2 cores (operation dispatch alone ~3.5 min: a real
# SQLite buffer); the status server's two fuzzers add ~7 min more (extrapolated: 2 000
# requests ~20 s, 100 idle floods ~3 s); hence the longer per-test timeout than
# pyproject.toml's 120 s. Of test_hostile_broker.py and test_diag.py only the property
# tests run here: the rest of those files are scenarios that `make test` covers.

.PHONY: fuzz

FUZZ_TESTS := tests/test_fuzz_config.py tests/test_fuzz_operations.py \
              tests/test_smartrest.py tests/test_status_page.py \
              tests/test_status_hostile.py tests/test_sim_edges.py \
              tests/test_hostile_broker.py::test_no_message_makes_more_than_one_line \
              tests/test_diag.py::test_no_secret_in_the_bundle_whatever_its_form

fuzz: system-deps $(VENV_OK)
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/python -m pytest -q --timeout 1800 $(PYTEST_ARGS) \
	    $(FUZZ_TESTS)

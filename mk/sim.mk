# Household model (c8ysim/sim/) for people: `make plot` renders a simulated summer and winter
# day of the sample site to build/plots/day-{summer,winter}.png (CONFIG=... for another
# site: its daily `scenarios:` are computed and shaded); `make plot-scenarios` does the same
# for etc/scenarios-example.yaml (a daily compressor fault, inverter trip, grid outage and
# uplink outage) into build/plots/scenarios/; `make annual` prints the annual energy
# figures of the sample site and of Madrid. matplotlib is needed only here, so the plot
# targets install it into the venv on first use instead of every `make test`.

PLOT_DIR ?= build/plots
SCENARIOS_CONFIG ?= etc/scenarios-example.yaml

.PHONY: plot plot-scenarios annual plot-deps

plot-deps: $(VENV_OK)
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --quiet matplotlib

plot: plot-deps
	$(VENV)/bin/python bench/plot_day.py --config $(CONFIG) --out-dir $(PLOT_DIR)

plot-scenarios: plot-deps
	$(VENV)/bin/python bench/plot_day.py --config $(SCENARIOS_CONFIG) --out-dir $(PLOT_DIR)/scenarios

annual: $(VENV_OK)
	$(VENV)/bin/python bench/annual.py --config $(CONFIG)

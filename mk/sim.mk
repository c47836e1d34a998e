# Household model (c8ysim/sim/) for people: `make plot` renders a simulated summer and winter
# day of the sample site to build/plots/day-{summer,winter}.png; `make annual` prints the
# annual energy figures of the sample site and of Madrid. matplotlib is needed only
# here, so `plot` installs it into the venv on first use instead of every `make test`.

PLOT_DIR ?= build/plots

.PHONY: plot annual

plot: $(VENV_OK)
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install --quiet matplotlib
	$(VENV)/bin/python bench/plot_day.py --config $(CONFIG) --out-dir $(PLOT_DIR)

annual: $(VENV_OK)
	$(VENV)/bin/python bench/annual.py --config $(CONFIG)

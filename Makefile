# `make demo` and `make test` each set up .venv themselves (idempotent).
PY := .venv/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PLUGINS := $(wildcard plugins/*/pyproject.toml) $(wildcard docs/examples/*/pyproject.toml)
STAMP := .venv/.installed

.PHONY: demo test bench bench-quick mutate venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/prefdiff plugins
	OMP_NUM_THREADS=1 .venv/bin/prefdiff bench medical --quick --threads 1 --out runs/demo-medical

test: $(STAMP)
	$(PY) -m pytest -q tests $(foreach p,$(PLUGINS),$(dir $(p))tests)

BENCHMARKS = $(shell $(PY) -c "from prefdiff.plugins import get_manager; print(' '.join(get_manager().names('benchmarks')))" 2>/dev/null)

# Field benchmarks (two threads each, pinned: a number is reproducible only at a fixed thread count),
# then the performance suite (one thread per measurement; figure 7
# reads the fields' reward curves), then the page. Budgets on the 2-core machine:
# bench-quick about 10 minutes, bench about 90.
bench-quick: $(STAMP)
	for b in $(BENCHMARKS); do .venv/bin/prefdiff bench $$b --quick --threads 2 --out runs/bench-quick/$$b || exit 1; done
	OMP_NUM_THREADS=1 $(PY) -m prefdiff.perf --quick --results runs/bench-quick --out runs/bench-quick/perf.json
	$(PY) -m prefdiff.benchdocs runs/bench-quick runs/bench-quick/benchmarks.md

bench: $(STAMP)
	for b in $(BENCHMARKS); do .venv/bin/prefdiff bench $$b --threads 2 --out benchmarks/results/$$b || exit 1; done
	OMP_NUM_THREADS=1 $(PY) -m prefdiff.perf --results benchmarks/results --out benchmarks/results/perf.json
	$(PY) -m prefdiff.benchdocs benchmarks/results docs/benchmarks.md

# Mutation testing of the maths layer (under an hour on 2 cores; not part of `make test`).
mutate: $(STAMP)
	$(PIP) install mutmut==3.8.1
	$(PY) tools/mutate.py

clean:
	rm -rf .venv runs

# `make demo` and `make test` each set up .venv themselves (idempotent).
PY := .venv/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PLUGINS := $(wildcard plugins/*/pyproject.toml) $(wildcard docs/examples/*/pyproject.toml)
STAMP := .venv/.installed

.PHONY: demo test bench bench-quick venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/prefdiff plugins
	.venv/bin/prefdiff bench example --quick --out runs/demo-example

test: $(STAMP)
	$(PY) -m pytest -q tests $(foreach p,$(PLUGINS),$(dir $(p))tests)

bench-quick: $(STAMP)
	.venv/bin/prefdiff bench example --quick --out runs/bench-example-quick

bench: $(STAMP)
	.venv/bin/prefdiff bench example --out benchmarks/results/example

clean:
	rm -rf .venv runs

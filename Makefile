# make demo   set up, then run the default example end to end on the built-in data
# make test   set up, then run the test suite
VENV ?= .venv
OUT ?= runs/multimnist

.PHONY: setup demo test bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml tools/setup.sh
	bash tools/setup.sh $(VENV)

demo: setup
	$(VENV)/bin/dagir run examples/multimnist.yaml -o $(OUT) --overwrite

test: setup
	$(VENV)/bin/python -m pytest -n auto --maxprocesses 8 --dist loadscope

bench: setup
	$(VENV)/bin/python benchmarks/compile_scaling.py

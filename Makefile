# sluis — `make demo` runs a demo server, `make test` runs the whole suite, `make bench` compares
# with OpenSSH (bench/README.md; e.g. make bench BENCH_ARGS="--clients chacha --rounds 3")
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-data

.PHONY: install demo test bench clean

$(BIN)/sluis: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/sluis

demo: install
	$(BIN)/python -m sluis.server.cli.demo $(DEMO)
	$(BIN)/sluis -c $(DEMO)/sluis.toml serve

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info .pytest_cache

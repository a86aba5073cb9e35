# Two entry points for a fresh machine: `make demo` and `make test`. Both create the virtual
# environment on first use and reinstall when pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= ml-100k
EVENTS ?= 0
RATE ?= 200
PYTEST_ARGS ?=

.PHONY: demo test bench lint setup system-deps clean

setup: $(STAMP) system-deps

# Debian's chromium and prometheus (promtool), which the tests drive; a no-op once installed.
system-deps:
	./ops/install_system_deps.sh

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, from the local CPU wheel, so no later resolution pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,text,image,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/streamrec demo --dataset $(DATASET) --events $(EVENTS) --rate $(RATE)

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/streamrec bench pipeline --dataset $(DATASET)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .state build *.egg-info

# `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install sbibm-files clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,baselines,onnx,plot,sbibm]'
	$(MAKE) sbibm-files
	touch $(STAMP)

# sbibm's published observations and reference posteriors, read by `distformer bench sbibm` out of its wheel
# (from the package registry; the package itself is not installed)
sbibm-files: .cache/sbibm/sbibm-1.1.0-py2.py3-none-any.whl

.cache/sbibm/sbibm-1.1.0-py2.py3-none-any.whl:
	$(BIN)/pip download --quiet --no-deps sbibm==1.1.0 -d .cache/sbibm

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/distformer demo --out demo.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/distformer bench linear-gaussian

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

# point_sup developer commands. Every target sets up $(VENV) first (idempotent, quick when done).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-upstream lint format clean

setup:
	@bash tools/setup_env.sh $(VENV)

## Set-up, then the main job: masks vs P10 on real nuclei data, trained on CPU (tools/demo.py).
demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

## Set-up, then the whole test suite (the README's test command; .ci/run calls it).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Set-up, then the suite without tests marked slow.
test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## The suite against upstream detectron2 built from source, with and without its C++ extension:
## make test-upstream D2_SRC=/path/to/detectron2 (a clone of github.com/facebookresearch/detectron2).
test-upstream: setup
	@test -n "$(D2_SRC)" || { echo "usage: make test-upstream D2_SRC=/path/to/detectron2"; exit 2; }
	bash tools/test_against_upstream.sh $(D2_SRC) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf output .pytest_cache .ruff_cache build *.egg-info

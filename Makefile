# `make demo` and `make test` work on a fresh machine with nothing but Python 3 and pip:
# each creates .venv in the checkout when it is missing and installs medzoo (editable) into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medzoo-installed

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo's data is synthetic (medzoo's phantom datasets): it runs offline in about a minute on two CPU cores once installed.
# It ends by scoring both chains' last checkpoints on phantom_lesion's test split: with and without the
# intermediate phantom_agg stage (metrics, plots and predictions land in each checkpoint's eval/ folder), then
# exports 4 phantom_lesion test images as PNG into a new temporary folder and runs `medzoo predict` on them,
# with a Grad-CAM saliency map per image.
demo: $(STAMP)
	$(BIN)/medzoo train resnet18 --stages scratch,phantom_agg,phantom_lesion
	$(BIN)/medzoo train resnet18 --stages scratch,phantom_lesion
	$(BIN)/medzoo list weights
	$(BIN)/medzoo evaluate resnet18.scratch-phantom_agg-phantom_lesion
	$(BIN)/medzoo evaluate resnet18.scratch-phantom_lesion
	@dir=$$(mktemp -d "$${TMPDIR:-/tmp}/medzoo-demo.XXXXXX") && set -x && \
	$(BIN)/medzoo data export phantom_lesion --split test --limit 4 --out $$dir/phantom_test && \
	$(BIN)/medzoo predict resnet18.scratch-phantom_agg-phantom_lesion $$dir/phantom_test/images --out $$dir/predictions.csv \
	  --saliency $$dir/saliency && \
	{ set +x; } 2>/dev/null && echo "predictions of 4 test images: $$dir/predictions.csv; saliency maps: $$dir/saliency/"

# ruff (lint + import order), mypy (medzoo/) and import-linter's layering contracts, all configured in
# pyproject.toml; `make test` runs them first, so CI (.ci/run) fails on a lint error before spending the test time
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info

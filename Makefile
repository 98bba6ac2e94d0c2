# Two commands matter (see README):
#   make demo MODEL=tiny   set up, build the sample corpus, index it, answer sample queries
#   make test              set up, run the test suite
SHELL := /bin/bash
MODEL ?= colqwen2.5-v0.2
DATA ?= data
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the pipeline shells out to (pdftoppm, pdfinfo, pdftotext).
APT_PACKAGES := poppler-utils

.PHONY: setup system-deps uv venv demo index search test lint format clean

setup: system-deps venv

system-deps:
	@command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null && command -v pdfinfo >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }

uv:
	@command -v $(UV) >/dev/null || python3 -m pip install --user --quiet uv

# uv.lock pins the torch 2.13 / torchvision 0.28 pair colpali-engine 0.3.18 needs (uv ignores the
# machine's pip config, which points at a torch wheel PyPI's torchvision cannot load).
venv: uv
	$(UV) sync --frozen --python 3.11

demo: setup
	$(PY) -m pipelines.corpus $(DATA)/sample
	$(PY) -m jobs.index source.location=$(DATA)/sample output.location=$(DATA)/index model=$(MODEL)
	$(PY) -m jobs.search index=$(DATA)/index queries_file=$(DATA)/sample/queries.jsonl limit_queries=3 top_k=3

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(DATA) .pytest_cache .ruff_cache

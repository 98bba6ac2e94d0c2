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
# Java and Maven for the checks with Vespa's own code (infra/vespa/verify, tests/vespa/test_vespa_java.py).
JAVA_APT_PACKAGES := openjdk-17-jdk-headless maven
VERIFY_POM := infra/vespa/verify/pom.xml

.PHONY: setup system-deps java-deps uv venv demo index search test lint format clean

setup: system-deps java-deps venv

system-deps:
	@command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null && command -v pdfinfo >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); }

# Downloads Vespa's jars from Maven Central once (~130 MB into ~/.m2) and compiles the checker; the tests then
# run Maven offline.
java-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(JAVA_APT_PACKAGES); }
	@mvn -o -q -B -f $(VERIFY_POM) compile dependency:build-classpath 2>/dev/null || \
	  mvn -q -B -f $(VERIFY_POM) compile dependency:build-classpath

uv:
	@command -v $(UV) >/dev/null || python3 -m pip install --user --quiet uv

# uv.lock pins the torch 2.13 / torchvision 0.28 pair colpali-engine 0.3.18 needs (uv ignores the
# machine's pip config, which points at a torch wheel PyPI's torchvision cannot load).
# --compile-bytecode writes every package's .pyc once at setup: with PYTHONDONTWRITEBYTECODE set (as on
# these machines) each Python process, Ray workers included, would otherwise compile torch and transformers
# from source at every start-up (about twice the import time).
venv: uv
	$(UV) sync --frozen --python 3.11 --compile-bytecode

demo: setup
	$(PY) -m pipelines.testing.corpus $(DATA)/sample
	$(PY) -m jobs.index source.location=$(DATA)/sample output.location=$(DATA)/index model=$(MODEL)
	$(PY) -m jobs.search index=$(DATA)/index queries_file=$(DATA)/sample/queries.jsonl limit_queries=3 top_k=3

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(DATA) .pytest_cache .ruff_cache

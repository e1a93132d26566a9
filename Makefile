# Set-up and the two README commands. Everything installs into .venv; torch comes first as the CPU build
# (a plain `torch` requirement would pull a CUDA build of several GB).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Where pip has no local CPU wheel of torch (a machine other than ours), point it at PyTorch's CPU index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install browser run test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e '.[dense,test,bench,ray,onnx,openvino]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## mine BM25 hard negatives for data/sample into out/sample-bm25/
	$(VENV)/bin/negmine run configs/sample-bm25.toml

# The report's browser test opens report.html in headless Chromium from the distribution's packages. Installed once
# (skipped when a chromium is already there); without apt-get (not Debian/Ubuntu) install it yourself, or that
# test is skipped (in CI, .ci/run makes a missing browser a failure).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	else echo "note: no chromium and no apt-get: the report's browser test will be skipped"; fi

test: install browser  ## the whole test suite (slow tests included)
	$(PY) -m pytest -q

bench: install  ## every benchmark, side by side with the reference tools, then one table (not part of the tests)
	$(PY) bench/run_all.py

clean:
	rm -rf out configs/.negmine .negmine .pytest_cache

# Two commands for a newcomer: `make test` and `make demo`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := .stubs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: mosquitto setup test lint typecheck demo bench clean

$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null || command -v python3 >/dev/null || { echo "python3.11 is required"; exit 1; }
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -rf $(STUBS) && $(PY) -m pip install -q --target $(STUBS) micropython-esp32-stubs==1.29.0.post1
	touch $(STAMP)

mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing Debian's mosquitto"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients; }

setup: $(STAMP) mosquitto

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@if [ -d firmware ] && ls firmware/*.py >/dev/null 2>&1; then \
	  MYPYPATH=$(STUBS) $(VENV)/bin/mypy --config-file firmware/mypy.ini firmware; fi

test: lint
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/idufleet demo

bench: setup
	$(PY) benchmarks/wire_size.py
	$(VENV)/bin/micropython -X heapsize=64K benchmarks/device_codec.py
	$(PY) benchmarks/ingest.py --quick

clean:
	rm -rf $(VENV) $(STUBS) .mypy_cache .pytest_cache .ruff_cache

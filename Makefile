# Two commands for a newcomer: `make test` and `make demo`. Both set themselves up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := .stubs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: mosquitto postgresql setup test lint typecheck demo bench clean

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

# The tests and `benchmarks/ingest.py --backend postgres` start their own private cluster from
# these binaries (tests/support/postgres.py): they never use, start or need a system server.
# Installing Debian's package normally also creates and starts a "main" cluster; a
# createcluster.d drop-in (create_main_cluster = false, honoured by the package's postinst) skips
# that, so a fresh machine gets the binaries and no running server. The drop-in is removed again
# afterwards, leaving the machine's own PostgreSQL configuration as it was.
PG_NOMAIN := /etc/postgresql-common/createcluster.d/00-idufleet-no-main-cluster.conf
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (binaries only: no cluster created or started)"; \
	  $(SUDO) mkdir -p $(dir $(PG_NOMAIN)) && \
	  echo "create_main_cluster = false" | $(SUDO) tee $(PG_NOMAIN) >/dev/null && \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  rc=$$?; $(SUDO) rm -f $(PG_NOMAIN); exit $$rc; }

setup: $(STAMP) mosquitto postgresql

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

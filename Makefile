# The two commands a person needs: `make demo` and `make test`. Each sets up .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU machines pin torch to the CPU wheel; point this at another file for accelerator installs.
TORCH_CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(TORCH_CONSTRAINTS) -e '.[test]' 2>&1 | grep -v 'is ignored' || true
	@$(PY) -c 'import turnout, torch, transformers' && touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/turnout demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The two commands a new user needs (README.md): `make quickstart` and `make test`.
# Both create (or reuse) the virtual environment .venv in the repo and install what they need.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

.PHONY: quickstart test
quickstart: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/python -m flamingo_jax.tools.quickstart --config experiments/flamingo.py:tiny,data=demo --workdir workdirs/quickstart

test: $(STAMP)
	JAX_PLATFORMS=cpu $(VENV)/bin/python -m pytest -q tests

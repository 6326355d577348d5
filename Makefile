# The two commands a new user needs (README.md): `make quickstart` and `make test`.
# Both create (or reuse) the virtual environment .venv in the repo and install what they need:
# the quickstart the library with its data extra; the tests everything (converters, torch for the
# weight-import references, libtpu for the ahead-of-time TPU compiles).
PYTHON ?= python3.11
VENV := .venv
HASH := $(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

$(VENV)/.installed-%-$(HASH): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[$*]'
	rm -f $(VENV)/.installed-$*-* && touch $@

.PHONY: quickstart test peers
quickstart: $(VENV)/.installed-data-$(HASH)
	JAX_PLATFORMS=cpu $(VENV)/bin/python -m flamingo_jax.tools.quickstart --config experiments/flamingo.py:tiny,data=demo --workdir workdirs/quickstart

test: $(VENV)/.installed-test-$(HASH)
	JAX_PLATFORMS=cpu $(VENV)/bin/python -m pytest -q -n 2 tests

# Our trainer's step against OpenFlamingo 2.0.1's on the same shapes (BENCHMARKS.md, "Peers"), in
# its own environment: torchvision beside the CPU torch wheel breaks transformers' imports that the
# tests use.
PEERS_VENV := .venv-peers
peers:
	$(MAKE) VENV=$(PEERS_VENV) $(PEERS_VENV)/.installed-peers-$(HASH)
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps open-flamingo==2.0.1
	JAX_PLATFORMS=cpu $(PEERS_VENV)/bin/python benchmarks/peers.py

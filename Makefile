# Two entry points, each doing its own idempotent set-up in .venv:
#   make demo   import -> pretrain -> train -> evaluate on the shipped MovieLens-100K sample
#   make test   the test suite
.PHONY: setup demo test benchmark-beauty
VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup-env.sh

demo: setup
	$(VENV)/bin/recbert train -c configs/demo.toml

test: setup
	$(PY) -m pytest -q

benchmark-beauty: setup
	$(PY) benchmarks/quality.py beauty

# APX developer entry points. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := -p apx.controllers -p apx.operator -p apx.dataplane -p apx.contracts -p apx.runtime -p e2e

.PHONY: install test unit lint typecheck gen bench demo down translate clean image

install:
	@bash hack/install.sh

# The whole suite: lint + type check + every test.
test: install lint
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit

lint: install typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy reads the source tree as it is (apx/ is the import package; e2e/ the test support).
typecheck: install
	$(VENV)/bin/mypy $(PACKAGES)

gen: install
	$(PY) hack/gen.py

bench: install
	$(PY) bench/run.py

# The main job: the operator against the local stack, then the samples and their status.
demo: install
	@bash hack/demo.sh

# Stop everything `make demo` started.
down:
	@if [ -x $(PY) ]; then $(PY) -m e2e.stack down; fi

# Offline: what the operator would produce for samples/, with no cluster and no services.
translate: install
	$(VENV)/bin/apx translate -f samples/ --only status

# The APX image (Dockerfile), tagged apx/apx:<Chart.yaml appVersion>; hack/IMAGE.md.
image:
	@bash hack/image-build.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

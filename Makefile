# One place for every routine command. `make test` and `make demo` work on a brand-new machine.
PYTHON ?= python3
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: setup test check lint imports typecheck demo cluster-up cluster-down images

setup:            ## install Debian packages, Python packages and the cached Go binaries
	hack/setup.sh

test: setup       ## every test, the cluster ones included (starts or reuses the local cluster)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

imports:          ## the layering contracts ([tool.importlinter] in pyproject.toml)
	PYTHONPATH=operator:worker lint-imports

typecheck:
	$(PYTHON) -m mypy

check: setup lint imports typecheck   ## lint, import contracts, types, then every test
	$(PYTHON) -m pytest -q

demo: setup       ## the local demo on its embedded defaults
	hack/demo.sh

cluster-up: setup
	hack/cluster.sh up

cluster-down:
	hack/cluster.sh down

images:           ## operator + CPU worker images with buildah (no daemon, no registry; minutes, not in `make test`)
	hack/images.sh

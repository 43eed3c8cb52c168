# The two commands a fresh machine needs (Python 3.11 and make): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
AZURITE := build/azurite/node_modules/.bin/azurite-blob

.PHONY: demo test test-install lint install clean lock bench protos bench-serve perf-analyzer peers images \
	test-images coverage docs bench-storage

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "kdeploy needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdeploy demo --out build/demo

test: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest

# Microsoft's Azure Blob Storage emulator for the object-storage tests (3.35.0: later ones need a newer Node than 20),
# into build/ with npm; without npm the Azure tests skip with one line.
$(AZURITE):
	@if command -v npm >/dev/null; then \
	  npm install --prefix build/azurite --no-audit --no-fund --loglevel=error azurite@3.35.0 || \
	  echo "azurite could not be installed: the Azure Blob Storage tests will skip"; \
	else echo "npm not found: the Azure Blob Storage tests will skip"; fi

# Install by role for real (tests/deploy/test_install.py, tests/integration/test_kserve_client.py): fresh venvs with
# `pip install 'kdeploy[serve]'` and KServe's SDK, from the package index (a few minutes, most of it downloads).
test-install: $(STAMP)
	$(BIN)/python -m pytest -m install

# server, loadtest and trainer images (tfserving too when tensorflow/serving is present locally) with podman or
# docker (CONTAINER_ENGINE=podman|docker, else detected), the demo repository baked in (MODEL_SOURCE=context).
# Where no registry is reachable, the Dockerfile's python base is made locally first (tools/base_image.py).
images: $(STAMP)
	$(BIN)/python -m tools.images build

# The images for real: built as above, then run (tests/images): hardened server, official clients, drain under
# load, loadtest and trainer images, and the rendered manifests under `podman kube play`. Installs podman when no
# engine answers and this is root with apt-get; otherwise it skips with one line.
test-images: $(STAMP)
	$(BIN)/python -m tools.images test

# Every Keras layer, activation and small application through export + verify to every format (< 20 min on
# 2 cores): docs/coverage.md and docs/coverage.json.
coverage: $(STAMP)
	$(BIN)/python -m kdeploy.export.coverage --out docs --jobs 2

# ruff, then import-linter and mypy on the package as a wheel installs it (build/lint-tree): the stages' folders
# map to kdeploy.<stage> only through setuptools' package-dir, which neither tool reads from the source tree.
LINT_TREE := build/lint-tree
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(LINT_TREE) build/lib  # build/lib would keep modules deleted from the tree
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target $(LINT_TREE) .
	cd $(LINT_TREE) && PYTHONPATH=. ../../$(BIN)/lint-imports --config ../../pyproject.toml --no-cache
	cd $(LINT_TREE) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p kdeploy

# The docs site (MkDocs, strict: a broken link or a page missing from mkdocs.yml's nav fails): the reference pages and
# benchmark tables are written from the code and benchmarks/results/*.json first (tools/docs.py). Output: build/site.
docs: $(STAMP)
	$(BIN)/python -m tools.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --quiet --strict

# Re-resolve the pins after changing dependencies in pyproject.toml (needs the package index).
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet '.[dev]'
	build/lock-venv/bin/python -m pip freeze --exclude kdeploy | sort > constraints.txt

clean:
	rm -rf build $(VENV)

# Measured numbers for docs/benchmarks.md (training, export and verify times, artifact sizes), recorded in
# benchmarks/results/foundation.json. Not part of the tests.
bench: $(STAMP)
	$(BIN)/python benchmarks/foundation.py
	$(BIN)/python -m tools.docs

# Object-storage sync (a few minutes): a ~200 MB version from a local S3 server, kdeploy against rclone copy, the
# server's RSS while it syncs, store requests per poll. build/bench-storage/results.json; not part of the tests.
bench-storage: $(STAMP)
	$(BIN)/python benchmarks/storage_sync.py

# Recompile serve/protos/descriptors.binpb after editing a .proto file under serve/protos/.
protos: $(STAMP)
	$(BIN)/python -m kdeploy.wire.protos.build

# Triton's perf_analyzer in its own venv (build/perf-venv), for the serving benchmark.
perf-analyzer:
	bash benchmarks/setup_perf_analyzer.sh

# KServe's and MLServer's Python servers, each in its own venv (build/kserve-venv, build/mlserver-venv), pinned in
# benchmarks/peers/*-requirements.txt: the peers in the serving benchmark.
peers:
	bash benchmarks/setup_peers.sh

# Serving benchmark (~30 minutes): kdeploy vs in-process onnxruntime, a null and a plain server, KServe and MLServer,
# all up at once and alternated in rounds.
bench-serve: $(STAMP) perf-analyzer peers
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python -m tools.docs

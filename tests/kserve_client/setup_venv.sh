#!/usr/bin/env bash
# KServe's Python SDK (the `kserve` package, for its InferenceRESTClient) in a venv of its own, build/kserve-venv:
# it brings FastAPI, uvicorn, pandas, the Kubernetes client and more, with pins of its own, which the project's
# venv does not need. tests/integration/test_kserve_client.py runs tests/kserve_client/client.py in it.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=build/kserve-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import kserve" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check kserve==0.21.0
fi
"$VENV/bin/python" -c "import kserve, importlib.metadata as m; print('kserve', m.version('kserve'), 'in $VENV')"

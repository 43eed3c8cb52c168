#!/usr/bin/env bash
# Installs the peer servers of the serving benchmark (benchmarks/serving.py), each in its own venv like perf_analyzer's:
# KServe's Python model server (kserve 0.21.0) in build/kserve-venv and MLServer (1.7.1) in build/mlserver-venv, both
# with onnxruntime, from the exact versions in benchmarks/peers/*-requirements.txt (pip freeze of a working install).
# MLServer 1.7.1's inference workers fail under uvloop 0.22+ ("There is no current event loop"): uvloop is 0.21.0.
# Own venvs keep their pins (FastAPI, protobuf, their copies of the KServe v2 proto) away from the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
for peer in kserve mlserver; do
  venv="build/${peer}-venv"
  if [ -f "$venv/.installed" ] && [ "$venv/.installed" -nt "benchmarks/peers/${peer}-requirements.txt" ]; then
    continue
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "benchmarks/peers/${peer}-requirements.txt"
  touch "$venv/.installed"
done
echo "peers ready: build/kserve-venv, build/mlserver-venv"

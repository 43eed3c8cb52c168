#!/usr/bin/env bash
# Installs Triton's perf_analyzer in its own virtual environment (build/perf-venv), for benchmarks/serving.py.
# The PyPI package `perf-analyzer` is an empty placeholder; the binary ships inside the tritonclient wheel, and
# 2.51.0 is the newest whose binary runs on Debian 12's glibc. It links libb64 (Debian's libb64-0d) and
# libcudart.so.12 (pip's nvidia-cuda-runtime-cu12) even with no GPU. Its own venv keeps tritonclient 2.51's pins
# (numpy<2, protobuf<5) away from the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libb64-0d; else sudo apt-get install -y libb64-0d; fi
fi
python3 -m venv build/perf-venv
build/perf-venv/bin/pip install --quiet --no-deps tritonclient==2.51.0 nvidia-cuda-runtime-cu12==12.9.79
test -x build/perf-venv/bin/perf_analyzer
echo "perf_analyzer ready in build/perf-venv/bin"

#!/usr/bin/env bash
# Set up everything on a fresh machine and run the whole test suite (the README's test command).
#
# Two environments, because nerfstudio 1.1.5 pins numpy<2 and viser 0.2.7 while rerun-sdk 0.41
# needs numpy>=2:
#   .venv     numpy 2, rerun-sdk 0.41, viser 1.1, ray, playwright  -> every test not marked nerfstudio
#   .venv-ns  nerfstudio 1.1.5, numpy 1.26, viser 0.2.7            -> nerfstudio tests + the viser
#                                                                     tests again on viser 0.2.7
# torch is pinned to the CPU wheel everywhere (a bare `torch` would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 RERUN_ANALYTICS=0 HF_HUB_OFFLINE=1

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # chromium: viser browser tests; mesa-vulkan-drivers: headless Rerun viewer screenshots;
  # libusb-1.0-0: open3d (a nerfstudio dependency).
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium mesa-vulkan-drivers libusb-1.0-0 >/dev/null
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c .ci/constraints.txt -e '.[rerun,viser,ray,test]'

if [ ! -x .venv-ns/bin/python ]; then "$PY" -m venv .venv-ns; fi
.venv-ns/bin/pip install -q torch==2.13.0
.venv-ns/bin/pip install -q -c .ci/constraints.txt -c .ci/constraints-ns.txt \
  nerfstudio==1.1.5 pycolmap pytest pytest-timeout hypothesis playwright hatchling editables
.venv-ns/bin/pip install -q --no-deps --no-build-isolation -e .
# Triton's CPU interpreter runs our attention kernel (tests marked triton); it needs numpy<2.4,
# which only this environment has.
.venv-ns/bin/pip install -q triton==3.6.0

.venv/bin/ruff check laser_plugin integrations tests benchmarks examples
.venv/bin/python -m pytest -m "not nerfstudio and not triton" tests
.venv-ns/bin/python -m pytest -m nerfstudio tests/test_nerfstudio_*.py
.venv-ns/bin/python -m pytest tests/test_viser_cloud.py tests/test_viser_sink.py tests/test_viser_browser.py
.venv-ns/bin/python -m pytest -m triton tests/test_attention_kernel.py

#!/usr/bin/env bash
# Set up everything on a fresh machine and run the whole test suite (the README's test command).
#
# Two environments, because nerfstudio 1.1.5 pins numpy<2 and viser 0.2.7 while rerun-sdk 0.41
# needs numpy>=2:
#   .venv     numpy 2, rerun-sdk 0.41, viser 1.1, ray, playwright  -> every test not marked nerfstudio
#   .venv-ns  nerfstudio 1.1.5, numpy 1.26, viser 0.2.7            -> nerfstudio tests + the viser
#                                                                     tests again on viser 0.2.7
# torch is pinned to the CPU wheel everywhere (a bare `torch` would pull a multi-GB CUDA build).
#
# Every phase runs even when an earlier one failed (a failed setup phase skips only the phases
# that need what it installs); a summary lists each phase as pass/fail/skip, and the script exits
# non-zero at the end if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 RERUN_ANALYTICS=0 HF_HUB_OFFLINE=1

RESULTS=()
FAILED=0
# phase NAME CMD...: run CMD, record pass/fail; returns CMD's status.
phase() {
  local name=$1 rc
  shift
  echo "=== phase: $name" >&2
  "$@"
  rc=$?
  if [ "$rc" -eq 0 ]; then
    RESULTS+=("pass  $name")
  else
    RESULTS+=("FAIL  $name (exit $rc)")
    FAILED=1
  fi
  return "$rc"
}
skip() {
  RESULTS+=("skip  $1 (needs: $2)")
  FAILED=1
}
# Each setup phase is a function so that it stops at its own first failed step.
setup_apt() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # chromium: viser browser tests; mesa-vulkan-drivers: headless Rerun viewer screenshots;
    # libusb-1.0-0: open3d (a nerfstudio dependency).
    # Wait for another apt/dpkg (unattended-upgrades on a fresh machine) instead of exiting 100.
    # (`update` takes the lists lock, which older apt does not wait for: retry it for 5 minutes.)
    local lock=(-o DPkg::Lock::Timeout=300) tries=0
    until apt-get "${lock[@]}" update -qq; do
      tries=$((tries + 1))
      if [ "$tries" -ge 30 ]; then return 1; fi
      echo "apt-get update failed (apt busy?); retrying in 10 s ($tries/30)" >&2
      sleep 10
    done
    DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq \
      chromium mesa-vulkan-drivers libusb-1.0-0 >/dev/null
  fi
}
setup_venv() {
  if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv || return; fi
  .venv/bin/pip install -q torch==2.13.0 &&
    .venv/bin/pip install -q -c .ci/constraints.txt -e '.[rerun,viser,ray,test]'
}
setup_venv_ns() {
  if [ ! -x .venv-ns/bin/python ]; then "$PY" -m venv .venv-ns || return; fi
  .venv-ns/bin/pip install -q torch==2.13.0 &&
    .venv-ns/bin/pip install -q -c .ci/constraints.txt -c .ci/constraints-ns.txt \
      nerfstudio==1.1.5 pycolmap pytest pytest-timeout hypothesis playwright hatchling editables &&
    .venv-ns/bin/pip install -q --no-deps --no-build-isolation -e .
}
# Triton's CPU interpreter runs our attention kernel (tests marked triton); it needs numpy<2.4,
# which only this environment has.
setup_triton() {
  .venv-ns/bin/pip install -q triton==3.6.0
}

# A failed apt phase is reported, but the Python phases still run (most tests need no system package).
phase "apt packages" setup_apt
venv_ok=0 ns_ok=0 triton_ok=0
phase "setup .venv" setup_venv && venv_ok=1
phase "setup .venv-ns" setup_venv_ns && ns_ok=1
if [ "$ns_ok" = 1 ]; then
  phase "setup triton" setup_triton && triton_ok=1
else
  skip "setup triton" "setup .venv-ns"
fi

if [ "$venv_ok" = 1 ]; then
  phase "ruff" .venv/bin/ruff check laser_plugin integrations tests benchmarks examples
  phase "ruff format" .venv/bin/ruff format --check laser_plugin integrations tests benchmarks examples
  # basic mode on laser_plugin/ (pyproject.toml [tool.basedpyright]); only findings beyond
  # .basedpyright/baseline.json fail.
  phase "pyright" .venv/bin/basedpyright --pythonpath .venv/bin/python
  phase "pytest (.venv): not nerfstudio, not triton" \
    .venv/bin/python -m pytest -m "not nerfstudio and not triton" tests
else
  skip "ruff" "setup .venv"
  skip "ruff format" "setup .venv"
  skip "pyright" "setup .venv"
  skip "pytest (.venv): not nerfstudio, not triton" "setup .venv"
fi
if [ "$ns_ok" = 1 ]; then
  phase "pytest (.venv-ns): nerfstudio" \
    .venv-ns/bin/python -m pytest -m nerfstudio tests/test_nerfstudio_*.py
  phase "pytest (.venv-ns): viser 0.2.7" \
    .venv-ns/bin/python -m pytest tests/test_viser_cloud.py tests/test_viser_sink.py tests/test_viser_browser.py
else
  skip "pytest (.venv-ns): nerfstudio" "setup .venv-ns"
  skip "pytest (.venv-ns): viser 0.2.7" "setup .venv-ns"
fi
if [ "$triton_ok" = 1 ]; then
  phase "pytest (.venv-ns): triton" .venv-ns/bin/python -m pytest -m triton tests/test_attention_kernel.py
else
  skip "pytest (.venv-ns): triton" "setup triton"
fi

echo "=== summary" >&2
printf '  %s\n' "${RESULTS[@]}" >&2
if [ "$FAILED" -ne 0 ]; then
  echo "FAILED: at least one phase failed or was skipped (see above)" >&2
  exit 1
fi
echo "all phases passed" >&2

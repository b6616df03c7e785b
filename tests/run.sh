#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian 12 machine:
#   bash tests/run.sh [pytest args...]
# Installs the real peers the tests talk to (dcmtk, PostgreSQL, Orthanc, dicom3tools) with apt-get when
# running as root and they are missing, makes .venv, installs the project with its test extras, then runs
# ruff, mypy and pytest. Tests whose peer could not be installed are reported as skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=(dcmtk postgresql orthanc orthanc-dicomweb dicom3tools)
missing=()
for p in "${peers[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing test peers: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "== not root: cannot install ${missing[*]}; tests that need them will be skipped"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing the project and its test dependencies"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"

echo "== ruff"
.venv/bin/ruff check interop tests bench
echo "== mypy"
.venv/bin/mypy interop
echo "== pytest"
exec .venv/bin/pytest -rs "$@"

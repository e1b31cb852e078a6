#!/usr/bin/env bash
# The whole test suite, as root: installs dependencies, builds, runs unit tests and the
# privileged integration tests (real BPF programs, namespaces, HAProxy sidecars).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "meshlane: the integration tests need root" >&2; exit 1; }
./scripts/install-deps.sh
./scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 "$@"
# The fuzz targets, briefly (a separate clang build); MESHLANE_SKIP_FUZZ=1 skips them.
if [[ -z "${MESHLANE_SKIP_FUZZ:-}" ]]; then
  cd ..
  ./scripts/fuzz.sh
fi

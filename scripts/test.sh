#!/usr/bin/env bash
# The whole test suite, as root: installs dependencies, builds, runs the fuzz targets briefly
# (a separate clang build; MESHLANE_SKIP_FUZZ=1 skips them), then every ctest entry: unit tests,
# style, manifest validation and the privileged integration tests (real BPF programs,
# namespaces, HAProxy sidecars). Extra arguments go to the main ctest run (e.g. -L integration).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "meshlane: the integration tests need root" >&2; exit 1; }
./scripts/install-deps.sh
./scripts/build.sh
if [[ -z "${MESHLANE_SKIP_FUZZ:-}" ]]; then
  ./scripts/fuzz.sh
fi
cd build
ctest --output-on-failure --timeout 900 "$@"

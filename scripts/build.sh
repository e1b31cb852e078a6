#!/usr/bin/env bash
# Configures and builds meshlane into build/ (BPF objects, skeletons, agent/CLI, unit tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

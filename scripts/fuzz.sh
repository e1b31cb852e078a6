#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + coverage over the code the targets reach) into
# build-fuzz/ and runs each briefly through ctest (label "fuzz"; MESHLANE_FUZZ_SECONDS, default
# 20). Findings land in build-fuzz/tests/fuzz as crash-*/leak-* files, reproducible with
# `build-fuzz/tests/fuzz/meshlane_fuzz_rest_router FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DMESHLANE_BUILD_FUZZ=ON -DMESHLANE_BUILD_TESTS=OFF \
  -DMESHLANE_BUILD_BENCH=OFF -DMESHLANE_FUZZ_SECONDS="${MESHLANE_FUZZ_SECONDS:-20}" >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target meshlane_fuzz_rest_router
cd build-fuzz
ctest --output-on-failure -L fuzz

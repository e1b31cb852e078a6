#!/usr/bin/env bash
# Installs what meshlane needs to build, run and test on Debian 12 (bookworm). Idempotent.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev
  linux-libc-dev libspdlog-dev libfmt-dev libcli11-dev libboost1.81-dev libboost-json1.81-dev
  libgtest-dev googletest clang-format git
  # build: the gRPC API (api/meshlane.proto; grpc++_reflection ships in libgrpc++-dev)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # build (MESHLANE_BUILD_FUZZ): libFuzzer and ASan runtimes for clang 14
  libclang-rt-14-dev
  # run
  iproute2
  # test: the sidecar stand-in, clients, baseline and fault injection
  haproxy iptables python3 python3-pytest curl openssl gnutls-bin
  # test: the independent gRPC client (reflection by hand) and the OpenAPI document
  python3-grpcio python3-protobuf python3-yaml
  # test: raw HTTP/2 frames for the rapid-reset test (tests/integration/test_api_hardening.py)
  python3-h2
  # test: the chained CNI plugin runs after Debian's bridge + host-local
  containernetworking-plugins
  # test (label deploy): `systemd-analyze verify` of deploy/systemd/meshlane.service. Debian 12
  # has it installed already; the package alone does not become init (that is systemd-sysv) and
  # starts nothing where systemd does not run.
  systemd
)
# test (label deploy): manifest validation installs kubernetes-models with npm; keep a Node that
# is already there (e.g. NodeSource, which bundles npm and conflicts with Debian's npm).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "meshlane: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's haproxy package starts its own service where systemd runs; meshlane's tests start
  # their own HAProxy instances, so keep the packaged one from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

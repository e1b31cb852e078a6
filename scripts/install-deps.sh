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
  # test: DNS capture (a real DNS listener and real resolvers; dnsmasq-base is the binary
  # without the system service, so nothing starts listening on the host)
  dnsmasq-base bind9-dnsutils python3-dnspython
  # test: the independent gRPC client (reflection by hand) and the OpenAPI document
  python3-grpcio python3-protobuf python3-yaml
  # test: raw HTTP/2 frames for the rapid-reset test (tests/integration/test_api_hardening.py)
  python3-h2
  # test: the chained CNI plugin runs after Debian's bridge + host-local
  containernetworking-plugins
  # test: install-cni (deploy/kubernetes/install-cni.sh) watches the CNI config dir
  inotify-tools jq
  # test (test_cni_podman.py): a real runtime creating pods over the CNI chain. runc, not crun
  # (crun refuses hybrid cgroup hosts); images built with buildah from scratch out of
  # busybox-static and haproxy; catatonit is podman's pod infra process.
  podman buildah runc catatonit busybox-static
  # test: a stock Prometheus scrapes the agent (tests/integration/test_prometheus_scrape.py);
  # promtool (same package) checks /metrics and deploy/monitoring's rules (ctest label deploy);
  # node_exporter for the README's textfile-collector route (same test)
  prometheus prometheus-node-exporter
  # test (label deploy): `systemd-analyze verify` of deploy/systemd/meshlane.service. Debian 12
  # has it installed already; the package alone does not become init (that is systemd-sysv) and
  # starts nothing where systemd does not run.
  systemd
  # test (label deploy): the .deb round trip (dpkg-shlibdeps for Depends, man -w, gdb reading the
  # split debug info) and the CLI's completion scripts and man page (zsh -n, groff warnings)
  dpkg-dev man-db groff-base gdb zsh
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
  # Debian's haproxy, prometheus and node_exporter packages start their own services where
  # systemd runs;
  # meshlane's tests start their own instances (on their own ports and data dirs), so keep the
  # packaged ones from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

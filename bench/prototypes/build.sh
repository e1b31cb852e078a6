#!/usr/bin/env bash
# Builds the prototype BPF objects into build-bench/prototypes (bench only; not the datapath).
#   sockmap_app_ingress.o     app <-> outbound listener hop only, BPF_F_INGRESS
#   sockmap_server_ingress.o  inbound proxy (127.0.0.6) <-> server hop only, BPF_F_INGRESS
#   sockmap_both_ingress.o    both local hops
# Use: bench/run.sh --configs iptables,meshlane --prototype app=build-bench/prototypes/sockmap_app_ingress.o
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(dirname "$(dirname "$here")")/build-bench/prototypes"
mkdir -p "$out"
[[ -s "$out/vmlinux.h" ]] || bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h"
arch=x86; [[ "$(uname -m)" == aarch64 ]] && arch=arm64
build() {
  clang -g -O2 -target bpf -D__TARGET_ARCH_$arch -Wall -Werror -I"$out" "${@:2}" \
    -c "$here/sockmap_fastpath.bpf.c" -o "$out/$1.o"
  echo "$out/$1.o"
}
build sockmap_app_ingress -DFASTPATH_APP_HOP=1 -DFASTPATH_SERVER_HOP=0
build sockmap_server_ingress -DFASTPATH_APP_HOP=0 -DFASTPATH_SERVER_HOP=1
build sockmap_both_ingress -DFASTPATH_APP_HOP=1 -DFASTPATH_SERVER_HOP=1

#!/usr/bin/env bash
# One command on a fresh Debian 12 host, as root: install dependencies, build, install the
# binary to /usr/local/sbin, and run the agent on its embedded default configuration
# (state in /run/meshlane, pins under <bpffs>/meshlane, API on /run/meshlane/api.sock).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "meshlane: run as root (the agent loads BPF programs)" >&2; exit 1; }
./scripts/install-deps.sh
./scripts/build.sh
install -m 0755 build/meshlane /usr/local/sbin/meshlane
if [[ -d /run/systemd/system ]]; then
  install -D -m 0644 deploy/meshlane.conf /etc/meshlane/meshlane.conf
  install -m 0644 deploy/systemd/meshlane.service /etc/systemd/system/meshlane.service
  systemctl daemon-reload
  systemctl enable --now meshlane.service
  systemctl --no-pager status meshlane.service || true
else
  exec /usr/local/sbin/meshlane agent
fi

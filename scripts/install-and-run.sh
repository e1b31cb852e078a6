#!/usr/bin/env bash
# One command on a fresh Debian 12 host, as root: install dependencies, build, install
# (`cmake --install`: /usr/local/sbin/meshlane, /etc/meshlane/meshlane.conf, the systemd unit,
# completions, man page, docs), and run the agent (state in /run/meshlane, pins under
# <bpffs>/meshlane, API on /run/meshlane/api.sock): under systemd where it runs, else in the
# foreground on the installed configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "meshlane: run as root (the agent loads BPF programs)" >&2; exit 1; }
./scripts/install-deps.sh
./scripts/build.sh
cmake --install build
if [[ -d /run/systemd/system ]]; then
  # Earlier versions of this script copied the unit to /etc/systemd/system, which would shadow
  # the installed one (/usr/local/lib/systemd/system).
  if grep -qs '^ExecStart=/usr/local/sbin/meshlane ' /etc/systemd/system/meshlane.service; then
    rm -f /etc/systemd/system/meshlane.service
  fi
  systemctl daemon-reload
  # Type=notify: returns once the agent's API answers.
  systemctl enable --now meshlane.service
  systemctl --no-pager status meshlane.service || true
else
  exec /usr/local/sbin/meshlane agent --config /etc/meshlane/meshlane.conf
fi

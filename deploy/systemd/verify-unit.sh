#!/usr/bin/env bash
# ctest deploy.systemd_unit: checks deploy/systemd/meshlane.service offline (no running systemd
# needed): `systemd-analyze verify` on a copy whose ExecStart points at a binary that exists (the
# build's), the capabilities the agent needs, and that --config is where `cmake --install`
# (deploy/CMakeLists.txt) installs the default configuration. A deliberately broken copy must
# fail verification, so a silently passing verifier is caught too.
# Usage: verify-unit.sh <source dir> <meshlane binary>
set -euo pipefail
src=${1:?source dir}
binary=${2:?meshlane binary}
unit=$src/deploy/systemd/meshlane.service
install_rules=$src/deploy/CMakeLists.txt
fail() { echo "deploy.systemd_unit: $*" >&2; exit 1; }

[[ -x $binary ]] || fail "$binary is not an executable"
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (apt-get install systemd)"
work=$(mktemp -d /tmp/meshlane-unit-XXXXXX)
trap 'rm -rf "$work"' EXIT

# 1. The ExecStart line: the installed binary, `agent`, and the installed config file.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
read -r exe verb flag config_path extra <<<"$exec_start"
# /usr/local: cmake's default prefix; `cmake --install` and the .deb rewrite it to theirs.
[[ $exe == /usr/local/sbin/meshlane ]] || fail "ExecStart runs '$exe', not the default prefix's /usr/local/sbin/meshlane"
[[ $verb == agent && $flag == --config && -z ${extra:-} ]] || fail "ExecStart must be 'meshlane agent --config FILE', got '$exec_start'"
config_dir=$(sed -n 's/^install(FILES meshlane.conf DESTINATION \([^ ]*\) .*$/\1/p' "$install_rules")
[[ -n $config_dir ]] || fail "deploy/CMakeLists.txt does not install deploy/meshlane.conf"
installed_config=$config_dir/meshlane.conf
[[ $config_path == "$installed_config" ]] || fail "ExecStart uses --config $config_path, cmake --install installs $installed_config"

# 2. Capabilities: every one the agent uses, in both the ambient and the bounding set.
for key in AmbientCapabilities CapabilityBoundingSet; do
  caps=" $(sed -n "s/^$key=//p" "$unit") "
  for cap in CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_PERFMON CAP_SYS_PTRACE CAP_DAC_READ_SEARCH \
             CAP_SETUID CAP_SETGID CAP_KILL; do
    [[ $caps == *" $cap "* ]] || fail "$key lacks $cap"
  done
done

# 3. systemd's own verification, with ExecStart pointing at a binary that exists here.
sed "s|^ExecStart=/usr/local/sbin/meshlane |ExecStart=$binary |" "$unit" > "$work/meshlane.service"
if ! out=$(systemd-analyze verify --man=no "$work/meshlane.service" 2>&1) || [[ -n $out ]]; then
  fail "systemd-analyze verify: ${out:-failed}"
fi
# The verifier must catch a broken unit (else step 3 proves nothing).
sed 's/^Type=notify/Type=bogus/; s/^Restart=on-failure/Restart=sometimes/' \
  "$work/meshlane.service" > "$work/broken.service"
if out=$(systemd-analyze verify --man=no "$work/broken.service" 2>&1) && [[ -z $out ]]; then
  fail "systemd-analyze verify accepted a broken unit: the check is not effective"
fi
echo "deploy.systemd_unit: $unit verified (ExecStart $binary agent --config $config_path; capabilities ok)"

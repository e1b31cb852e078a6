#!/usr/bin/env bash
# ctest deploy.debian_package (root): builds the .deb with cpack, checks its metadata and
# contents, installs it into this machine with dpkg, runs the installed binary (and an agent on
# a private configuration, outside systemd), removes it, purges it, and checks that nothing the
# package installed is left: its files, the unit's enablement, /etc/meshlane.
#
# Only what the package itself installs is touched. If the machine already has meshlane
# installed, or a meshlane agent's default state (/run/meshlane, <bpffs>/meshlane) exists, the
# test is skipped (exit 77) rather than disturb it. Cleanup (purge) runs on failure too.
# Usage: test-deb.sh <build dir>
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
skip() { echo "deploy.debian_package: SKIP: $*"; exit 77; }
fail() { echo "deploy.debian_package: FAIL: $*" >&2; exit 1; }
note() { echo "deploy.debian_package: $*"; }

[[ $(id -u) -eq 0 ]] || skip "needs root (dpkg -i)"
package_state() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || echo not-installed; }
[[ $(package_state meshlane) == not-installed ]] ||
  skip "a meshlane package is already on this machine; not touching it"
[[ -e /etc/meshlane ]] && skip "/etc/meshlane exists (not from this test)"
[[ -e /run/meshlane ]] && skip "/run/meshlane exists: an agent with the default state_dir ran here"
bpffs=$(awk '$3 == "bpf" { print $2; exit }' /proc/mounts)
[[ -n $bpffs && -e $bpffs/meshlane ]] && skip "$bpffs/meshlane exists (default pins, not ours)"

work=$(mktemp -d /tmp/meshlane-debtest-XXXXXX)
agent_pid=""
cleanup() {
  local rc=$?
  if [[ -n $agent_pid ]] && kill -0 "$agent_pid" 2>/dev/null; then
    kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true
  fi
  if [[ -x /usr/sbin/meshlane && -f $work/agent.conf ]]; then
    /usr/sbin/meshlane uninstall --config "$work/agent.conf" >/dev/null 2>&1 || true
  fi
  [[ -n ${pin_dir:-} ]] && rm -rf "$pin_dir"
  for package in meshlane-dbgsym meshlane; do
    if [[ $(package_state "$package") != not-installed ]]; then
      dpkg --purge "$package" >/dev/null 2>&1 || note "cleanup: dpkg --purge $package failed"
    fi
  done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

# 1. Build the packages from the build tree's install rules.
rm -rf "$build/packages"
(cd "$build" && cpack -G DEB -C RelWithDebInfo >"$work/cpack.log" 2>&1) ||
  { cat "$work/cpack.log" >&2; fail "cpack -G DEB"; }
deb=$(ls "$build"/packages/meshlane_*.deb)
dbgsym=$(ls "$build"/packages/meshlane-dbgsym_*.deb)
note "built $(basename "$deb") ($(du -h "$deb" | cut -f1)), $(basename "$dbgsym") ($(du -h "$dbgsym" | cut -f1))"

# 2. Metadata: Depends from dpkg-shlibdeps on the shared libraries the binaries link.
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libbpf1 libssl3 libc6 libstdc++6; do
  [[ $depends == *"$lib"* ]] || fail "Depends lacks $lib: $depends"
done
[[ $depends == *libgrpc* && $depends == *libprotobuf* ]] || fail "Depends lacks gRPC/protobuf: $depends"
dpkg-deb --ctrl-tarfile "$deb" | tar -t | grep -q '^./conffiles$' || fail "no conffiles"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/meshlane/meshlane.conf ||
  fail "/etc/meshlane/meshlane.conf is not a conffile"

# 3. Contents: what `cmake --install` promises, stripped binaries, split debug info.
dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|' > "$work/files"
dpkg-deb -c "$dbgsym" | awk '{ print $6 }' | sed 's|^\./|/|' > "$work/dbg-files"
for path in /usr/sbin/meshlane /usr/lib/cni/meshlane-cni /etc/meshlane/meshlane.conf \
            /usr/lib/systemd/system/meshlane.service \
            /usr/share/bash-completion/completions/meshlane \
            /usr/share/zsh/vendor-completions/_meshlane /usr/share/man/man8/meshlane.8.gz \
            /usr/share/doc/meshlane/README.md /usr/share/doc/meshlane/openapi.yaml \
            /usr/share/doc/meshlane/docs/deploy.md; do
  grep -qx "$path" "$work/files" || fail "$path missing from the package"
done
mkdir "$work/extract"
dpkg-deb -x "$deb" "$work/extract"
# meshlane-cni is linked stripped (-s, cni/CMakeLists.txt: a static binary copied to every node),
# so it has no debug info to split: it must be stripped, nothing more.
readelf -S "$work/extract/usr/lib/cni/meshlane-cni" | grep -q '\.debug_info' &&
  fail "usr/lib/cni/meshlane-cni is not stripped"
for binary in usr/sbin/meshlane; do
  readelf -S "$work/extract/$binary" | grep -q '\.debug_info' && fail "$binary is not stripped"
  readelf -S "$work/extract/$binary" | grep -q '\.gnu_debuglink' || fail "$binary has no debuglink"
  id=$(readelf -n "$work/extract/$binary" | sed -n 's/^ *Build ID: *//p')
  grep -qx "/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug" "$work/dbg-files" ||
    fail "meshlane-dbgsym has no debug file for $binary (build id $id)"
done
grep -q '^ExecStart=/usr/sbin/meshlane agent ' "$work/extract/usr/lib/systemd/system/meshlane.service" ||
  fail "the packaged unit does not start /usr/sbin/meshlane"
note "contents ok: stripped $(du -h "$work/extract/usr/sbin/meshlane" | cut -f1) meshlane, debug info by build id"

# 4. Install.
dpkg -i "$deb" "$dbgsym" >"$work/dpkg-i.log" 2>&1 || { cat "$work/dpkg-i.log" >&2; fail "dpkg -i"; }
/usr/sbin/meshlane version | grep -q '^meshlane ' || fail "meshlane version"
/usr/sbin/meshlane --version | grep -q '^revision: ' || fail "meshlane --version"
man -w meshlane >/dev/null 2>&1 || fail "man -w meshlane finds no page"
systemd-analyze verify --man=no /usr/lib/systemd/system/meshlane.service ||
  fail "systemd-analyze verify on the installed unit"
[[ -L /etc/systemd/system/multi-user.target.wants/meshlane.service ]] ||
  fail "postinst did not enable meshlane.service"
if [[ -d /run/systemd/system ]]; then
  systemctl is-active --quiet meshlane.service || fail "systemd runs, but meshlane.service is not active"
else
  note "systemd is not PID 1 here: the unit is enabled, not started"
fi
# gdb finds the split debug info through the build id (the stripped binary alone has no symbol
# named main).
if command -v gdb >/dev/null; then
  gdb -batch -ex 'info line main' /usr/sbin/meshlane 2>&1 | grep -q '^Line .*<main(int, char\*\*)>' ||
    fail "gdb does not find meshlane's debug info"
fi

# 5. The installed agent starts and answers (outside systemd, on a private configuration).
pin_dir="$bpffs/meshlane-debtest-$$"
cat >"$work/agent.conf" <<EOF
state_dir = $work/state
api_socket = $work/api.sock
grpc_socket = $work/grpc.sock
pin_dir = meshlane-debtest-$$
EOF
/usr/sbin/meshlane agent --config "$work/agent.conf" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do
  /usr/sbin/meshlane --server "$work/api.sock" status >/dev/null 2>&1 && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log" >&2; fail "the installed agent exited"; }
  sleep 0.1
done
/usr/sbin/meshlane --server "$work/api.sock" status >/dev/null ||
  { cat "$work/agent.log" >&2; fail "the installed agent does not answer"; }
kill "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
/usr/sbin/meshlane uninstall --config "$work/agent.conf" >/dev/null
[[ ! -e $pin_dir ]] || fail "meshlane uninstall left $pin_dir"
note "installed agent started, answered, stopped, uninstalled"

# 6. Remove: files gone, the conffile stays (Debian semantics); purge: nothing left.
dpkg -r meshlane-dbgsym meshlane >"$work/dpkg-r.log" 2>&1 || { cat "$work/dpkg-r.log" >&2; fail "dpkg -r"; }
[[ -e /usr/sbin/meshlane ]] && fail "dpkg -r left /usr/sbin/meshlane"
[[ -f /etc/meshlane/meshlane.conf ]] || fail "dpkg -r removed the conffile (only purge may)"
dpkg --purge meshlane-dbgsym meshlane >"$work/dpkg-purge.log" 2>&1 ||
  { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge"; }
left=""
while read -r path; do
  [[ -z $path || $path == */ ]] && continue  # directories: shared with other packages
  [[ -e $path || -L $path ]] && left+=" $path"
done < <(cat "$work/files" "$work/dbg-files")
for path in /etc/meshlane /usr/share/doc/meshlane /run/meshlane /etc/systemd/system/meshlane.service \
            /etc/systemd/system/multi-user.target.wants/meshlane.service \
            /var/lib/systemd/deb-systemd-helper-enabled/meshlane.service \
            /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/meshlane.service \
            /var/lib/systemd/deb-systemd-helper-masked/meshlane.service; do
  [[ -e $path || -L $path ]] && left+=" $path"
done
[[ -z $left ]] || fail "left after purge:$left"
[[ $(package_state meshlane) == not-installed ]] || fail "dpkg still lists meshlane after purge"
note "installed, ran, removed and purged cleanly ($(wc -l <"$work/files") paths checked)"

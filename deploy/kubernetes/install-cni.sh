#!/bin/bash
# install-cni: keeps meshlane-cni installed on the node for as long as it runs, like Istio CNI's
# install-cni (its long-running container in the istio-cni DaemonSet):
#   - copies the plugin binary to CNI_BIN_DIR atomically (copy to a temporary name, rename: a
#     runtime may execute the plugin at any moment);
#   - chains the plugin entry (CNI_PLUGIN_JSON) at the end of the primary network config in
#     CNI_CONF_DIR: the file the runtime uses, i.e. the first *.conf/*.conflist/*.json by name
#     (libcni's order), or CNI_CONF_NAME. A single-plugin .conf/.json primary is converted to a
#     .conflist (the .conf removed, or the runtime would keep reading it);
#   - watches CNI_CONF_DIR (inotify) and repairs the chain whenever the primary plugin rewrites
#     its config (Calico, Cilium and flannel do on restart), also every RESYNC_SECONDS;
#   - on SIGTERM/SIGINT (the DaemonSet pod stops), removes the entry and the binary again unless
#     CNI_UNINSTALL_ON_EXIT=false (then cleanup-daemonset.yaml removes them: docs/deploy.md).
# `install-cni.sh --remove` only removes (cleanup-daemonset.yaml). Needs bash, jq, inotifywait.
set -euo pipefail
export LC_ALL=C  # file name order as libcni sorts (byte order)

bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
plugin_json=${CNI_PLUGIN_JSON:-/etc/meshlane/cni-plugin.json}
source_bin=${MESHLANE_CNI_SOURCE:-/usr/local/lib/cni/meshlane-cni}
conf_name=${CNI_CONF_NAME:-}
resync=${RESYNC_SECONDS:-30}
uninstall_on_exit=${CNI_UNINSTALL_ON_EXIT:-true}
plugin_type=meshlane-cni

log() { echo "install-cni: $*" >&2; }

# The config file the runtime reads: CNI_CONF_NAME, else the first config file by name.
primary_config() {
  if [ -n "$conf_name" ]; then
    [ -f "$conf_dir/$conf_name" ] && echo "$conf_dir/$conf_name"
    return 0
  fi
  local f
  for f in "$conf_dir"/*; do
    case "$f" in
      *.conf | *.conflist | *.json) [ -f "$f" ] && { echo "$f"; return 0; } ;;
    esac
  done
  return 0
}

# Writes stdin to $1 atomically (same directory, then rename).
write_atomically() {
  local target=$1 tmp
  tmp="$(dirname "$target")/.$(basename "$target").meshlane.tmp"
  cat > "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$target"
}

install_binary() {
  if cmp -s "$source_bin" "$bin_dir/$plugin_type"; then return 0; fi
  mkdir -p "$bin_dir"
  cp "$source_bin" "$bin_dir/.$plugin_type.tmp"
  chmod 0755 "$bin_dir/.$plugin_type.tmp"
  mv -f "$bin_dir/.$plugin_type.tmp" "$bin_dir/$plugin_type"
  log "installed $bin_dir/$plugin_type"
}

# The config on stdin with meshlane-cni chained last (exactly once, with the current entry).
chained() {
  jq -c --slurpfile plugin "$plugin_json" --arg type "$plugin_type" '
    if has("plugins") then . else {cniVersion, name, plugins: [del(.cniVersion, .name)]} end
    | .plugins |= (map(select(.type != $type)) + $plugin)'
}

ensure_chained() {
  local config target snapshot desired
  config=$(primary_config)
  if [ -z "$config" ]; then
    log "no network config in $conf_dir yet (primary CNI not installed?); waiting"
    return 0
  fi
  # Work from one snapshot, and write only if the file still holds it: never put back an old
  # version over a rewrite by the primary plugin (its event brings us back here).
  snapshot=$(cat "$config" 2> /dev/null) || return 0
  if ! desired=$(chained <<< "$snapshot" 2> /dev/null); then
    log "$config is not valid JSON (being written?); retrying on the next change"
    return 0
  fi
  target=$config
  case "$config" in *.conflist) ;; *) target="${config%.*}.conflist" ;; esac
  if [ "$target" = "$config" ] &&
    [ "$(jq -cS . <<< "$snapshot")" = "$(jq -cS . <<< "$desired")" ]; then
    return 0  # already chained: no write, so our own events do not loop
  fi
  local tmp="$conf_dir/.$(basename "$target").meshlane.tmp"
  jq . <<< "$desired" > "$tmp"
  chmod 0644 "$tmp"
  if [ "$(cat "$config" 2> /dev/null)" != "$snapshot" ]; then
    rm -f "$tmp"
    return 0
  fi
  mv -f "$tmp" "$target"
  if [ "$target" != "$config" ]; then
    rm -f "$config"
    log "converted $config to $target and chained $plugin_type"
  else
    log "chained $plugin_type in $config"
  fi
}

remove_all() {
  local config
  config=$(primary_config)
  if [ -n "$config" ] && jq -e 'has("plugins")' "$config" > /dev/null 2>&1; then
    if jq -e --arg type "$plugin_type" '.plugins | any(.type == $type)' "$config" > /dev/null; then
      jq --arg type "$plugin_type" '.plugins |= map(select(.type != $type))' "$config" |
        write_atomically "$config"
      log "removed $plugin_type from $config"
    fi
  fi
  rm -f "$bin_dir/$plugin_type"
  log "removed $bin_dir/$plugin_type"
}

if [ "${1:-}" = "--remove" ]; then
  remove_all
  exit 0
fi

watch() {
  while read -r line <&3; do
    [ "$line" = "Watches established." ] && break
  done
  ensure_chained
  log "watching $conf_dir"
  while kill -0 "$watcher" 2> /dev/null; do
    if read -r -t "$resync" line <&3; then
      # A rewrite comes as a burst of events: let it settle, then look once.
      while read -r -t 0.3 line <&3; do :; done
    fi
    ensure_chained
    install_binary
  done
  log "inotifywait ended; exiting so the container restarts"
  exit 1
}

install_binary
mkdir -p "$conf_dir"
watch_dir=$(mktemp -d)
# Watch first, then look: a rewrite between the two is then seen as an event.
mkfifo "$watch_dir/events"
inotifywait -m -e close_write,moved_to,moved_from,create,delete --format '%e %f' "$conf_dir" \
  > "$watch_dir/events" 2>&1 &
watcher=$!
exec 3< "$watch_dir/events"
# The loop runs in a child; this shell only waits, so a signal finds it in `wait` (bash 5.2 can
# fail to run a trap that arrives while it reads a command substitution's output).
watch &
loop=$!
stop() {
  kill "$loop" "$watcher" 2> /dev/null || true
  wait "$loop" "$watcher" 2> /dev/null || true
  rm -rf "$watch_dir" "$conf_dir"/.*.meshlane.tmp "$bin_dir/.$plugin_type.tmp"
}
# The pod stops (DaemonSet deleted, or an upgrade replaces it): leave the node as it was.
on_signal() {
  trap - TERM INT
  stop
  if [ "$uninstall_on_exit" = "true" ]; then remove_all; fi
  exit 0
}
trap on_signal TERM INT
status=0
wait "$loop" || status=$?
stop
exit "$status"

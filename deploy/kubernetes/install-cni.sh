#!/bin/sh
# Installs meshlane-cni on the node and chains it after the node's primary CNI plugin, like
# istio-cni's install-cni: copies the binary to CNI_BIN_DIR and appends the plugin entry
# (CNI_PLUGIN_JSON) to the first .conflist in CNI_CONF_DIR, once. `--remove` undoes both.
set -eu
bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
plugin_json=${CNI_PLUGIN_JSON:-/etc/meshlane/cni-plugin.json}

conflist=$(ls "$conf_dir"/*.conflist 2>/dev/null | sort | head -n 1 || true)

if [ "${1:-}" = "--remove" ]; then
  rm -f "$bin_dir/meshlane-cni"
  if [ -n "$conflist" ]; then
    jq '.plugins |= map(select(.type != "meshlane-cni"))' "$conflist" > "$conflist.meshlane.tmp"
    mv "$conflist.meshlane.tmp" "$conflist"
  fi
  echo "meshlane-cni removed"
  exit 0
fi

# Copy then rename: the runtime may execute the plugin at any moment.
cp /usr/local/lib/cni/meshlane-cni "$bin_dir/.meshlane-cni.tmp"
chmod 0755 "$bin_dir/.meshlane-cni.tmp"
mv "$bin_dir/.meshlane-cni.tmp" "$bin_dir/meshlane-cni"

if [ -z "$conflist" ]; then
  echo "install-cni: no .conflist in $conf_dir yet (primary CNI not installed?)" >&2
  exit 1
fi
if jq -e '.plugins | any(.type == "meshlane-cni")' "$conflist" > /dev/null; then
  echo "install-cni: meshlane-cni already chained in $conflist"
  exit 0
fi
jq --slurpfile plugin "$plugin_json" '.plugins += $plugin' "$conflist" > "$conflist.meshlane.tmp"
mv "$conflist.meshlane.tmp" "$conflist"
echo "install-cni: chained meshlane-cni in $conflist"

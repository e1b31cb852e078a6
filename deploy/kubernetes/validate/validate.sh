#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/kubernetes against the Kubernetes OpenAPI
# schemas (npm kubernetes-models) — there is no cluster in CI. Installs kubernetes-models and
# js-yaml with npm into WORK_DIR (the build tree), never into the source tree.
# Usage: validate.sh WORK_DIR MANIFEST_DIR
set -euo pipefail
work_dir=${1:?work dir}
manifest_dir=${2:?manifest dir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work_dir"
cp "$here/package.json" "$work_dir/package.json"
if [[ ! -d "$work_dir/node_modules/kubernetes-models" || ! -d "$work_dir/node_modules/js-yaml" ||
      ! -d "$work_dir/node_modules/@kubernetes-models/prometheus-operator" ]]; then
  npm install --prefix "$work_dir" --no-audit --no-fund --loglevel=error >&2
fi
export NODE_PATH="$work_dir/node_modules"
# The validator must reject a broken manifest, or a pass means nothing.
node "$here/validate.js" --self-test
node "$here/validate.js" "$manifest_dir"

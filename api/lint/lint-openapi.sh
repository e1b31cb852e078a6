#!/usr/bin/env bash
# ctest api.openapi_lint: `redocly lint` (npm @redocly/cli, pinned in package.json, installed
# into WORK_DIR, the build tree) on api/openapi.yaml with the recommended rules: no error, no
# warning. A copy with one read-only operation's `security: []` removed must fail, so a pass
# means the linter really checks. Telemetry and update checks are off: the test talks to no
# host (only `npm install` reaches the registry, once per build tree).
# Usage: lint-openapi.sh WORK_DIR SPEC
set -euo pipefail
work_dir=${1:?work dir}
spec=${2:?openapi.yaml}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work_dir"
cp "$here/package.json" "$work_dir/package.json"
want=$(sed -n 's/.*"@redocly\/cli": "\(.*\)".*/\1/p' "$here/package.json")
have=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$work_dir/node_modules/@redocly/cli/package.json" 2>/dev/null || true)
if [[ $have != "$want" ]]; then
  npm install --prefix "$work_dir" --no-audit --no-fund --loglevel=error >&2
fi
export REDOCLY_TELEMETRY=off REDOCLY_SDK_TELEMETRY=off DO_NOT_TRACK=1 \
  REDOCLY_SUPPRESS_UPDATE_NOTICE=true REDOCLY_SUPPRESS_NOTIFICATIONS=true
lint() { "$work_dir/node_modules/.bin/redocly" lint --config "$here/redocly.yaml" \
  --format=stylish --max-problems 50 "$1" 2>&1; }

# Self-test: the first read-only operation without `security: []` must be an error.
broken=$(mktemp /tmp/meshlane-openapi-XXXXXX.yaml)
trap 'rm -f "$broken"' EXIT
awk '!done && /^      security: \[\]$/ { done = 1; next } { print }' "$spec" > "$broken"
if lint "$broken" >/dev/null; then
  echo "api.openapi_lint: redocly accepted an operation without security: the check is not effective" >&2
  exit 1
fi
out=$(lint "$spec") || { echo "$out" >&2; exit 1; }
if grep -qE '^ *[0-9]+:[0-9]+ +warning' <<<"$out"; then
  echo "$out" >&2
  echo "api.openapi_lint: warnings" >&2
  exit 1
fi
echo "api.openapi_lint: $spec is lint-clean (redocly $want, recommended rules)"

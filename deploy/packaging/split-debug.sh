#!/bin/sh
# Splits an ELF executable the way Debian's dh_strip does: the debug info goes to
# <debug-root>/.build-id/xx/yyyy.debug (gdb and debuginfod clients look it up by build id,
# whatever prefix the binary is installed under), the stripped copy gets a .gnu_debuglink to it.
# Usage: split-debug.sh OBJCOPY INPUT STRIPPED_OUTPUT DEBUG_ROOT
set -eu
objcopy=$1 input=$2 output=$3 debug_root=$4
build_id=$(LC_ALL=C readelf -n "$input" | sed -n 's/^ *Build ID: *\([0-9a-f]*\)$/\1/p')
[ -n "$build_id" ] || { echo "split-debug: $input has no build id (link with --build-id)" >&2; exit 1; }
rest=${build_id#??}
debug_dir=$debug_root/.build-id/${build_id%"$rest"}
debug_file=$debug_dir/$rest.debug
# Only the current build's file: a stale one from an earlier link must not be installed.
rm -rf "$debug_root"
mkdir -p "$debug_dir" "$(dirname "$output")"
"$objcopy" --only-keep-debug --compress-debug-sections=zlib "$input" "$debug_file"
chmod 0644 "$debug_file"
"$objcopy" --strip-all --remove-section=.comment --add-gnu-debuglink="$debug_file" \
  "$input" "$output.tmp"
mv "$output.tmp" "$output"

#!/usr/bin/env bash
# `make demo`: the main job end to end on a store inside the project folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export IMSTORE_DIR="$PWD/demo-store"
rm -rf "$IMSTORE_DIR"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s$%s%s\n' "$bold" "$(printf ' %q' "$@")" "$plain"; "$@"; }

echo "imstore demo -- store: $IMSTORE_DIR (IMSTORE_DIR)"
step imstore init
cd "$workdir"
printf 'milk\neggs\n' > shopping.txt
step imstore put lists/shopping shopping.txt -m "first list"
printf 'milk\neggs\nbread\n' > shopping.txt
step imstore put lists/shopping shopping.txt -m "add bread"
echo "(the same bytes again add no version:)"
step imstore put lists/shopping shopping.txt
printf 'hello from stdin\n' | step imstore put notes/hello -t text/plain
step imstore history lists/shopping
echo "(version 1 is still there, byte for byte:)"
step imstore get lists/shopping --version 1
step imstore ls
step imstore rm notes/hello -m "not needed"
echo "(a deleted key is not found -- exit 3 -- but its history stays:)"
step imstore get notes/hello || echo "exit status $?"
step imstore history notes/hello
step imstore log
step imstore verify
echo
echo "Done. Try: IMSTORE_DIR=demo-store .venv/bin/imstore --help"

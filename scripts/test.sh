#!/usr/bin/env bash
# Runs every test of the workspace against one throwaway PostgreSQL cluster (each test creates
# its own database in it). Usage: scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
ensure_nextest

cargo build --workspace --all-targets
pg_out=$(mktemp)
# The cluster lives as long as this script: it stops when its stdin (a pipe we hold) closes.
exec 3> >(target/debug/hopngo-throwaway-pg >"$pg_out")
for _ in $(seq 1 120); do
  grep -q '^DATABASE_URL=' "$pg_out" && break
  sleep 0.5
done
url=$(sed -n 's/^DATABASE_URL=//p' "$pg_out")
if [ -z "$url" ]; then
  echo "test.sh: the throwaway PostgreSQL did not start" >&2
  exit 1
fi
export DATABASE_URL="$url"
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
exec 3>&-
sleep 1
rm -f "$pg_out"
exit "$status"

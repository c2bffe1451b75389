#!/usr/bin/env bash
# Runs every test of the workspace against one throwaway PostgreSQL cluster (each test creates
# its own database in it). Usage: scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
ensure_prometheus
ensure_kubectl
ensure_iptables
ensure_chromium
ensure_firefox
ensure_nextest
ensure_python_clients

cargo build --workspace --all-targets
start_throwaway_pg
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
stop_throwaway_pg
exit "$status"

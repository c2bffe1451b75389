#!/usr/bin/env bash
# The embedded default: a throwaway PostgreSQL, the deployer (local backend: HopNGo's services as
# demo processes behind weighted proxies) and the scheduler on 127.0.0.1:50051, with HopNGo's
# delivery config applied. Ctrl-C stops everything and removes what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
cargo build -p hopngo-scheduler -p hopngo-deployer -p hopctl -p hopngo-testkit --bins
export PATH="$PWD/target/debug:$PATH"
start_throwaway_pg
logs=$(mktemp -d)
hopngo-deployer --delivery-config deploy/hopngo/delivery.yaml --log-dir "$logs" --log warn &
deployer=$!
cleanup() {
  kill -TERM "$deployer" 2>/dev/null || true
  wait "$deployer" 2>/dev/null || true
  stop_throwaway_pg
  rm -rf "$logs"
}
trap cleanup EXIT
cat >&2 <<'TXT'
Scheduler: http://127.0.0.1:50051 (metrics http://127.0.0.1:9464/metrics)
Deployer:  http://127.0.0.1:50052 (proxy metrics http://127.0.0.1:9465/metrics)
In another terminal:
  export PATH="$PWD/target/debug:$PATH"
  hopctl release create chat-service --env staging --artifact 1.0.0 --watch
Ctrl-C here stops everything and deletes the database and the replicas' logs.
TXT
hopngo-scheduler --apply-config deploy/hopngo/delivery.yaml "$@" || true

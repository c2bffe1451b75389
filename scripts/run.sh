#!/usr/bin/env bash
# The embedded default: a throwaway PostgreSQL, the deployer (local backend: HopNGo's services as
# demo processes behind weighted proxies), the analyzer (measuring canaries from the proxies'
# metrics), the migrator (booking's database, in the same cluster), the notifier (release event
# log, subscriptions, webhooks, escalation), the scheduler on
# 127.0.0.1:50051 with HopNGo's delivery config applied, and steady traffic into every staging
# service. Ctrl-C stops everything and removes what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
cargo build -p hopngo-scheduler -p hopngo-deployer -p hopngo-analyzer -p hopngo-migrator -p hopngo-notifier -p hopctl -p hopngo-testkit --bins
export PATH="$PWD/target/debug:$PATH"
config=deploy/hopngo/delivery.yaml
proxy_base=18000
start_throwaway_pg
logs=$(mktemp -d)
hopngo-deployer --delivery-config "$config" --proxy-port-base "$proxy_base" --log-dir "$logs" --log warn &
deployer=$!
hopngo-analyzer --log warn &
analyzer=$!
# Booking's application database lives in the same throwaway cluster.
hopngo-migrator --log warn --target "booking=${DATABASE_URL%/*}/booking" --create-targets \
  --locations booking=deploy/hopngo/migrations/booking &
migrator=$!
hopngo-notifier --log warn &
notifier=$!
# Proxy of the i-th service in the j-th environment: base + i × environments + j.
environments=$(awk '/^environments:/{on=1;next} /^[a-z]/{on=0} on && /^  - name:/{print $3}' "$config")
services=$(awk '/^services:/{on=1;next} /^[a-z]/{on=0} on && /^  - name:/{print $3}' "$config")
n_env=$(echo "$environments" | wc -l)
urls=()
i=0
for s in $services; do
  j=0
  for e in $environments; do
    port=$((proxy_base + i * n_env + j))
    printf '  %-22s %-11s http://127.0.0.1:%s\n' "$s" "$e" "$port" >>"$logs/proxies.txt"
    [ "$e" = staging ] && urls+=("http://127.0.0.1:$port/api/v1/info")
    j=$((j + 1))
  done
  i=$((i + 1))
done
# Bounded: 5 requests/s per staging service for at most an hour.
(IFS=,; exec hopngo-traffic --url "${urls[*]}" --rate 5 --duration 1h >"$logs/traffic.txt" 2>&1) &
traffic=$!
cleanup() {
  kill -TERM "$traffic" "$analyzer" "$migrator" "$notifier" "$deployer" 2>/dev/null || true
  wait "$traffic" "$analyzer" "$migrator" "$notifier" "$deployer" 2>/dev/null || true
  stop_throwaway_pg
  rm -rf "$logs"
}
trap cleanup EXIT
{
  echo "Scheduler: http://127.0.0.1:50051 (metrics http://127.0.0.1:9464/metrics)"
  echo "Deployer:  http://127.0.0.1:50052 (proxy metrics http://127.0.0.1:9465/metrics)"
  echo "Analyzer:  http://127.0.0.1:50053 (canaries are measured from the proxy metrics)"
  echo "Migrator:  http://127.0.0.1:50054 (database booking: deploy/hopngo/migrations/booking)"
  echo "Notifier:  http://127.0.0.1:50055 (release events: hopctl events --follow; webhooks: hopctl subscriptions)"
  echo "Service proxies (traffic flows into staging at 5 requests/s each):"
  cat "$logs/proxies.txt"
  echo "In another terminal:"
  echo '  export PATH="$PWD/target/debug:$PATH"'
  echo '  hopctl release create chat-service --env staging --artifact 1.0.0 --watch'
  echo "Ctrl-C here stops everything and deletes the database and the replicas' logs."
} >&2
hopngo-scheduler --apply-config "$config" "$@" || true

#!/usr/bin/env bash
# The embedded default: a throwaway PostgreSQL, the deployer (local backend: HopNGo's services as
# demo processes behind weighted proxies), the analyzer (measuring canaries from the proxies'
# metrics), the migrator (booking's databases, in the same cluster), the notifier (release event
# log, subscriptions, webhooks, escalation) and the scheduler on 127.0.0.1:50051 with HopNGo's
# delivery config, all over TLS with a throwaway CA and a certificate per service, callers
# authenticated by static tokens (alice deploys, bob is a release manager, admin administers)
# under an access policy, steady traffic into every service, and then the runbook as a demonstration:
# a good booking release through staging and (approved by a second person) production, a gateway
# blue/green release, a faulty version rolled back by its analysis, and a full environment
# rollback, with events arriving at a subscriber. It finishes by itself and removes what it
# started.
#
#   scripts/run.sh          the demonstration (about two minutes)
#   scripts/run.sh --serve  the same stack, without the demonstration, until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
serve=false
if [ "${1:-}" = "--serve" ]; then
  serve=true
  shift
fi
ensure_postgres
cargo build -q -p hopngo-scheduler -p hopngo-deployer -p hopngo-analyzer -p hopngo-migrator -p hopngo-notifier -p hopngo-dashboard -p hopctl -p hopngo-testkit --bins
export PATH="$PWD/target/debug:$PATH"
logs=$(mktemp -d)
config=deploy/hopngo/delivery.yaml
if [ "$serve" = false ]; then
  # HopNGo's config with the waits shortened so the demonstration takes minutes, not an hour:
  # 10 s canary pauses, the SLO measured every second over 5 s windows, 5 s blue/green
  # scale-down. Everything else (strategies, smoke tests, approvals, preflight) is as deployed.
  sed -e 's/pause: {duration: 1m}/pause: {duration: 10s}/' \
    -e 's/interval: 10s/interval: 1s/' -e 's/initialDelay: 10s/initialDelay: 3s/' \
    -e 's/window: 30s/window: 5s/' -e 's/scaleDownDelay: 30s/scaleDownDelay: 5s/' \
    "$config" >"$logs/delivery.yaml"
  config="$logs/delivery.yaml"
fi
# Throwaway credentials: a CA and a certificate per service (the scheduler proves itself to the
# others with its own), a static token per person (the tokens file holds only their SHA-256), and
# who may do what.
creds="$logs/credentials"
hopngo-dev-certificates --dir "$creds" scheduler deployer analyzer migrator notifier 2>/dev/null
echo "tokens:" >"$creds/tokens.yaml"
while read -r user groups; do
  (umask 077 && hopctl token new --user "$user" --groups "$groups" >"$creds/$user.token" 2>>"$creds/tokens.yaml")
done <<'EOF'
alice developers
bob release-managers
admin hopngo:admins
EOF
cat >"$creds/policy.yaml" <<'EOF'
bindings:
  - subjects: [group:developers]
    roles: [deployer]
  - subjects: [group:release-managers]
    roles: [approver, release-manager]
  - subjects: ["user:*"]
    roles: [viewer]
EOF
export HOPNGO_TLS_CA="$creds/ca.pem" HOPNGO_AUTH_TOKENS="$creds/tokens.yaml" HOPNGO_POLICY="$creds/policy.yaml"
tls() { echo "--tls-cert $creds/$1.pem --tls-key $creds/$1-key.pem"; }
proxy_base=18000
start_throwaway_pg
# shellcheck disable=SC2046 # tls prints the flags to split
hopngo-deployer $(tls deployer) --delivery-config "$config" --proxy-port-base "$proxy_base" --log-dir "$logs" --log warn &
deployer=$!
# shellcheck disable=SC2046
hopngo-analyzer $(tls analyzer) --delivery-config "$config" --log warn &
analyzer=$!
# Booking's application databases (staging's and production's) live in the same throwaway cluster.
# shellcheck disable=SC2046
hopngo-migrator $(tls migrator) --log warn --create-targets \
  --target "booking=${DATABASE_URL%/*}/booking" --locations booking=deploy/hopngo/migrations/booking \
  --target "booking-production=${DATABASE_URL%/*}/booking-production" \
  --locations booking-production=deploy/hopngo/migrations/booking &
migrator=$!
# shellcheck disable=SC2046
hopngo-notifier $(tls notifier) --log warn &
notifier=$!
# hopctl and the scheduler reach every service over TLS; hopctl calls as alice unless told.
export HOPNGO_SERVER=https://127.0.0.1:50051 HOPNGO_ANALYZER=https://127.0.0.1:50053 \
  HOPNGO_MIGRATOR=https://127.0.0.1:50054 HOPNGO_NOTIFIER=https://127.0.0.1:50055 \
  HOPNGO_DEPLOYER_URL=https://127.0.0.1:50052 HOPNGO_ANALYZER_URL=https://127.0.0.1:50053 \
  HOPNGO_MIGRATOR_URL=https://127.0.0.1:50054 HOPNGO_NOTIFIER_URL=https://127.0.0.1:50055 \
  HOPNGO_CA_FILE="$creds/ca.pem" HOPNGO_TOKEN_FILE="$creds/alice.token" HOPNGO_CONFIG_DIR="$creds/hopctl"
# The web dashboard (loopback only): it reads the same addresses and CA as hopctl, and calls the
# control plane with the token of whoever signs in.
hopngo-dashboard --listen 127.0.0.1:8080 --log warn &
dashboard=$!
# Proxy of the i-th service in the j-th environment: base + i × environments + j.
environments=$(awk '/^environments:/{on=1;next} /^[a-z]/{on=0} on && /^  - name:/{print $3}' "$config")
services=$(awk '/^services:/{on=1;next} /^[a-z]/{on=0} on && /^  - name:/{print $3}' "$config")
n_env=$(echo "$environments" | wc -l)
paths_of() { # what steady traffic asks a service: its business operations too (the demo counts them)
  case "$1" in
    auth-service) echo /api/v1/info /api/v1/login ;;
    booking-service) echo /api/v1/info /api/v1/bookings /api/v1/payments ;;
    trip-planning-service) echo /api/v1/info /api/v1/search ;;
    *) echo /api/v1/info ;;
  esac
}
urls=()
i=0
for s in $services; do
  j=0
  for e in $environments; do
    port=$((proxy_base + i * n_env + j))
    printf '  %-22s %-11s http://127.0.0.1:%s\n' "$s" "$e" "$port" >>"$logs/proxies.txt"
    for path in $(paths_of "$s"); do
      urls+=("http://127.0.0.1:$port$path")
    done
    j=$((j + 1))
  done
  i=$((i + 1))
done
# Bounded: 10 requests/s per path, service and environment for at most an hour.
(IFS=,; exec hopngo-traffic --url "${urls[*]}" --rate 10 --duration 1h >"$logs/traffic.txt" 2>&1) &
traffic=$!
scheduler=
subscriber=
cleanup() {
  kill -TERM $subscriber $scheduler "$dashboard" "$traffic" "$analyzer" "$migrator" "$notifier" "$deployer" 2>/dev/null || true
  wait $subscriber $scheduler "$dashboard" "$traffic" "$analyzer" "$migrator" "$notifier" "$deployer" 2>/dev/null || true
  stop_throwaway_pg
  rm -rf "$logs"
}
trap cleanup EXIT
{
  echo "Scheduler: https://127.0.0.1:50051 (metrics http://127.0.0.1:9464/metrics)"
  echo "Deployer:  https://127.0.0.1:50052 (proxy metrics http://127.0.0.1:9465/metrics)"
  echo "Analyzer:  https://127.0.0.1:50053 (canaries are measured from the proxy metrics, business rates from the replicas' own: http://127.0.0.1:9465/metrics/replicas)"
  echo "Migrator:  https://127.0.0.1:50054 (databases booking and booking-production: deploy/hopngo/migrations/booking)"
  echo "Notifier:  https://127.0.0.1:50055 (release events: hopctl events --follow; webhooks: hopctl subscriptions)"
  echo "Dashboard: http://127.0.0.1:8080 (sign in with a token: $creds/alice.token, bob.token or admin.token)"
  echo "Credentials (CA, service certificates, tokens of alice, bob and admin, policy): $creds"
  echo "Service proxies (10 requests/s flow into each, per path: logins on auth-service, bookings and payments on booking-service, searches on trip-planning-service):"
  cat "$logs/proxies.txt"
} >&2
if [ "$serve" = true ]; then
  {
    echo "In another terminal:"
    echo '  export PATH="$PWD/target/debug:$PATH"'
    echo "  export HOPNGO_SERVER=$HOPNGO_SERVER HOPNGO_CA_FILE=$creds/ca.pem"
    echo "  hopctl login --token-file $creds/alice.token    # or bob.token, admin.token"
    echo '  hopctl whoami'
    echo '  hopctl release create chat-service --env staging --artifact 1.0.0 --watch'
    echo "Ctrl-C here stops everything and deletes the database and the replicas' logs."
  } >&2
  # shellcheck disable=SC2046
  hopngo-scheduler $(tls scheduler) --apply-config "$config" "$@" || true
  exit 0
fi

# The grace a high-severity failure gets before it is measured again is shortened too (10 s, not
# 5 min): a version whose errors ramp up may cross the SLO's 1 % before the 5 % that aborts at
# once, and then the demonstration would wait five minutes to see it aborted.
# shellcheck disable=SC2046
hopngo-scheduler $(tls scheduler) --apply-config "$config" --high-severity-grace 10s --log warn "$@" &
scheduler=$!
for _ in $(seq 1 100); do
  hopctl config get >/dev/null 2>&1 && break
  sleep 0.2
done

proxy() { # proxy SERVICE ENVIRONMENT → host:port
  grep -E "^  $1 +$2 " "$logs/proxies.txt" | sed 's|.*http://||'
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
run() { # prints the command, then runs it
  printf '$ %s\n' "$*" >&2
  "$@"
}
answers() { # who answers on a service's proxy: 100 requests, counted by status and version
  run hopngo-traffic --url "http://$(proxy "$1" "$2")/api/v1/info" --rate 100 --duration 1s
}
released() { # the phase of the newest release of SERVICE in ENVIRONMENT
  hopctl list --service "$1" --env "$2" --limit 1 -o json 2>/dev/null | sed -n 's/.*"phase": *"\([A-Z_]*\)".*/\1/p' | head -1
}
id_of() { sed -n 's/^Release: *//p' | head -1; }

as_bob=(--token-file "$creds/bob.token")
as_admin=(--token-file "$creds/admin.token")
say "Who is calling (alice, proven by her static token)"
run hopctl whoami | head -8

say "A platform service subscribes to release events (hopctl events --follow)"
hopctl events --follow --from-now >"$logs/subscriber.txt" 2>/dev/null &
subscriber=$!

say "First versions: auth-service, gateway and booking-service 1.0.0 to staging, then production"
for s in auth-service gateway booking-service; do
  hopctl release create "$s" --env staging --artifact 1.0.0 --watch >/dev/null 2>&1 || true
  echo "  $s 1.0.0 in staging: $(released "$s" staging) (preflight, deploy, smoke tests)" >&2
  id=$(hopctl promote-env "$s" --to production 2>/dev/null | id_of)
  hopctl approve "$id" "${as_bob[@]}" --reason "first version" >/dev/null
  hopctl get "$id" --watch >/dev/null 2>&1 || true
  echo "  $s 1.0.0 in production: $(released "$s" production) (promoted from staging, approved by bob)" >&2
done

say "A good booking release: canary 25% → 50% → 100% in staging, watched by the SLO analysis"
run hopctl release create booking-service --env staging --artifact 1.1.0 --watch

say "Promote it to production: it succeeded and was verified in staging; production needs an approval"
out=$(run hopctl promote-env booking-service --from staging --to production)
echo "$out"
id=$(echo "$out" | id_of)
run hopctl approve "$id" || echo "(alice may not approve: she is no approver, and she asked for it)" >&2
run hopctl approve "$id" "${as_bob[@]}" --reason "checked the staging SLO"
run hopctl get "$id" --watch
answers booking-service production

say "A blue/green release of the gateway: the preview is smoke-tested, then takes all traffic at once"
answers gateway staging
run hopctl release create gateway --env staging --artifact 1.1.0 --watch
answers gateway staging
id=$(hopctl promote-env gateway --to production 2>/dev/null | id_of)
hopctl approve "$id" "${as_bob[@]}" --reason "gateway 1.1.0" >/dev/null
hopctl get "$id" --watch >/dev/null 2>&1 || true
echo "  gateway 1.1.0 in production: $(released gateway production)" >&2

say "A broken version (half its API answers fail): the smoke tests stop it before it gets any traffic"
id=$(hopctl release create booking-service --env staging --artifact '1.2.0+errors=0.5' | id_of)
run hopctl get "$id" --watch >/dev/null || true
hopctl get "$id" | sed -n 's/^Message: */  /p' >&2

say "A version that breaks under load (fine for 40 requests, then half fail): the analysis aborts the canary"
id=$(hopctl release create booking-service --env staging --artifact '1.3.0+errors=0.5,errorsAfter=40' | id_of)
run hopctl get "$id" --watch || true
sleep 1 # the event log is a moment behind the release
run hopctl timeline "$id"
answers booking-service staging

say "A version whose bookings fail while every answer is a fast 200: the SLO sees nothing, the booking completion rate aborts it"
id=$(hopctl release create booking-service --env staging --artifact '1.4.0+businessFailures=0.5' | id_of)
run hopctl get "$id" --watch >/dev/null || true
hopctl get "$id" | sed -n 's/^Message: */  /p' >&2

say "Full environment rollback of production (emergency form, an admin's call: every service, straight back, one after another)"
run hopctl "${as_admin[@]}" rollback-env production --emergency --reason "demo: back to yesterday's versions" --watch || true
answers booking-service production
answers gateway production

say "What the subscriber received"
kill -TERM "$subscriber" 2>/dev/null || true
wait "$subscriber" 2>/dev/null || true
subscriber=
echo "$(($(wc -l <"$logs/subscriber.txt") - 1)) events, in order; the last ones:" >&2
(head -1 "$logs/subscriber.txt"; tail -12 "$logs/subscriber.txt") >&2
say "Done: everything started is stopped and removed"

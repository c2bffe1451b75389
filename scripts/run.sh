#!/usr/bin/env bash
# The embedded default: a throwaway PostgreSQL, the scheduler on 127.0.0.1:50051 with HopNGo's
# delivery config applied. Ctrl-C stops everything and removes what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
cargo build -p hopngo-scheduler -p hopctl
export PATH="$PWD/target/debug:$PATH"
cat >&2 <<'TXT'
Starting the scheduler on http://127.0.0.1:50051 (admin: http://127.0.0.1:9464/metrics).
In another terminal:
  export PATH="$PWD/target/debug:$PATH"
  hopctl config get | head
  hopctl release create booking-service --env staging --artifact booking:1.4.2 --watch
Ctrl-C here stops the scheduler and deletes its database.
TXT
exec target/debug/hopngo-scheduler --ephemeral-postgres --apply-config deploy/hopngo/delivery.yaml "$@"

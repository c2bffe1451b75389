# Shared helpers for the scripts: make sure the machine has what the project needs.
# shellcheck shell=bash

ensure_postgres() {
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing the PostgreSQL server binaries (package postgresql)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  # PostgreSQL refuses to run as root; the project runs it as the postgres user.
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
  fi
}

# The analyzer's tests query a real Prometheus (Debian package prometheus); nothing runs it as a
# service, the tests start their own.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1; then
    echo "installing Prometheus (package prometheus)" >&2
    # The package would start a system-wide Prometheus on :9090; the project needs only the
    # binary. Debian's policy-rc.d hook (exit 101: "action forbidden") keeps the package from
    # starting it, so nothing has to be stopped afterwards, and no other Prometheus is touched.
    local policy=${HOPNGO_POLICY_RC_D:-/usr/sbin/policy-rc.d} own_policy=false
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=true
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ "$own_policy" = true ]; then rm -f "$policy"; fi
    # Where the hook could not be used (the host has its own), stop the unit the package started.
    if [ "$own_policy" = false ]; then
      (systemctl disable --now prometheus || service prometheus stop) >/dev/null 2>&1 || true
    fi
  fi
}

# kubectl renders the control plane's manifests (`kubectl kustomize`) in the tests (Debian
# package kubernetes-client; any kubectl with kustomize v5 will do).
ensure_kubectl() {
  if ! command -v kubectl >/dev/null 2>&1; then
    echo "installing kubectl (package kubernetes-client)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
  fi
}

# The chaos harness cuts a service off the network with an iptables rule inside its own network
# namespace (package iptables; unshare comes with util-linux).
ensure_iptables() {
  if ! command -v iptables >/dev/null 2>&1; then
    echo "installing iptables (package iptables)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables >/dev/null
  fi
}

# The dashboard's browser tests drive Debian's Chromium through its ChromeDriver (packages
# chromium and chromium-driver).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "installing Chromium and ChromeDriver (packages chromium, chromium-driver)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  fi
}

# ... and Debian's Firefox ESR through geckodriver, which Debian does not package: built from
# crates.io into target/tools (about three minutes, once) and put on PATH.
ensure_firefox() {
  if ! command -v firefox-esr >/dev/null 2>&1; then
    echo "installing Firefox (package firefox-esr)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends firefox-esr >/dev/null
  fi
  if ! [ -x target/tools/bin/geckodriver ]; then
    echo "building geckodriver 0.37.1 (crates.io) into target/tools" >&2
    cargo install -q --locked geckodriver --version 0.37.1 --root target/tools
  fi
  PATH="$PWD/target/tools/bin:$PATH"
  export PATH
}

# A Python with grpcio (reflection, health) and the Kubernetes client in target/python for the
# tests' foreign clients; exports HOPNGO_TEST_PYTHON.
ensure_python_clients() {
  local venv=target/python
  if ! "$venv/bin/python" -c 'import grpc, grpc_reflection, grpc_health, kubernetes, kubernetes_validate, jsonschema' >/dev/null 2>&1 \
    || ! [ -x "$venv/bin/hadolint" ] \
    || ! cmp -s tools/python-requirements.txt "$venv/requirements.txt"; then
    echo "installing the Python clients for the tests (tools/python-requirements.txt)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tools/python-requirements.txt
    cp tools/python-requirements.txt "$venv/requirements.txt"
  fi
  HOPNGO_TEST_PYTHON="$PWD/$venv/bin/python"
  export HOPNGO_TEST_PYTHON
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest >/dev/null
  fi
}

# Starts a throwaway PostgreSQL cluster (target/debug/hopngo-throwaway-pg must be built) that lives
# until file descriptor 3 is closed (or this shell exits), and exports DATABASE_URL.
start_throwaway_pg() {
  local out
  out=$(mktemp)
  exec 3> >(target/debug/hopngo-throwaway-pg >"$out")
  for _ in $(seq 1 120); do
    grep -q '^DATABASE_URL=' "$out" && break
    sleep 0.5
  done
  DATABASE_URL=$(sed -n 's/^DATABASE_URL=//p' "$out")
  rm -f "$out"
  if [ -z "$DATABASE_URL" ]; then
    echo "the throwaway PostgreSQL did not start" >&2
    return 1
  fi
  export DATABASE_URL
}

# Stops the cluster started by start_throwaway_pg.
stop_throwaway_pg() {
  exec 3>&-
  sleep 1
}

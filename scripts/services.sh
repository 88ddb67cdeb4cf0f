#!/usr/bin/env bash
# Makes the machine ready for the test suite, as `make test` expects it:
#
# - PostgreSQL on 127.0.0.1:5432, user postgres with trust authentication on loopback (the tests
#   connect to postgres://postgres@127.0.0.1:5432/postgres and create a database each);
# - NATS with JetStream on 127.0.0.1:4222 (store in /var/lib/nats-server);
# - the Python virtual environment with the packages the tests run (scripts/py_blake3.sh);
# - Chromium and its WebDriver (/usr/bin/chromedriver) for the console's browser tests, from
#   Debian's `chromium` and `chromium-driver` packages (a browser is never downloaded).
#
# What is missing is installed from Debian's packages (one `apt-get update`, then
# `apt-get install`), what is stopped is started, and trust authentication is added to
# pg_hba.conf when loopback connections as postgres ask for a password. Run again, it does
# nothing and prints nothing. Needs root (or sudo) only when it has something to install,
# configure or start.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
failed=0

say() { echo "services: $*" >&2; }
fail() {
  say "$*"
  failed=1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.2
  done
  fail "$name did not open port $port"
  return 1
}

# Runs a command as root: directly when root, else through sudo when there is one.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "needs root to run: $*"
    return 1
  fi
}

# The installed PostgreSQL major version with a cluster, or the newest installed one.
pg_version() {
  local version
  version=$(pg_lsclusters -h 2>/dev/null | awk '{ print $1 }' | sort -V | tail -n1)
  if [ -z "$version" ] && [ -d /usr/lib/postgresql ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
  fi
  echo "$version"
}

pg_installed() { command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(pg_version)" ]; }
nats_binary() { command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; }; }
python_ready() { command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }
trusted() { psql "postgres://postgres@127.0.0.1:5432/postgres" -w -Atqc 'SELECT 1' >/dev/null 2>&1; }
# Whether the NATS server on port $1 has JetStream (its INFO line says so).
jetstream() {
  local info
  info=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 5 line <&3 && printf '%s' "$line") 2>/dev/null)
  [[ $info == *'"jetstream":true'* ]]
}

# ------------------------------------------------------------------ install what is missing

missing=()
if ! port_open 5432 && ! pg_installed; then
  missing+=(postgresql)
fi
# The executor's tests also run servers of their own from /usr/sbin/nats-server.
if [ ! -x /usr/sbin/nats-server ]; then
  missing+=(nats-server)
fi
if ! python_ready; then
  missing+=(python3 python3-venv)
fi
# The console's browser tests drive Debian's Chromium through /usr/bin/chromedriver.
if [ ! -x /usr/bin/chromedriver ]; then
  missing+=(chromium chromium-driver)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    fail "could not install ${missing[*]}"
  fi
fi

# ------------------------------------------------------------------ PostgreSQL

if ! port_open 5432 && pg_installed; then
  version=$(pg_version)
  # The package creates the main cluster; an installation told not to has none yet.
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
    say "creating the PostgreSQL $version cluster"
    as_root pg_createcluster --port 5432 "$version" main >/dev/null || fail "pg_createcluster failed"
  fi
  # A cluster its package (or systemd) is starting right now only needs waiting for.
  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online" { found = 1 } END { exit !found }'; then
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || fail "PostgreSQL did not start"
  fi
  wait_for PostgreSQL 5432
fi

# Trust for postgres on loopback, as the tests connect: first in pg_hba.conf, so that it wins
# over the package's password rules below it.
if port_open 5432 && command -v psql >/dev/null 2>&1 && ! trusted; then
  hba=/etc/postgresql/$(pg_version)/main/pg_hba.conf
  marker="# countersign tests: trust postgres on loopback (scripts/services.sh)"
  if [ -f "$hba" ] && ! as_root grep -qF "$marker" "$hba"; then
    say "trusting postgres on loopback in $hba"
    edited=$(mktemp)
    if { printf '%s\n' "$marker" 'host all postgres 127.0.0.1/32 trust' 'host all postgres ::1/128 trust' &&
      as_root cat "$hba"; } >"$edited" &&
      as_root install -m 640 -o postgres -g postgres "$edited" "$hba"; then
      as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload || fail "PostgreSQL did not reload"
    else
      fail "could not edit $hba"
    fi
    rm -f "$edited"
  fi
  for _ in $(seq 1 50); do
    trusted && break
    sleep 0.1
  done
  trusted || fail "PostgreSQL on 127.0.0.1:5432 refuses postgres without a password"
fi

# ------------------------------------------------------------------ NATS with JetStream

nats=$(nats_binary)
if ! port_open 4222 && [ -n "$nats" ]; then
  say "starting NATS with JetStream"
  as_root mkdir -p /var/lib/nats-server || fail "could not create /var/lib/nats-server"
  as_root start-stop-daemon --start --oknodo --background --exec "$nats" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log ||
    fail "nats-server did not start"
  wait_for NATS 4222
fi
# Debian's package runs a systemd service from /etc/nats-server.conf, without JetStream.
if port_open 4222 && ! jetstream 4222; then
  conf=/etc/nats-server.conf
  marker="# countersign tests: JetStream (scripts/services.sh)"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nats-server &&
    [ -f "$conf" ] && ! grep -qF "$marker" "$conf"; then
    say "enabling JetStream in $conf"
    if as_root mkdir -p /var/lib/nats-server &&
      as_root chown nats:nats /var/lib/nats-server &&
      printf '\n%s\njetstream {\n  store_dir: "/var/lib/nats-server"\n}\n' "$marker" |
      as_root tee -a "$conf" >/dev/null &&
      as_root systemctl restart nats-server; then
      wait_for NATS 4222
    else
      fail "could not enable JetStream in $conf"
    fi
  fi
  for _ in $(seq 1 50); do
    jetstream 4222 && break
    sleep 0.1
  done
  jetstream 4222 || fail "the NATS server on 127.0.0.1:4222 has no JetStream (start it with -js)"
fi

# ------------------------------------------------------------------ the tests' Python packages

if python_ready; then
  "$here/py_blake3.sh" || fail "could not create the Python virtual environment"
fi

port_open 5432 || fail "nothing listens on 127.0.0.1:5432 (PostgreSQL)"
port_open 4222 || fail "nothing listens on 127.0.0.1:4222 (NATS)"
exit "$failed"

#!/usr/bin/env bash
# Starts the local PostgreSQL and NATS (JetStream) that the tests use, when they are installed
# but not running. Does nothing for a service that is already up or not installed.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 50); do
    port_open "$port" && return 0
    sleep 0.2
  done
  echo "services: $name did not open port $port" >&2
  return 1
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_for PostgreSQL 5432
  fi
fi

if ! port_open 4222; then
  if [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1; then
    echo "services: starting NATS with JetStream" >&2
    nats=$(command -v nats-server || echo /usr/sbin/nats-server)
    mkdir -p /var/lib/nats-server 2>/dev/null || true
    start-stop-daemon --start --oknodo --background --exec "$nats" -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_for NATS 4222
  fi
fi
exit 0

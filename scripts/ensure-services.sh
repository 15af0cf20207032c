#!/usr/bin/env bash
# Start the local PostgreSQL and NATS JetStream servers that the integration tests use,
# if they are installed and not running. Tests skip (with a reason) what is still absent.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  echo "ensure-services: port $1 still closed" >&2
}

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "ensure-services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  wait_port 5432
fi

if ! port_open 4222 && [ -x /usr/sbin/nats-server ]; then
  echo "ensure-services: starting NATS JetStream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || true
  wait_port 4222
fi
exit 0

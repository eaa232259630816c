#!/usr/bin/env bash
# Publish rate with many MQTT subscribers, each on a topic of its own: runs
# `rosetta-bench mqtt-many-subscribers` against Rosetta, Mosquitto and RabbitMQ (rabbitmq_mqtt)
# in one run, each on a freshly started broker, and prints the median of RUNS runs per broker.
#
#   benches/compare-many-subscribers.sh [results.jsonl]
#
# Needs a release build (cargo build --release -p rosetta -p rosetta-bench) and the Debian
# packages mosquitto and rabbitmq-server (installed with apt-get when missing). Environment
# knobs: N (subscribers; default below), PUBLISHERS (4), DURATION (seconds of publishing, 20),
# QOS (1), INFLIGHT (100 per publisher), SIZE (payload bytes, 64), RUNS (1),
# BROKERS ("rosetta mosquitto rabbitmq"), PROFILE (release).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-many-subscribers.jsonl}

# Every connection is one open file on both sides, so the open-files limit bounds N: take the
# hard limit for this shell, which the generator and the brokers inherit.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]]; then hard=1048576; fi
ulimit -n "$hard"
# RabbitMQ 3.10 keeps 100 descriptors for itself and allows sockets up to 90% of the rest;
# stay 500 under that so that all three brokers can take the same N.
fits=$(( ((hard - 100) * 9 / 10 - 500) / 1000 * 1000 ))
n=${N:-$(( fits < 100000 ? fits : 100000 ))}
if (( n > hard - 200 )); then
  echo "N=$n needs more open files than the hard limit ($hard) allows" >&2
  exit 1
fi
publishers=${PUBLISHERS:-4}
duration=${DURATION:-20}
qos=${QOS:-1}
inflight=${INFLIGHT:-100}
size=${SIZE:-64}
runs=${RUNS:-1}
brokers=${BROKERS:-"rosetta mosquitto rabbitmq"}
profile=${PROFILE:-release}
bench=$here/target/$profile/rosetta-bench
rosetta=$here/target/$profile/rosetta
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"

for b in $brokers; do
  case $b in
    mosquitto) command -v mosquitto > /dev/null || apt-get install -y mosquitto ;;
    rabbitmq) command -v rabbitmq-server > /dev/null || apt-get install -y rabbitmq-server ;;
  esac
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# No cap on connections (the default max_connections is 10,000) and no memory alarm;
# max_queues and max_bindings (1,000,000 each) are far above N.
start_rosetta_many() { start_rosetta "$rosetta" mqtt "max_connections = 0"; }

start_mosquitto_many() {
  rm -rf "$work/mosquitto"; mkdir -p "$work/mosquitto"
  port=$(free_port)
  # Defaults otherwise (as in compare-mqtt.sh): no persistence, set_tcp_nodelay false.
  cat > "$work/mosquitto/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_connections -1
log_dest stderr
log_type error
log_type warning
CONF
  mosquitto -c "$work/mosquitto/mosquitto.conf" > "$work/mosquitto/log" 2>&1 &
  broker_pid=$!
  wait_for_port "$port" || { cat "$work/mosquitto/log" >&2; exit 1; }
}

start_rabbitmq_many() {
  # The node's distribution port is the AMQP port + 20000, so the AMQP port is a fixed low one.
  local amqp=5697 mqtt
  mqtt=$(free_port)
  export ERL_CRASH_DUMP=$work/erl_crash.dump RABBITMQ_NOFILE=$hard
  # The memory alarm at 80% of RAM instead of 40%, so that it does not block publishers
  # while N connections are open; the MQTT listener on loopback only.
  start_rabbitmq "rosetta-bench-many@localhost" "$amqp" "$mqtt" rabbitmq_mqtt \
    "$(printf '%s\n' "mqtt.listeners.tcp.1 = 127.0.0.1:$mqtt" \
      "vm_memory_high_watermark.relative = 0.8" \
      "log.file.level = warning")"
}

run() { # broker
  local broker=$1 status=0
  "start_${broker}_many"
  echo "$broker: pid $broker_pid, port $port, $n subscribers, $(uptime)" >&2
  "$bench" mqtt-many-subscribers --subscribers "$n" -p "$publishers" --duration "$duration" \
    --qos "$qos" --inflight "$inflight" -s "$size" --port "$port" --username guest --password guest \
    --label "$broker/n$n" --broker-pid "$broker_pid" | tee -a "$out" || status=$?
  if (( status != 0 )); then echo "$broker: rosetta-bench failed with status $status" >&2; fi
  # A broker closing thousands of connections may take minutes to exit (RabbitMQ does):
  # after SIGTERM and a minute's grace, SIGKILL; nothing of it is kept for the next run.
  kill "$broker_pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$broker_pid" 2>/dev/null || true
  stop_broker
}

echo "start: $(uptime); open files: $hard; subscribers: $n" >&2
for r in $(seq "$runs"); do
  for b in $brokers; do run "$b"; done
done
echo "end: $(uptime)" >&2

python3 "$here/benches/medians.py" many-subscribers "$out"

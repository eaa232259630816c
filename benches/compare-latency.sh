#!/usr/bin/env bash
# Low load, side by side in one run: end-to-end latency and broker CPU per message at a fixed
# rate of small messages, and the CPU that idle connections cost.
#
#   mqtt   MQTT 3.1.1 QoS 1, 1 publisher -> 1 subscriber    Rosetta vs Mosquitto
#   amqp   AMQP 0-9-1, 1 publisher -> 1 consumer, manual acks  Rosetta vs RabbitMQ
#   stomp  STOMP 1.2, 1 producer -> 1 consumer, client-individual acks  Rosetta vs RabbitMQ (STOMP plugin)
#   idle   IDLE MQTT connections held HOLD seconds: broker CPU over the hold  Rosetta vs Mosquitto
#
#   benches/compare-latency.sh [results.jsonl]
#
# Every run starts a fresh broker; the brokers alternate scenario by scenario, RUNS times, and
# the medians are printed at the end. Needs: a release build (cargo build --release -p rosetta
# -p rosetta-bench) and the Debian packages mosquitto and rabbitmq-server (which ships
# rabbitmq_stomp). Environment knobs: RUNS (3), RATE (messages per second, 1000), DURATION
# (seconds of traffic per run, 30), SIZE (body bytes, 16), IDLE (idle connections, 10000), HOLD
# (seconds, 10), SCENARIOS ("mqtt amqp stomp idle"), PROFILE (release; debug to try the script),
# BROKER_CPUS and GENERATOR_CPUS (taskset CPU lists, unset: both share every CPU). On a small
# machine `BROKER_CPUS=0 GENERATOR_CPUS=1` keeps the generator from preempting the broker: its
# threads, woken by the broker's writes, are otherwise placed on the writer's CPU and run before
# the broker finishes what it was doing, which is not what clients on other machines cost.
set -euo pipefail
# 10,000 idle connections need more descriptors than the usual 1024, on both sides; the
# brokers inherit this limit. Where the hard limit is lower, take the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-latency-results.jsonl}
runs=${RUNS:-3}
rate=${RATE:-1000}
duration=${DURATION:-30}
size=${SIZE:-16}
idle=${IDLE:-10000}
hold=${HOLD:-10}
scenarios=${SCENARIOS:-"mqtt amqp stomp idle"}
profile=${PROFILE:-release}
bench=$here/target/$profile/rosetta-bench
on_generator_cpus=()
if [[ -n ${GENERATOR_CPUS:-} ]]; then on_generator_cpus=(taskset -c "$GENERATOR_CPUS"); fi
rosetta=$here/target/$profile/rosetta
n=$((rate * duration))
# RabbitMQ's ports: AMQP (also needed, unused, by the STOMP runs) and STOMP.
rabbit_amqp=5697
rabbit_stomp=61698
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"
# How the generator reaches the broker just started.
target=()

start_rosetta_mqtt() { start_rosetta "$rosetta" mqtt "max_connections = 0"; target=(--port "$port"); }
start_mosquitto_mqtt() { start_mosquitto; target=(--port "$port"); }
start_rosetta_amqp() { start_rosetta "$rosetta" amqp; target=(--uri "amqp://guest:guest@127.0.0.1:$port/%2f"); }
start_rabbitmq_amqp() {
  start_rabbitmq benchlat@localhost "$rabbit_amqp" "$rabbit_amqp"
  target=(--uri "amqp://guest:guest@127.0.0.1:$rabbit_amqp/%2f")
}
start_rosetta_stomp() { start_rosetta "$rosetta" stomp; target=(--uri "stomp://guest:guest@127.0.0.1:$port/%2f"); }
start_rabbitmq_stomp() {
  start_rabbitmq benchlat@localhost "$rabbit_amqp" "$rabbit_stomp" rabbitmq_stomp "stomp.listeners.tcp.1 = 127.0.0.1:$rabbit_stomp"
  target=(--uri "stomp://guest:guest@127.0.0.1:$rabbit_stomp/%2f")
}

run() { # protocol broker scenario args...
  local protocol=$1 broker=$2 scenario=$3; shift 3
  "start_${broker}_${protocol}"
  "${on_generator_cpus[@]}" "$bench" "$@" "${target[@]}" --label "$scenario/$broker" --broker-pid "$broker_pid" | tee -a "$out"
  stop_broker
}

# How busy the machine was, for the record: the numbers mean little if something else ran.
echo "start: $(uptime); broker CPUs: ${BROKER_CPUS:-all}, generator CPUs: ${GENERATOR_CPUS:-all}" >&2
for _ in $(seq "$runs"); do
  for s in $scenarios; do
    case $s in
      mqtt|idle) brokers="rosetta mosquitto" ;;
      amqp|stomp) brokers="rosetta rabbitmq" ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    for b in $brokers; do
      case $s in
        mqtt)  run mqtt "$b" "$s" mqtt-throughput -n "$n" -s "$size" --qos 1 --rate "$rate" ;;
        amqp)  run amqp "$b" "$s" latency -n "$n" -s "$size" --prefetch 100 --rate "$rate" ;;
        stomp) run stomp "$b" "$s" stomp-throughput -n "$n" -s "$size" --prefetch 100 --rate "$rate" ;;
        idle)  run mqtt "$b" "$s" mqtt-idle --connections "$idle" --hold "$hold" ;;
      esac
    done
  done
done
echo "end: $(uptime)" >&2

python3 "$here/benches/medians.py" latency "$out"

#!/usr/bin/env bash
# Runs the STOMP 1 -> 1 throughput scenarios against Rosetta and RabbitMQ's STOMP plugin, back
# to back on this machine, and prints the median of RUNS runs per scenario and broker.
#
#   benches/compare-stomp.sh [results.jsonl]
#
# Needs: a release build (cargo build --release -p rosetta -p rosetta-bench) and the Debian
# package rabbitmq-server (which ships rabbitmq_stomp). Environment knobs: RUNS (3), N (messages
# per run, 100000), BROKERS ("rosetta rabbitmq"), SCENARIOS ("transient persistent"),
# PROFILE (release).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-stomp-results.jsonl}
runs=${RUNS:-3}
n=${N:-100000}
brokers=${BROKERS:-"rosetta rabbitmq"}
scenarios=${SCENARIOS:-"transient persistent"}
profile=${PROFILE:-release}
bench=$here/target/$profile/rosetta-bench
rosetta=$here/target/$profile/rosetta
# RabbitMQ's ports: AMQP (unused, but the node needs one) and STOMP.
rabbit_amqp=5698
rabbit_stomp=61699
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"
uri=""

start_rosetta_stomp() { start_rosetta "$rosetta" stomp; uri="stomp://guest:guest@127.0.0.1:$port/%2f"; }
start_rabbitmq_stomp() {
  start_rabbitmq benchstomp@localhost "$rabbit_amqp" "$rabbit_stomp" rabbitmq_stomp "stomp.listeners.tcp.1 = 127.0.0.1:$rabbit_stomp"
  uri="stomp://guest:guest@127.0.0.1:$rabbit_stomp/%2f"
}

run() { # broker scenario args...
  local broker=$1 scenario=$2; shift 2
  "start_${broker}_stomp"
  "$bench" "$@" --uri "$uri" --label "stomp/$broker/$scenario" --broker-pid "$broker_pid" | tee -a "$out"
  stop_broker
}

for _ in $(seq "$runs"); do
  for b in $brokers; do
    for s in $scenarios; do
      case $s in
        transient)  run "$b" "$s" stomp-throughput -n "$n" -s 1024 --prefetch 100 --confirm 1000 ;;
        persistent) run "$b" "$s" stomp-throughput -n "$n" -s 1024 --prefetch 100 --confirm 1000 --persistent ;;
      esac
    done
  done
done

python3 "$here/benches/medians.py" stomp "$out"

#!/usr/bin/env bash
# Runs the same rosetta-bench scenarios against Rosetta and RabbitMQ, back to back on this
# machine, and prints the median of RUNS runs per scenario and broker.
#
#   benches/compare.sh [results.jsonl]
#
# Needs: a release build (cargo build --release -p rosetta -p rosetta-bench) and the Debian
# package rabbitmq-server. Environment knobs: RUNS (3), N (messages per run, 200000),
# BACKLOG (2000000), BROKERS ("rosetta rabbitmq"), SCENARIOS (all: transient persistent
# persistent4 fanout latency sweep backlog).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-results.jsonl}
runs=${RUNS:-3}
n=${N:-200000}
backlog=${BACKLOG:-2000000}
brokers=${BROKERS:-"rosetta rabbitmq"}
scenarios=${SCENARIOS:-"transient persistent persistent4 fanout latency sweep backlog"}
bench=$here/target/release/rosetta-bench
rosetta=$here/target/release/rosetta
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"
uri=""

start_rosetta_amqp() { start_rosetta "$rosetta" amqp; uri="amqp://guest:guest@127.0.0.1:$port/%2f"; }
start_rabbitmq_amqp() { start_rabbitmq bench@localhost 5699 5699; uri="amqp://guest:guest@127.0.0.1:5699/%2f"; }

run() { # broker scenario args...
  local broker=$1 scenario=$2; shift 2
  "start_${broker}_amqp"
  "$bench" "$@" --uri "$uri" --label "$broker/$scenario" --broker-pid "$broker_pid" | tee -a "$out"
  stop_broker
}

for r in $(seq "$runs"); do
  for b in $brokers; do
    for s in $scenarios; do
      case $s in
        transient)   run "$b" "$s" throughput -n "$n" -s 1024 --prefetch 100 ;;
        persistent)  run "$b" "$s" throughput -n "$n" -s 1024 --prefetch 100 --persistent --confirm 1000 ;;
        persistent4) run "$b" "$s" throughput -n "$n" -s 1024 --prefetch 100 --persistent --confirm 1000 -p 4 -c 4 ;;
        fanout)      run "$b" "$s" fanout -n $((n / 2)) -s 256 --prefetch 100 --queues 10 ;;
        latency)     run "$b" "$s" latency -n 10000 -s 1024 --prefetch 100 --rate 1000 ;;
        # Group commit: P publishers that each wait for every confirm (one in flight, as a
        # blocking client does), one consumer. msgs/s grows with P only if fsyncs are shared.
        sweep)       for p in 1 2 4 8 16 32; do
                       run "$b" "$s-p$(printf %02d "$p")" throughput -n $((2000 * p)) -s 1024 --prefetch 100 --persistent --confirm 1 -p "$p" -c 1
                     done ;;
        backlog)     [[ $r -eq 1 ]] && run "$b" "$s" backlog -n "$backlog" -s 1024 --prefetch 500 --persistent --confirm 1000 --timeout 1200 ;;
      esac
    done
  done
done

python3 "$here/benches/medians.py" amqp "$out"

#!/usr/bin/env bash
# Runs the MQTT scenarios of rosetta-bench against Rosetta and Mosquitto, back to back on this
# machine, each run on a freshly started broker, and prints the median of RUNS runs per scenario
# and broker.
#
#   benches/compare-mqtt.sh [results.jsonl]
#
# Needs: a release build (cargo build --release -p rosetta -p rosetta-bench) and the Debian
# package mosquitto. Environment knobs: RUNS (3), N (messages per throughput run, 500000),
# FANOUT_N (messages per fan-out run, 20000), IDLE (idle connections, 10000),
# BROKERS ("rosetta mosquitto"; an entry NAME=PATH measures the Rosetta binary at PATH under the
# label NAME, to compare two builds in one run), SCENARIOS (all), PROFILE (release; debug to try
# the script).
set -euo pipefail
# 10,000 idle connections need more descriptors than the usual 1024, on both sides; the
# brokers inherit this limit. Where the hard limit is lower, take the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-mqtt-results.jsonl}
runs=${RUNS:-3}
n=${N:-500000}
fan_n=${FANOUT_N:-20000}
idle=${IDLE:-10000}
brokers=${BROKERS:-"rosetta mosquitto"}
scenarios=${SCENARIOS:-"qos0 qos1 qos0-fanin qos1-fanin qos1-persistent fanout0 fanout1 idle"}
profile=${PROFILE:-release}
bench=$here/target/$profile/rosetta-bench
rosetta=$here/target/$profile/rosetta
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"

# No cap on connections, for the idle-connection scenario.
start_rosetta_mqtt() { start_rosetta "$rosetta" mqtt "max_connections = 0"; }

start_mosquitto_mqtt() { start_mosquitto; }

run() { # broker scenario args...
  local broker=$1 scenario=$2; shift 2
  case $broker in
    *=*) start_rosetta "${broker#*=}" mqtt "max_connections = 0"; broker=${broker%%=*} ;;
    *) "start_${broker}_mqtt" ;;
  esac
  "$bench" "$@" --port "$port" --username guest --password guest --label "$broker/$scenario" --broker-pid "$broker_pid" | tee -a "$out"
  stop_broker
}

# How busy the machine was, for the record: the numbers mean little if something else ran.
echo "start: $(uptime)" >&2
# Brokers alternate scenario by scenario, so both meet the same load on a shared machine.
for r in $(seq "$runs"); do
  for s in $scenarios; do
    for b in $brokers; do
      case $s in
        qos0)            run "$b" "$s" mqtt-throughput -n "$n" -s 1024 --qos 0 --latency ;;
        qos1)            run "$b" "$s" mqtt-throughput -n "$n" -s 1024 --qos 1 --latency ;;
        qos0-fanin)      run "$b" "$s" mqtt-throughput -n "$n" -s 1024 --qos 0 -p 10 ;;
        qos1-fanin)      run "$b" "$s" mqtt-throughput -n "$n" -s 1024 --qos 1 -p 10 ;;
        qos1-persistent) run "$b" "$s" mqtt-throughput -n "$n" -s 1024 --qos 1 --persistent-session --latency ;;
        fanout0)         run "$b" "$s" mqtt-fanout -n "$fan_n" -s 256 --qos 0 --fanout 100 ;;
        fanout1)         run "$b" "$s" mqtt-fanout -n "$fan_n" -s 256 --qos 1 --fanout 100 ;;
        idle)            run "$b" "$s" mqtt-idle --connections "$idle" --hold 5 ;;
      esac
    done
  done
done

echo "end: $(uptime)" >&2

python3 "$here/benches/medians.py" mqtt "$out"

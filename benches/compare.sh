#!/usr/bin/env bash
# Runs the same rosetta-bench scenarios against Rosetta and RabbitMQ, back to back on this
# machine, and prints the median of RUNS runs per scenario and broker.
#
#   benches/compare.sh [results.jsonl]
#
# Needs: a release build (cargo build --release -p rosetta -p rosetta-bench) and the Debian
# package rabbitmq-server. Environment knobs: RUNS (3), N (messages per run, 200000),
# BACKLOG (2000000), BROKERS ("rosetta rabbitmq"), SCENARIOS (all).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-results.jsonl}
runs=${RUNS:-3}
n=${N:-200000}
backlog=${BACKLOG:-2000000}
brokers=${BROKERS:-"rosetta rabbitmq"}
scenarios=${SCENARIOS:-"transient persistent persistent4 fanout latency backlog"}
bench=$here/target/release/rosetta-bench
rosetta=$here/target/release/rosetta
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

broker_pid=""
uri=""

start_rosetta() {
  rm -rf "$work/rosetta"; mkdir -p "$work/rosetta"
  cat > "$work/rosetta/broker.toml" <<TOML
[storage]
path = "$work/rosetta/data"
[amqp]
listen = "127.0.0.1:0"
[mqtt]
enabled = false
[stomp]
enabled = false
[http]
enabled = false
[limits]
memory_limit = 0
TOML
  "$rosetta" --config "$work/rosetta/broker.toml" > "$work/rosetta/log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 100); do
    port=$(grep -o 'protocol=amqp addr=127.0.0.1:[0-9]*' "$work/rosetta/log" | sed 's/.*://' || true)
    [[ -n $port ]] && break
    sleep 0.1
  done
  uri="amqp://guest:guest@127.0.0.1:$port/%2f"
}

start_rabbitmq() {
  rm -rf "$work/rabbit"; mkdir -p "$work/rabbit"
  echo "[]." > "$work/rabbit/enabled_plugins"
  # The Debian package's scripts run the node as the rabbitmq user.
  chmod 755 "$work"; chown -R rabbitmq:rabbitmq "$work/rabbit" 2>/dev/null || true
  export RABBITMQ_NODENAME=bench@localhost RABBITMQ_NODE_PORT=5699 \
    RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" RABBITMQ_LOG_BASE="$work/rabbit/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbit/enabled_plugins" RABBITMQ_PID_FILE="$work/rabbit/pid"
  rabbitmq-server > "$work/rabbit/out" 2>&1 &
  # Wait for the AMQP port rather than with rabbitmqctl, which needs the node's cookie.
  for _ in $(seq 600); do
    (exec 3<>/dev/tcp/127.0.0.1/5699) 2>/dev/null && break
    sleep 0.2
  done
  # The node writes its OS pid (the beam process, whose CPU and memory we sample) here.
  for _ in $(seq 100); do [[ -s $work/rabbit/pid ]] && break; sleep 0.1; done
  broker_pid=$(cat "$work/rabbit/pid")
  uri="amqp://guest:guest@127.0.0.1:5699/%2f"
}

stop_broker() {
  [[ -z $broker_pid ]] && return 0
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  while kill -0 "$broker_pid" 2>/dev/null; do sleep 0.2; done
  broker_pid=""
}

run() { # broker scenario args...
  local broker=$1 scenario=$2; shift 2
  "start_$broker"
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
        backlog)     [[ $r -eq 1 ]] && run "$b" "$s" backlog -n "$backlog" -s 1024 --prefetch 500 --persistent --confirm 1000 --timeout 1200 ;;
      esac
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = {}
for r in rows:
    groups.setdefault(r["label"], []).append(r)
print(f"{'broker/scenario':28} {'runs':>4} {'msgs/s':>9} {'cpu us/msg':>10} {'p50 us':>7} {'p99 us':>7} {'pub/s':>8} {'drain/s':>8} {'peak RSS MiB':>12} {'lost':>5} {'dups':>5}")
for label, rs in sorted(groups.items()):
    med = lambda k: statistics.median([r[k] for r in rs if k in r]) if any(k in r for r in rs) else float("nan")
    lat = lambda k: statistics.median([r["latency_us"][k] for r in rs if "latency_us" in r]) if any("latency_us" in r for r in rs) else float("nan")
    print(f"{label:28} {len(rs):4} {med('deliveries_per_s'):9.0f} {med('broker_cpu_us_per_msg'):10.1f} {lat('p50'):7.0f} {lat('p99'):7.0f} {med('publish_per_s'):8.0f} {med('drain_per_s'):8.0f} {med('broker_peak_rss_bytes')/2**20:12.0f} {sum(r['lost'] for r in rs):5} {sum(r['duplicates'] for r in rs):5}")
PY

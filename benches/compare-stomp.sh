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

broker_pid=""
uri=""

start_rosetta() {
  rm -rf "$work/rosetta"; mkdir -p "$work/rosetta"
  cat > "$work/rosetta/broker.toml" <<TOML
[storage]
path = "$work/rosetta/data"
[amqp]
enabled = false
[mqtt]
enabled = false
[stomp]
listen = "127.0.0.1:0"
[http]
enabled = false
[limits]
memory_limit = 0
TOML
  "$rosetta" --config "$work/rosetta/broker.toml" > "$work/rosetta/log" 2>&1 &
  broker_pid=$!
  local port=""
  for _ in $(seq 100); do
    port=$(grep -o 'protocol=stomp addr=127.0.0.1:[0-9]*' "$work/rosetta/log" | sed 's/.*://' || true)
    [[ -n $port ]] && break
    sleep 0.1
  done
  [[ -n $port ]] || { cat "$work/rosetta/log" >&2; echo "rosetta did not open its STOMP listener" >&2; exit 1; }
  uri="stomp://guest:guest@127.0.0.1:$port/%2f"
}

start_rabbitmq() {
  rm -rf "$work/rabbit"; mkdir -p "$work/rabbit"
  echo "[rabbitmq_stomp]." > "$work/rabbit/enabled_plugins"
  echo "stomp.listeners.tcp.1 = 127.0.0.1:$rabbit_stomp" > "$work/rabbit/rabbitmq.conf"
  # The Debian package's scripts run the node as the rabbitmq user.
  chmod 755 "$work"; chown -R rabbitmq:rabbitmq "$work/rabbit" 2>/dev/null || true
  export RABBITMQ_NODENAME=benchstomp@localhost RABBITMQ_NODE_PORT=$rabbit_amqp \
    RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" RABBITMQ_LOG_BASE="$work/rabbit/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$work/rabbit/enabled_plugins" RABBITMQ_PID_FILE="$work/rabbit/pid" \
    RABBITMQ_CONFIG_FILE="$work/rabbit/rabbitmq.conf"
  rabbitmq-server > "$work/rabbit/out" 2>&1 &
  # Wait for the STOMP port, which opens once the plugin has started.
  local up=""
  for _ in $(seq 600); do
    (exec 3<>/dev/tcp/127.0.0.1/$rabbit_stomp) 2>/dev/null && { up=1; break; }
    sleep 0.2
  done
  [[ -n $up ]] || { cat "$work/rabbit/out" >&2; echo "RabbitMQ did not open its STOMP port" >&2; exit 1; }
  # The node writes its OS pid (the beam process, whose CPU and memory we sample) here.
  for _ in $(seq 100); do [[ -s $work/rabbit/pid ]] && break; sleep 0.1; done
  broker_pid=$(cat "$work/rabbit/pid")
  uri="stomp://guest:guest@127.0.0.1:$rabbit_stomp/%2f"
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

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
groups = {}
for r in rows:
    groups.setdefault(r["label"], []).append(r)
print(f"{'broker/scenario':32} {'runs':>4} {'msgs/s':>9} {'all runs':>24} {'cpu us/msg':>10} {'peak RSS MiB':>12} {'lost':>5} {'dups':>5}")
for label, rs in sorted(groups.items()):
    med = lambda k: statistics.median([r[k] for r in rs if k in r]) if any(k in r for r in rs) else float("nan")
    each = "/".join(str(r["deliveries_per_s"]) for r in rs)
    print(f"{label:32} {len(rs):4} {med('deliveries_per_s'):9.0f} {each:>24} {med('broker_cpu_us_per_msg'):10.1f} {med('broker_peak_rss_bytes')/2**20:12.0f} {sum(r['lost'] for r in rs):5} {sum(r['duplicates'] for r in rs):5}")
PY

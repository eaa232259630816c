#!/usr/bin/env bash
# What clients that stop reading their sockets, and keep writing to them, cost everyone else:
# MQTT QoS 1 latency and broker CPU per message at a fixed rate, with and without STALLED such
# clients beside the publisher and subscriber measured (benches/stalled-readers.py).
#
#   benches/stalled-readers.sh
#
# Each run starts a fresh broker; the runs alternate between brokers and between the two
# settings, RUNS times. Needs a release build (cargo build --release -p rosetta -p
# rosetta-bench). Knobs: RUNS (3), RATE (1000), N (messages per run, 10000), STALLED (64),
# BROKERS ("rosetta"; an entry NAME=PATH measures the Rosetta binary at PATH under NAME, to
# compare two builds; `mosquitto` measures Debian's Mosquitto).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
rate=${RATE:-1000}
n=${N:-10000}
stalled=${STALLED:-64}
brokers=${BROKERS:-rosetta}
bench=$here/target/release/rosetta-bench
work=$(mktemp -d)
readers=""
trap '[[ -n $readers ]] && kill "$readers" 2>/dev/null; [[ -n ${broker_pid:-} ]] && kill "$broker_pid" 2>/dev/null; rm -rf "$work"' EXIT
source "$here/benches/brokers.sh"
echo "broker setting run: deliveries/s broker-CPU-us/msg lost p50-us p99-us"
for r in $(seq "$runs"); do
  for b in $brokers; do
    for setting in quiet stalled; do
      case $b in
        mosquitto) start_mosquitto ;;
        *=*) start_rosetta "${b#*=}" mqtt ;;
        *) start_rosetta "$here/target/release/rosetta" mqtt ;;
      esac
      if [[ $setting == stalled ]]; then
        python3 "$here/benches/stalled-readers.py" "$port" "$stalled" 600 > "$work/readers" 2>&1 &
        readers=$!
        for _ in $(seq 600); do grep -q stalled "$work/readers" && break; sleep 0.1; done
        grep -q stalled "$work/readers" || { cat "$work/readers" >&2; exit 1; }
      fi
      result=$("$bench" mqtt-throughput --port "$port" -n "$n" -s 16 --qos 1 --rate "$rate" \
        --broker-pid "$broker_pid" --label "${b%%=*}-$setting" | tail -1)
      echo "${b%%=*} $setting $r: $(python3 -c 'import json, sys
d = json.loads(sys.argv[1]); l = d["latency_us"]
print(d["deliveries_per_s"], d["broker_cpu_us_per_msg"], d["lost"], l["p50"], l["p99"])' "$result")"
      if [[ -n $readers ]]; then kill "$readers" 2>/dev/null || true; wait "$readers" 2>/dev/null || true; readers=""; fi
      kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; broker_pid=""
    done
  done
done

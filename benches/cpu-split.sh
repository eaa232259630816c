#!/usr/bin/env bash
# Where a broker's CPU goes per message at low load: the kernel, the C library, the async
# runtime and the broker's own code, for Rosetta and Mosquitto side by side in one run.
#
#   benches/cpu-split.sh [results.jsonl]
#
# Each run starts a fresh broker, samples it with `perf record -e cpu-clock` (a software clock,
# so it works where a virtual machine exposes no hardware counters) while `rosetta-bench
# mqtt-throughput` sends QoS 1 messages at a fixed rate, and sorts the samples by where they
# landed (benches/cpu_split.py). The split is what the kernel's user/system figures cannot
# give: those are charged a whole tick at a time to whichever mode the tick interrupts, while
# these samples come FREQ times per second of the broker's CPU time. Sampling adds its own
# cost to every broker alike, so compare within a run, not with compare-latency.sh's figures.
#
# Needs: a release build (cargo build --release -p rosetta -p rosetta-bench), Debian's
# mosquitto and linux-perf. Knobs: RUNS (3), RATE (1000), N (messages per run, 10000), SIZE
# (16), FREQ (samples per second, 20000), BROKERS ("rosetta mosquitto"; an entry NAME=PATH
# measures the Rosetta binary at PATH under the label NAME, to compare two builds in one run),
# ROSETTA (the binary `rosetta` stands for; target/release/rosetta), BROKER_CPUS and
# GENERATOR_CPUS (taskset CPU lists, as in compare-latency.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-cpu-split.jsonl}
runs=${RUNS:-3}
rate=${RATE:-1000}
n=${N:-10000}
size=${SIZE:-16}
freq=${FREQ:-20000}
brokers=${BROKERS:-"rosetta mosquitto"}
rosetta=${ROSETTA:-$here/target/release/rosetta}
bench=$here/target/release/rosetta-bench
on_generator_cpus=()
if [[ -n ${GENERATOR_CPUS:-} ]]; then on_generator_cpus=(taskset -c "$GENERATOR_CPUS"); fi
command -v perf > /dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 2; }
work=$(mktemp -d)
perf_pid=""
trap '[[ -n $perf_pid ]] && kill -INT "$perf_pid" 2>/dev/null; stop_broker; rm -rf "$work"' EXIT
: > "$out"
source "$here/benches/brokers.sh"

echo "start: $(uptime); broker CPUs: ${BROKER_CPUS:-all}, generator CPUs: ${GENERATOR_CPUS:-all}" >&2
for _ in $(seq "$runs"); do
  for b in $brokers; do
    case $b in
      rosetta) start_rosetta "$rosetta" mqtt "max_connections = 0" ;;
      mosquitto) start_mosquitto ;;
      *=*) start_rosetta "${b#*=}" mqtt "max_connections = 0"; b=${b%%=*} ;;
      *) echo "unknown broker $b" >&2; exit 2 ;;
    esac
    perf record -q -e cpu-clock -F "$freq" -p "$broker_pid" -o "$work/perf.data" 2> "$work/perf.log" &
    perf_pid=$!
    # perf writes its header once it is attached; start the traffic only then.
    for _ in $(seq 100); do [[ -s $work/perf.data ]] && break; sleep 0.05; done
    "${on_generator_cpus[@]}" "$bench" mqtt-throughput -n "$n" -s "$size" --qos 1 --rate "$rate" \
      --port "$port" --label "mqtt/$b" --broker-pid "$broker_pid" > "$work/run.json"
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf_pid=""
    python3 "$here/benches/cpu_split.py" "$work/perf.data" "$work/run.json" | tee -a "$out"
    stop_broker
  done
done
echo "end: $(uptime)" >&2

python3 "$here/benches/medians.py" cpu-split "$out"

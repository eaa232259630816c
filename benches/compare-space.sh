#!/usr/bin/env bash
# Disk space given back: a persistent backlog published, drained and acknowledged, with the
# broker's data directory measured after publishing, once drained and after the broker has
# been idle; then steady churn through one queue with the directory and the queue depth
# sampled as it goes.
#
#   benches/compare-space.sh [results.jsonl]
#
# Needs a release build (cargo build --release -p rosetta -p rosetta-bench). Environment
# knobs: BACKLOG (600000), CHURN (3000000, 0 to skip), ROSETTA (the broker binary to measure,
# by default target/release/rosetta; point it at another build for an A/B).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/target/bench-space.jsonl}
backlog=${BACKLOG:-600000}
churn=${CHURN:-3000000}
bench=$here/target/release/rosetta-bench
rosetta=${ROSETTA:-$here/target/release/rosetta}
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
: > "$out"

source "$here/benches/brokers.sh"

start_rosetta "$rosetta" amqp
uri="amqp://guest:guest@127.0.0.1:$port/%2f"
"$bench" backlog -n "$backlog" -s 1024 --prefetch 500 --persistent --confirm 1000 --timeout 1200 \
  --data-dir "$work/rosetta/data" --settle 12 \
  --uri "$uri" --label "rosetta/backlog-space" --broker-pid "$broker_pid" | tee -a "$out"
du -sh "$work/rosetta/data"/* | sed 's/^/after the backlog: /' >&2
stop_broker

if [[ $churn -gt 0 ]]; then
  start_rosetta "$rosetta" amqp
  uri="amqp://guest:guest@127.0.0.1:$port/%2f"
  "$bench" churn -n "$churn" -s 1024 --persistent --confirm 1000 --prefetch 200 \
    --data-dir "$work/rosetta/data" --sample-every 250000 \
    --uri "$uri" --label "rosetta/churn" --broker-pid "$broker_pid" | tee -a "$out"
  du -sh "$work/rosetta/data"/* | sed 's/^/after the churn: /' >&2
  stop_broker
fi

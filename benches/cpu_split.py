#!/usr/bin/env python3
"""Sorts a broker's CPU samples by where they landed, per message (benches/cpu-split.sh).

    benches/cpu_split.py split perf.data run.json   one JSON line: the run's report plus
                                                    `split_us_per_msg`
    benches/cpu_split.py medians results.jsonl      the median of each part per broker

The parts: `kernel` (samples in kernel mode), `c_libraries` (the C library, the vDSO's clock
and any other shared C library the broker loads), `runtime` (tokio, mio and the lock and waker
crates under them: what an event loop costs in Rosetta; Mosquitto's loop is its own code) and
`broker` (everything else in the broker's binary: its own code, the standard library and the
codec crates). A sample of the cpu-clock event is one period of CPU time in nanoseconds.
"""

import json
import re
import statistics
import subprocess
import sys

RUNTIME_CRATES = {"tokio", "mio", "parking_lot", "parking_lot_core", "futures_core", "futures_util"}
C_LIBRARIES = re.compile(r"^(\[vdso\]|lib[\w+-]*\.so[.\d]*|ld-linux[\w.-]*)$")
# One line of `perf report -F period,dso,sym`: the period, the object, then [k] or [.] and the symbol.
LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+\[(.)\]\s+(.*)$")
CRATE = re.compile(r"^<*([A-Za-z_][A-Za-z0-9_]*)::")
PARTS = ("kernel", "c_libraries", "runtime", "broker")


def part(dso, mode, symbol):
    if mode == "k":
        return "kernel"
    if C_LIBRARIES.match(dso):
        return "c_libraries"
    crate = CRATE.match(symbol)
    if crate and crate.group(1) in RUNTIME_CRATES:
        return "runtime"
    return "broker"


def split(perf_data, run_json):
    with open(run_json) as f:
        run = json.loads(f.read())
    report = subprocess.run(
        ["perf", "report", "-i", perf_data, "--no-children", "-g", "none", "--stdio",
         "--sort", "dso,sym", "-F", "period,dso,sym"],
        capture_output=True, text=True, check=True).stdout
    ns = dict.fromkeys(PARTS, 0)
    for line in report.splitlines():
        m = LINE.match(line)
        if m:
            ns[part(m.group(2), m.group(3), m.group(4))] += int(m.group(1))
    messages = max(run.get("received", 0), 1)
    us = {k: round(v / 1000 / messages, 2) for k, v in ns.items()}
    us["total"] = round(sum(ns.values()) / 1000 / messages, 2)
    run["split_us_per_msg"] = us
    print(json.dumps(run))


def medians(results):
    runs = {}
    with open(results) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "split_us_per_msg" in r:
                runs.setdefault(r["label"], []).append(r)
    cols = ("p50 µs", "p99 µs") + PARTS + ("total", "runs")
    print("| broker | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, rs in runs.items():
        med = lambda pick: statistics.median(pick(r) for r in rs)
        row = [f"{med(lambda r: r['latency_us']['p50']):.0f}", f"{med(lambda r: r['latency_us']['p99']):.0f}"]
        row += [f"{med(lambda r, k=k: r['split_us_per_msg'][k]):.1f}" for k in PARTS + ("total",)]
        row.append(str(len(rs)))
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "medians":
        medians(sys.argv[2])
    else:
        sys.exit(__doc__)

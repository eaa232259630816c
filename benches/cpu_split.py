#!/usr/bin/env python3
"""Sorts a broker's CPU samples by where they landed, per message (benches/cpu-split.sh).

    benches/cpu_split.py perf.data run.json   prints one JSON line: the run's report plus
                                              `split_us_per_msg` (medians: `medians.py cpu-split`)

The parts: `kernel` (samples in kernel mode), `c_libraries` (the C library, the vDSO's clock
and any other shared C library the broker loads), `runtime` (tokio, mio and the lock and waker
crates under them: what an event loop costs in Rosetta; Mosquitto's loop is its own code) and
`broker` (everything else in the broker's binary: its own code, the standard library and the
codec crates). A sample of the cpu-clock event is one period of CPU time in nanoseconds.
"""

import json
import re
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    split(sys.argv[1], sys.argv[2])

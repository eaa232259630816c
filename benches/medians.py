#!/usr/bin/env python3
"""Prints the median table of a comparison's results: one row per label (broker and
scenario), each number the median over the label's runs, losses and duplicates summed.

    benches/medians.py REPORT results.jsonl

REPORT names the script whose results these are: amqp (compare.sh), mqtt (compare-mqtt.sh),
stomp (compare-stomp.sh), latency (compare-latency.sh), many-subscribers
(compare-many-subscribers.sh), cpu-split (cpu-split.sh). Lines of the results file that are not JSON objects are skipped.
"""

import json
import statistics
import sys

MIB = 2**20


def median(rs, pick):
    """The median of what `pick` finds in each run; runs without it do not count."""
    values = [v for v in map(pick, rs) if v is not None]
    return statistics.median(values) if values else float("nan")


def key(k):
    return lambda r: r.get(k)


def latency(k):
    """A latency percentile, in microseconds."""
    return lambda r: (r.get("latency_us") or {}).get(k)


def in_ms(pick):
    def value(r):
        v = pick(r)
        return None if v is None else v / 1000

    return value


def field(k):
    return lambda rs: median(rs, key(k))


def lat(k):
    return lambda rs: median(rs, latency(k))


def lat_ms(k):
    """Each run's latency percentile in milliseconds, then their median."""
    return lambda rs: median(rs, in_ms(latency(k)))


def mib(k):
    """The median of a byte count, in MiB."""
    return lambda rs: median(rs, key(k)) / MIB


def split(k):
    """One part of a run's sampled CPU per message (benches/cpu_split.py)."""
    return lambda rs: median(rs, lambda r: (r.get("split_us_per_msg") or {}).get(k))


def total(k):
    return lambda rs: sum(r[k] for r in rs)


def each(pick, missing=None):
    """Every run's value, `/`-separated; a run without one shows `missing`, or is left out."""

    def values(rs):
        found = [pick(r) for r in rs]
        if missing is None:
            found = [v for v in found if v is not None]
        return "/".join(str(missing if v is None else v) for v in found)

    return values


def runs(rs):
    return len(rs)


def is_idle(rs):
    return rs[0]["scenario"] == "mqtt-idle"


def not_idle(rs):
    return not is_idle(rs)


# A table: the label column's title and width, which labels it shows, then its columns as
# (title, width, format, value of a label's runs).
REPORTS = {
    "amqp": [
        ("broker/scenario", 28, None, [
            ("runs", 4, "", runs),
            ("msgs/s", 9, ".0f", field("deliveries_per_s")),
            ("cpu us/msg", 10, ".1f", field("broker_cpu_us_per_msg")),
            ("p50 us", 7, ".0f", lat("p50")),
            ("p99 us", 7, ".0f", lat("p99")),
            ("pub/s", 8, ".0f", field("publish_per_s")),
            ("drain/s", 8, ".0f", field("drain_per_s")),
            ("peak RSS MiB", 12, ".0f", mib("broker_peak_rss_bytes")),
            ("lost", 5, "", total("lost")),
            ("dups", 5, "", total("duplicates")),
        ]),
    ],
    "mqtt": [
        ("broker/scenario", 28, not_idle, [
            ("runs", 4, "", runs),
            ("msgs/s", 9, ".0f", field("deliveries_per_s")),
            ("pub/s", 9, ".0f", field("publish_per_s")),
            ("cpu us/msg", 10, ".2f", field("broker_cpu_us_per_msg")),
            ("gen cpu s", 9, ".2f", field("generator_cpu_s")),
            ("p50 us", 7, ".0f", lat("p50")),
            ("p99 us", 7, ".0f", lat("p99")),
            ("peak RSS MiB", 12, ".0f", mib("broker_peak_rss_bytes")),
            ("sent", 9, ".0f", field("sent")),
            ("lost", 7, "", total("lost")),
            ("dups", 5, "", total("duplicates")),
        ]),
        ("broker/scenario", 28, is_idle, [
            ("runs", 4, "", runs),
            ("connected", 9, ".0f", field("connected")),
            ("failed", 6, ".0f", field("failed")),
            ("closed", 6, ".0f", field("disturbed_while_idle")),
            ("connect s", 9, ".2f", field("connect_s")),
            ("RSS before MiB", 14, ".1f", mib("broker_rss_before_bytes")),
            ("RSS idle MiB", 12, ".1f", mib("broker_rss_idle_bytes")),
            ("bytes/conn", 10, ".0f", field("broker_bytes_per_connection")),
            ("idle cpu %", 10, ".2f", field("broker_idle_cpu_percent")),
        ]),
    ],
    "stomp": [
        ("broker/scenario", 32, None, [
            ("runs", 4, "", runs),
            ("msgs/s", 9, ".0f", field("deliveries_per_s")),
            ("all runs", 24, "", each(key("deliveries_per_s"))),
            ("cpu us/msg", 10, ".1f", field("broker_cpu_us_per_msg")),
            ("peak RSS MiB", 12, ".0f", mib("broker_peak_rss_bytes")),
            ("lost", 5, "", total("lost")),
            ("dups", 5, "", total("duplicates")),
        ]),
    ],
    "latency": [
        ("scenario/broker", 20, not_idle, [
            ("runs", 4, "", runs),
            ("rate", 6, ".0f", field("rate")),
            ("p50 us", 7, ".0f", lat("p50")),
            ("p99 us", 7, ".0f", lat("p99")),
            ("p99.9 us", 8, ".0f", lat("p999")),
            ("max us", 7, ".0f", lat("max")),
            ("cpu us/msg", 10, ".2f", field("broker_cpu_us_per_msg")),
            ("p99 each run", 22, "", each(latency("p99"))),
            ("lost", 5, "", total("lost")),
            ("dups", 5, "", total("duplicates")),
        ]),
        ("scenario/broker", 20, is_idle, [
            ("runs", 4, "", runs),
            ("connected", 9, ".0f", field("connected")),
            ("failed", 6, ".0f", field("failed")),
            ("hold s", 6, ".1f", field("hold_s")),
            ("cpu % of a core", 15, ".2f", field("broker_idle_cpu_percent")),
            ("cpu % each run", 22, "", each(key("broker_idle_cpu_percent"), missing="-")),
        ]),
    ],
    "cpu-split": [
        ("scenario/broker", 20, None, [
            ("runs", 4, "", runs),
            ("p50 us", 7, ".0f", lat("p50")),
            ("p99 us", 7, ".0f", lat("p99")),
            ("kernel", 7, ".1f", split("kernel")),
            ("C libs", 7, ".1f", split("c_libraries")),
            ("runtime", 7, ".1f", split("runtime")),
            ("broker", 7, ".1f", split("broker")),
            ("total", 7, ".1f", split("total")),
        ]),
    ],
    "many-subscribers": [
        ("broker/N", 22, None, [
            ("runs", 4, "", runs),
            ("connected", 9, ".0f", field("connected")),
            ("connect s", 9, ".1f", field("connect_s")),
            ("msgs/s", 8, ".0f", field("deliveries_per_s")),
            ("p50 ms", 7, ".1f", lat_ms("p50")),
            ("p99 ms", 7, ".1f", lat_ms("p99")),
            ("CPU %", 6, ".0f", field("broker_cpu_percent")),
            ("us/msg", 7, ".2f", field("broker_cpu_us_per_msg")),
            ("RSS MiB", 8, ".0f", mib("broker_peak_rss_bytes")),
            ("B/sub", 6, ".0f", field("broker_bytes_per_subscriber")),
            ("gen cpu s", 9, ".2f", field("generator_cpu_s")),
            ("lost", 5, "", total("lost")),
            ("misrt", 5, "", total("misrouted")),
        ]),
    ],
}


def print_table(groups, label_title, label_width, shows, columns):
    titles = [f"{title:>{width}}" for title, width, _, _ in columns]
    print(" ".join([f"{label_title:{label_width}}"] + titles))
    for label, rs in sorted(groups.items()):
        if shows is not None and not shows(rs):
            continue
        cells = [format(value(rs), f">{width}{spec}") for _, width, spec, value in columns]
        print(" ".join([f"{label:{label_width}}"] + cells))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in REPORTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(REPORTS)}}} results.jsonl")
    report, path = sys.argv[1:]
    with open(path) as results:
        rows = [json.loads(line) for line in results if line.startswith("{")]
    groups = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    for i, table in enumerate(REPORTS[report]):
        if i:
            print()
        print_table(groups, *table)


if __name__ == "__main__":
    main()

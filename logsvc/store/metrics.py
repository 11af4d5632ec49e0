"""Prometheus metrics, read from the database at scrape time.

Every number comes from the shared store rather than from per-process
counters, so a scrape of any gunicorn worker gives the same answer.
"""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from logsvc.entry import LEVELS

from . import db, query, segments


def render():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector())
    return generate_latest(registry)


class _StoreCollector:
    def collect(self):
        by_level, last_id, oldest = db.call(_read)
        entries = GaugeMetricFamily("logsvc_entries", "Entries stored, by level",
                                    labels=["level"])
        for level, n in sorted(by_level):
            entries.add_metric([level], n)
        yield entries
        yield GaugeMetricFamily("logsvc_last_entry_id", "Highest entry id assigned",
                                value=last_id)
        yield GaugeMetricFamily("logsvc_oldest_entry_timestamp_seconds",
                                "Timestamp of the oldest stored entry",
                                value=(oldest or 0) / 1000)


def _read():
    sums = ", ".join(f"CAST(coalesce(SUM(level_{name}), 0) AS BIGINT)" for name in LEVELS)
    row = db.execute(f"SELECT {sums} FROM rollup_total_all").fetchone()
    by_level = list(zip(LEVELS, row))
    last_id = query.high_water()
    return by_level, last_id, segments.oldest_ts()

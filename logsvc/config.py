"""Every setting of the service, read from the environment in one place.

`Config.from_env()` is the only code that reads `os.environ`; everything else
receives a `Config`. Tests build one with `Config.from_env({...})` or pass a
dict of overrides to `create_app`.
"""
import dataclasses
import ipaddress
import os
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    database_url: str = ""
    admin_token: str = ""
    jwt_secret: str = ""
    rate_limit_per_min: int = 30
    # Failed password checks per minute, per client address and per user name.
    auth_failures_per_min: int = 10
    admin_fanout: bool = False
    heartbeat_s: float = 15.0
    ring_size: int = 5000
    # How often the live tail looks for entries it was not told about.
    tail_poll_s: float = 0.05
    max_body_bytes: int = 65536
    max_request_bytes: int = 16 * 1024 * 1024
    max_entries_per_request: int = 50_000
    retention_days: float = 7.0
    max_rows: int = 50_000_000
    # The oldest entries are deleted while the store takes more than this
    # many bytes (0: no limit).
    max_disk_bytes: int = 0
    prune_interval_s: float = 60.0
    # Sealed segments (segments.py): the newest this many entries stay
    # whole, older ones are sealed into Parquet segments in the background.
    # 0: nothing is sealed. See docs/operations.md ("Sealed segments") for
    # what sealing costs and saves.
    hot_rows: int = 65_536
    # Entries per sealed segment.
    segment_rows: int = 65_536
    # Runs of this many consecutive segments are merged into one in the
    # background (segments.py, "merging"); 0 or 1: never merged.
    merge_segments: int = 16
    # How often the background sealer looks for entries to seal.
    seal_interval_s: float = 30.0
    # Under gunicorn (gunicorn.conf.py), seal in a process of its own
    # beside the workers (logsvc/sealer.py) rather than in a worker.
    seal_process: bool = True
    # How much the sealing process lowers its CPU priority (nice, 0-19):
    # the workers' requests go first, and sealing takes the time they leave.
    seal_nice: int = 10
    # With hot_rows: hours of minute counters kept per scope and per route
    # (horizon.py); older minutes are counted from the entries. 0: all.
    minute_counters_hours: float = 6.0
    # Sealed entries a page's `total` may decode beyond the segments its
    # page read (query.py); past them the total is a lower bound. 0: all.
    sealed_count_rows: int = 8_192
    # Stats over filters the counters lack: each worker keeps the small
    # columns of up to this many hot entries (hotcolumns.py). 0: none.
    hot_columns_rows: int = 131_072
    workers: int = 2
    # gevent, threads, or auto (gevent when it has patched the process).
    concurrency: str = "auto"
    # gunicorn: seconds a connection may take to send a request head; also
    # how long an idle keep-alive connection is kept.
    header_timeout_s: int = 15
    # Request bodies: after LOGSVC_HEADER_TIMEOUT_S seconds to start, each
    # this many bytes buy one more second; slower is a 408 (0: no limit).
    body_min_rate: int = 1024
    cursor_ttl_s: int = 300
    # Seconds a search, count or histogram may run before it is stopped
    # (503); 0: no limit.
    query_timeout_s: float = 10.0
    # Searches, counts and histograms of one scope that run at once in a
    # worker; more wait their turn (up to LOGSVC_QUERY_TIMEOUT_S, then 429).
    queries_per_scope: int = 1
    # Open streams of one scope on this host (all workers together).
    max_streams_per_scope: int = 100
    # Open streams one worker holds, the operator's included: gunicorn's
    # worker_connections is this and 100 more, so that one more gets a 429;
    # also kept below the process's open-file limit (server.py).
    max_streams_per_worker: int = 6000
    db_threads: int = 8
    # SQLite: checkpoint and truncate the write-ahead log past this size.
    wal_checkpoint_mb: int = 16
    # SQLite: once no process has written for this long, give the
    # write-ahead log's space back (0: never).
    wal_idle_s: float = 10.0
    # PostgreSQL: entry ids per partition (fixed when the store is created);
    # 0: a million, or a segment's (store_partition_rows) when the store
    # seals its history, so that sealed partitions are dropped whole.
    partition_rows: int = 0
    # Proxies (addresses or networks, comma-separated) whose X-Forwarded-*
    # headers are honoured; from anyone else they are ignored.
    trusted_proxies: str = ""
    # A host name pattern such as {containerId}.{projectId}.logs.example.com:
    # reads on a matching host are limited to that project and container.
    scope_host: str = ""
    # Serve reads only: the store is opened read-only and writes answer 503.
    read_only: bool = False
    # How long an ingest's Idempotency-Key is remembered (seconds).
    idempotency_window_s: int = 86_400
    # Alerts (alerting.py): how often the rules are evaluated, the networks
    # webhooks may reach beyond public addresses (e.g. 127.0.0.1/32 for a
    # local Alertmanager), and the address of this service that links in
    # notifications start with (default: http://host:port).
    alert_interval_s: float = 15.0
    webhook_allow: str = ""
    public_url: str = ""
    # Syslog listeners (syslogd.py), host:port each, one per host; what they
    # receive is stored under this project. Syslog has no authentication.
    syslog_udp: str = ""
    syslog_tcp: str = ""
    syslog_project: str = "syslog"
    # Where the command-line client finds a server, and the token it sends
    # (default: the admin token in the data dir, when it is readable).
    url: str = ""
    token: str = ""

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            name = "LOGSVC_" + field.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, field.type, raw)
        if values.get("concurrency", "auto") not in ("auto", "gevent", "threads"):
            raise ConfigError(f"LOGSVC_CONCURRENCY={values['concurrency']!r} is not one of "
                              "auto, gevent, threads")
        for network in values.get("webhook_allow", "").replace(",", " ").split():
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"LOGSVC_WEBHOOK_ALLOW: {network!r} is not a network "
                                  "(such as 127.0.0.1/32 or 10.0.0.0/8)") from None
        if values.get("seal_nice", 0) > 19:
            raise ConfigError(f"LOGSVC_SEAL_NICE={values['seal_nice']} is not within 0-19")
        for name in ("syslog_udp", "syslog_tcp"):
            if values.get(name):
                host, _, port = values[name].rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ConfigError(f"LOGSVC_{name.upper()}={values[name]!r} is not "
                                      "host:port (such as 127.0.0.1:5514)")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @property
    def sqlite_path(self):
        return Path(self.data_dir) / "logs.db"

    @property
    def server_url(self):
        return self.url or f"http://{self.host}:{self.port}"

    @property
    def store_partition_rows(self):
        """PostgreSQL: the ids of a partition of a store made now. When
        history is sealed (hot_rows), a segment's (segment_rows):
        a partition is then emptied by one seal and dropped after it,
        which gives its space back, where rows deleted from a partition
        that goes on holding hot entries leave their space behind."""
        if self.partition_rows:
            return self.partition_rows
        return self.segment_rows if self.hot_rows else 1_000_000

    @property
    def merge_rows(self):
        """The most entries a merged segment holds (0: none is merged)."""
        return self.merge_segments * self.segment_rows if self.merge_segments > 1 else 0

    @property
    def merge_bytes(self):
        """The most bytes a merged segment takes (0: no bound): with
        LOGSVC_MAX_DISK_BYTES, a sixteenth of it, so that retention by size
        still drops the oldest entries a small part at a time."""
        return self.max_disk_bytes // 16

    @property
    def retention_ms(self):
        return int(self.retention_days * 86_400_000)


def _parse(name, kind, raw):
    try:
        if kind in (int, "int"):
            value = int(raw)
            if value < 0:
                raise ValueError
            return value
        if kind in (float, "float"):
            value = float(raw)
            if value < 0:
                raise ValueError
            return value
        if kind in (bool, "bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind in (Path, "Path"):
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None

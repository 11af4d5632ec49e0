"""`LocalSink`: captured entries written straight into a store on this host.

The one part of `capture` that reaches into the store: the other capture
tools talk to a server over HTTP and work without it.
"""
from logsvc.store import db, ingest, migrations

from .sinks import QueuedSink


class LocalSink(QueuedSink):
    """Writes batches straight into the store named by `config` (an SQLite
    file on this host), from its own thread."""

    def __init__(self, config, **kwargs):
        self.config = config
        self.store = db.init(config)
        db.call(migrations.create_schema, config.store_partition_rows)
        super().__init__(**kwargs)

    def send(self, batch):
        with db.using(self.store):
            ingest.ingest(batch, self.config, grouped=False)

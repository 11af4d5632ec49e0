"""How far back the per-scope minute counters reach.

`rollup_minute` (a row per minute and scope) and `rollup_route_minute` (a
row per minute, project and route) hold nearly a row per entry at a busy
store's density: two thousand containers sending thirty entries a minute
between them leave most of a scope's minutes with one entry or none. Kept
for the whole history, they were the largest thing in a sealed store after
the segments (48 B of its 226 B an entry at 1M). What they answer is the
minutes at the edges of a scope's time range and a scope's histogram in
buckets shorter than an hour; the hours, the all-scope minutes and the
totals are counted in their own tiers, which are kept.

So a store that seals its history (LOGSVC_HOT_ROWS) keeps them, and the
service minutes summed from them (`rollup_service_minute_all`), for the
last LOGSVC_MINUTE_COUNTERS_HOURS hours only. The *floor* is the first
minute they still count (on an hour boundary; `meta.minute_floor`, 0: no
floor): below it

- writers leave them alone (an entry older than the floor, or one removed
  by retention, changes the hours and the rest, not them);
- readers take whole hours from the hour tiers and the rest of the range
  from the entries, hot and sealed (rollup.py's plans, stats.py's
  histograms), which stays exact;
- the longest duration of an hour is recomputed from its entries, not from
  its minutes.

Raising the floor is a write of the floor alone; the rows below it are
deleted a round later (`trim`), once every question planned with the
former floor has ended (`grace_ms`: twice LOGSVC_QUERY_TIMEOUT_S, the
longest a question may run, or GRACE_MS without one), so a reader never
misses a row its plan counted on.
"""
from logsvc.entry import now_ms

from . import db
from .db import database

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# The tables that keep minutes of each scope above the floor, and where
# their key holds the minute.
TRIMMED = ("rollup_minute", "rollup_route_minute", "rollup_service_minute_all")
GRACE_MS = 60_000


def floor():
    """The first minute the per-scope minute counters count (0: all)."""
    def read():
        row = db.execute("SELECT value FROM meta WHERE key = 'minute_floor'").fetchone()
        return int(row[0].split()[0]) if row else 0
    return db.memoized("minute_floor", read)


def floor_ms():
    return floor() * MINUTE_MS


def _state():
    """(floor, ms it was set at, the minute below which rows are gone)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'minute_floor'").fetchone()
    if not row:
        return 0, 0, 0
    minute, set_ms, cleared = (int(part) for part in row[0].split())
    return minute, set_ms, cleared


def _set(minute, set_ms, cleared):
    db.execute("INSERT INTO meta (key, value) VALUES ('minute_floor', ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
               (f"{minute} {set_ms} {cleared}",))


def target(hours, now=None):
    """The floor that keeping `hours` hours of minutes asks for now (0:
    none), on an hour boundary."""
    if not hours:
        return 0
    now = now_ms() if now is None else now
    return max(0, (now - int(hours * HOUR_MS)) // HOUR_MS * 60)


def grace_ms(config):
    """How long rows below a raised floor are kept (see above)."""
    return int(config.query_timeout_s * 2000) if config.query_timeout_s else GRACE_MS


def due(hours, grace=GRACE_MS, now=None):
    """Whether `trim` has work (a read, asked before the lease is taken)."""
    now = now_ms() if now is None else now
    minute, set_ms, cleared = _state()
    return target(hours, now) > minute or (cleared < minute and now - set_ms >= grace)


def trim(hours, grace=GRACE_MS, now=None):
    """One round: delete the rows below a floor raised at least `grace` ms
    ago, then raise the floor to what `hours` asks for. Returns the rows
    deleted."""
    now = now_ms() if now is None else now
    minute, set_ms, cleared = db.call(_state)
    deleted = 0
    if cleared < minute and now - set_ms >= grace:
        deleted = _delete_below(minute)
        db.call(_cleared, minute)
    wanted = target(hours, now)
    if wanted > minute:
        db.call(_raise, wanted, now)
    return deleted


def _cleared(minute):
    with database.atomic():
        current, set_ms, _ = _state()
        _set(current, set_ms, minute)


def _raise(minute, now):
    with database.atomic():
        current, _, cleared = _state()
        if minute > current:
            _set(minute, now, cleared)


def _delete_below(minute):
    """Delete the rows below `minute` in small transactions: an hour of
    `rollup_minute` (keyed by minute first) or a project's route minutes at
    a time."""
    deleted = 0
    first = db.call(lambda: db.execute(
        "SELECT min(minute) FROM rollup_minute").fetchone()[0])
    if first is not None:
        start = first // 60 * 60
        while start < minute:
            end = min(start + 60, minute)
            deleted += db.call(_delete, "DELETE FROM rollup_minute WHERE minute >= ? "
                               "AND minute < ?", (start, end))
            start = end
    # Summed from rollup_minute's rows, so kept over the same minutes (a
    # row per service and minute: one statement).
    deleted += db.call(_delete, "DELETE FROM rollup_service_minute_all WHERE minute < ?",
                       (minute,))
    projects = db.call(lambda: [row[0] for row in db.execute(
        "SELECT DISTINCT project_id FROM rollup_route_minute").fetchall()])
    for project in projects:
        deleted += db.call(_delete, "DELETE FROM rollup_route_minute WHERE project_id = ? "
                           "AND minute < ?", (project, minute))
    return deleted


def _delete(sql, params):
    with database.atomic():
        return db.execute(sql, params).rowcount

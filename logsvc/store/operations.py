"""Operator actions on the whole store: clear it, destroy a scope.

`clear` removes every entry, body and counter in one transaction and moves
the id sequence at least 10 000 past the old highest id, so that no client
can mistake a new entry for one it has already seen. `destroy_scope` marks a
container as gone, revokes the tokens and users bound to exactly it, and
writes a `scope-destroyed` event entry into it (which is how live streams
learn of it).
"""
import orjson

from logsvc.entry import now_ms

from . import db, fulltext, ingest, lookup, rollup, segments
from .db import database
from .models import (
    ROLLUP_MODELS,
    ApiToken,
    DestroyedScope,
    IdSequence,
    Meta,
    PruneLog,
    Session,
    User,
)

ID_GAP_AFTER_CLEAR = 10_000


def clear():
    """Empty the store. Returns {"removed", "nextId"}."""
    def run():
        with database.atomic():
            # Taking the sequence row first waits for, and then holds off,
            # every writer: nothing commits between the count and the delete.
            next_seq = IdSequence.take(ID_GAP_AFTER_CLEAR)
            seq = next_seq - ID_GAP_AFTER_CLEAR
            (removed,) = db.execute(
                "SELECT CAST(coalesce(SUM(n), 0) AS BIGINT) FROM rollup_total_all").fetchone()
            fulltext.clear_sqlite()
            lookup.clear()
            segments.clear()
            for table in ("entry_body", "entry", *(model._meta.table_name for model in ROLLUP_MODELS)):
                db.execute(f"DELETE FROM {table}")
            rollup.set_counted_through(next_seq)  # nothing below it is left to count
            now = now_ms()
            if seq:
                PruneLog.record(now, 1, seq)
            marker = orjson.dumps({"atMs": now, "throughId": seq, "nextId": next_seq + 1}).decode()
            (Meta.insert(key="cleared", value=marker)
             .on_conflict(conflict_target=[Meta.key], update={Meta.value: marker}).execute())
            return {"removed": removed, "nextId": next_seq + 1}
    return db.call(run)


def cleared_marker():
    """The record of the last clear (None if never); it changes with each clear."""
    row = db.execute("SELECT value FROM meta WHERE key = 'cleared'").fetchone()
    return row[0] if row else None


def cleared_through():
    """The highest id removed by the last clear (0 if never)."""
    marker = cleared_marker()
    return orjson.loads(marker)["throughId"] if marker else 0


def is_destroyed(project_id, container_id):
    return DestroyedScope.select().where(
        (DestroyedScope.project_id == project_id)
        & (DestroyedScope.container_id == container_id)).exists()


def destroy_scope(project_id, container_id, config):
    """Mark the container destroyed; revoke its tokens and users."""
    def run():
        with database.atomic():
            now = now_ms()
            (DestroyedScope.insert(project_id=project_id, container_id=container_id,
                                   destroyed_ms=now)
             .on_conflict(conflict_target=[DestroyedScope.project_id, DestroyedScope.container_id],
                          update={DestroyedScope.destroyed_ms: now}).execute())
            bound = ((ApiToken.project_id == project_id)
                     & (ApiToken.container_id == container_id)
                     & ApiToken.revoked_ms.is_null())
            token_ids = [t.id for t in ApiToken.select(ApiToken.id).where(bound)]
            ApiToken.update(revoked_ms=now_ms()).where(ApiToken.id.in_(token_ids)).execute()
            usernames = [u.username for u in User.select(User.username).where(
                (User.project_id == project_id) & (User.container_id == container_id))]
            User.delete().where(User.username.in_(usernames)).execute()
            Session.delete().where(Session.token_id.in_(token_ids)
                                   | Session.username.in_(usernames)).execute()
            return len(token_ids), len(usernames)
    revoked, removed = db.call(run)
    event = {"kind": "event", "level": "warn", "projectId": project_id,
             "containerId": container_id, "data": {"event": "scope-destroyed"}}
    result = ingest.ingest([event], config)
    return {"projectId": project_id, "containerId": container_id,
            "eventId": result["firstId"], "revokedTokens": revoked, "removedUsers": removed}

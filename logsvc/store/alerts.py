"""Alert rules: what they watch, their state, and the notifications owed.

A rule watches the entries of its filters (any filter a search takes, its
owner's scope folded in) over a sliding `window`, and compares one metric
with a threshold: `count`, `rate` (entries a second), `errorRate` (the
share of entries at level error), `p50`, `p95` or `p99` (durations in ms).
Each evaluation (`evaluate`) reads the metric through stats.summary, so
that a scope, a time range and a level or a status class are answered by
the counters, anything else by the entries.

States, as Prometheus names them: `ok`; `pending` while the condition has
held for less than the rule's `for`; `firing`. An episode is the stretch
from `ok` to `firing` and back: entering `firing` owes one "firing"
notification, leaving it one "resolved". Each transition is one conditional
UPDATE of the rule (on the state it was read in) and the INSERT of the
notification it owes, in one transaction: two evaluators that raced would
find one UPDATE refused, and a restart finds the state where it was. So a
notification is owed exactly once per transition.

Notifications wait in `alert_delivery` until delivered (alerting.py sends
them and reports back through `claim_due` and `record`): a delivery is
claimed for a while before it is sent, so two senders never send it twice;
a failure is tried again after BACKOFF_S (the first retry within 10 s),
MAX_ATTEMPTS tries in all over about 45 minutes.
"""
import dataclasses
import time

import orjson

from logsvc.entry import now_ms

from . import db, query, stats
from .db import database
from .filters import Filters

METRICS = ("count", "rate", "errorRate", "p50", "p95", "p99")
OPS = {">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t,
       "<=": lambda v, t: v <= t}
LEASE_NAME = "alerts"
# Seconds between the tries of a notification: the first retry comes 5 s
# after the first failure.
BACKOFF_S = (5, 30, 120, 600, 1800)
MAX_ATTEMPTS = len(BACKOFF_S) + 1
CLAIM_S = 60  # how long a sender holds a delivery it is sending
SAMPLES = 5  # entries a notification carries


class RuleNotFound(LookupError):
    pass


@dataclasses.dataclass
class Rule:
    id: int
    name: str
    project_id: str  # the owner's scope (None: every tenant, the operator's)
    container_id: str
    filters: dict  # as given (query-string names and values)
    parsed: dict  # Filters' fields (without the owner's scope)
    metric: str
    op: str
    threshold: float
    window_s: int
    for_s: int
    webhook: str
    labels: dict
    annotations: dict
    enabled: bool
    state: str
    state_since_ms: int
    episode_ms: int  # when the current episode started firing
    value: float
    evaluated_ms: int
    created_ms: int
    updated_ms: int

    def query_filters(self, since=None, until=None):
        fields = dict(self.parsed)
        for name in ("service_names", "levels", "kinds", "methods", "sources", "routes"):
            if name in fields:
                fields[name] = tuple(fields[name])
        if "status_ranges" in fields:
            fields["status_ranges"] = tuple(tuple(r) for r in fields["status_ranges"])
        return Filters(project_id=self.project_id, container_id=self.container_id,
                       since=since, until=until, **fields)


_COLUMNS = ("id", "name", "project_id", "container_id", "filters", "parsed", "metric", "op",
            "threshold", "window_s", "for_s", "webhook", "labels", "annotations", "enabled",
            "state", "state_since_ms", "episode_ms", "value", "evaluated_ms", "created_ms",
            "updated_ms")
_JSON = {"filters", "parsed", "labels", "annotations"}


def _rule(row):
    values = dict(zip(_COLUMNS, row))
    for name in _JSON:
        values[name] = orjson.loads(values[name])
    values["enabled"] = bool(values["enabled"])
    return Rule(**values)


def _select(where="TRUE", params=()):
    return [_rule(row) for row in db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM alert_rule WHERE {where} ORDER BY id", params)]


def create(fields):
    """Store a new rule (`fields`: Rule's settable fields); returns it."""
    def run():
        now = now_ms()
        values = {**fields, "state": "ok", "state_since_ms": now, "episode_ms": None,
                  "value": None, "evaluated_ms": None, "created_ms": now, "updated_ms": now}
        names = [c for c in _COLUMNS if c != "id"]
        row = [orjson.dumps(values[c]).decode() if c in _JSON else values[c] for c in names]
        with database.atomic():
            cursor = db.execute(f"INSERT INTO alert_rule ({', '.join(names)}) VALUES "
                                f"({', '.join('?' for _ in names)}) RETURNING id", row)
            (rule_id,) = cursor.fetchone()
        return _select("id = ?", (rule_id,))[0]
    return db.call(run)


def listed(project_id=None, container_id=None):
    """The rules of a scope and of the scopes within it (None: all)."""
    def run():
        where, params = ["TRUE"], []
        if project_id is not None:
            where.append("project_id = ?")
            params.append(project_id)
        if container_id is not None:
            where.append("container_id = ?")
            params.append(container_id)
        return _select(" AND ".join(where), params)
    return db.call(run)


def get(rule_id):
    found = db.call(_select, "id = ?", (rule_id,))
    if not found:
        raise RuleNotFound(rule_id)
    return found[0]


def update(rule_id, changes):
    """Change a rule's settings; a change of what it watches or how starts
    it afresh (`ok`), a firing episode first resolved (its notification is
    owed). Returns the rule."""
    def run():
        with database.atomic():
            found = _select("id = ?", (rule_id,))
            if not found:
                raise RuleNotFound(rule_id)
            rule = found[0]
            now = now_ms()
            values = dict(changes)
            watched = {"filters", "parsed", "metric", "op", "threshold", "window_s", "for_s",
                       "project_id", "container_id"}
            if (watched & set(values)) or values.get("enabled") is False:
                if rule.state == "firing":
                    _owe(rule, "resolved", now, rule.value, [])
                values.update(state="ok", state_since_ms=now, episode_ms=None, value=None)
            values["updated_ms"] = now
            sets = ", ".join(f"{name} = ?" for name in values)
            params = [orjson.dumps(v).decode() if k in _JSON else v for k, v in values.items()]
            db.execute(f"UPDATE alert_rule SET {sets} WHERE id = ?", [*params, rule_id])
            return _select("id = ?", (rule_id,))[0]
    return db.call(run)


def delete(rule_id):
    def run():
        with database.atomic():
            if not db.execute("DELETE FROM alert_rule WHERE id = ?", (rule_id,)).rowcount:
                raise RuleNotFound(rule_id)
            db.execute("DELETE FROM alert_delivery WHERE rule_id = ? AND delivered_ms IS NULL",
                       (rule_id,))
    db.call(run)


# --- evaluation --------------------------------------------------------------------

def measure(rule, now):
    """The rule's metric over (now - window, now]: None where it has no
    value (no entries for a share, no durations for a percentile)."""
    since = now - rule.window_s * 1000 + 1
    found = stats.measure(rule.query_filters(since=since, until=now + 1), rule.metric)
    if rule.metric == "count":
        return float(found["total"])
    if rule.metric == "rate":
        return found["total"] / rule.window_s
    if rule.metric == "errorRate":
        return found["errors"] / found["total"] if found["total"] else None
    value = found.get(rule.metric)
    return None if value is None else float(value)


def evaluate(now=None, base_url=""):
    """Evaluate every enabled rule once; returns [(rule id, state)] of the
    transitions made."""
    now = now_ms() if now is None else now
    changed, measured = [], []
    for rule in db.call(_select, "enabled = ?", (True,)):
        try:
            value = measure(rule, now)
        except db.QueryTimeout:
            continue
        holds = value is not None and OPS[rule.op](value, rule.threshold)
        state, since = rule.state, rule.state_since_ms
        if holds and state == "ok":
            state, since = ("firing" if rule.for_s == 0 else "pending"), now
        elif holds and state == "pending" and now - since >= rule.for_s * 1000:
            state, since = "firing", now
        elif not holds and state in ("pending", "firing"):
            state, since = "ok", now
        if state == rule.state and since == rule.state_since_ms:
            measured.append((value, now, rule.id, rule.state, rule.updated_ms))
            continue
        samples = []
        if state == "firing" and rule.state != "firing":
            samples = _samples(rule, now)
        if db.call(_move, rule, state, since, value, now, samples, base_url):
            changed.append((rule.id, state))
    if measured:  # the rules whose state stays: their values, in one transaction
        db.call(_measured, measured)
    return changed


def _measured(rows):
    with database.atomic():
        db.executemany("UPDATE alert_rule SET value = ?, evaluated_ms = ? WHERE id = ? "
                       "AND state = ? AND updated_ms = ?", rows)


def _samples(rule, now):
    page = query.Page(limit=SAMPLES, order="desc")
    found = query.list_entries(rule.query_filters(since=now - rule.window_s * 1000 + 1,
                                                  until=now + 1), page)
    return [{"id": e["id"], "tsMs": e["tsMs"], "method": e["method"], "url": e["url"],
             "status": e["status"], "level": e["level"]} for e in found["entries"]]


def _move(rule, state, since, value, now, samples, base_url):
    """Record an evaluation: the rule's new state (only if it is still in
    the state it was read in) and the notification a transition into or
    out of `firing` owes, in one transaction. False if the rule changed
    meanwhile."""
    with database.atomic():
        episode = rule.episode_ms
        if state == "firing" and rule.state != "firing":
            episode = now
        updated = db.execute(
            "UPDATE alert_rule SET state = ?, state_since_ms = ?, episode_ms = ?, value = ?, "
            "evaluated_ms = ? WHERE id = ? AND state = ? AND updated_ms = ? AND enabled = ?",
            (state, since, episode if state == "firing" else None, value, now, rule.id,
             rule.state, rule.updated_ms, True)).rowcount
        if not updated:
            return False
        if state == "firing" and rule.state != "firing":
            _owe(dataclasses.replace(rule, episode_ms=episode), "firing", now, value, samples,
                 base_url)
        elif rule.state == "firing" and state != "firing":
            _owe(rule, "resolved", now, value, [], base_url)
        return True


def _owe(rule, status, now, value, samples, base_url=""):
    payload = notification(rule, status, now, value, samples, base_url)
    db.execute("INSERT INTO alert_delivery (rule_id, status, payload, attempts, next_ms, "
               "created_ms) VALUES (?, ?, ?, 0, ?, ?)",
               (rule.id, status, orjson.dumps(payload).decode(), now, now))


def _iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def notification(rule, status, now, value, samples, base_url=""):
    """An Alertmanager webhook message (version 4) for one alert."""
    labels = {"alertname": rule.name, **{k: str(v) for k, v in rule.labels.items()}}
    if rule.project_id is not None:
        labels.setdefault("projectId", rule.project_id)
    if rule.container_id is not None:
        labels.setdefault("containerId", rule.container_id)
    shown = "none" if value is None else f"{value:g}"
    annotations = {
        **{k: str(v) for k, v in rule.annotations.items()},
        "value": shown,
        "condition": f"{rule.metric} {rule.op} {rule.threshold:g} over {rule.window_s} s",
    }
    annotations.setdefault("summary", f"{rule.name}: {rule.metric} is {shown} "
                                      f"({rule.op} {rule.threshold:g})")
    started = rule.episode_ms or now
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(started),
        "endsAt": _iso(now) if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": generator_url(rule, now, base_url),
        "fingerprint": f"{rule.id:016x}",
        "samples": samples,
    }
    return {
        "version": "4",
        "groupKey": f"logsvc/alert/{rule.id}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "logsvc",
        "groupLabels": {"alertname": rule.name},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": base_url,
        "alerts": [alert],
    }


def generator_url(rule, now, base_url=""):
    """The web UI opened on the rule's search and window."""
    from urllib.parse import urlencode

    params = dict(rule.filters)
    if rule.project_id is not None:
        params["projectId"] = rule.project_id
    if rule.container_id is not None:
        params["containerId"] = rule.container_id
    params["since"] = str(now - rule.window_s * 1000)
    params["until"] = str(now)
    return f"{base_url}/?{urlencode(params, doseq=True)}"


# --- deliveries ---------------------------------------------------------------------

def claim_due(now=None, limit=20):
    """The notifications due to be sent, claimed for CLAIM_S: [(delivery
    id, webhook, payload, attempts)]."""
    now = now_ms() if now is None else now

    def run():
        out = []
        rows = db.execute(
            "SELECT d.id, r.webhook, d.payload, d.attempts, d.next_ms FROM alert_delivery d "
            "JOIN alert_rule r ON r.id = d.rule_id WHERE d.delivered_ms IS NULL "
            "AND d.attempts < ? AND d.next_ms <= ? ORDER BY d.id LIMIT ?",
            (MAX_ATTEMPTS, now, limit)).fetchall()
        for delivery_id, webhook, payload, attempts, next_ms in rows:
            with database.atomic():
                if db.execute("UPDATE alert_delivery SET next_ms = ? WHERE id = ? "
                              "AND next_ms = ? AND delivered_ms IS NULL",
                              (now + CLAIM_S * 1000, delivery_id, next_ms)).rowcount:
                    out.append((delivery_id, webhook, payload, attempts))
        return out
    return db.call(run)


def record(delivery_id, ok, result, now=None):
    """What sending a notification gave: `ok` (delivered), else tried again
    after the backoff, until MAX_ATTEMPTS. `result`: the receiver's status
    or what went wrong (never its answer's body)."""
    now = now_ms() if now is None else now

    def run():
        with database.atomic():
            row = db.execute("SELECT attempts FROM alert_delivery WHERE id = ?",
                             (delivery_id,)).fetchone()
            if row is None:
                return
            attempts = row[0] + 1
            if ok:
                db.execute("UPDATE alert_delivery SET attempts = ?, delivered_ms = ?, "
                           "result = ?, tried_ms = ? WHERE id = ?",
                           (attempts, now, result, now, delivery_id))
            else:
                wait = BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)]
                db.execute("UPDATE alert_delivery SET attempts = ?, next_ms = ?, result = ?, "
                           "tried_ms = ? WHERE id = ?",
                           (attempts, now + wait * 1000, result, now, delivery_id))
    db.call(run)


def last_notifications(rule_ids):
    """{rule id: the latest notification's {status, attempts, result,
    deliveredAt, triedAt, pending}}."""
    if not rule_ids:
        return {}

    def run():
        marks = ", ".join("?" for _ in rule_ids)
        rows = db.execute(
            f"SELECT rule_id, status, attempts, result, delivered_ms, tried_ms, id "
            f"FROM alert_delivery WHERE rule_id IN ({marks}) ORDER BY id", list(rule_ids))
        out = {}
        for rule_id, status, attempts, result, delivered, tried, _ in rows:
            out[rule_id] = {"status": status, "attempts": attempts, "result": result,
                            "deliveredAt": delivered, "triedAt": tried,
                            "pending": delivered is None and attempts < MAX_ATTEMPTS}
        return out
    return db.call(run)


def has_work():
    """Whether there is an enabled rule or a notification still owed."""
    return db.execute(
        "SELECT 1 FROM alert_rule WHERE enabled = ? UNION ALL SELECT 1 FROM alert_delivery "
        "WHERE delivered_ms IS NULL AND attempts < ? LIMIT 1", (True, MAX_ATTEMPTS)
    ).fetchone() is not None


def forget_delivered(before_ms):
    """Drop notifications delivered or given up before `before_ms`, but the
    latest of each rule (shown on the rule)."""
    db.execute("DELETE FROM alert_delivery WHERE (delivered_ms IS NOT NULL OR attempts >= ?) "
               "AND created_ms < ? AND id NOT IN (SELECT max(id) FROM alert_delivery "
               "GROUP BY rule_id)", (MAX_ATTEMPTS, before_ms))

"""A Python client for logsvc.

    from logsvc.client import Client
    client = Client("http://127.0.0.1:8080", token="lst_1.…")
    for entry in client.iter_entries(level="error"):      # every match, constant memory
        ...
    for item in client.stream(level="warn,error"):        # live, resumes by itself
        if isinstance(item, Gap): ...                     # retention removed a range
        else: print(item["id"], item["url"])

`stream` reconnects after network errors with backoff and `Last-Event-ID`,
so a restart of the server shows neither a gap nor a duplicate; on `reset`
(the store was cleared or replaced) it yields a `Reset` marker and starts
again from the present; on `scope-destroyed` it ends. Every call honours
429 answers by waiting `Retry-After` seconds and trying again.
"""
import dataclasses
import gzip
import time

import orjson
import requests


class ApiError(Exception):
    """An error answer; `status` and `message` come from its body."""

    def __init__(self, status, message, retry_after=None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Gone(ApiError):
    pass


class RateLimited(ApiError):
    pass


_ERRORS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 410: Gone,
           422: BadRequest, 429: RateLimited}


@dataclasses.dataclass(frozen=True)
class Gap:
    """Entries with ids from_id..to_id may have been removed before delivery."""
    from_id: int
    to_id: int


@dataclasses.dataclass(frozen=True)
class Reset:
    """The store was cleared or replaced: positions from before mean nothing."""


ALERTS = "/api/proxy-logs/_alerts"


class Client:
    def __init__(self, base_url, token=None, auth=None, timeout=30.0, max_retries=5,
                 session=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if auth:
            self.session.auth = auth

    # --- reading ---------------------------------------------------------------

    def list(self, **filters):
        """One page: {"entries", "total", "totalExact", "limit", "offset", ...}."""
        return self._get("/api/proxy-logs/_logs", filters).json()

    def iter_entries(self, page_size=1000, **filters):
        """Every matching entry, oldest first, paging by id (constant memory)."""
        after = filters.pop("afterId", 0)
        while True:
            page = self.list(afterId=after, limit=page_size, **filters)
            yield from page["entries"]
            if len(page["entries"]) < page_size:
                return
            after = page["nextAfterId"]

    def stats(self, **filters):
        """Counts, `latency` ({count, p50, p90, p95, p99, max}) and `byRoute`."""
        return self._get("/api/proxy-logs/_logs/stats", filters).json()

    def latency(self, **filters):
        """{count, p50, p90, p95, p99, max} of the durations, in ms."""
        return self.stats(**filters)["latency"]

    def routes(self, top=20, **filters):
        """The busiest routes: [{route, total, errors, timed, p50, p95, p99}]."""
        return self.stats(topRoutes=top, **filters)["byRoute"]

    def histogram(self, bucket="1m", **filters):
        return self._get("/api/proxy-logs/_logs/stats/histogram",
                         {"bucket": bucket, **filters}).json()

    # --- alert rules -------------------------------------------------------------

    def alerts(self):
        """The alert rules the caller manages, with their state."""
        return self._request("GET", ALERTS).json()["alerts"]

    def create_alert(self, rule):
        """Create an alert rule (see the README's Alerts); returns it."""
        return self._request("POST", ALERTS, json=rule).json()

    def update_alert(self, rule_id, changes):
        return self._request("PATCH", f"{ALERTS}/{int(rule_id)}", json=changes).json()

    def delete_alert(self, rule_id):
        self._request("DELETE", f"{ALERTS}/{int(rule_id)}")

    # --- writing ---------------------------------------------------------------

    def ingest(self, entries, batch_size=1000, compress=True):
        """Send entries in NDJSON batches; returns the summed answer."""
        total = {"accepted": 0, "rejected": [], "rejectedCount": 0, "firstId": None,
                 "lastId": None}
        batch, offset = [], 0
        for entry in entries:
            batch.append(entry)
            if len(batch) >= batch_size:
                self._merge(total, self._send(batch, compress), offset)
                offset += len(batch)
                batch = []
        if batch:
            self._merge(total, self._send(batch, compress), offset)
        return total

    # --- live ------------------------------------------------------------------

    def stream(self, last_event_id=None, replay=0, reconnect=True, max_backoff=10.0,
               read_timeout=60.0, **filters):
        """Live entries (dicts), plus Gap and Reset markers; see the module doc.
        A connection silent for `read_timeout` seconds (the server sends a
        heartbeat every 15 s by default) is dropped and opened again. After a
        Reset it follows from then on, without a replay. Raises Unauthorized
        when the server ends the stream because its credential was revoked."""
        position = last_event_id
        backoff = 0.5
        while True:
            was_reset = False
            params = dict(filters, replay=replay)
            headers = {"Accept": "text/event-stream"}
            if position is not None:
                headers["Last-Event-ID"] = str(position)
            try:
                response = self._request("GET", "/api/proxy-logs/_logs/stream", params=params,
                                         headers=headers, stream=True,
                                         timeout=(self.timeout, read_timeout))
                with response:
                    for event, event_id, data in _sse_events(response):
                        backoff = 0.5
                        if event == "reset":
                            position, was_reset, replay = None, True, 0
                            yield Reset()
                            break
                        if event == "scope-destroyed":
                            return
                        if event == "access-revoked":
                            reason = orjson.loads(data).get("reason", "")
                            raise Unauthorized(401, f"access revoked: {reason}")
                        if event == "gap":
                            gap = orjson.loads(data)
                            yield Gap(gap["fromId"], gap["toId"])
                            continue
                        payload = orjson.loads(data)
                        if isinstance(payload, list):  # the replay frame
                            yield from payload
                        elif payload is not None:
                            yield payload
                        if event_id is not None:
                            position = int(event_id)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError):
                if not reconnect:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            if not reconnect:
                return
            if not was_reset:  # the server ended the stream (a restart): wait a little
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)

    # --- plumbing --------------------------------------------------------------

    def _get(self, path, params):
        return self._request("GET", path, params=_query(params))

    def _send(self, batch, compress):
        body = b"\n".join(orjson.dumps(entry) for entry in batch)
        headers = {"Content-Type": "application/x-ndjson"}
        if compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return self._request("POST", "/api/proxy-logs/_ingest", data=body,
                             headers=headers).json()

    @staticmethod
    def _merge(total, answer, offset):
        total["accepted"] += answer["accepted"]
        total["rejected"] += [{**r, "index": r["index"] + offset} for r in answer["rejected"]]
        total["rejectedCount"] += answer.get("rejectedCount", len(answer["rejected"]))
        if answer["firstId"] is not None:
            total["firstId"] = total["firstId"] or answer["firstId"]
            total["lastId"] = answer["lastId"]

    def _request(self, method, path, timeout=None, **kwargs):
        for attempt in range(self.max_retries + 1):
            response = self.session.request(method, self.base_url + path,
                                            timeout=timeout or self.timeout, **kwargs)
            if response.status_code == 429 and attempt < self.max_retries:
                response.close()
                time.sleep(float(response.headers.get("Retry-After", "2")))
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response


def _query(params):
    return {key: (",".join(value) if isinstance(value, (list, tuple)) else
                  str(value).lower() if isinstance(value, bool) else value)
            for key, value in params.items() if value is not None}


def _error(response):
    try:
        body = response.json()
        message = body.get("message", response.reason)
    except ValueError:
        message = response.reason
    kind = _ERRORS.get(response.status_code, ApiError)
    retry_after = response.headers.get("Retry-After")
    return kind(response.status_code, message, float(retry_after) if retry_after else None)


def _sse_events(response):
    """(event, id, data) for each dispatched SSE event; comments are skipped."""
    event, event_id, data = "message", None, []
    for raw in response.iter_lines(chunk_size=None, decode_unicode=False):
        line = raw.decode("utf-8")
        if not line:
            if data or event != "message":
                yield event, event_id, "\n".join(data) or "null"
            elif event_id is not None:
                yield event, event_id, "null"
            event, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value

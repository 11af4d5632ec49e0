"""Alerts at work: the evaluator that runs the rules (store/alerts.py) and
sends the notifications they owe to their webhooks.

One evaluator across every worker and host: `run_forever` evaluates and
sends only while its process holds the `alerts` lease in the store (as
retention does), every LOGSVC_ALERT_INTERVAL_S.

Webhooks are requests this service makes on a tenant's behalf, so they
must not reach what the tenant could not: `check_webhook` allows http and
https only, to a host whose every address is public (not loopback,
private, link-local — the cloud metadata address among them —, shared,
multicast or reserved), unless it lies in a network of
LOGSVC_WEBHOOK_ALLOW. The name is resolved again when a notification is
sent, and the connection goes to the address just checked (so a name that
changes its answer between the check and the connection, DNS rebinding,
gains nothing); redirects are not followed; each request has a short
timeout, and of the receiver's answer only the status is kept.
"""
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import time
import uuid
from urllib.parse import urlsplit

from logsvc import runtime
from logsvc.store import alerts, db, retention

log = logging.getLogger("logsvc.alerts")
TIMEOUT_S = 5.0
TICK_S = 2.0  # how often the lease holder sends what is due
MAX_URL = 2048


class WebhookRefused(ValueError):
    """A webhook this service will not call (the message says why)."""


def allowed_networks(text):
    """LOGSVC_WEBHOOK_ALLOW: networks separated by commas or spaces."""
    networks = []
    for part in (text or "").replace(",", " ").split():
        networks.append(ipaddress.ip_network(part, strict=False))
    return tuple(networks)


def _public(address, allow):
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allow):
        return True
    return ip.is_global and not ip.is_multicast


def resolve(url, allow=()):
    """(scheme, host, port, path with query, [addresses]) of a webhook
    URL whose every address may be called; WebhookRefused otherwise."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise WebhookRefused(f"Must be an http or https URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise WebhookRefused(f"Is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("Must be an http or https URL with a host")
    if parts.username or parts.password:
        raise WebhookRefused("Must not carry a user name or password; put a secret in the path")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookRefused("Has an invalid port") from exc
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"The host {parts.hostname!r} cannot be resolved") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    if not addresses:
        raise WebhookRefused(f"The host {parts.hostname!r} has no address")
    for address in addresses:
        if not _public(address, allow):
            raise WebhookRefused(
                f"The host {parts.hostname!r} resolves to {address}, a loopback, private, "
                "link-local or reserved address; the operator may allow its network with "
                "LOGSVC_WEBHOOK_ALLOW")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path, addresses


def check_webhook(url, allow=()):
    """Raise WebhookRefused unless `url` may be called."""
    resolve(url, allow)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked, the certificate verified for
    the URL's host name."""

    def __init__(self, address, host, port, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, address, host, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def send(url, payload, allow=()):
    """POST the payload (bytes of JSON) to the webhook: (delivered, what
    happened: the status, or why it could not be sent)."""
    try:
        scheme, host, port, path, addresses = resolve(url, allow)
    except WebhookRefused as exc:
        return False, f"refused: {exc}"
    kind = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    connection = kind(addresses[0], host, port, TIMEOUT_S)
    try:
        connection.request("POST", path, body=payload, headers={
            "Content-Type": "application/json", "User-Agent": "logsvc-alerts"})
        response = connection.getresponse()
        response.read(65536)  # what a receiver says is not kept
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"error: {type(exc).__name__}"
    finally:
        connection.close()
    return 200 <= status < 300, f"HTTP {status}"


def deliver_due(allow=(), now=None):
    """Send the notifications due; returns how many were delivered."""
    delivered = 0
    for delivery_id, webhook, payload, _ in alerts.claim_due(now):
        ok, result = send(webhook, payload.encode(), allow)
        if not ok:
            log.warning("alert notification %d not delivered: %s", delivery_id, result)
        alerts.record(delivery_id, ok, result)
        delivered += ok
    return delivered


def run_forever(config, store=None, holder=None):
    """Every `alert_interval_s`: if there are rules or notifications owed,
    take (or renew) the alerts lease and, holding it, evaluate the rules;
    while holding it, send what is due (retries included) every TICK_S.
    A store with no rules is only read, so its idle write-ahead log is
    still given back (wal.py)."""
    if store is not None:
        db.use(store)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    allow = allowed_networks(config.webhook_allow)
    interval = max(0.1, config.alert_interval_s)
    tick = min(TICK_S, interval)
    lease_s = max(30.0, interval * 3)
    base_url = config.public_url or config.server_url
    next_evaluation, holding = 0.0, False
    while True:
        try:
            if time.monotonic() >= next_evaluation:
                next_evaluation = time.monotonic() + interval
                holding = db.call(alerts.has_work) and db.call(
                    retention.take_lease, alerts.LEASE_NAME, holder, lease_s)
                if holding:
                    alerts.evaluate(base_url=base_url)
                    db.call(alerts.forget_delivered, int(time.time() * 1000) - 7 * 86_400_000)
            if holding:
                deliver_due(allow)
        except Exception as exc:
            holding = False
            reason = db.unwritable_reason(exc)
            if reason:
                log.warning("alerts skipped: %s", reason)
            elif not db.is_transient_error(exc):
                log.exception("alert evaluation failed")
        runtime.sleep(tick if holding else max(0.0, next_evaluation - time.monotonic()))

"""What both live tails share (logsvc's own, stream.py, and Loki's,
loki.py): the WebSocket close codes, the revocation guard and the stream
slot."""
import time

from logsvc.access import credentials
from logsvc.store import tail

from .errors import ApiError

WS_NO_TOKEN = 4001
WS_BAD_TOKEN = 4003
WS_BAD_REQUEST = 4000
WS_TOO_MANY = 4029
WS_SCOPE_DESTROYED = 4010  # 4000 + 410 Gone


class Guard:
    """Asks, at most every `every_s` seconds, whether the stream's
    credential still holds (credentials.revoked)."""

    def __init__(self, found, every_s, session_cookie=None, session_digest=None):
        self.found, self.every_s = found, every_s
        self.cookie, self.session_digest = session_cookie, session_digest
        self.next_check = time.monotonic() + every_s

    def revoked(self):
        if time.monotonic() < self.next_check:
            return None
        if self.found.is_admin and self.cookie is None and self.session_digest is None:
            return None  # the admin token itself: nothing to revoke
        self.next_check = time.monotonic() + self.every_s
        return credentials.revoked(self.found, self.cookie, self.session_digest)


def take_slot(streams, found):
    """A stream slot for `found` from `streams` (StreamSlots), or a 429."""
    try:
        return streams.take(None if found.is_admin else found.scope_key)
    except tail.TooManyStreams as exc:
        raise ApiError(429, str(exc), {"Retry-After": "2"}) from None

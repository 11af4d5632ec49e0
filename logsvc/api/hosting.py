"""Where a request really came from: trusted proxies and per-container hosts.

`TrustedProxies` honours `X-Forwarded-For/-Proto/-Host/-Port/-Prefix` only
on requests whose peer is one of LOGSVC_TRUSTED_PROXIES (addresses or
networks); from anyone else those headers are removed before the
application sees them. Behind a trusted proxy the client address (rate
limits, failed logins) is the first address of `X-Forwarded-For`, read from
the right, that is not itself a trusted proxy; the scheme (so `Secure`
cookies), the host and the mount prefix are the nearest proxy's.

`ScopeHost` reads LOGSVC_SCOPE_HOST, a host name pattern such as
`{containerId}.{projectId}.logs.example.com`: a request whose host matches
is limited to that project (and container) on every read path.
"""
import ipaddress
import re

from werkzeug.middleware.proxy_fix import ProxyFix

from logsvc.config import ConfigError

_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX", "HTTP_FORWARDED")


def parse_networks(setting):
    """LOGSVC_TRUSTED_PROXIES: comma-separated addresses or networks."""
    networks = []
    for item in filter(None, (part.strip() for part in setting.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"LOGSVC_TRUSTED_PROXIES: {item!r} is not an address or network") \
                from None
    return tuple(networks)


class TrustedProxies:
    def __init__(self, app, networks):
        self.app = app
        self.networks = networks
        # The nearest proxy's scheme, host, port and prefix; the client
        # address is worked out here (several trusted hops may add to it).
        self.fixed = ProxyFix(app, x_for=0, x_proto=1, x_host=1, x_port=1, x_prefix=1)

    def trusted(self, address):
        try:
            ip = ipaddress.ip_address((address or "").strip())
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, environ, start_response):
        if not self.trusted(environ.get("REMOTE_ADDR")):
            for key in _FORWARDED:
                environ.pop(key, None)
            return self.app(environ, start_response)
        hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",")
                if hop.strip()]
        while hops and self.trusted(hops[-1]):
            hops.pop()
        if hops:
            environ["logsvc.peer_addr"] = environ.get("REMOTE_ADDR")
            environ["REMOTE_ADDR"] = hops[-1]
        return self.fixed(environ, start_response)


class ScopeHost:
    """A compiled LOGSVC_SCOPE_HOST pattern."""

    FIELDS = {"projectId": "project_id", "containerId": "container_id"}

    def __init__(self, pattern):
        self.pattern = pattern
        parts = re.split(r"(\{[^}]*\})", pattern.strip().lower().rstrip("."))
        regex, seen = [], set()
        for part in parts:
            if part.startswith("{"):
                name = {k.lower(): k for k in self.FIELDS}.get(part[1:-1])
                if name is None or name in seen:
                    raise ConfigError(f"LOGSVC_SCOPE_HOST: {part} is not {{projectId}} or "
                                      "{containerId} (each at most once)")
                seen.add(name)
                regex.append(f"(?P<{name}>[a-z0-9_-]+)")
            else:
                regex.append(re.escape(part))
        if "projectId" not in seen:
            raise ConfigError("LOGSVC_SCOPE_HOST must name {projectId} (and may name {containerId})")
        self.regex = re.compile("".join(regex))

    def match(self, host):
        """(project_id, container_id or None) for a host of the pattern, else None."""
        name = (host or "").strip().lower()
        if name.startswith("["):  # an IPv6 literal never matches
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        name = name.rstrip(".")  # the fully qualified form names the same host
        found = self.regex.fullmatch(name)
        if found is None:
            return None
        return found.group("projectId"), found.groupdict().get("containerId")

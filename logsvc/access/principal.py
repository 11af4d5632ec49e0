"""Who is calling and what they may see: the `Principal` value type, the
capabilities, and `authorize`, which turns the scope a request asks for
into the scope it gets (or refuses it).

A leaf: it imports nothing of logsvc, so every part may use it.
"""
import dataclasses

READ = "logs"
WRITE = "ingest"
CAPABILITIES = (READ, WRITE)
FOREIGN_SCOPE = "Caller is not permitted to read logs for this scope"


class Unauthenticated(Exception):
    """No credential, or one that is not valid (401)."""


class Forbidden(Exception):
    """A valid credential that may not do this (403)."""


@dataclasses.dataclass(frozen=True)
class Principal:
    name: str
    project_id: str = None  # None: every tenant (the operator)
    container_id: str = None
    capabilities: tuple = ()
    is_admin: bool = False
    expires_ms: int = None  # JWTs: when the credential stops being valid

    def can(self, capability):
        return self.is_admin or capability in self.capabilities

    @property
    def scope(self):
        """(project_id, container_id) for a scoped caller, None for the operator."""
        return None if self.is_admin else (self.project_id, self.container_id)

    @property
    def scope_key(self):
        return scope_key(self.project_id, self.container_id)


def scope_key(project_id, container_id):
    """A text naming one scope and no other: the budgets, the query gate
    and the idempotency answers of a scope are kept under it. Each part is
    led by its length, so no project or container name (which may hold "/"
    or "*") can make it equal another scope's; None (every project, every
    container) is "*" with no length."""
    return "/".join("*" if part is None else f"{len(part)}:{part}"
                    for part in (project_id, container_id))


ADMIN = Principal(name="admin", capabilities=CAPABILITIES, is_admin=True)


def granted_capabilities(matrix):
    """Capabilities from a capability map: only the JSON value `true` grants
    ("*", "true", 1 grant nothing)."""
    if not isinstance(matrix, dict):
        return ()
    return tuple(c for c in CAPABILITIES if matrix.get(c) is True)


def authorize(principal, capability, project_id=None, container_id=None):
    """The (project_id, container_id) a request by `principal` works on.

    The operator gets what it asked for (None = all). A scoped caller gets
    its own scope; asking for another project or container is Forbidden.
    """
    if not principal.can(capability):
        if capability == READ:
            raise Forbidden(FOREIGN_SCOPE)
        raise Forbidden("Caller is not permitted to write logs")
    if principal.is_admin:
        return project_id, container_id
    if project_id is not None and project_id != principal.project_id:
        raise Forbidden(FOREIGN_SCOPE)
    if principal.container_id is not None:
        if container_id is not None and container_id != principal.container_id:
            raise Forbidden(FOREIGN_SCOPE)
        container_id = principal.container_id
    return principal.project_id, container_id


def require_admin(principal):
    if not principal.is_admin:
        raise Forbidden("This needs the admin token")

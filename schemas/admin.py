"""Bodies of the operator's admin API."""
from marshmallow import Schema, ValidationError, fields, validate, validates

from logsvc.access.principal import CAPABILITIES


def _no_nul(value):
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


_ID = validate.And(validate.Length(min=1, max=128), _no_nul)


class Capabilities(fields.Dict):
    """{"logs": true|false, "ingest": true|false}; nothing else is accepted,
    so a typo or "*" is an error here instead of a silent no-grant."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        for key, granted in value.items():
            if key not in CAPABILITIES:
                raise ValidationError(f"Unknown capability {key!r}; use {', '.join(CAPABILITIES)}.")
            if not isinstance(granted, bool):
                raise ValidationError(f"{key!r} must be true or false.")
        return value


class ScopeFields(Schema):
    project_id = fields.String(data_key="projectId", required=True, validate=_ID)
    container_id = fields.String(data_key="containerId", load_default=None, allow_none=True,
                                 validate=_ID)
    capabilities = Capabilities(load_default=lambda: {"logs": True})


class TokenCreate(ScopeFields):
    name = fields.String(required=True, validate=validate.And(validate.Length(min=1, max=200),
                                                              _no_nul))


class UserCreate(ScopeFields):
    username = fields.String(required=True, validate=_ID)
    password = fields.String(required=True, validate=validate.Length(min=8, max=1024))

    @validates("username")
    def no_colon(self, value, **kwargs):
        if ":" in value:
            raise ValidationError("Must not contain ':' (HTTP Basic separates on it).")


token_create = TokenCreate()
user_create = UserCreate()

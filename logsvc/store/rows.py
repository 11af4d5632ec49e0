"""An `entry` row as the API's entry: the stored forms (SQLite's numbers
for names, letters for levels, packed trace ids, addresses and `data`)
shown as they were sent."""
import orjson

from logsvc.entry import row_to_dict

from . import lookup, names
from .bodies import unpack_data


def render_row(row, bodies=None, addresses=True):
    """An `entry` row as the API's entry, `data` kept as its stored JSON text.
    Without `addresses`, `clientIp` is left out (None): a reader that shows
    no address saves formatting it."""
    item = row_to_dict(row, bodies)
    # SQLite's compact forms (schema 7: lookup.stored, bodies.pack_data).
    item["traceId"] = lookup.shown("trace_id", item["traceId"])
    item["clientIp"] = lookup.shown("client_ip", item["clientIp"]) if addresses else None
    item["data"] = orjson.Fragment(unpack_data(item["data"]))
    # Schema 8: names as numbers (names.py).
    shown = names.shower()
    item["projectId"] = shown(item["projectId"])
    item["containerId"] = shown(item["containerId"])
    item["serviceName"] = shown(item["serviceName"])
    item["method"] = shown(item["method"])
    item["route"] = shown(item["route"])
    unlettered = names.unlettered
    item["level"] = unlettered("level", item["level"])
    item["kind"] = unlettered("kind", item["kind"])
    item["source"] = unlettered("source", item["source"])
    return item
